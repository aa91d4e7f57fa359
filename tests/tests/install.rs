//! `isthmusctl install` against the code it installs: `deploy/` is what it
//! renders (drift fails), the overlays build to what it renders for each
//! cluster, the manifests validate against the Kubernetes schemas
//! (`kubernetes-validate --strict`), the Mesh is one our CRD accepts, every
//! flag and environment variable given to a binary is one it takes, every
//! address a binary listens on is a container port with a Service or a
//! probe on it, and the east-west settings are ones the gateway parses.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use isthmus_ctl::install::{self, Options, control_plane, crds, eastwest, kustomize};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rendered(cluster: &str) -> Vec<Value> {
    install::render(&Options::new(cluster)).unwrap()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

#[test]
fn deploy_is_what_install_renders() {
    if let Err(e) = kustomize::check(&root()) {
        panic!("{e}");
    }
}

#[test]
fn each_overlay_builds_to_what_install_renders_for_its_cluster() {
    let required = std::env::var_os("ISTHMUS_REQUIRE_KUBECTL").is_some();
    for cluster in kustomize::CLUSTERS {
        let dir = root().join("deploy/clusters").join(cluster);
        let Some(out) = isthmus_testkit::kubectl_kustomize(&dir) else {
            assert!(!required, "kubectl kustomize {} failed", dir.display());
            eprintln!("skipped: no kubectl");
            return;
        };
        let built: Vec<Value> = serde_saphyr::from_multiple(&out).unwrap();
        let key = |v: &Value| serde_json::to_string(v).unwrap();
        let got: BTreeSet<String> = built.iter().map(key).collect();
        let want: BTreeSet<String> = rendered(cluster).iter().map(key).collect();
        let missing: Vec<_> = want.difference(&got).collect();
        let extra: Vec<_> = got.difference(&want).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{cluster}: kustomize and install differ:\nonly install: {missing:#?}\nonly kustomize: {extra:#?}"
        );
    }
    // The base builds too, CRDs included.
    if let Some(out) = isthmus_testkit::kubectl_kustomize(&root().join("deploy/crds")) {
        let built: Vec<Value> = serde_saphyr::from_multiple(&out).unwrap();
        let want = crds::objects(crds::Which::default()).unwrap();
        assert_eq!(built.len(), want.len());
    }
}

#[test]
fn install_validates_against_the_kubernetes_schemas() {
    let required = std::env::var_os("ISTHMUS_REQUIRE_KUBERNETES_VALIDATE").is_some();
    let mut o = Options::new("eu-west");
    o.zone = Some("eu-west-1a".into());
    let mut all = [
        install::to_yaml(&crds::objects(crds::Which::default()).unwrap()).unwrap(),
        install::to_yaml(&install::render(&o).unwrap()).unwrap(),
    ]
    .concat();
    // The kind walkthrough's sample mesh, as `isthmusctl sample` renders it.
    for cluster in kustomize::CLUSTERS {
        let out = Command::new(isthmus_testkit::workspace_bin("isthmusctl"))
            .args(["sample", "--cluster", cluster])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        all.push_str(&String::from_utf8(out.stdout).unwrap());
    }
    // Native sidecars need 1.29; the newest the tool knows.
    for version in ["1.29.0", "1.34.0"] {
        match isthmus_testkit::kubernetes_validate(&all, version, "install-validate") {
            None => {
                assert!(
                    !required,
                    "kubernetes-validate is not installed (pip install kubernetes-validate)"
                );
                eprintln!("skipped: no kubernetes-validate");
                return;
            }
            Some((ok, text)) => assert!(ok, "Kubernetes {version}:\n{text}"),
        }
    }
    // And it does catch a misspelt field.
    let bad = all.replacen("readOnlyRootFilesystem", "readOnlyRootFilesytem", 1);
    let (ok, text) =
        isthmus_testkit::kubernetes_validate(&bad, "1.29.0", "install-validate-bad").unwrap();
    assert!(!ok, "a misspelt field passed:\n{text}");
}

#[test]
fn the_mesh_is_one_our_crd_accepts() {
    use isthmus_federation::resources::Mesh;
    let mut o = Options::new("us-east");
    o.zone = Some("us-east-1b".into());
    let objects = install::render(&o).unwrap();
    let mesh = find(&objects, "Mesh", "default");
    let typed: Mesh = serde_json::from_value(mesh.clone()).expect("a Mesh");
    // Nothing dropped: every field rendered is a field of the type.
    let back = serde_json::to_value(&typed.spec).unwrap();
    for (k, v) in mesh["spec"].as_object().unwrap() {
        assert_eq!(&back[k], v, "spec.{k}");
    }
    assert_eq!(typed.spec.cluster_name, "us-east");
    assert_eq!(typed.spec.locality.zone, "us-east-1b");
}

/// The `--help` of `bin args…`: clap prints it (exit 0) only when every
/// argument before `--help` is one it takes.
fn help(bin: &str, args: &[String]) -> String {
    let out = Command::new(isthmus_testkit::workspace_bin(bin))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{bin} {args:?} is refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn env_names(c: &Value) -> Vec<String> {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_flag_and_variable_given_to_a_binary_is_one_it_takes() {
    let objects = rendered("eu-west");
    for (name, bin) in [
        (control_plane::NAME, "isthmus-federation"),
        (eastwest::NAME, "isthmus-gateway"),
    ] {
        let c = container(find(&objects, "Deployment", name));
        let args: Vec<String> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        let text = help(bin, &args);
        // The subcommand's help lists its flags' variables.
        for var in env_names(c) {
            assert!(
                text.contains(&format!("[env: {var}")),
                "{bin} {}: {var} is set but is no flag's variable",
                args[0]
            );
        }
    }
    // The control plane runs in kube mode, federating, with the gateway's
    // entry: the manifest that could not federate is not back.
    let args = control_plane::args(&Options::new("eu-west"));
    for needed in [
        "--kube",
        "--federation=",
        "--gateway-entry=",
        "--discovery=",
    ] {
        assert!(
            args.iter().any(|a| a.starts_with(needed)),
            "control plane without {needed}"
        );
    }
}

#[test]
fn what_the_injector_adds_is_what_the_gateway_takes() {
    use isthmus_federation::inject;
    let review: Value = serde_json::from_str(
        &std::fs::read_to_string(
            root().join("federation/tests/fixtures/admission/grpc-pod-annotated.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let pod = serde_json::from_value(review["request"]["object"].clone()).unwrap();
    let t = inject::Template {
        image: "i".into(),
        pull_policy: "IfNotPresent".into(),
        control_plane: control_plane::discovery_address(),
        cluster: "eu-west".into(),
        region: "eu-west".into(),
        zone: "eu-west-1a".into(),
        ..Default::default()
    };
    let out = inject::mutate(&pod, &t).unwrap().unwrap();
    let init = serde_json::to_value(&out.pod.spec.unwrap().init_containers).unwrap();
    for c in init.as_array().unwrap().iter().take(2) {
        let args: Vec<String> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        let text = help("isthmus-gateway", &args);
        if c["env"].is_array() {
            for var in env_names(c) {
                assert!(
                    text.contains(&format!("[env: {var}")),
                    "{}: {var} is set but is no flag's variable",
                    c["name"]
                );
            }
        }
    }
    // The sidecar reaches the control plane where install puts it.
    assert_eq!(
        t.control_plane,
        format!(
            "{}.{}.svc:{}",
            control_plane::NAME,
            install::NAMESPACE,
            install::DISCOVERY_PORT
        )
    );
}

#[test]
fn the_east_west_settings_are_ones_the_gateway_parses() {
    let objects = rendered("eu-west");
    let cm = find(&objects, "ConfigMap", eastwest::NAME);
    let ew = isthmus_gateway::eastwest::config::EastWestConfig::parse(
        "eastwest.yaml",
        cm["data"]["eastwest.yaml"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(ew.cluster, None, "the cluster's name comes from --cluster");
    let boot = cm["data"]["bootstrap.yaml"].as_str().unwrap();
    let boot = isthmus_api::parse_bootstrap_yaml(boot).expect("a bootstrap the gateway reads");
    assert!(boot.listeners.is_empty() && boot.services.is_empty());
    // The volumes it mounts are the ConfigMaps that hold these files and
    // the CA root the control plane writes.
    let pod = &find(&objects, "Deployment", eastwest::NAME)["spec"]["template"]["spec"];
    let maps: BTreeSet<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["configMap"]["name"].as_str())
        .collect();
    assert_eq!(
        maps,
        BTreeSet::from([
            eastwest::NAME,
            isthmus_federation::writers::ca_root::CONFIG_MAP
        ])
    );
    let token = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| v["projected"]["sources"][0]["serviceAccountToken"].as_object())
        .expect("a projected token");
    assert_eq!(
        token["audience"],
        isthmus_federation::identity::service::AUDIENCE
    );
    assert_eq!(pod["serviceAccountName"], "isthmus-eastwest");
}

/// Ports a container listens on, from its args, environment and (for the
/// gateway) its east-west settings: `0.0.0.0:PORT`.
fn listening(c: &Value, objects: &[Value]) -> BTreeSet<u16> {
    let mut text: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    for e in c["env"].as_array().unwrap() {
        if let Some(v) = e["value"].as_str() {
            text.push(v.to_string());
        }
    }
    if c["name"] == "eastwest" {
        let cm = find(objects, "ConfigMap", eastwest::NAME);
        text.push(cm["data"]["eastwest.yaml"].as_str().unwrap().to_string());
    }
    let mut ports = BTreeSet::new();
    for t in text {
        for (i, _) in t.match_indices("0.0.0.0:") {
            let digits: String = t[i + 8..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            ports.insert(digits.parse().unwrap());
        }
    }
    ports
}

#[test]
fn every_port_a_binary_listens_on_is_declared_and_reached() {
    let objects = rendered("eu-west");
    let services: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "Service").collect();
    for name in [control_plane::NAME, eastwest::NAME] {
        let d = find(&objects, "Deployment", name);
        let c = container(d);
        let declared: BTreeSet<u16> = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["containerPort"].as_u64().unwrap() as u16)
            .collect();
        let listens = listening(c, &objects);
        assert_eq!(listens, declared, "{name}: listens on vs containerPorts");
        let probed: BTreeSet<u16> = ["startupProbe", "livenessProbe", "readinessProbe"]
            .iter()
            .map(|p| c[p]["httpGet"]["port"].as_u64().expect("an HTTP probe") as u16)
            .collect();
        assert_eq!(probed, BTreeSet::from([install::ADMIN_PORT]), "{name}");
        for port in listens {
            if port == install::ADMIN_PORT {
                continue; // probes and scraping, no Service
            }
            let served = services.iter().any(|s| {
                s["spec"]["selector"]["app"] == name
                    && s["spec"]["ports"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["targetPort"] == port)
            });
            assert!(served, "{name}: nothing reaches port {port}");
        }
    }
    // Linked clusters reach the tunnels on UDP (QUIC) and TCP (fallback).
    let lb = find(&objects, "Service", eastwest::NAME);
    assert_eq!(lb["spec"]["type"], "LoadBalancer");
    let protocols: BTreeSet<&str> = lb["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["port"] == install::TUNNEL_PORT)
        .map(|p| p["protocol"].as_str().unwrap())
        .collect();
    assert_eq!(protocols, BTreeSet::from(["TCP", "UDP"]));
    // The gateway entry the control plane is given is the local Service.
    let entry = control_plane::args(&Options::new("eu-west"))
        .into_iter()
        .find_map(|a| a.strip_prefix("--gateway-entry=").map(str::to_string))
        .unwrap();
    assert!(entry.starts_with(&format!(
        "{}.{}.svc:",
        control_plane::LOCAL_ENTRY_SERVICE,
        install::NAMESPACE
    )));
    let local = find(&objects, "Service", control_plane::LOCAL_ENTRY_SERVICE);
    assert_eq!(local["spec"]["type"], "ClusterIP");
    assert_eq!(local["spec"]["ports"][0]["port"], install::LOCAL_ENTRY_PORT);
    // Peers' control planes are routed to the Service named for the sync.
    let cp = find(&objects, "Service", isthmus_federation::sync::SERVICE);
    assert!(
        cp["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["port"] == isthmus_federation::sync::SYNC_PORT)
    );
}

#[test]
fn replicas_bring_a_disruption_budget_and_one_replica_none() {
    let objects = rendered("eu-west");
    for name in [control_plane::NAME, eastwest::NAME] {
        assert_eq!(find(&objects, "Deployment", name)["spec"]["replicas"], 2);
        let pdb = find(&objects, "PodDisruptionBudget", name);
        assert_eq!(pdb["spec"]["minAvailable"], 1);
    }
    let mut o = Options::new("eu-west");
    o.replicas = 1;
    o.gateway_replicas = 1;
    let objects = install::render(&o).unwrap();
    assert!(!objects.iter().any(|x| x["kind"] == "PodDisruptionBudget"));
}
