use super::*;
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/admission/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(fixture(name)["request"]["object"].clone()).unwrap()
}

fn template() -> Template {
    Template {
        image: "ghcr.io/isthmus-mesh/isthmus-gateway:dev".into(),
        pull_policy: "IfNotPresent".into(),
        control_plane: "isthmus-federation.isthmus-system.svc:15010".into(),
        cluster: "eu-west".into(),
        region: "eu-west".into(),
        zone: String::new(),
        otlp_endpoint: String::new(),
        trace_sampling: None,
    }
}

fn injected(p: &Pod) -> Injected {
    mutate(p, &template()).unwrap().unwrap()
}

/// The injected pod's init containers (capture first, then the proxy).
fn init_containers(out: &Injected) -> &[Container] {
    out.pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_deref())
        .expect("init containers")
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

#[test]
fn a_deployments_pod_gets_capture_a_native_sidecar_and_its_probes_through_it() {
    let before = pod("deployment-pod.json");
    let out = injected(&before);
    let spec = out.pod.spec.as_ref().unwrap();
    let init = spec.init_containers.as_ref().unwrap();
    assert_eq!(init[0].name, INIT_CONTAINER);
    assert_eq!(init[1].name, PROXY_CONTAINER);
    // Native sidecar: an init container that keeps running.
    assert_eq!(init[1].restart_policy.as_deref(), Some("Always"));
    assert_eq!(init[0].restart_policy, None);
    let caps = init[0]
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap();
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
    );
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(
        init[0].args.as_deref().unwrap(),
        [
            "init-iptables",
            "--proxy-uid=1337",
            "--exclude-inbound-ports=15008,15020,15021",
            "--dns-port=15053",
        ]
    );
    let proxy = &init[1];
    assert_eq!(
        proxy.security_context.as_ref().unwrap().run_as_user,
        Some(PROXY_UID)
    );
    assert_eq!(env(proxy, "ISTHMUS_CLUSTER"), Some("eu-west"));
    assert_eq!(
        env(proxy, "ISTHMUS_CONTROL_PLANE"),
        Some("isthmus-federation.isthmus-system.svc:15010")
    );
    assert_eq!(
        env(proxy, "ISTHMUS_LABELS"),
        Some("app=catalog,pod-template-hash=7d9f8b6c5d,version=v1")
    );
    assert_eq!(
        proxy.args.as_deref().unwrap(),
        ["sidecar", "--workload-port=http=8080"]
    );
    // The probes go to the sidecar, which runs them against the app.
    let app = &spec.containers[0];
    let live = app.liveness_probe.as_ref().unwrap();
    let ready = app.readiness_probe.as_ref().unwrap();
    for (p, path) in [
        (live, "/app-health/catalog/livez"),
        (ready, "/app-health/catalog/readyz"),
    ] {
        let get = p.http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(ADMIN_PORT)
        );
        assert!(p.tcp_socket.is_none());
    }
    // Timing kept.
    assert_eq!(ready.period_seconds, Some(5));
    let table: BTreeMap<String, String> =
        serde_json::from_str(env(proxy, "ISTHMUS_APP_PROBES").unwrap()).unwrap();
    assert_eq!(
        table,
        BTreeMap::from([
            ("catalog/livez".to_string(), "8080=tcp".to_string()),
            (
                "catalog/readyz".to_string(),
                "8080=http:/healthz".to_string()
            ),
        ])
    );
    // Its trust and its token for the CA.
    let vols = spec.volumes.as_ref().unwrap();
    assert!(vols.iter().any(|v| {
        v.config_map
            .as_ref()
            .is_some_and(|c| c.name == crate::writers::ca_root::CONFIG_MAP)
    }));
    let token = vols
        .iter()
        .find_map(|v| v.projected.as_ref())
        .and_then(|p| p.sources.as_ref())
        .and_then(|s| s.iter().find_map(|s| s.service_account_token.as_ref()))
        .filter(|t| t.audience.as_deref() == Some("isthmus"))
        .expect("a projected token for the CA");
    assert_eq!(token.path, "token");
    // The app's own volume is still there.
    assert!(vols.iter().any(|v| v.name == "kube-api-access-x7k2p"));
    let ann = out.pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(ann[STATUS_ANNOTATION], "injected");
    assert_eq!(ann["kubectl.kubernetes.io/default-container"], "catalog");
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
}

#[test]
fn injection_is_idempotent() {
    let once = injected(&pod("deployment-pod.json")).pod;
    assert_eq!(
        mutate(&once, &template()).unwrap(),
        Err(Skip::AlreadyInjected)
    );
}

#[test]
fn host_network_and_opted_out_pods_are_left_alone() {
    let mut p = pod("deployment-pod.json");
    p.spec.as_mut().unwrap().host_network = Some(true);
    assert_eq!(mutate(&p, &template()).unwrap(), Err(Skip::HostNetwork));
    let mut p = pod("deployment-pod.json");
    p.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(INJECT_ANNOTATION.into(), "false".into());
    assert_eq!(mutate(&p, &template()).unwrap(), Err(Skip::OptedOut));
}

#[test]
fn capture_annotations_become_flags_and_bad_ones_are_refused_by_name() {
    let p = pod("grpc-pod-annotated.json");
    let out = injected(&p);
    let init = init_containers(&out);
    assert_eq!(
        init[0].args.as_deref().unwrap(),
        [
            "init-iptables",
            "--proxy-uid=1337",
            "--exclude-outbound-ports=5432",
            "--exclude-outbound-cidrs=169.254.169.254/32,10.96.0.1",
            "--exclude-inbound-ports=15008,15020,15021,9091",
            "--dns-port=15053",
        ]
    );
    // DNS capture opted out: neither the rules nor the proxy.
    let mut no_dns = p.clone();
    no_dns
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(DNS_CAPTURE_ANNOTATION.into(), "false".into());
    let out = injected(&no_dns);
    let init = init_containers(&out);
    assert!(
        !init[0]
            .args
            .as_ref()
            .unwrap()
            .iter()
            .any(|a| a.contains("dns"))
    );
    assert_eq!(env(&init[1], "ISTHMUS_DNS"), None);
    // The pod's own init container runs after capture and the proxy.
    assert_eq!(init[2].name, "migrate");
    for (key, value) in [
        ("isthmus.dev/exclude-inbound-ports", "80a"),
        ("isthmus.dev/exclude-outbound-cidrs", "10.0.0.0/33"),
        ("isthmus.dev/include-inbound-ports", ""),
        ("isthmus.dev/exclude-outbound-ports", "0"),
        (DNS_CAPTURE_ANNOTATION, "yes"),
    ] {
        let mut bad = p.clone();
        bad.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(key.into(), value.into());
        let e = mutate(&bad, &template()).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains(&format!("{value:?}")), "{e}");
    }
}

#[test]
fn grpc_probes_are_carried_over_and_what_cannot_be_is_left_with_a_warning() {
    let out = injected(&pod("grpc-pod-annotated.json"));
    let spec = out.pod.spec.as_ref().unwrap();
    let proxy = &spec.init_containers.as_ref().unwrap()[1];
    let table: BTreeMap<String, String> =
        serde_json::from_str(env(proxy, "ISTHMUS_APP_PROBES").unwrap()).unwrap();
    assert_eq!(table["inventory/livez"], "9090=grpc");
    assert_eq!(table["inventory/readyz"], "9090=grpc:shop.Inventory");
    assert!(!table.contains_key("inventory/startupz"));
    let app = &spec.containers[0];
    assert!(app.liveness_probe.as_ref().unwrap().grpc.is_none());
    // HTTPS: unchanged, and said so.
    let startup = app
        .startup_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(startup.scheme.as_deref(), Some("HTTPS"));
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
    assert!(out.warnings[0].contains("inventory") && out.warnings[0].contains("HTTPS"));
    // exec probes run in the container: untouched, no warning.
    assert!(
        spec.containers[1]
            .liveness_probe
            .as_ref()
            .unwrap()
            .exec
            .is_some()
    );
    // Only TCP ports are registered.
    assert_eq!(
        proxy.args.as_deref().unwrap(),
        ["sidecar", "--workload-port=grpc=9090,metrics=9091"]
    );
}

#[test]
fn a_container_named_like_ours_is_refused() {
    let mut p = pod("deployment-pod.json");
    p.spec.as_mut().unwrap().containers[0].name = PROXY_CONTAINER.into();
    let e = mutate(&p, &template()).unwrap_err();
    assert_eq!(e, InjectError::NameTaken(PROXY_CONTAINER.into()));
}

#[test]
fn the_patch_turns_the_pod_into_the_injected_pod() {
    for name in ["deployment-pod.json", "grpc-pod-annotated.json"] {
        let before = pod(name);
        let after = injected(&before).pod;
        let ops = patch(&before, &after);
        let mut doc = serde_json::to_value(&before).unwrap();
        json_patch::patch(&mut doc, &ops).unwrap();
        assert_eq!(doc, serde_json::to_value(&after).unwrap(), "{name}");
    }
}

/// The Mesh's tracing reaches every injected sidecar: the collector and
/// the sampling rate in the environment its flags read; none without it.
#[test]
fn the_meshs_tracing_is_in_every_sidecars_environment() {
    let snap = crate::store::files::snapshot_of(
        "apiVersion: isthmus.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n\
         spec:\n  clusterName: eu-west\n  trustDomain: eu-west.isthmus.local\n  locality: {region: eu-west}\n  \
         tracing: {otlpEndpoint: \"http://otel-collector.observability:4317\", samplingPercent: 12.5}\n",
    );
    let settings = super::webhook::Settings {
        image: "i".into(),
        pull_policy: "IfNotPresent".into(),
        control_plane: "cp:15010".into(),
    };
    let t = super::webhook::template(&snap, &settings);
    let out = mutate(&pod("deployment-pod.json"), &t).unwrap().unwrap();
    let proxy = &init_containers(&out)[1];
    assert_eq!(
        env(proxy, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        Some("http://otel-collector.observability:4317")
    );
    assert_eq!(env(proxy, "ISTHMUS_TRACE_SAMPLING"), Some("12.5"));
    let plain = injected(&pod("deployment-pod.json"));
    let proxy = &init_containers(&plain)[1];
    assert_eq!(env(proxy, "OTEL_EXPORTER_OTLP_ENDPOINT"), None);
    assert_eq!(env(proxy, "ISTHMUS_TRACE_SAMPLING"), None);
}
