//! CONNECT streams between a client and a server over an in-memory pipe.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;

const DEADLINE: Duration = Duration::from_secs(10);

fn connect_req(authority: &str) -> Request<()> {
    let mut req = Request::new(());
    *req.method_mut() = Method::CONNECT;
    *req.uri_mut() = authority.parse().unwrap();
    req
}

/// A client connected to a server whose streams arrive on the channel;
/// the server refuses authorities starting with "refuse".
async fn pair(s: Settings) -> (Client, mpsc::UnboundedReceiver<H2Stream>, CancellationToken) {
    let (a, b) = tokio::io::duplex(256 * 1024);
    let (tx, rx) = mpsc::unbounded_channel();
    let drain = CancellationToken::new();
    let d = drain.clone();
    tokio::spawn(async move {
        let _ = server::serve(b, &s, &d, |inc: Incoming| {
            let refuse = inc
                .request()
                .uri()
                .authority()
                .is_some_and(|a| a.as_str().starts_with("refuse"));
            if refuse {
                let mut r = Response::new(());
                *r.status_mut() = StatusCode::NOT_FOUND;
                inc.refuse(r);
            } else {
                let _ = tx.send(inc.accept().unwrap());
            }
        })
        .await;
    });
    let (client, driver) = Client::handshake(a, &s).await.unwrap();
    tokio::spawn(driver);
    (client, rx, drain)
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f).await.expect("in time")
}

#[tokio::test]
async fn bytes_cross_both_ways_and_a_finish_reads_as_an_end() {
    let (client, mut accepted, _) = pair(Settings::MESH).await;
    let (resp, mut c) = client.open(connect_req("a:1")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut s = within(accepted.recv()).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    within(s.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"ping");
    s.write_all(b"pong").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    within(c.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"pong");
}

#[tokio::test]
async fn an_abort_reads_as_a_reset_and_a_dropped_stream_as_an_end() {
    let (client, mut accepted, _) = pair(Settings::MESH).await;
    // Abort from the client: the server's read fails with a reset.
    let (_, mut c) = client.open(connect_req("a:1")).await.unwrap();
    let mut s = within(accepted.recv()).await.unwrap();
    c.write_all(b"partial").await.unwrap();
    c.abort();
    let mut got = Vec::new();
    let err = within(s.read_to_end(&mut got)).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    // Abort from the server, through the split halves.
    let (_, mut c) = client.open(connect_req("a:1")).await.unwrap();
    let (mut send, _recv) = within(accepted.recv()).await.unwrap().into_split();
    send.send(Bytes::from_static(b"x")).await.unwrap();
    send.reset();
    let mut got = Vec::new();
    let err = within(c.read_to_end(&mut got)).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    // A stream dropped (h2 sends CANCEL, as for any stream a side lost
    // interest in): an end, not a reset. (Data the peer had not read yet
    // is discarded with it, as a TCP close with unread data would.)
    let (_, mut c) = client.open(connect_req("a:1")).await.unwrap();
    let mut s = within(accepted.recv()).await.unwrap();
    c.write_all(b"gone").await.unwrap();
    drop(c);
    let mut got = Vec::new();
    within(s.read_to_end(&mut got)).await.unwrap();
}

#[tokio::test]
async fn a_refusal_carries_its_status_and_the_connection_goes_on() {
    let (client, mut accepted, _) = pair(Settings::MESH).await;
    let (resp, _) = client.open(connect_req("refuse:1")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let (resp, _) = client.open(connect_req("a:1")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(within(accepted.recv()).await.is_some());
    assert!(!client.is_closed());
}

#[tokio::test]
async fn a_reader_that_stops_holds_the_writer_to_the_window() {
    let s = Settings {
        stream_window: 64 * 1024,
        connection_window: 64 * 1024,
        max_frame: 16 * 1024,
        send_buffer: 64 * 1024,
        ..Settings::MESH
    };
    let (client, mut accepted, _) = pair(s).await;
    let (_, c) = client.open(connect_req("a:1")).await.unwrap();
    let mut server_side = within(accepted.recv()).await.unwrap();
    let (mut send, _recv) = c.into_split();
    let mut sent = 0usize;
    let chunk = Bytes::from(vec![7u8; 16 * 1024]);
    // Write until the writer waits on the window (a pause with at least
    // the window sent; a loaded machine may pause earlier, so go on then).
    let started = tokio::time::Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_millis(200), send.send(chunk.clone())).await {
            Ok(r) => {
                r.unwrap();
                sent += chunk.len();
                assert!(sent <= 512 * 1024, "the writer was not held back");
            }
            Err(_) if sent >= 64 * 1024 => break,
            Err(_) => assert!(started.elapsed() < DEADLINE, "stuck at {sent}"),
        }
    }
    // Reading releases the window: the writer goes on.
    let mut buf = vec![0u8; 64 * 1024];
    within(server_side.read_exact(&mut buf)).await.unwrap();
    within(send.send(chunk.clone())).await.unwrap();
}

#[tokio::test]
async fn a_silent_peer_closes_the_connection() {
    let s = Settings::MESH.pinging(Duration::from_millis(50), Duration::from_millis(200));
    let (a, b) = tokio::io::duplex(64 * 1024);
    // The server does its handshake, then is never driven again.
    let server = tokio::spawn(async move {
        let conn = h2::server::handshake(b).await.unwrap();
        std::future::pending::<()>().await;
        drop(conn);
    });
    let (client, driver) = Client::handshake(a, &s).await.unwrap();
    let driven = tokio::spawn(driver);
    within(driven).await.unwrap();
    assert!(client.is_closed());
    server.abort();
}

#[tokio::test]
async fn drain_lets_open_streams_finish_then_closes() {
    let (client, mut accepted, drain) = pair(Settings::MESH).await;
    let (_, mut c) = client.open(connect_req("a:1")).await.unwrap();
    let mut s = within(accepted.recv()).await.unwrap();
    drain.cancel();
    // The open stream still works both ways.
    c.write_all(b"late").await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    within(s.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"late");
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    within(c.read_to_end(&mut got)).await.unwrap();
    // New streams are refused (GOAWAY): the client sees the connection go.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !client.is_closed() {
        let _ = client.open(connect_req("a:1")).await;
        assert!(tokio::time::Instant::now() < deadline, "still open");
        tokio::task::yield_now().await;
    }
}
