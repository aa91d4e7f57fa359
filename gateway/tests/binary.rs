//! The `isthmus-gateway` binary itself: SIGTERM drains in-flight requests
//! and exits cleanly; an invalid config file refuses to start with the
//! field and line at fault.

use isthmus_testkit::pki;
use isthmus_testkit::*;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use isthmus_sample::{self as sample, SampleApp};

const BIN: &str = env!("CARGO_BIN_EXE_isthmus-gateway");

/// `isthmus-gateway sidecar` on a config file, admin on any port.
fn sidecar_on(cfg: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["sidecar", "--config", cfg.to_str().unwrap()])
        .args(["--admin", "127.0.0.1:0"]);
    cmd
}

async fn get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: catalog\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let app = SampleApp::new("catalog", "c", "v1");
    let up = sample::serve(app.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("isthmus-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("sidecar.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listeners:\n  - {{name: out, address: \"127.0.0.1:0\", http: {{}}}}\n\
             services:\n  - name: catalog\n    ports: [{{port: 80}}]\n    endpoints: [{{address: \"{}\"}}]\n",
            up.addr
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "sidecar",
        "--config",
        cfg.to_str().unwrap(),
        "--admin",
        "127.0.0.1:0",
    ])
    .args(["--access-log", "off", "--drain-timeout", "10s"]);
    let mut sidecar = Started::spawn(cmd);
    let (out, admin) = (sidecar.listener("out"), sidecar.admin);
    wait_ready(admin).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let slow = tokio::spawn(async move { get(out, "/delay/800").await });
    while app.hits() == 0 {
        assert!(Instant::now() < deadline, "request never reached the app");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let child = &mut sidecar.child;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let resp = slow.await.unwrap().expect("in-flight request answered");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "sidecar did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    assert!(
        tokio::net::TcpStream::connect(out).await.is_err(),
        "listener closed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn invalid_config_refuses_to_start_naming_field_and_line() {
    let dir = std::env::temp_dir().join(format!("isthmus-bin-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bad.yaml");
    std::fs::write(
        &cfg,
        "listeners:\n  - {name: out, address: \"127.0.0.1:0\", http: {}}\nservices:\n  - name: catalog\n    ports: [{port: 80}]\n    routes:\n      - timeout: 5ms\n",
    )
    .unwrap();
    let out = sidecar_on(&cfg)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 7"), "{err}");
    assert!(err.contains("services[0].routes[0].timeout"), "{err}");
    assert!(err.contains("0.25s"), "says how to write a duration: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--log-format json`: every log line is one JSON object with the
/// timestamp, level, target, message and the event's fields (the start
/// lines saying where ports are bound stay plain text).
#[test]
fn json_logs_by_a_flag() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("isthmus-bin-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("ok.yaml");
    std::fs::write(
        &cfg,
        "listeners:\n  - {name: out, address: \"127.0.0.1:0\", http: {}}\nservices: []\n",
    )
    .unwrap();
    let mut child = sidecar_on(&cfg)
        .args(["--log-format", "json"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut json = Vec::new();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.starts_with("admin on ") {
            break;
        }
        if line.starts_with('{') {
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            json.push(v);
        } else {
            assert!(line.starts_with("listener "), "a plain log line: {line}");
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let started = json
        .iter()
        .find(|v| v["message"] == "sidecar started")
        .unwrap_or_else(|| panic!("no `sidecar started` event in {json:?}"));
    assert_eq!(started["level"], "INFO");
    assert!(started["timestamp"].is_string(), "{started}");
    assert!(
        started["target"]
            .as_str()
            .unwrap()
            .starts_with("isthmus_gateway"),
        "{started}"
    );
    assert!(
        started["admin"].as_str().unwrap().starts_with("127.0.0.1:"),
        "fields flattened: {started}"
    );
    // A value the flag does not know is refused by name.
    let out = Command::new(BIN)
        .args(["--log-format", "yaml", "sidecar", "--config", "x.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("[possible values: text, json]"));
    let _ = std::fs::remove_dir_all(&dir);
}

async fn wait_ready(admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !get(admin, "/readyz")
        .await
        .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    {
        assert!(Instant::now() < deadline, "sidecar never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two sidecar processes whose certificates come from files (as a SPIRE
/// agent writes them): the client's request crosses the mTLS transport and
/// the app sees the client's SPIFFE ID.
#[tokio::test]
async fn certificate_files_give_the_binary_its_identity_and_the_mesh_transport() {
    let ca = pki::Ca::new("eu-west.isthmus.local");
    let dir = std::env::temp_dir().join(format!("isthmus-bin-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let app = SampleApp::new("catalog", "c", "v1");
    let up = sample::serve(app.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let app_port = up.addr.port();
    let run = |cfg: &std::path::Path, files: &[std::path::PathBuf; 3]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["sidecar", "--config", cfg.to_str().unwrap()])
            .args(["--admin", "127.0.0.1:0", "--access-log", "off"])
            .args(["--cert-file", files[0].to_str().unwrap()])
            .args(["--key-file", files[1].to_str().unwrap()])
            .args(["--ca-roots", files[2].to_str().unwrap()]);
        Started::spawn(cmd)
    };
    let server_cfg = dir.join("server.yaml");
    std::fs::write(
        &server_cfg,
        format!(
            "listeners:\n  - {{name: tunnel, address: \"127.0.0.1:0\", tunnel: {{ports: [{{port: {app_port}}}]}}}}\n\
             services: []\nsecurity: {{defaultMtlsMode: STRICT}}\n"
        ),
    )
    .unwrap();
    let server_files = ca.write_files(&ca.issue("shop", "catalog"), &dir, "server");
    let b = run(&server_cfg, &server_files);
    let tunnel = b.listener("tunnel").port();
    let client_cfg = dir.join("client.yaml");
    std::fs::write(
        &client_cfg,
        format!(
            "listeners:\n  - {{name: out, address: \"127.0.0.1:0\", http: {{}}}}\n\
             services:\n  - name: catalog\n    ports: [{{port: 80, targetPort: {app_port}}}]\n    \
             endpoints: [{{address: \"127.0.0.1\", tunnelPort: {tunnel}, identity: \"spiffe://eu-west.isthmus.local/ns/shop/sa/catalog\"}}]\n"
        ),
    )
    .unwrap();
    let client_files = ca.write_files(&ca.issue("shop", "frontend"), &dir, "client");
    let a = run(&client_cfg, &client_files);
    let (admin_a, admin_b, out) = (a.admin, b.admin, a.listener("out"));
    wait_ready(admin_a).await;
    wait_ready(admin_b).await;
    let resp = get(out, "/items").await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.contains("\"caller\":\"spiffe://eu-west.isthmus.local/ns/shop/sa/frontend\""),
        "{resp}"
    );
    let dump = get(admin_b, "/config_dump").await.unwrap();
    assert!(
        dump.contains("\"identity\": \"spiffe://eu-west.isthmus.local/ns/shop/sa/catalog\""),
        "{dump}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two `isthmus-gateway eastwest` processes (clusters eu-west and
/// us-east, certificates from files) and a us-east workload: its CONNECT to
/// the local entry crosses QUIC to eu-west's service.
#[tokio::test]
async fn two_eastwest_gateway_processes_carry_a_workload_stream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (eu, us) = (
        pki::Ca::new("eu-west.isthmus.local"),
        pki::Ca::new("us-east.isthmus.local"),
    );
    let dir = std::env::temp_dir().join(format!("isthmus-bin-ew-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let echo = sample::serve_tcp_echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // Each gateway trusts both roots: one roots file with both.
    let roots = dir.join("roots.pem");
    std::fs::write(&roots, format!("{}{}", eu.pem, us.pem)).unwrap();
    let gw_files = |ca: &pki::Ca, name: &str| {
        let files = ca.write_files(&ca.issue("isthmus-system", "isthmus-eastwest"), &dir, name);
        [files[0].clone(), files[1].clone(), roots.clone()]
    };
    let (eu_files, us_files) = (gw_files(&eu, "eu"), gw_files(&us, "us"));
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let run =
        |services: &std::path::Path, ew: &std::path::Path, files: &[std::path::PathBuf; 3]| {
            let mut cmd = Command::new(BIN);
            cmd.args(["eastwest", "--eastwest-config", ew.to_str().unwrap()])
                .args(["--config", services.to_str().unwrap()])
                .args(["--admin", "127.0.0.1:0", "--access-log", "off"])
                .args(["--cert-file", files[0].to_str().unwrap()])
                .args(["--key-file", files[1].to_str().unwrap()])
                .args(["--ca-roots", files[2].to_str().unwrap()]);
            Started::spawn(cmd)
        };
    let eu_services = write(
        "eu-services.yaml",
        format!(
            "listeners: []\nservices:\n  - name: echo.shop\n    ports: [{{port: 9000, targetPort: {}, protocol: TCP}}]\n    endpoints: [{{address: \"127.0.0.1\"}}]\n",
            echo.addr.port()
        ),
    );
    let eu_ew = write(
        "eu-ew.yaml",
        "quic: \"127.0.0.1:0\"\ntcp: \"127.0.0.1:0\"\nlocal: \"127.0.0.1:0\"\n\
         admit: [\"spiffe://us-east.isthmus.local/ns/isthmus-system/sa/*\"]\n"
            .into(),
    );
    let eu_gw = run(&eu_services, &eu_ew, &eu_files);
    let [eu_quic, eu_tcp, _] = eu_gw.eastwest.expect("eu-west's gateway addresses");
    let us_services = write("us-services.yaml", "listeners: []\nservices: []\n".into());
    let us_ew = write(
        "us-ew.yaml",
        format!(
            "quic: \"127.0.0.1:0\"\ntcp: \"127.0.0.1:0\"\nlocal: \"127.0.0.1:0\"\n\
             peers:\n  - {{cluster: eu-west, udp: \"{eu_quic}\", tcp: \"{eu_tcp}\", \
             identity: \"spiffe://eu-west.isthmus.local/ns/isthmus-system/sa/isthmus-eastwest\"}}\n"
        ),
    );
    let us_gw = run(&us_services, &us_ew, &us_files);
    let [_, _, local] = us_gw.eastwest.expect("us-east's gateway addresses");
    let us_admin = us_gw.admin;
    wait_ready(eu_gw.admin).await;
    wait_ready(us_admin).await;

    // A us-east workload: mTLS HTTP/2 CONNECT to its gateway's local entry.
    let mut creds = us.issue("shop", "frontend");
    creds
        .trust_bundles
        .insert("eu-west.isthmus.local".into(), eu.pem.clone());
    let tls = isthmus_mesh::tls::MeshTls::new(isthmus_mesh::identity::Identity::fixed(creds));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = loop {
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(local).await.ok()?;
            let name = rustls_pki_types::ServerName::IpAddress(local.ip().into());
            let s = tokio_rustls::TlsConnector::from(tls.client.clone())
                .connect(name, tcp)
                .await
                .ok()?;
            let (mut send, conn) =
                hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .handshake::<_, http_body_util::Empty<bytes::Bytes>>(
                        hyper_util::rt::TokioIo::new(s),
                    )
                    .await
                    .ok()?;
            tokio::spawn(conn);
            let req = http::Request::connect("echo.shop:9000")
                .header("isthmus-cluster", "eu-west")
                .body(http_body_util::Empty::new())
                .unwrap();
            let mut resp = send.send_request(req).await.ok()?;
            if resp.status() != 200 {
                return None;
            }
            Some(hyper_util::rt::TokioIo::new(
                hyper::upgrade::on(&mut resp).await.ok()?,
            ))
        };
        if let Some(s) = attempt.await {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the gateways never carried the stream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stream
        .write_all(b"through two gateway processes")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"through two gateway processes");
    // The status view: the link to eu-west, on QUIC, with its RTT.
    let status = get(us_admin, "/eastwest")
        .await
        .expect("the /eastwest view");
    let body = status.split_once("\r\n\r\n").expect("a response").1;
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let p = &v["peers"][0];
    assert_eq!(p["cluster"], "eu-west", "{status}");
    assert_eq!(p["transport"], "quic", "{status}");
    assert!(p["rttMs"].as_f64().is_some(), "{status}");
    assert!(p["linkedAt"].is_string(), "{status}");
    assert_eq!(
        p["zeroRtt"], "none",
        "a first link is a full handshake: {status}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The injector points a pod's probes at the sidecar's admin port
/// (`/app-health/<container>/<probe>`); the sidecar runs each against the
/// app (HTTP status, TCP connect) and answers 200, 503 with why, or 404
/// for a probe it was not given.
#[tokio::test]
async fn app_probes_are_run_against_the_app_from_the_admin_port() {
    let app = SampleApp::new("catalog", "c", "v1");
    let up = sample::serve(app.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = temp_dir("app-probes");
    let cfg = dir.join("sidecar.yaml");
    std::fs::write(&cfg, "listeners: []\n").unwrap();
    let port = up.addr.port();
    let probes = format!(
        r#"{{"catalog/readyz": "{port}=http:/status/200", "catalog/livez": "{port}=tcp",
            "catalog/startupz": "{port}=http:/status/503", "other/livez": "{closed}=tcp"}}"#
    );
    let mut cmd = Command::new(BIN);
    cmd.args(["sidecar", "--config", cfg.to_str().unwrap()])
        .args(["--admin", "127.0.0.1:0", "--access-log", "off"])
        .env("ISTHMUS_APP_PROBES", &probes);
    let sidecar = Started::spawn(cmd);
    let status = |resp: Option<String>| {
        let resp = resp.expect("an answer");
        resp.split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string()
    };
    for (path, want) in [
        ("/app-health/catalog/readyz", "200"),
        ("/app-health/catalog/livez", "200"),
        ("/app-health/catalog/startupz", "503"),
        ("/app-health/other/livez", "503"),
        ("/app-health/nobody/livez", "404"),
    ] {
        assert_eq!(status(get(sidecar.admin, path).await), want, "{path}");
    }
    let why = get(sidecar.admin, "/app-health/other/livez").await.unwrap();
    assert!(why.contains(&format!("127.0.0.1:{closed}")), "{why}");
    drop(sidecar);
    // A table it cannot read stops the start with the flag's name.
    let out = sidecar_on(&cfg)
        .env("ISTHMUS_APP_PROBES", r#"{"a/livez": "http:/x"}"#)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--app-probes") && err.contains("a/livez"),
        "{err}"
    );
    up.stop().await;
}
