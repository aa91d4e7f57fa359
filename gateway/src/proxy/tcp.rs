//! Opaque TCP proxying: choose an endpoint (retrying the connect on other
//! endpoints), then join the two both ways until either side closes
//! (`crate::splice`: what one side reads is handed to the other without
//! copying); a reset (or failure) of either side resets the other.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use super::{ConnInfo, Proxy};
use crate::balance::outlier::Observation;
use crate::config::{PortSpec, ServiceSpec};
use crate::policy::attempts::{Attempts, CONNECT_TRIES, Plan};
use crate::pool::{PoolError, dial};
use crate::splice::Halves;
use crate::telemetry::accesslog::{Entry, rfc3339};
use crate::telemetry::metrics::ServiceLabels;
use isthmus_mesh::h2connect::Abort;

struct TcpLog {
    start: Instant,
    start_wall: SystemTime,
    upstream: Option<SocketAddr>,
    attempts: u32,
}

fn log(
    proxy: &Proxy,
    conn: &ConnInfo,
    service: &str,
    l: &TcpLog,
    flags: &str,
    reason: Option<String>,
    bytes: (u64, u64),
) {
    if !proxy.access_log.enabled() {
        return;
    }
    proxy.access_log.write(Entry {
        start_time: rfc3339(l.start_wall),
        direction: conn.direction.as_str(),
        listener: conn.listener.to_string(),
        protocol: "TCP".into(),
        response_code: 0,
        response_flags: flags.into(),
        reason,
        duration_ms: l.start.elapsed().as_secs_f64() * 1000.0,
        source_address: conn.peer.to_string(),
        upstream_host: l.upstream.map(|u| u.to_string()),
        destination_service: Some(service.to_string()),
        attempts: l.attempts,
        bytes_received: bytes.0,
        bytes_sent: bytes.1,
        source_principal: conn.peer_id.as_ref().map(|p| p.to_string()),
        ..Default::default()
    });
}

/// Proxies one downstream connection to `service`:`port`.
pub async fn proxy_to_service<S>(
    proxy: Arc<Proxy>,
    conn: Arc<ConnInfo>,
    mut downstream: S,
    service: Arc<ServiceSpec>,
    port: PortSpec,
) where
    S: Halves + Abort,
{
    let mut l = TcpLog {
        start: Instant::now(),
        start_wall: SystemTime::now(),
        upstream: None,
        attempts: 0,
    };
    let labels = ServiceLabels {
        direction: conn.direction,
        destination_service: service.name.clone(),
    };
    let state = proxy.services.get(&service);
    let mut tried = Vec::new();
    let mut connected = None;
    let mut last_err = String::from("no endpoints");
    let mut plan = Attempts::new(Plan::Connect {
        tries: CONNECT_TRIES,
    });
    loop {
        let idx = {
            let mut rng = rand::rng();
            state.pick(&service, &tried, None, &mut rng)
        };
        let Some(idx) = idx else { break };
        tried.push(idx);
        let ep = &service.endpoints[idx];
        let addr = ep.addr(&port);
        l.upstream = Some(addr);
        l.attempts += 1;
        match state.pool.connect_tcp(addr, ep.tunnel.as_ref()).await {
            Ok((s, guard)) => {
                state.observe(
                    &service,
                    idx,
                    Observation::Success,
                    &proxy.metrics,
                    conn.direction,
                );
                connected = Some((s, guard, idx));
                break;
            }
            Err(PoolError::Tunnel(e)) if e.is_denied() => {
                proxy.metrics.error("tunnel_denied");
                log(
                    &proxy,
                    &conn,
                    &service.name,
                    &l,
                    "AD",
                    Some(e.to_string()),
                    (0, 0),
                );
                return;
            }
            Err(e @ PoolError::Overflow { .. }) => {
                state.sheds.inc();
                proxy.metrics.error("circuit_breaker_overflow");
                log(
                    &proxy,
                    &conn,
                    &service.name,
                    &l,
                    "UO",
                    Some(e.to_string()),
                    (0, 0),
                );
                return;
            }
            Err(e) => {
                state.observe(
                    &service,
                    idx,
                    Observation::GatewayError,
                    &proxy.metrics,
                    conn.direction,
                );
                last_err = e.to_string();
                if !plan.retry_connect() {
                    break;
                }
            }
        }
    }
    let Some((mut upstream, _guard, idx)) = connected else {
        proxy.metrics.error("upstream_connect_failure");
        let flag = if l.attempts == 0 { "UH" } else { "UF" };
        log(
            &proxy,
            &conn,
            &service.name,
            &l,
            flag,
            Some(last_err),
            (0, 0),
        );
        return;
    };
    let endpoint = state.endpoint_state(&service.endpoints[idx]);
    endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
    splice(&proxy, &conn, &labels, &l, &mut downstream, &mut upstream).await;
    endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
}

/// Joins the two both ways until either side closes (or the proxy stops),
/// then records the connection in metrics and the access log.
async fn splice<D, U>(
    proxy: &Proxy,
    conn: &ConnInfo,
    labels: &ServiceLabels,
    l: &TcpLog,
    downstream: &mut D,
    upstream: &mut U,
) where
    D: Halves + Abort,
    U: Halves + Abort,
{
    let m = &proxy.metrics;
    m.tcp_opened.get_or_create(labels).inc();
    let result = tokio::select! {
        r = crate::splice::splice(downstream.halves(), upstream.halves()) => r.map_err(|(_, e)| e),
        _ = proxy.hard_stop.cancelled() => Err(std::io::Error::other("proxy shut down")),
    };
    m.tcp_closed.get_or_create(labels).inc();
    if result.is_err() {
        // One side failed or was reset: the other is reset too, not
        // ended as if all went well (RFC 9113 §8.5 for the tunnel side).
        downstream.abort();
        upstream.abort();
    }
    let (flags, reason, bytes) = match result {
        Ok(b) => ("-", None, b),
        Err(e) => ("UR", Some(e.to_string()), (0, 0)),
    };
    m.tcp_received_bytes.get_or_create(labels).inc_by(bytes.0);
    m.tcp_sent_bytes.get_or_create(labels).inc_by(bytes.1);
    log(
        proxy,
        conn,
        &labels.destination_service,
        l,
        flags,
        reason,
        bytes,
    );
}

/// Forwards a captured connection whose destination is no known service to
/// that destination unchanged (Istio's PassthroughCluster).
pub async fn passthrough(
    proxy: Arc<Proxy>,
    conn: Arc<ConnInfo>,
    mut downstream: tokio::net::TcpStream,
    dst: SocketAddr,
) {
    let l = TcpLog {
        start: Instant::now(),
        start_wall: SystemTime::now(),
        upstream: Some(dst),
        attempts: 1,
    };
    let labels = ServiceLabels {
        direction: conn.direction,
        destination_service: "passthrough".into(),
    };
    let mut upstream = match dial(dst, std::time::Duration::from_secs(5), proxy.socket.far()).await
    {
        Ok(s) => s,
        Err(e) => {
            proxy.metrics.error("upstream_connect_failure");
            log(
                &proxy,
                &conn,
                "passthrough",
                &l,
                "UF",
                Some(e.to_string()),
                (0, 0),
            );
            return;
        }
    };
    splice(&proxy, &conn, &labels, &l, &mut downstream, &mut upstream).await;
}
