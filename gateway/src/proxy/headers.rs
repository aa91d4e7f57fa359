//! Header handling between hops: hop-by-hop headers removed, upgrades
//! recognised, the upstream request's URI and Host shaped for the upstream
//! protocol.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode, Uri, Version};
use http_body::SizeHint;

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    // The settings of an `Upgrade: h2c` (RFC 7540 §3.2), a hop's own.
    HeaderName::from_static("http2-settings"),
];

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named in
/// Connection. `te: trailers` survives: gRPC needs it.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named.iter().chain(HOP_BY_HOP.iter()) {
        h.remove(n);
    }
    let te_trailers = h.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    h.remove(header::TE);
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Frames a response for downstream (RFC 9112 §6.3): Transfer-Encoding is
/// the hop's own business and goes, and Content-Length is written anew
/// from what the body is (`body`, known from its framing upstream), so a
/// stale or conflicting length from upstream can never describe a
/// different body. A response to HEAD, and a 304, keep a valid
/// Content-Length (it describes the representation); 1xx and 204 have none.
pub fn frame_response(h: &mut HeaderMap, status: StatusCode, body: &SizeHint, head_request: bool) {
    h.remove(header::TRANSFER_ENCODING);
    let declared = crate::pool::h1::codec::content_length(h).ok().flatten();
    h.remove(header::CONTENT_LENGTH);
    let length = if head_request || status == StatusCode::NOT_MODIFIED {
        declared
    } else if status.is_informational() || status == StatusCode::NO_CONTENT {
        None
    } else {
        body.exact()
    };
    if let Some(n) = length {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
}

/// An HTTP/1.1 upgrade request (WebSocket and the like) to forward as one.
/// `Upgrade: h2c` is not: it asks this hop to switch, and the request is
/// answered over HTTP/1.1 with the header removed (as Envoy does), so the
/// upstream never switches a connection the proxy cannot follow.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().get_all(header::UPGRADE).iter().any(|v| {
            v.to_str().map_or(true, |s| {
                s.split(',').any(|p| !p.trim().eq_ignore_ascii_case("h2c"))
            })
        })
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// The authority a request addresses: :authority (absolute URI, HTTP/2)
/// or the Host header.
pub fn authority<B>(req: &Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .filter(|a| !a.is_empty())
}

/// Splits "host:port" / "[v6]:port" / "host".
pub fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[')
        && let Some((h, p)) = rest.split_once(']')
    {
        return (h, p.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}

/// Shapes URI and Host for the upstream protocol: origin-form with a Host
/// header for HTTP/1.1, absolute-form (hyper derives :authority) for h2.
pub fn shape_for_upstream(
    uri: &Uri,
    headers: &mut HeaderMap,
    authority: &str,
    h2: bool,
    keep_upgrade: bool,
) -> Result<Uri, http::Error> {
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    if !keep_upgrade {
        strip_hop_by_hop(headers);
    }
    if h2 {
        headers.remove(header::HOST);
        Ok(Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(pq)
            .build()?)
    } else {
        if !headers.contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(authority)
        {
            headers.insert(header::HOST, v);
        }
        // On HTTP/1.1, TE is a connection option and is named as one
        // (RFC 9110 §10.1.4); an h2 client sends it bare.
        if !keep_upgrade && headers.contains_key(header::TE) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("te"));
        }
        Ok(Uri::builder().path_and_query(pq).build()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn splits_authorities() {
        assert_eq!(
            split_host_port("catalog.shop:8080"),
            ("catalog.shop", Some(8080))
        );
        assert_eq!(split_host_port("catalog"), ("catalog", None));
        assert_eq!(split_host_port("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_host_port("[::1]"), ("::1", None));
        assert_eq!(split_host_port("host:notaport"), ("host:notaport", None));
    }

    #[test]
    fn upgrade_detection() {
        let req = Request::builder()
            .header(header::CONNECTION, "keep-alive, Upgrade")
            .header(header::UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(is_upgrade(&req));
        let plain = Request::builder()
            .header(header::UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(!is_upgrade(&plain));
        let h2c = |offer: &str| {
            Request::builder()
                .header(header::CONNECTION, "Upgrade, HTTP2-Settings")
                .header(header::UPGRADE, offer)
                .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
                .body(())
                .unwrap()
        };
        assert!(!is_upgrade(&h2c("h2c")), "h2c is this hop's, not forwarded");
        assert!(!is_upgrade(&h2c("H2C")));
        assert!(is_upgrade(&h2c("h2c, websocket")));
        let mut h = h2c("h2c").into_parts().0.headers;
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn shapes_uri_per_protocol() {
        let uri: Uri = "http://catalog:80/a?b=1".parse().unwrap();
        let mut h = HeaderMap::new();
        let u1 = shape_for_upstream(&uri, &mut h, "catalog:80", false, false).unwrap();
        assert_eq!(u1, "/a?b=1");
        assert_eq!(h.get(header::HOST).unwrap(), "catalog:80");
        let u2 = shape_for_upstream(&uri, &mut h, "catalog:80", true, false).unwrap();
        assert_eq!(u2.to_string(), "http://catalog:80/a?b=1");
        assert!(!h.contains_key(header::HOST));
        // An h2 client's bare `te: trailers` is named in Connection on
        // HTTP/1.1.
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        shape_for_upstream(&uri, &mut h, "catalog:80", false, false).unwrap();
        assert_eq!(h[header::CONNECTION], "te");
        assert_eq!(h[header::TE], "trailers");
    }
}
