//! Transparent capture in network namespaces, as in a pod: a "pod"
//! namespace runs the sidecar with the rules of `init-iptables`; a
//! "server" namespace, reached over a veth pair, runs the sample app. A
//! plain connection from the pod to a service VIP must be captured and
//! served; a connection to an address that is no service passes through
//! (and the proxy's own connection is not captured again: the mark works).
//!
//! Needs root, `ip` and `iptables-restore`. Skipped without them, unless
//! ISTHMUS_REQUIRE_NETNS=1 (CI), where it fails instead.

use isthmus_testkit::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes the namespaces and stops the processes, whatever happens.
struct Lab {
    pod: String,
    srv: String,
    children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.pod, &self.srv] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

/// Runs curl in the pod namespace; returns (exit ok, stdout).
fn curl(ns: &str, url: &str) -> (bool, String) {
    let out = in_ns(ns, &["curl", "-s", "-m", "5", url])
        .output()
        .expect("curl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn poll(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn transparent_capture_of_a_pods_connections() {
    let required = std::env::var("ISTHMUS_REQUIRE_NETNS").is_ok_and(|v| v == "1");
    let missing: Vec<&str> = ["ip", "iptables-restore", "curl"]
        .into_iter()
        .filter(|c| !have(c))
        .collect();
    if !isthmus_e2e::is_root() || !missing.is_empty() {
        let why = format!("needs root and {missing:?}");
        assert!(!required, "ISTHMUS_REQUIRE_NETNS=1 but {why}");
        eprintln!("skipping the network-namespace test: {why}");
        return;
    }
    let bin = env!("CARGO_BIN_EXE_isthmus-gateway");
    let sample = isthmus_testkit::workspace_bin("isthmus-sample")
        .display()
        .to_string();
    let id = std::process::id();
    let mut lab = Lab {
        pod: format!("isth{id}pod"),
        srv: format!("isth{id}srv"),
        children: vec![],
    };
    let (pod, srv) = (lab.pod.clone(), lab.srv.clone());
    // A /30 between the two namespaces only; nothing leaves them.
    let net = 240 + (id % 10) as u8;
    let pod_ip = format!("10.{net}.0.1");
    let srv_ip = format!("10.{net}.0.2");
    run(&["ip", "netns", "add", &pod]);
    run(&["ip", "netns", "add", &srv]);
    let (vp, vs) = (format!("vp{id}"), format!("vs{id}"));
    run(&[
        "ip", "link", "add", &vp, "netns", &pod, "type", "veth", "peer", "name", &vs, "netns", &srv,
    ]);
    for (ns, dev, ip) in [(&pod, &vp, &pod_ip), (&srv, &vs, &srv_ip)] {
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
    // Service VIPs route towards the server namespace: without capture a
    // connection to a VIP fails there (nothing listens on VIPs).
    run(&[
        "ip",
        "-n",
        &pod,
        "route",
        "add",
        "10.96.0.0/16",
        "via",
        &srv_ip,
    ]);

    // The sample app in the server namespace.
    let mut app = in_ns(
        &srv,
        &[
            &sample,
            "--listen",
            &format!("{srv_ip}:8080"),
            "--tcp-echo",
            &format!("{srv_ip}:5432"),
            "--service",
            "catalog",
            "--cluster",
            "netns",
        ],
    )
    .stdout(Stdio::piped())
    .spawn()
    .expect("start sample app");
    let mut lines = BufReader::new(app.stdout.take().unwrap()).lines();
    lab.children.push(app);
    for _ in 0..2 {
        let l = lines.next().expect("sample app output").unwrap();
        assert!(l.starts_with("listening on"), "{l}");
    }

    // The sidecar in the pod namespace.
    let dir = std::env::temp_dir().join(format!("isthmus-netns-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("sidecar.yaml");
    let log = dir.join("access.log");
    std::fs::write(
        &cfg,
        format!(
            "node: {{name: client, namespace: shop}}\n\
             listeners:\n  - {{name: transparent, address: \"127.0.0.1:15001\", transparent: {{unmatched: PASSTHROUGH}}}}\n\
             services:\n\
             \x20 - name: catalog.shop\n    vips: [10.96.0.10]\n    ports: [{{port: 80, protocol: HTTP, targetPort: 8080}}]\n    endpoints: [{{address: {srv_ip}}}]\n\
             \x20 - name: db.shop\n    vips: [10.96.0.20]\n    ports: [{{port: 5432, protocol: TCP}}]\n    endpoints: [{{address: \"{srv_ip}:5432\"}}]\n"
        ),
    )
    .unwrap();
    let sidecar = in_ns(
        &pod,
        &[
            bin,
            "sidecar",
            "--config",
            cfg.to_str().unwrap(),
            "--admin",
            "127.0.0.1:15020",
            "--mark",
            "1337",
            "--access-log",
            log.to_str().unwrap(),
        ],
    )
    .stderr(Stdio::null())
    .spawn()
    .expect("start sidecar");
    lab.children.push(sidecar);
    poll("sidecar ready", || {
        curl(&pod, "http://127.0.0.1:15020/readyz")
            .1
            .starts_with("ready")
    });

    // Before capture a VIP is unreachable.
    assert!(
        !curl(&pod, "http://10.96.0.10/").0,
        "VIP answered without capture"
    );

    let rules = in_ns(&pod, &[bin, "init-iptables", "--proxy-mark", "1337"])
        .output()
        .unwrap();
    assert!(
        rules.status.success(),
        "{}",
        String::from_utf8_lossy(&rules.stderr)
    );

    // HTTP to a VIP: captured, routed by original destination.
    let (ok, body) = curl(&pod, "http://10.96.0.10/hello");
    assert!(ok, "captured request failed");
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["service"], "catalog");
    assert_eq!(v["cluster"], "netns");
    assert_eq!(v["path"], "/hello");
    assert!(
        v["traceparent"].is_string(),
        "went through the sidecar: {body}"
    );

    // TCP to a VIP: captured and proxied opaquely.
    let echo = in_ns(
        &pod,
        &[
            "bash",
            "-c",
            "exec 3<>/dev/tcp/10.96.0.20/5432; printf ping >&3; head -c 4 <&3",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&echo.stdout), "ping");

    // Not a service: passes through to the original destination; the
    // sidecar's own connection carries the mark and is not captured again.
    let (ok, body) = curl(&pod, &format!("http://{srv_ip}:8080/direct"));
    assert!(ok, "passthrough failed");
    assert!(body.contains("\"/direct\""), "{body}");
    assert!(
        !body.contains("traceparent\":\"00"),
        "passthrough is not parsed as HTTP: {body}"
    );

    poll("access log written", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.lines().count() >= 3)
    });
    let entries = std::fs::read_to_string(&log).unwrap();
    assert!(
        entries.contains("\"destination_service\":\"catalog.shop\""),
        "{entries}"
    );
    assert!(
        entries.contains("\"destination_service\":\"db.shop\""),
        "{entries}"
    );
    assert!(
        entries.contains("\"destination_service\":\"passthrough\""),
        "{entries}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
