//! What the east-west gateway and the mesh transport read from a CONNECT
//! request and its answer, on arbitrary authorities and header values: the
//! `<service>.<namespace>:<port>` authority, the source headers, the
//! target port and refusal reason of an answer. Never a panic; an accepted
//! authority or port is in its one canonical form.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use isthmus_gateway::eastwest::{self, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0xff);
    let Some(authority) = parts.next() else {
        return;
    };
    let mut headers = HeaderMap::new();
    let names = [
        eastwest::SOURCE_CLUSTER,
        eastwest::SOURCE_IDENTITY,
        eastwest::TRACEPARENT,
        eastwest::TARGET_PORT_HEADER,
        eastwest::REFUSAL_HEADER,
        eastwest::CLUSTER_HEADER,
    ];
    for (name, value) in names.iter().zip(parts) {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(HeaderName::from_static(name), v);
        }
    }
    // As the request arrives: an authority-form CONNECT target, or none.
    let uri = std::str::from_utf8(authority)
        .ok()
        .and_then(|a| a.parse::<http::Uri>().ok());
    let mut req = Request::builder().method(Method::CONNECT);
    if let Some(uri) = uri {
        req = req.uri(uri);
    }
    let Ok(mut req) = req.body(()) else {
        return;
    };
    *req.headers_mut() = headers;
    let authority = req.uri().authority().map(|a| a.as_str());
    if let Ok((host, port)) = eastwest::parse_authority(authority) {
        assert_eq!(
            format!("{host}:{port}"),
            authority.unwrap(),
            "not canonical"
        );
    }
    // The mesh transport (15008) takes an `ip:port` authority.
    let _ = authority.and_then(|a| a.parse::<std::net::SocketAddr>().ok());
    let source = Source::read(req.headers());
    let mut written = HeaderMap::new();
    source.write(&mut written);
    assert_eq!(Source::read(&written), source, "source headers round-trip");
    if let Some(p) = eastwest::target_port(req.headers()) {
        assert_eq!(
            req.headers()[eastwest::TARGET_PORT_HEADER].as_bytes(),
            p.to_string().as_bytes()
        );
    }
    let _ = eastwest::refusal_reason(req.headers());
});
