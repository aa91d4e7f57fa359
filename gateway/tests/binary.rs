//! The `isthmus-gateway` binary itself: SIGTERM drains in-flight requests
//! and exits cleanly; an invalid config file refuses to start with the
//! field and line at fault.

mod support;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

use isthmus_gateway::sample::{self, SampleApp};

const BIN: &str = env!("CARGO_BIN_EXE_isthmus-gateway");

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
    let (port, admin) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("isthmus-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("sidecar.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listeners:\n  - {{name: out, address: \"127.0.0.1:{port}\", http: {{}}}}\n\
             services:\n  - name: catalog\n    ports: [{{port: 80}}]\n    endpoints: [{{address: \"{}\"}}]\n",
            up.addr
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args([
            "sidecar",
            "--config",
            cfg.to_str().unwrap(),
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ])
        .args(["--access-log", "off", "--drain-timeout", "10s"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out: SocketAddr = ([127, 0, 0, 1], port).into();
    let admin: SocketAddr = ([127, 0, 0, 1], admin).into();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !get(admin, "/readyz")
        .await
        .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    {
        assert!(Instant::now() < deadline, "sidecar never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let slow = tokio::spawn(async move { get(out, "/delay/800").await });
    while app.hits() == 0 {
        assert!(Instant::now() < deadline, "request never reached the app");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
    let out = Command::new(BIN)
        .args([
            "sidecar",
            "--config",
            cfg.to_str().unwrap(),
            "--admin",
            "127.0.0.1:0",
        ])
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
