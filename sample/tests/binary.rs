//! The `isthmus-sample` binary as the demo runs it: it says where it
//! listens, answers HTTP/1.1 with who served, echoes gRPC with trailers
//! and TCP bytes back, and stops on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};

#[test]
fn the_binary_serves_http_and_tcp_echo_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_isthmus-sample"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tcp-echo",
            "127.0.0.1:0",
            "--service",
            "reviews",
            "--cluster",
            "eu-west",
            "--version",
            "v2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("isthmus-sample runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = |kind: &str| -> SocketAddr {
        let line = lines.next().expect("a start line").unwrap();
        let rest = line.strip_prefix("listening on ").expect(&line);
        assert!(rest.ends_with(kind), "{line}");
        rest.split(' ').next().unwrap().parse().unwrap()
    };
    let (http, echo) = (addr("(http)"), addr("(tcp echo)"));

    let mut s = TcpStream::connect(http).unwrap();
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("x-sample-cluster: eu-west"), "{answer}");
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    let json: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(json["service"], "reviews");
    assert_eq!(json["version"], "v2");
    assert_eq!(json["path"], "/hello");

    let mut t = TcpStream::connect(echo).unwrap();
    t.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    t.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");

    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
}

#[tokio::test]
async fn grpc_calls_are_echoed_with_the_configured_status_in_trailers() {
    use http_body_util::BodyExt;
    let app = isthmus_sample::SampleApp::new("grpc", "local", "v1");
    app.grpc_status
        .store(14, std::sync::atomic::Ordering::SeqCst);
    let running = isthmus_sample::serve(app, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("http://grpc/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"\0\0\0\0\x02hi",
        )))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "14");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x02hi");
    running.stop().await;
}
