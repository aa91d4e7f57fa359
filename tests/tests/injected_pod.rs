//! An injected pod as the kubelet sees it, in network namespaces with real
//! capture: a "pod" namespace runs the app, the sidecar as uid 1337 and
//! the capture rules the injector gives its init container (its exact
//! arguments); a "node" namespace plays the kubelet. The kubelet's own
//! probe of the app port is captured (it would meet the mesh's inbound
//! side, not the app: why the injector rewrites probes), while the
//! rewritten probe on the sidecar's admin port is not captured and the
//! sidecar answers it from the app's health: 200 while the app serves,
//! 503 once it is gone.
//!
//! Needs root, `ip`, `iptables-restore`, `curl` and `setpriv`. Skipped
//! without them, unless ISTHMUS_REQUIRE_NETNS=1 (CI).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use isthmus_federation::inject;

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Lab {
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

/// The HTTP status of GET `url` from namespace `ns` ("000": no answer).
fn status(ns: &str, url: &str) -> String {
    let out = in_ns(
        ns,
        &[
            "curl",
            "-s",
            "-m",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ],
    )
    .output()
    .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn poll(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_kubelet_reaches_an_injected_pods_app_through_its_rewritten_probe() {
    let required = std::env::var("ISTHMUS_REQUIRE_NETNS").is_ok_and(|v| v == "1");
    let missing: Vec<&str> = ["ip", "iptables-restore", "curl", "setpriv"]
        .into_iter()
        .filter(|c| !isthmus_testkit::have(c))
        .collect();
    if !isthmus_e2e::is_root() || !missing.is_empty() {
        let why = format!("needs root and {missing:?}");
        assert!(!required, "ISTHMUS_REQUIRE_NETNS=1 but {why}");
        eprintln!("skipping: {why}");
        return;
    }
    // What the injector makes of a pod with an HTTP readiness probe.
    let review: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../federation/tests/fixtures/admission/deployment-pod.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let pod = serde_json::from_value(review["request"]["object"].clone()).unwrap();
    let t = inject::Template {
        image: "i".into(),
        pull_policy: "IfNotPresent".into(),
        control_plane: "cp:15010".into(),
        cluster: "eu-west".into(),
        region: "eu-west".into(),
        zone: String::new(),
    };
    let injected = inject::mutate(&pod, &t).unwrap().unwrap().pod;
    let spec = injected.spec.unwrap();
    let init = spec.init_containers.unwrap();
    let iptables_args = init[0].args.clone().unwrap();
    let probes = init[1]
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "ISTHMUS_APP_PROBES")
        .and_then(|e| e.value.clone())
        .expect("the probe table");
    let readiness = spec.containers[0]
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .clone()
        .unwrap();
    let probe_path = readiness.path.unwrap();

    let id = std::process::id();
    let mut lab = Lab {
        namespaces: vec![format!("isth{id}ipod"), format!("isth{id}node")],
        children: vec![],
    };
    let (podns, node) = (lab.namespaces[0].clone(), lab.namespaces[1].clone());
    let net = 230 + (id % 10) as u8;
    let (pod_ip, node_ip) = (format!("10.{net}.1.1"), format!("10.{net}.1.2"));
    run(&["ip", "netns", "add", &podns]);
    run(&["ip", "netns", "add", &node]);
    let (vp, vn) = (format!("ip{id}"), format!("in{id}"));
    run(&[
        "ip", "link", "add", &vp, "netns", &podns, "type", "veth", "peer", "name", &vn, "netns",
        &node,
    ]);
    for (ns, dev, ip) in [(&podns, &vp, &pod_ip), (&node, &vn, &node_ip)] {
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/30"),
            "dev",
            dev,
        ]);
        run(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }

    // The app, on every address of the pod, as a container listens.
    let sample = isthmus_testkit::workspace_bin("isthmus-sample");
    let app = in_ns(
        &podns,
        &[
            sample.to_str().unwrap(),
            "--listen",
            "0.0.0.0:8080",
            "--service",
            "catalog",
        ],
    )
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    lab.children.push(app);
    // The sidecar as the injector runs it: uid 1337, admin on every
    // address, the probe table; no listeners of its own here.
    let dir = isthmus_testkit::temp_dir("injected-pod");
    let cfg = dir.join("sidecar.yaml");
    std::fs::write(&cfg, "listeners: []\n").unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let gateway = isthmus_testkit::workspace_bin("isthmus-gateway");
    let sidecar = in_ns(
        &podns,
        &[
            "setpriv",
            "--reuid=1337",
            "--regid=1337",
            "--clear-groups",
            gateway.to_str().unwrap(),
            "sidecar",
            "--config",
            cfg.to_str().unwrap(),
            "--admin",
            "0.0.0.0:15020",
            "--access-log",
            "off",
        ],
    )
    .env("ISTHMUS_APP_PROBES", &probes)
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    lab.children.push(sidecar);
    poll("the sidecar's admin", || {
        status(&node, &format!("http://{pod_ip}:15020/healthz")) == "200"
    });
    poll("the app", || {
        status(&node, &format!("http://{pod_ip}:8080/status/200")) == "200"
    });

    // The init container's rules, with its exact arguments.
    let mut args: Vec<&str> = vec![gateway.to_str().unwrap()];
    args.extend(iptables_args.iter().map(String::as_str));
    let out = in_ns(&podns, &args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The kubelet's original probe of the app port is captured now (the
    // inbound side has no listener here: nothing answers).
    assert_eq!(
        status(&node, &format!("http://{pod_ip}:8080/healthz")),
        "000",
        "the app port is not captured"
    );
    // The rewritten probe is not captured, and the sidecar runs the
    // app's own check (its own connection is exempt: uid 1337).
    let probe = format!("http://{pod_ip}:15020{probe_path}");
    assert_eq!(status(&node, &probe), "200", "{probe}");
    // The app goes away: the probe says so.
    let mut app = lab.children.remove(0);
    app.kill().unwrap();
    app.wait().unwrap();
    poll("the probe failing", || status(&node, &probe) == "503");
    let _ = std::fs::remove_dir_all(&dir);
}
