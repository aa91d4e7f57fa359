//! Request mirroring: a copy of the request sent to another service,
//! fire and forget; its answer is dropped and never delays the original.

use super::*;

/// Sends a copy of the request to the mirror service once the original
/// body has been read; the response is drained and discarded. Runs on its
/// own task, so it never delays the original request.
#[allow(clippy::too_many_arguments)] // a detached copy of the request's context
pub(super) async fn mirror(
    proxy: Arc<Proxy>,
    snap: Arc<Snapshot>,
    m: route::MirrorSettings,
    method: http::Method,
    uri: http::Uri,
    mut headers: http::HeaderMap,
    authority: String,
    recording: crate::proxy::body::Recording,
) {
    let result: Result<(), String> = async {
        let body = tokio::time::timeout(Duration::from_secs(30), recording.replay_when_complete())
            .await
            .ok()
            .flatten()
            .ok_or("request body not replayable")?;
        let spec = snap
            .services
            .get(&m.service)
            .ok_or("mirror service not configured")?
            .clone();
        let port = *m
            .port
            .and_then(|p| spec.port(Some(p)))
            .or_else(|| spec.port(None))
            .ok_or("mirror service has no matching port")?;
        let state = proxy.services.get(&spec);
        let idx = {
            let mut rng = rand::rng();
            state.pick(&spec, &[], None, &mut rng)
        }
        .ok_or("no mirror endpoint")?;
        let addr = spec.endpoints[idx].addr(&port);
        let (host, p) = split_host_port(&authority);
        let shadow = match p {
            Some(p) => format!("{host}-shadow:{p}"),
            None => format!("{host}-shadow"),
        };
        headers.remove(header::HOST);
        let version = upstream_version(port.protocol, spec.inbound, http::Version::HTTP_11);
        let uri = shape_for_upstream(
            &uri,
            &mut headers,
            &shadow,
            version == Version::Http2,
            false,
        )
        .map_err(|e| e.to_string())?;
        let (mut head, ()) = Request::new(()).into_parts();
        head.method = method;
        head.uri = uri;
        head.headers = headers;
        if version == Version::Http2 {
            head.version = http::Version::HTTP_2;
        }
        let once = attempt_once(&state, &spec, idx, addr, version, &head, body);
        let up = tokio::time::timeout(Duration::from_secs(30), once)
            .await
            .map_err(|_| "mirror timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let Upstream {
            response,
            lease,
            in_flight,
        } = up;
        let drained = response.into_body().collect().await.is_ok();
        drop(in_flight);
        if let Some(lease) = lease
            && drained
        {
            lease.release();
        }
        Ok(())
    }
    .await;
    let labels = ServiceLabels {
        direction: Direction::Outbound,
        destination_service: m.service.as_str().into(),
    };
    proxy.metrics.mirrored.get_or_create(&labels).inc();
    if let Err(e) = result {
        tracing::debug!(service = %m.service, "mirror request failed: {e}");
        proxy.metrics.error("mirror_failed");
    }
}
