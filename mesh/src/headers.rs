//! The headers of the mesh's CONNECT protocols, shared by the sides that
//! speak them: a sidecar or control plane calling its cluster's east-west
//! entry, the gateways between clusters, and the mesh transport between
//! sidecars. Names and value spellings live here only.

/// A refusal response: `status`, and `why` in `REFUSAL_HEADER` (when it
/// is a valid header value).
pub fn refused(status: http::StatusCode, why: &str) -> http::Response<()> {
    let mut r = http::Response::new(());
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(why) {
        r.headers_mut().insert(REFUSAL_HEADER, v);
    }
    r
}

/// Header on a CONNECT's 200: the application port behind the sidecar
/// the stream was joined to. A sidecar of another cluster reached through
/// the gateways asks its peer for this port (a Service's named target
/// port resolves per workload, so only the receiving side knows it).
pub const TARGET_PORT_HEADER: &str = "isthmus-target-port";

/// The target port a 200 carries, if any.
pub fn target_port(headers: &http::HeaderMap) -> Option<u16> {
    parse_port(headers.get(TARGET_PORT_HEADER)?.to_str().ok()?)
}

/// A port as the CONNECT authorities and headers spell it: digits only,
/// no leading zero, 1-65535. One spelling per port (`+80`, `080` would
/// parse as 80 and slip past checks on the text).
pub fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Sets `TARGET_PORT_HEADER` when there is a port to say.
pub fn set_target_port(headers: &mut http::HeaderMap, port: Option<u16>) {
    if let Some(p) = port {
        headers.insert(TARGET_PORT_HEADER, http::HeaderValue::from(p));
    }
}

/// Header on a sidecar's own answer to a request that came over the mesh
/// transport and reached no application (its app refused the connection,
/// had no healthy endpoint, or the sidecar was draining): the value is the
/// response flag (`UF`, `UH`, `SI`). The calling sidecar sends such a
/// request elsewhere whatever its method, and removes the header. Only
/// believed from a sidecar reached over mTLS; removed from every answer an
/// application gives, so no application can claim it.
pub const UNPROCESSED_HEADER: &str = "isthmus-unprocessed";

/// The CONNECT authority of the local entry's peer liveness stream
/// (`isthmus.eastwest.v1.PeerLiveness` messages, length-delimited).
pub const PEERS_AUTHORITY: &str = "peers.isthmus.local:1";

/// Header: why a CONNECT was refused (with a non-200 status).
pub const REFUSAL_HEADER: &str = "isthmus-refusal";

/// The refusal reason a response carries ("" when none).
pub fn refusal_reason(headers: &http::HeaderMap) -> String {
    headers
        .get(REFUSAL_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Header: the cluster a cross-cluster stream comes from.
pub const SOURCE_CLUSTER: &str = "isthmus-source-cluster";
/// Header: the SPIFFE ID of the workload that opened it (as its own
/// gateway verified it; the destination sidecar verifies it again in the
/// end-to-end mTLS session inside the stream).
pub const SOURCE_IDENTITY: &str = "isthmus-source-identity";
/// Header: W3C trace context, passed through.
pub const TRACEPARENT: &str = "traceparent";

/// On the local entry's 200: the transport the stream rides (`quic`/`h2`).
pub const TRANSPORT_HEADER: &str = "isthmus-transport";

/// Header on a refused CONNECT: what kind of failure the link to the peer
/// had, when the caller should tell it apart (only `untrusted` today).
pub const LINK_FAILURE_HEADER: &str = "isthmus-link-failure";
/// `LINK_FAILURE_HEADER` value: the gateways do not trust each other.
pub const UNTRUSTED: &str = "untrusted";
/// The header naming the peer cluster a CONNECT to the local entry is for.
pub const CLUSTER_HEADER: &str = "isthmus-cluster";

/// Header naming the client's own SPIFFE ID as it claims it, for logs
/// only: identity comes from the verified certificate.
pub const SOURCE_ID_HEADER: &str = "x-isthmus-source";
