//! HTTP/1.1 upgrades (WebSocket and the like): the request forwarded
//! once, then the two upgraded connections joined.

use super::*;

/// HTTP/1.1 upgrade (WebSocket): forwarded once, then the two upgraded
/// connections are spliced together byte for byte.
pub(super) async fn forward_upgrade(
    proxy: Arc<Proxy>,
    spec: Arc<ServiceSpec>,
    port: PortSpec,
    authority: String,
    hash: Option<u64>,
    mut req: Request<Incoming>,
    mut rec: Record,
) -> Response<RespBody> {
    let downstream = hyper::upgrade::on(&mut req);
    let state = proxy.services.get(&spec);
    let idx = {
        let mut rng = rand::rng();
        state.pick(&spec, &[], hash, &mut rng)
    };
    let Some(idx) = idx else {
        return rec.local_reply(&ProxyError::NoHealthy(spec.name.to_string()));
    };
    let addr = spec.endpoints[idx].addr(&port);
    rec.upstream = Some(addr);
    rec.chose(&spec.endpoints[idx]);
    rec.attempts = 1;
    let (mut parts, body) = req.into_parts();
    let uri = match shape_for_upstream(&parts.uri, &mut parts.headers, &authority, false, true) {
        Ok(u) => u,
        Err(e) => return rec.local_reply(&ProxyError::Reset(e.to_string())),
    };
    parts.uri = uri;
    let (body, _) = ReqBody::from_incoming(body, false);
    let up = match attempt_once(&state, &spec, idx, addr, Version::Http1, &parts, body).await {
        Ok(up) => up,
        Err(e) => return rec.local_reply(&e),
    };
    if up.response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return respond(up, false, rec).await;
    }
    let Upstream {
        response,
        in_flight,
        ..
    } = up;
    let (parts, body) = response.into_parts();
    let upstream = match body {
        UpBody::H1(b) => b.into_conn(),
        UpBody::H2(_) => None,
    };
    let hard_stop = proxy.hard_stop.clone();
    proxy.tracker.spawn(async move {
        let _keep = in_flight;
        let (Ok(d), Some(u)) = (downstream.await, upstream) else {
            rec.finish(
                StatusCode::SWITCHING_PROTOCOLS,
                None,
                0,
                "UR",
                Some("upgrade failed".into()),
            );
            return;
        };
        // Bytes the upstream sent right after its 101 go first.
        let (mut u, early, _guard) = u.into_parts();
        let mut d = TokioIo::new(d);
        let splice = async {
            d.write_all(&early).await?;
            let (_, to_client) = tokio::io::copy_bidirectional(&mut d, &mut u).await?;
            Ok::<_, std::io::Error>(to_client + early.len() as u64)
        };
        let copied = tokio::select! {
            r = splice => r.ok(),
            _ = hard_stop.cancelled() => None,
        };
        let sent = copied.unwrap_or(0);
        rec.finish(StatusCode::SWITCHING_PROTOCOLS, None, sent, "-", None);
    });
    Response::from_parts(parts, crate::proxy::body::empty())
}
