//! Steady traffic as an application sends it, for failover tests and
//! benchmarks: workers with keep-alive HTTP/1.1 connections to a sidecar's
//! outbound listener, each sending on a fixed schedule (open loop: a slow
//! answer does not slow the schedule of the other workers), every result
//! recorded with when it was sent and which cluster answered
//! (`x-sample-cluster`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// One request's fate.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was sent, from the start of the load.
    pub at: Duration,
    pub method: http::Method,
    /// The status, or why there was none.
    pub result: Result<u16, String>,
    /// The cluster that answered (a 2xx from a sample app).
    pub cluster: Option<String>,
    pub latency: Duration,
}

impl Sample {
    pub fn ok(&self) -> bool {
        matches!(self.result, Ok(s) if (200..300).contains(&s))
    }
}

/// What to send.
#[derive(Debug, Clone)]
pub struct Spec {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    /// Requests a second, all workers together.
    pub rate: u32,
    pub workers: u32,
    /// Every `post_every`-th request of a worker is a POST with a body
    /// (0: GETs only).
    pub post_every: u32,
}

/// Traffic running until `stop`.
pub struct Load {
    start: Instant,
    stop: CancellationToken,
    workers: JoinSet<Vec<Sample>>,
}

impl Load {
    pub fn start(spec: Spec) -> Self {
        let start = Instant::now();
        let stop = CancellationToken::new();
        let mut workers = JoinSet::new();
        let spec = Arc::new(spec);
        let period = Duration::from_secs_f64(f64::from(spec.workers) / f64::from(spec.rate));
        for w in 0..spec.workers {
            let (spec, stop) = (spec.clone(), stop.clone());
            // Workers spread over the period, not in step.
            let offset = period.mul_f64(f64::from(w) / f64::from(spec.workers));
            workers.spawn(async move { worker(&spec, start, offset, period, stop).await });
        }
        Self {
            start,
            stop,
            workers,
        }
    }

    /// Time since the load started (what `Sample::at` counts from).
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Stops sending, waits for the answers in flight, returns every
    /// sample in the order sent.
    pub async fn stop(mut self) -> Vec<Sample> {
        self.stop.cancel();
        let mut all = Vec::new();
        while let Some(r) = self.workers.join_next().await {
            all.extend(r.expect("load worker"));
        }
        all.sort_by_key(|s| s.at);
        all
    }
}

async fn worker(
    spec: &Spec,
    start: Instant,
    offset: Duration,
    period: Duration,
    stop: CancellationToken,
) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut conn: Option<http1::SendRequest<Full<Bytes>>> = None;
    let mut tick = tokio::time::interval_at((start + offset).into(), period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        n += 1;
        let post = spec.post_every > 0 && n.is_multiple_of(spec.post_every);
        let method = if post {
            http::Method::POST
        } else {
            http::Method::GET
        };
        let sent = Instant::now();
        let result = send(spec, &mut conn, &method).await;
        let (result, cluster) = match result {
            Ok((status, cluster)) => (Ok(status), cluster),
            Err(e) => {
                conn = None;
                (Err(e), None)
            }
        };
        out.push(Sample {
            at: sent - start,
            method,
            result,
            cluster,
            latency: sent.elapsed(),
        });
    }
    out
}

/// One request on the worker's connection (made anew when it has none
/// or it closed).
async fn send(
    spec: &Spec,
    conn: &mut Option<http1::SendRequest<Full<Bytes>>>,
    method: &http::Method,
) -> Result<(u16, Option<String>), String> {
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        let tcp = tokio::net::TcpStream::connect(spec.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).ok();
        let (sender, driver) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(driver);
        *conn = Some(sender);
    }
    let sender = conn.as_mut().expect("connected above");
    sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let body = if *method == http::Method::POST {
        Bytes::from_static(b"{\"order\": 1}")
    } else {
        Bytes::new()
    };
    let req = http::Request::builder()
        .method(method.clone())
        .uri(&spec.path)
        .header(http::header::HOST, &spec.host)
        .body(Full::new(body))
        .expect("a valid request");
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let cluster = resp
        .headers()
        .get("x-sample-cluster")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok((status, cluster))
}

/// What a run of samples says about a failover at `event`.
#[derive(Debug)]
pub struct Report {
    pub sent: usize,
    pub failed: Vec<Sample>,
    /// From `event` to the first request after which every answer came
    /// from somewhere else than `lost` (None: it never stopped).
    pub failover: Option<Duration>,
    /// The slowest answers sent after `event`: p99 and max.
    pub p99_after: Duration,
    pub max_after: Duration,
}

/// Failed requests, and how long after `event` the answers stopped
/// coming from cluster `lost`.
pub fn report(samples: &[Sample], event: Duration, lost: &str) -> Report {
    let failed: Vec<Sample> = samples.iter().filter(|s| !s.ok()).cloned().collect();
    let last_from_lost = samples
        .iter()
        .filter(|s| s.at >= event && s.cluster.as_deref() == Some(lost))
        .map(|s| s.at)
        .max();
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= event).collect();
    let failover = match last_from_lost {
        None => Some(Duration::ZERO),
        Some(t) => after.iter().any(|s| s.at > t).then(|| t - event),
    };
    let mut latencies: Vec<Duration> = after.iter().map(|s| s.latency).collect();
    latencies.sort();
    let p99_after = latencies
        .get((latencies.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or_default();
    Report {
        sent: samples.len(),
        failed,
        failover,
        p99_after,
        max_after: latencies.last().copied().unwrap_or_default(),
    }
}
