//! Protocols: HTTP/1.1 keep-alive, chunked bodies and upgrades, h2c, gRPC
//! trailers and status, opaque TCP, inbound, malformed requests.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use isthmus_sample::{self as sample, SampleApp};
use isthmus_tests::sidecar::*;

#[tokio::test]
async fn http1_keep_alive_reuses_upstream_connections() {
    let app = SampleApp::new("catalog", "c", "v1");
    let s = sample::serve(app.clone(), LOCAL).await.unwrap();
    let env = start(&config(&[service("catalog", "HTTP", &[s.addr], "")])).await;
    let out = env.addr("out");
    let client = h1();
    let mut peers = std::collections::HashSet::new();
    for _ in 0..10 {
        let (st, _, b) = send(&client, request(out, "catalog", "/", &[], "")).await;
        assert_eq!(st, 200);
        peers.insert(json(&b)["peer"].as_str().unwrap().to_string());
    }
    assert_eq!(
        peers.len(),
        1,
        "sequential requests share one pooled upstream connection: {peers:?}"
    );
    assert_eq!(
        env.metric(
            "isthmus_upstream_connections",
            &["destination_service=\"catalog\""]
        )
        .await,
        1.0,
        "one open upstream connection"
    );
}

#[tokio::test]
async fn chunked_streaming_bodies_pass_through_both_ways() {
    let app = SampleApp::new("echo", "c", "v1");
    let s = sample::serve(app.clone(), LOCAL).await.unwrap();
    let env = start(&config(&[service("echo", "HTTP", &[s.addr], "")])).await;
    let out = env.addr("out");
    // 2 MiB in 64 KiB chunks without Content-Length: chunked encoding, and
    // larger than the replay buffer, so it streams.
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let body = Chunks { left: 32, chunk };
    let req = Request::post(format!("http://{out}/echo"))
        .header("host", "echo")
        .body(body)
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got.len(), 32 * 64 * 1024);
    assert!(got.iter().all(|b| *b == b'x'));
}

/// A body of `n` chunks, streamed without a length (chunked on HTTP/1.1).
struct Chunks {
    left: usize,
    chunk: Bytes,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(self.chunk.clone()))))
    }
}

#[tokio::test]
async fn h2c_clients_reach_http1_only_services() {
    // Most servers speak HTTP/1.1 only; a port of protocol HTTP is called
    // in it whatever the client spoke (h2c before: a 502).
    let app = SampleApp::new("catalog", "c", "v1");
    let s = sample::serve_http1(app.clone(), LOCAL).await.unwrap();
    let env = start(&config(&[service("catalog", "HTTP", &[s.addr], "")])).await;
    let out = env.addr("out");
    let (st, _, b, _) = h2_send(
        out,
        "catalog",
        "/x?q=1",
        &[("te", "trailers")],
        Bytes::new(),
    )
    .await;
    assert_eq!(st, 200);
    let b = json(&String::from_utf8_lossy(&b));
    assert_eq!(b["protocol"], "HTTP/1.1");
    assert_eq!(b["host"], "catalog", ":authority became Host");
    assert_eq!(b["path"], "/x?q=1");
    assert_eq!(
        app.last_header("connection").as_deref(),
        Some("te"),
        "TE is named as a connection option on HTTP/1.1"
    );
    // A body larger than the replay buffer streams there and back.
    let big = Bytes::from(vec![b'y'; 300 * 1024]);
    let (st, _, echoed, _) = h2_send(out, "catalog", "/echo", &[], big.clone()).await;
    assert_eq!(st, 200);
    assert_eq!(echoed, big);
}

#[tokio::test]
async fn an_http1_response_is_translated_for_an_h2_client() {
    // Connection-specific fields are illegal in HTTP/2 (RFC 9113 §8.2.2);
    // chunked trailers become HTTP/2 trailers.
    let up = scripted_upstream(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nKeep-Alive: timeout=5\r\n\
          X-Hop: 1\r\nX-Kept: 1\r\nTrailer: x-sum\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\nx-sum: 7\r\n\r\n",
    )
    .await;
    let env = start(&config(&[service("legacy", "HTTP", &[up], "")])).await;
    let (st, h, body, trailers) = h2_send(
        env.addr("out"),
        "legacy",
        "/",
        &[("te", "trailers")],
        Bytes::new(),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(body, "hello");
    assert_eq!(h["x-kept"], "1");
    for hop in ["connection", "keep-alive", "x-hop", "transfer-encoding"] {
        assert!(!h.contains_key(hop), "{hop} reached an h2 client: {h:?}");
    }
    assert_eq!(trailers.expect("trailers")["x-sum"], "7");
}

#[tokio::test]
async fn an_h2c_upgrade_offer_is_answered_over_http1() {
    // curl --http2 offers `Upgrade: h2c`; that is a question for this hop.
    // The upstream must not switch a connection the proxy would then only
    // splice.
    let app = SampleApp::new("catalog", "c", "v1");
    let s = sample::serve(app.clone(), LOCAL).await.unwrap();
    let env = start(&config(&[service("catalog", "HTTP", &[s.addr], "")])).await;
    let (st, _, b) = get(
        env.addr("out"),
        "catalog",
        "/",
        &[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ],
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(json(&b)["protocol"], "HTTP/1.1");
    assert_eq!(app.last_header("upgrade"), None);
    assert_eq!(app.last_header("http2-settings"), None);
}

#[tokio::test]
async fn http1_clients_of_an_http2_service_share_one_h2_connection() {
    let app = SampleApp::new("catalog", "c", "v1");
    let s = sample::serve(app.clone(), LOCAL).await.unwrap();
    let env = start(&config(&[service("catalog-h2", "HTTP2", &[s.addr], "")])).await;
    let out = env.addr("out");
    // HTTP/1.1 in, HTTP2 service: h2 upstream; concurrent requests share
    // one upstream connection.
    let client = h1();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            send(&c, request(out, "catalog-h2", "/", &[], "")).await
        }));
    }
    let mut peers = std::collections::HashSet::new();
    for t in tasks {
        let (st, _, b) = t.await.unwrap();
        assert_eq!(st, 200);
        assert_eq!(json(&b)["protocol"], "HTTP/2.0");
        assert_eq!(json(&b)["host"], "catalog-h2", "Host became :authority");
        peers.insert(json(&b)["peer"].as_str().unwrap().to_string());
    }
    assert_eq!(peers.len(), 1, "one multiplexed h2 connection: {peers:?}");
}

fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut v = vec![0u8];
    v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    v.extend_from_slice(msg);
    Bytes::from(v)
}

async fn grpc_call(
    out: std::net::SocketAddr,
    host: &str,
) -> (
    http::StatusCode,
    http::HeaderMap,
    Bytes,
    Option<http::HeaderMap>,
) {
    h2_send(
        out,
        host,
        "/shop.Inventory/Get",
        &[("content-type", "application/grpc"), ("te", "trailers")],
        grpc_frame(b"sku-1"),
    )
    .await
}

#[tokio::test]
async fn grpc_trailers_pass_through_and_status_is_counted_and_retried() {
    let good = SampleApp::new("inventory", "c", "v1");
    let bad = SampleApp::new("inventory", "c", "v1");
    bad.grpc_status
        .store(14, std::sync::atomic::Ordering::SeqCst);
    let sg = sample::serve(good.clone(), LOCAL).await.unwrap();
    let sb = sample::serve(bad.clone(), LOCAL).await.unwrap();
    let env = start(&config(&[
        service("inventory", "GRPC", &[sg.addr], ""),
        service(
            "broken",
            "GRPC",
            &[sb.addr],
            "    routes: [{name: r, retry: {attempts: 0}}]\n",
        ),
    ]))
    .await;
    let out = env.addr("out");
    let (st, h, body, trailers) = grpc_call(out, "inventory").await;
    assert_eq!(st, 200);
    assert_eq!(h["content-type"], "application/grpc");
    assert_eq!(body, grpc_frame(b"sku-1"), "message echoed");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");

    let (_, _, _, trailers) = grpc_call(out, "broken").await;
    assert_eq!(trailers.unwrap()["grpc-status"], "14");
    eventually("grpc status in metrics", || async {
        env.metric(
            "isthmus_requests_total",
            &[
                "destination_service=\"broken\"",
                "grpc_status=\"UNAVAILABLE\"",
            ],
        )
        .await
            == 1.0
    })
    .await;

    // Local errors are answered in gRPC terms: no healthy endpoint.
    let env2 = start(&config(&[service("empty", "GRPC", &[], "")])).await;
    let (st, h, _, _) = grpc_call(env2.addr("out"), "empty").await;
    assert_eq!(st, 200);
    assert_eq!(h["grpc-status"], "14");
    assert!(
        h["grpc-message"]
            .to_str()
            .unwrap()
            .contains("no healthy endpoint")
    );
}

#[tokio::test]
async fn websocket_upgrade_is_spliced() {
    let app = SampleApp::new("ws", "c", "v1");
    let s = sample::serve(app.clone(), LOCAL).await.unwrap();
    let env = start(&config(&[service("ws", "HTTP", &[s.addr], "")])).await;
    let mut c = TcpStream::connect(env.addr("out")).await.unwrap();
    c.write_all(b"GET /chat HTTP/1.1\r\nHost: ws\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"hello"[..], b"over the upgraded connection"] {
        c.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, msg);
    }
}

#[tokio::test]
async fn opaque_tcp_listener_proxies_bytes_and_counts_them() {
    let echo = sample::serve_tcp_echo(LOCAL).await.unwrap();
    let dead = std::net::TcpListener::bind(LOCAL)
        .unwrap()
        .local_addr()
        .unwrap(); // closed port
    let yaml = format!(
        "listeners:\n  - {{name: db, address: \"127.0.0.1:0\", tcp: {{service: db}}}}\nservices:\n{}",
        service(
            "db",
            "TCP",
            &[dead, echo.addr],
            "    outlierDetection: {disabled: true}\n    loadBalancer: {policy: ROUND_ROBIN}\n"
        )
    );
    let mut env = start(&yaml).await;
    for i in 0..4 {
        let mut c = TcpStream::connect(env.addr("db")).await.unwrap();
        let msg = format!("ping {i}");
        c.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            buf,
            msg.as_bytes(),
            "connect failures are retried on the other endpoint"
        );
        drop(c);
        let e = env.log_entry(|e| e.protocol == "TCP").await;
        assert_eq!(e.bytes_received, msg.len() as u64);
        assert_eq!(e.bytes_sent, msg.len() as u64);
    }
    assert_eq!(
        env.metric(
            "isthmus_tcp_connections_opened_total",
            &["destination_service=\"db\""]
        )
        .await,
        4.0
    );
    assert!(
        env.metric(
            "isthmus_tcp_received_bytes_total",
            &["destination_service=\"db\""]
        )
        .await
            >= 24.0
    );
}

#[tokio::test]
async fn inbound_listener_forwards_to_the_local_app() {
    let app = SampleApp::new("frontend", "eu-west", "v1");
    let s = sample::serve(app.clone(), LOCAL).await.unwrap();
    let yaml = format!(
        "listeners:\n  - name: in\n    address: \"127.0.0.1:0\"\n    inbound: {{appAddress: 127.0.0.1, ports: [{{port: {}, protocol: HTTP}}]}}\n",
        s.addr.port()
    );
    let mut env = start(&yaml).await;
    let (st, _, b) = get(env.addr("in"), "frontend.shop", "/hello", &[]).await;
    assert_eq!(st, 200);
    assert_eq!(json(&b)["service"], "frontend");
    let e = env.log_entry(|e| e.direction == "inbound").await;
    assert_eq!(e.path.as_deref(), Some("/hello"));
}

#[tokio::test]
async fn malformed_http_gets_400_and_a_metric() {
    let app = SampleApp::new("catalog", "c", "v1");
    let s = sample::serve(app.clone(), LOCAL).await.unwrap();
    let env = start(&config(&[service("catalog", "HTTP", &[s.addr], "")])).await;
    for garbage in [
        &b"NOT HTTP AT ALL\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: catalog\r\nBad Header\r\n\r\n",
    ] {
        let mut c = TcpStream::connect(env.addr("out")).await.unwrap();
        c.write_all(garbage).await.unwrap();
        let mut resp = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut resp))
            .await
            .unwrap()
            .unwrap();
        let resp = String::from_utf8_lossy(&resp);
        assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    }
    eventually("bad requests counted", || async {
        env.metric("isthmus_errors_total", &["kind=\"bad_request\""])
            .await
            >= 2.0
    })
    .await;
    assert_eq!(app.hits(), 0);
    // The proxy still serves.
    let (st, _, _) = get(env.addr("out"), "catalog", "/", &[]).await;
    assert_eq!(st, 200);
}

/// An upstream that answers every request on a connection with `wire`,
/// verbatim, and counts requests.
async fn scripted_upstream(wire: &'static [u8]) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind(LOCAL).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        if s.write_all(wire).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Two GETs, one after the other, on one keep-alive connection to the
/// sidecar, read by hyper's client: each response's headers and body.
async fn two_requests_on_one_connection(
    out: std::net::SocketAddr,
    host: &str,
) -> Vec<Result<(http::HeaderMap, Bytes), String>> {
    let stream = TcpStream::connect(out).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    let mut answers = Vec::new();
    for path in ["/first", "/second"] {
        let req = Request::get(path)
            .header("host", host)
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let answer = async {
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let headers = resp.headers().clone();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok((headers, body.to_bytes()))
        };
        answers.push(
            tokio::time::timeout(Duration::from_secs(10), answer)
                .await
                .unwrap_or_else(|_| Err("no answer within 10 s".into())),
        );
    }
    driver.abort();
    answers
}

#[tokio::test]
async fn an_upstream_cannot_forge_a_second_response_with_conflicting_framing() {
    // Transfer-Encoding and Content-Length together: the chunked body
    // carries what would be read as a whole second response under the
    // stale Content-Length. RFC 9112 §6.3: Transfer-Encoding wins and the
    // Content-Length is removed before forwarding.
    let forged = "hello HTTP/1.1 200 OK\r\ncontent-length: 6\r\nx-forged: 1\r\n\r\nforged";
    let wire: &'static [u8] = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{forged}\r\n0\r\n\r\n",
        forged.len()
    )
    .leak()
    .as_bytes();
    let up = scripted_upstream(wire).await;
    let env = start(&config(&[service("smuggler", "HTTP", &[up], "")])).await;
    for answer in two_requests_on_one_connection(env.addr("out"), "smuggler").await {
        let (headers, body) = answer.expect("both requests answered on one connection");
        assert!(
            !headers.contains_key("x-forged"),
            "a forged response reached the client"
        );
        assert_eq!(
            body, forged,
            "the whole decoded body, under its own framing"
        );
        assert_ne!(
            headers.get("content-length").map(|v| v.as_bytes()),
            Some(&b"5"[..])
        );
    }
}

#[tokio::test]
async fn unparseable_upstream_framing_is_a_502_not_a_guess() {
    for wire in [
        // A transfer coding we cannot decode.
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx"[..],
        // Transfer-Encoding on HTTP/1.0 (RFC 9112 §6.1: faulty framing).
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        // `+5` is not a length.
        b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
        // Chunked twice.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    ] {
        let up = scripted_upstream(wire).await;
        let env = start(&config(&[service("odd", "HTTP", &[up], "")])).await;
        let (status, _, body) = tokio::time::timeout(
            Duration::from_secs(10),
            get(env.addr("out"), "odd", "/", &[]),
        )
        .await
        .expect("an answer, not a body read until a close that never comes");
        assert_eq!(status, 502, "{}: {body}", String::from_utf8_lossy(wire));
        assert!(body.contains("malformed upstream response"), "{body}");
    }
}

/// Reads one HTTP/1.1 response (Content-Length or chunked) from `s`,
/// leaving whatever follows in `rest`: its head and body.
async fn read_response(s: &mut TcpStream, rest: &mut Vec<u8>) -> (String, Vec<u8>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&rest[..end]).to_string();
            let lower = head.to_ascii_lowercase();
            let body_start = end + 4;
            let body_end = if let Some(len) = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                (rest.len() >= body_start + len).then_some(body_start + len)
            } else {
                assert!(lower.contains("transfer-encoding: chunked"), "{head}");
                rest[body_start..]
                    .windows(5)
                    .position(|w| w == b"0\r\n\r\n")
                    .map(|p| body_start + p + 5)
            };
            if let Some(body_end) = body_end {
                let body = rest[body_start..body_end].to_vec();
                rest.drain(..body_end);
                return (head, body);
            }
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert!(n > 0, "the sidecar closed the connection");
        rest.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn an_idle_http1_connection_is_parked_and_serves_on_unchanged() {
    let app = SampleApp::new("echo", "c", "v1");
    let s = sample::serve(app.clone(), LOCAL).await.unwrap();
    let env = start(&config(&[service("echo", "HTTP", &[s.addr], "")])).await;
    let mut c = TcpStream::connect(env.addr("out")).await.unwrap();
    let mut rest = Vec::new();
    let parked = |n: f64| {
        let env = &env;
        async move {
            eventually(&format!("{n} parked connection(s)"), || async {
                env.metric("isthmus_downstream_connections_parked", &[])
                    .await
                    == n
            })
            .await
        }
    };
    // A connection that has sent nothing yet holds nothing either.
    c.write_all(b"GET /one HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut c, &mut rest).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    parked(1.0).await;
    // Two requests in one write (pipelined), the second with a body: both
    // answered, in order, on the same connection.
    c.write_all(
        b"GET /two HTTP/1.1\r\nHost: echo\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await
    .unwrap();
    let (head, _) = read_response(&mut c, &mut rest).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, body) = read_response(&mut c, &mut rest).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"hello");
    parked(1.0).await;
    // A request whose head comes in two writes: the first bytes wake the
    // parked connection, the rest completes the head.
    c.write_all(b"GET /three HTTP/1.1\r\nHo").await.unwrap();
    c.flush().await.unwrap();
    tokio::task::yield_now().await;
    c.write_all(b"st: echo\r\n\r\n").await.unwrap();
    let (head, _) = read_response(&mut c, &mut rest).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(rest.is_empty(), "nothing more was sent: {rest:?}");
    assert_eq!(app.hits(), 4);
    parked(1.0).await;
    // The client goes: the parked connection is closed with it.
    drop(c);
    parked(0.0).await;
}
