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

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use isthmus_e2e::netns::Netns;

/// Child processes, stopped before the namespaces they run in go.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The HTTP status of GET `url` from namespace `ns` ("000": no answer).
fn status(ns: &Netns, url: &str) -> String {
    let out = ns
        .command("curl")
        .args([
            "-s",
            "-m",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ])
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
    if !isthmus_tests::pod::can_run(&["curl", "setpriv"]) {
        return;
    }
    // What the injector makes of a pod with an HTTP readiness probe.
    let injected = isthmus_tests::pod::injected("eu-west");
    let spec = injected.spec.unwrap();
    let init = spec.init_containers.unwrap();
    let iptables_args = init[0].args.clone().unwrap();
    let probes = isthmus_tests::pod::env(&init[1], "ISTHMUS_APP_PROBES").expect("the probe table");
    let readiness = spec.containers[0]
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .clone()
        .unwrap();
    let probe_path = readiness.path.unwrap();

    let id = std::process::id();
    let podns = Netns::create(&format!("isth{id}ipod")).unwrap();
    let node = Netns::create(&format!("isth{id}node")).unwrap();
    let net = 230 + (id % 10) as u8;
    let pod_ip = format!("10.{net}.1.1");
    podns
        .veth(
            &format!("ip{id}"),
            &format!("{pod_ip}/30"),
            &node,
            &format!("in{id}"),
            &format!("10.{net}.1.2/30"),
        )
        .unwrap();

    // The app, on every address of the pod, as a container listens.
    let sample = isthmus_testkit::workspace_bin("isthmus-sample");
    let app = podns
        .command(sample.to_str().unwrap())
        .args(["--listen", "0.0.0.0:8080", "--service", "catalog"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Dropped before the namespaces (declared after them).
    let mut children = Children(vec![app]);
    // The sidecar as the injector runs it: uid 1337, admin on every
    // address, the probe table; no listeners of its own here.
    let dir = isthmus_testkit::temp_dir("injected-pod");
    let cfg = dir.join("sidecar.yaml");
    std::fs::write(&cfg, "listeners: []\n").unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let gateway = isthmus_testkit::workspace_bin("isthmus-gateway");
    let sidecar = podns
        .command("setpriv")
        .args(["--reuid=1337", "--regid=1337", "--clear-groups"])
        .arg(&gateway)
        .args(["sidecar", "--config", cfg.to_str().unwrap()])
        .args(["--admin", "0.0.0.0:15020", "--access-log", "off"])
        .env("ISTHMUS_APP_PROBES", &probes)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    children.0.push(sidecar);
    poll("the sidecar's admin", || {
        status(&node, &format!("http://{pod_ip}:15020/healthz")) == "200"
    });
    poll("the app", || {
        status(&node, &format!("http://{pod_ip}:8080/status/200")) == "200"
    });

    // The init container's rules, with its exact arguments.
    let out = podns
        .command(gateway.to_str().unwrap())
        .args(&iptables_args)
        .output()
        .unwrap();
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
    let mut app = children.0.remove(0);
    app.kill().unwrap();
    app.wait().unwrap();
    poll("the probe failing", || status(&node, &probe) == "503");
    let _ = std::fs::remove_dir_all(&dir);
}
