//! The same response bytes through our decoder and through hyper's HTTP/1.1
//! client (httparse underneath): where both read a response they must read
//! the same status, body and trailers; where they would differ, ours must
//! refuse. Responses are made of the pieces request smuggling and response
//! splitting are made of: both framings, odd lengths, transfer codings,
//! chunk extensions and whitespace, trailers, interim responses, bytes past
//! the end.

use super::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use proptest::prelude::*;
use tokio::io::AsyncWriteExt;

const FIELDS: &[&str] = &[
    "Content-Length: 0",
    "Content-Length: 5",
    "Content-Length: 12",
    "Content-Length: +5",
    "Content-Length: 5, 5",
    "Content-Length: 5,12",
    "Content-Length:  5 ",
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: Chunked",
    "Transfer-Encoding: gzip",
    "Transfer-Encoding: gzip, chunked",
    "Transfer-Encoding: chunked, gzip",
    "Transfer-Encoding: identity",
    "Transfer-Encoding: chunked,",
    "Connection: close",
    "Connection: keep-alive",
    "X-Other: 1",
];

const STATUS: &[&str] = &[
    "HTTP/1.1 200 OK",
    "HTTP/1.0 200 OK",
    "HTTP/1.1 204 No Content",
    "HTTP/1.1 304 Not Modified",
    "HTTP/1.1 404 Not Found",
    "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK",
];

const SIZE_LINES: &[&str] = &[
    "{:x}",
    "{:X}",
    "{:x};ext",
    "{:x} ;a=b",
    "{:x} ",
    " {:x}",
    "0{:x}",
    "{:x};a=\"q\"",
];

fn chunk_line(fmt: &str, n: usize) -> String {
    let hex = format!("{n:x}");
    let upper = format!("{n:X}");
    fmt.replace("{:x}", &hex).replace("{:X}", &upper)
}

prop_compose! {
    fn chunked_body()(
        pieces in proptest::collection::vec((0usize..SIZE_LINES.len(), proptest::collection::vec(b'a'..=b'z', 1..20)), 0..4),
        last in 0usize..SIZE_LINES.len(),
        trailer in proptest::option::of(prop_oneof!["x-t: 1", "grpc-status: 0", "content-length: 3"]),
        bare_lf in any::<bool>(),
    ) -> Vec<u8> {
        let mut out = Vec::new();
        for (fmt, data) in pieces {
            out.extend_from_slice(chunk_line(SIZE_LINES[fmt], data.len()).as_bytes());
            out.extend_from_slice(if bare_lf { b"\n" } else { b"\r\n" });
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(chunk_line(SIZE_LINES[last], 0).as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(t) = trailer {
            out.extend_from_slice(t.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

prop_compose! {
    fn response()(
        status in 0usize..STATUS.len(),
        fields in proptest::collection::vec(0usize..FIELDS.len(), 0..4),
        body in prop_oneof![chunked_body(), proptest::collection::vec(b'a'..=b'z', 0..16)],
        after in prop_oneof![
            Just(Vec::new()),
            Just(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..8),
        ],
    ) -> Vec<u8> {
        let mut out = STATUS[status].as_bytes().to_vec();
        out.extend_from_slice(b"\r\n");
        for f in fields {
            out.extend_from_slice(FIELDS[f].as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        out.extend_from_slice(&after);
        out
    }
}

/// Status, body and trailers as hyper's client reads `wire` (the
/// connection closing after it).
async fn hyper_reads(wire: Vec<u8>) -> Result<(u16, Bytes, Option<HeaderMap>), String> {
    use tokio::io::AsyncReadExt;
    let (client, mut server) = tokio::io::duplex(1 << 20);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client))
            .await
            .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", "upstream")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(req);
    // The upstream answers once the request has arrived, then closes.
    let upstream = async move {
        let mut seen = Vec::new();
        let mut b = [0u8; 256];
        while !seen.ends_with(b"\r\n\r\n") {
            match server.read(&mut b).await {
                Ok(0) | Err(_) => return server,
                Ok(n) => seen.extend_from_slice(&b[..n]),
            }
        }
        let _ = server.write_all(&wire).await;
        let _ = server.shutdown().await;
        server
    };
    let (resp, server) = tokio::join!(response, upstream);
    let result = async {
        let resp = resp.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        let trailers = body.trailers().cloned();
        Ok((status, body.to_bytes(), trailers))
    }
    .await;
    driver.abort();
    drop(server);
    result
}

#[derive(Debug, PartialEq)]
enum Verdict {
    /// Both read the same response.
    Agreed,
    /// Ours refused it.
    Refused,
}

fn check(
    wire: &[u8],
    piece: usize,
    rt: &tokio::runtime::Runtime,
) -> Result<Verdict, TestCaseError> {
    let ours = decode(wire, piece, false);
    let theirs = rt.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            hyper_reads(wire.to_vec()),
        )
        .await
        .unwrap_or_else(|_| Err("hyper timed out".into()))
    });
    let text = String::from_utf8_lossy(wire);
    match (ours, theirs) {
        // Ours refuses: always allowed.
        (Err(_), _) => Ok(Verdict::Refused),
        (Ok(d), Err(e)) => Err(TestCaseError::fail(format!(
            "we read {:?} where hyper refused ({e}): {text:?}",
            String::from_utf8_lossy(&d.body)
        ))),
        (Ok(d), Ok((status, body, trailers))) => {
            prop_assert_eq!(d.head.response.status().as_u16(), status, "{:?}", text);
            prop_assert_eq!(&d.body[..], &body[..], "body differs: {:?}", text);
            let ours: Vec<_> = d
                .trailers
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let theirs: Vec<_> = trailers
                .iter()
                .flatten()
                .filter(|(k, _)| !is_forbidden_trailer(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            prop_assert_eq!(ours, theirs, "trailers differ: {:?}", text);
            Ok(Verdict::Agreed)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn our_decoder_agrees_with_hyper_or_refuses(wire in response(), piece in 1usize..48) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        check(&wire, piece, &rt)?;
    }
}

#[test]
fn known_smuggling_shapes_agree_or_are_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (wire, verdict) in [
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"[..],
            Verdict::Agreed,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
            Verdict::Agreed,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            Verdict::Refused,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\n\r\n",
            Verdict::Agreed,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 ;x\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
            Verdict::Agreed,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
            Verdict::Refused,
        ),
    ] {
        assert_eq!(check(wire, 3, &rt).unwrap(), verdict, "{:?}", String::from_utf8_lossy(wire));
    }
}
