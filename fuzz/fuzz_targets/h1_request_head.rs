//! The HTTP/1.1 client's request head writer on arbitrary methods, targets
//! and header fields (as the http crate admits them): what it writes parses
//! back (httparse) as exactly one request head with the same method,
//! target and fields, and the framing it chose — nothing smuggled in.
#![no_main]

use bytes::BytesMut;
use http::{HeaderName, HeaderValue, Method, Request, header};
use isthmus_gateway::pool::h1::codec::{BodyMode, BodySize, encode_request_head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Fields separated by 0xff: method, target, size, then name/value pairs.
    let mut parts = data.split(|&b| b == 0xff);
    let (Some(method), Some(target), Some(size)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let Ok(method) = Method::from_bytes(method) else {
        return;
    };
    let Ok(target) = std::str::from_utf8(target) else {
        return;
    };
    let mut req = Request::builder().method(method.clone());
    if !target.is_empty() {
        req = req.uri(target);
    }
    let Ok(mut req) = req.body(()) else {
        return;
    };
    loop {
        let (Some(n), Some(v)) = (parts.next(), parts.next()) else {
            break;
        };
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
            req.headers_mut().append(n, v);
        }
    }
    let size = match size.first() {
        None => BodySize::Empty,
        Some(0) => BodySize::Unknown,
        Some(_) => BodySize::Exact(
            size.iter()
                .fold(0u64, |n, &b| n.wrapping_mul(31) + u64::from(b)),
        ),
    };
    let (parts, ()) = req.into_parts();
    let mut out = BytesMut::new();
    let mode = encode_request_head(&parts, size, &mut out);

    let mut fields = vec![httparse::EMPTY_HEADER; parts.headers.len() + 2];
    let mut parsed = httparse::Request::new(&mut fields);
    match parsed.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len(), "bytes after the head"),
        other => panic!(
            "our head does not parse: {other:?}: {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    assert_eq!(parsed.method, Some(method.as_str()));
    let expect_target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    assert_eq!(parsed.path, Some(expect_target));
    let framing: Vec<_> = parsed
        .headers
        .iter()
        .filter(|h| {
            h.name.eq_ignore_ascii_case(header::CONTENT_LENGTH.as_str())
                || h.name
                    .eq_ignore_ascii_case(header::TRANSFER_ENCODING.as_str())
        })
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    let expect: Vec<(String, Vec<u8>)> = match mode {
        BodyMode::Length(n) => vec![("content-length".into(), n.to_string().into_bytes())],
        BodyMode::Chunked => vec![("transfer-encoding".into(), b"chunked".to_vec())],
        BodyMode::None if matches!(method, Method::POST | Method::PUT | Method::PATCH) => {
            vec![("content-length".into(), b"0".to_vec())]
        }
        BodyMode::None => vec![],
    };
    assert_eq!(framing, expect, "framing headers are ours alone");
    let others = parts
        .headers
        .keys()
        .filter(|n| **n != header::CONTENT_LENGTH && **n != header::TRANSFER_ENCODING)
        .map(|n| parts.headers.get_all(n).iter().count())
        .sum::<usize>();
    assert_eq!(parsed.headers.len(), others + framing.len());
});
