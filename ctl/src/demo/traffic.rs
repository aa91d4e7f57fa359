//! The demo's traffic: the demo plays each cluster's frontend application,
//! calling every target through that cluster's frontend sidecar at a steady
//! rate (HTTP/1.1 keep-alive, gRPC over h2c); each answer is recorded by
//! the cluster that served it (`x-sample-cluster`), its latency and
//! whether it failed. Scenarios watch the same answers as they happen.
//!
//! How it reaches the sidecar (`Via`): on this host's loopback, at the
//! sidecar's explicit listener with the name in the Host header; with
//! `--netns`, as an application in a pod: it resolves the name (a DNS
//! query the capture rules send to the sidecar's DNS proxy, which answers
//! the ClusterSet IP or ClusterIP) and connects to that address, and the
//! capture rules send the connection to the sidecar.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::mesh::Target;

/// One answer (or failure) seen by a frontend.
#[derive(Debug, Clone)]
pub struct Answer {
    pub at: Instant,
    pub frontend: &'static str,
    pub service: &'static str,
    /// GET (idempotent: it must never fail while another cluster serves);
    /// false for POSTs and gRPC calls.
    pub idempotent: bool,
    /// The cluster whose app answered.
    pub served_by: Option<String>,
    pub latency: Duration,
    /// Why it failed: "HTTP 503 (...)", "grpc-status 14", "timeout", ...
    pub error: Option<String>,
    /// Whether the app saw the frontend's own SPIFFE ID as the caller
    /// (end-to-end mTLS); None where the answer does not say (gRPC).
    pub verified: Option<bool>,
}

impl Answer {
    /// When its request left.
    pub fn sent(&self) -> Instant {
        self.at.checked_sub(self.latency).unwrap_or(self.at)
    }
}

/// The answers of one frontend to one service over a period.
#[derive(Debug, Default, Clone)]
pub struct Window {
    pub served: BTreeMap<String, u64>,
    pub errors: u64,
    pub last_error: Option<String>,
    pub latencies: Vec<Duration>,
    /// Answers saying who called, and those naming the frontend.
    pub told_caller: u64,
    pub caller_verified: u64,
}

impl Window {
    pub fn record(&mut self, a: &Answer) {
        match (&a.error, &a.served_by) {
            (None, Some(by)) => *self.served.entry(by.clone()).or_default() += 1,
            (None, None) => *self.served.entry("?".into()).or_default() += 1,
            (Some(e), _) => {
                self.errors += 1;
                self.last_error = Some(e.clone());
            }
        }
        self.latencies.push(a.latency);
        if let Some(v) = a.verified {
            self.told_caller += 1;
            self.caller_verified += u64::from(v);
        }
    }

    pub fn requests(&self) -> u64 {
        self.served.values().sum::<u64>() + self.errors
    }

    /// The `p`th percentile (0–100) of the latencies, nearest rank.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut v = self.latencies.clone();
        v.sort_unstable();
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        Some(v[rank.clamp(1, v.len()) - 1])
    }
}

/// Every frontend's windows (the current second's) and the live feed.
pub struct Stats {
    windows: Mutex<BTreeMap<(&'static str, &'static str), Window>>,
    pub feed: broadcast::Sender<Answer>,
}

impl Stats {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            windows: Mutex::new(BTreeMap::new()),
            feed: broadcast::channel(16 * 1024).0,
        })
    }

    fn record(&self, a: Answer) {
        self.windows
            .lock()
            .entry((a.frontend, a.service))
            .or_default()
            .record(&a);
        let _ = self.feed.send(a);
    }

    /// The windows since the last call, emptied.
    pub fn take(&self) -> BTreeMap<(&'static str, &'static str), Window> {
        std::mem::take(&mut *self.windows.lock())
    }
}

/// A client connection to the frontend sidecar; its driver task is owned
/// by it (aborted when the connection is dropped).
enum Conn {
    H1 {
        send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        _driver: AbortOnDropHandle<()>,
    },
    H2 {
        send: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
        _driver: AbortOnDropHandle<()>,
    },
}

/// A connection driver, owned by its connection.
fn driver(conn: impl std::future::Future + Send + 'static) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        let _ = conn.await;
    }))
}

impl Conn {
    /// Ready for a request; an error when the connection closed (the
    /// sidecar may close an idle keep-alive connection at any time).
    async fn ready(&mut self) -> Result<(), String> {
        match self {
            Conn::H1 { send, .. } => send.ready().await,
            Conn::H2 { send, .. } => send.ready().await,
        }
        .map_err(|e| format!("connection: {e}"))
    }
}

/// An idle connection from `idle` that is still open, else a new one:
/// as an HTTP client's pool does, a request never fails for having been
/// given a connection the sidecar had closed while idle (nothing was
/// sent on it).
async fn checkout(
    idle: &Mutex<Vec<Conn>>,
    via: &Via,
    target: &Target,
) -> Result<(Conn, bool), String> {
    loop {
        let Some(mut conn) = idle.lock().pop() else {
            break;
        };
        if conn.ready().await.is_ok() {
            return Ok((conn, true));
        }
    }
    let mut conn = connect(via, target).await?;
    conn.ready().await?;
    Ok((conn, false))
}

/// Whether a request that failed this way on a reused keep-alive
/// connection is sent again on a new one, as HTTP clients do (RFC 9112
/// §9.3.1; Go's http.Transport): the sidecar may close an idle
/// connection just as a request leaves on it, and then never saw it. Only
/// a GET (idempotent), and only when no answer came.
fn resend(reused: bool, post: bool, grpc: bool, error: &str) -> bool {
    reused && !post && !grpc && error.starts_with("request: ")
}

async fn connect(via: &Via, target: &Target) -> Result<Conn, String> {
    let grpc = target.grpc;
    let tcp = via.dial(target).await?;
    let _ = tcp.set_nodelay(true);
    let io = TokioIo::new(tcp);
    if grpc {
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        Ok(Conn::H2 {
            send,
            _driver: driver(conn),
        })
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("http/1.1 handshake: {e}"))?;
        Ok(Conn::H1 {
            send,
            _driver: driver(conn),
        })
    }
}

/// How the demo's requests reach a frontend sidecar.
#[derive(Debug, Clone)]
pub enum Via {
    /// Its explicit listener, the name in the Host header.
    Listener(SocketAddr),
    /// As an application in `ns` whose sockets carry `mark`, which the
    /// namespace's capture rules send to the sidecar: by name, through
    /// DNS (any server: the query is captured).
    Capture {
        ns: String,
        mark: u32,
        dns: SocketAddr,
    },
}

impl Via {
    /// A TCP connection for `target`.
    async fn dial(&self, target: &Target) -> Result<tokio::net::TcpStream, String> {
        match self {
            Via::Listener(at) => isthmus_ctl::dial::connect(*at)
                .await
                .map_err(|e| format!("frontend sidecar {at}: {e}")),
            Via::Capture { ns, mark, dns } => {
                let ip = resolve(ns, *mark, *dns, &target.host).await?;
                let at = SocketAddr::new(ip.into(), target.port);
                isthmus_ctl::dial::connect_marked(ns, at, *mark)
                    .await
                    .map_err(|e| format!("{} ({at}): {e}", target.host))
            }
        }
    }
}

/// The first IPv4 address of `name`, as a stub resolver asks for it.
async fn resolve(
    ns: &str,
    mark: u32,
    server: SocketAddr,
    name: &str,
) -> Result<std::net::Ipv4Addr, String> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let fail = |e: String| format!("dns {name}: {e}");
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    let qname = Name::from_ascii(format!("{name}.")).map_err(|e| fail(e.to_string()))?;
    q.add_query(Query::query(qname, RecordType::A));
    let bytes = q.to_vec().map_err(|e| fail(e.to_string()))?;
    let socket = isthmus_ctl::dial::udp_marked(ns, mark).map_err(|e| fail(e.to_string()))?;
    socket
        .send_to(&bytes, server)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut buf = [0u8; 1500];
    let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf))
        .await
        .map_err(|_| fail("no answer in 2 s".into()))?
        .map_err(|e| fail(e.to_string()))?;
    let r = Message::from_vec(&buf[..n]).map_err(|e| fail(e.to_string()))?;
    if r.metadata.id != q.metadata.id {
        return Err(fail("an answer to another query".into()));
    }
    r.answers
        .iter()
        .find_map(|a| match &a.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .ok_or_else(|| fail(format!("{} with no address", r.metadata.response_code)))
}

/// What answered a request: its cluster, and the caller it saw (HTTP).
#[derive(Debug, Clone)]
pub struct Served {
    pub cluster: String,
    pub caller: Option<String>,
}

/// One request on `conn`: who answered, or why it failed.
async fn call(
    conn: &mut Conn,
    target: &Target,
    post: bool,
    headers: &[(&str, &str)],
) -> Result<Served, String> {
    let response = match conn {
        Conn::H1 { send, .. } => {
            let (method, body) = if post {
                (http::Method::POST, Bytes::from_static(b"{\"order\": 1}"))
            } else {
                (http::Method::GET, Bytes::new())
            };
            let mut req = http::Request::builder()
                .method(method)
                .uri("/")
                .header("host", &target.host);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
            send.ready().await.map_err(|e| format!("connection: {e}"))?;
            send.send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?
        }
        Conn::H2 { send, .. } => {
            // A unary gRPC call: one length-prefixed message.
            let mut msg = vec![0u8, 0, 0, 0, 5];
            msg.extend_from_slice(b"stock");
            let mut req =
                http::Request::post(format!("http://{}/shop.Inventory/Check", target.host))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers");
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req
                .body(Full::new(Bytes::from(msg)))
                .map_err(|e| e.to_string())?;
            send.ready().await.map_err(|e| format!("connection: {e}"))?;
            send.send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?
        }
    };
    let status = response.status();
    let served_by = response
        .headers()
        .get("x-sample-cluster")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let grpc_in_headers = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?;
    if !status.is_success() {
        let text = body.to_bytes();
        let first = String::from_utf8_lossy(&text);
        let first = first.lines().next().unwrap_or("").trim();
        return Err(format!("HTTP {} {first}", status.as_u16())
            .trim()
            .to_string());
    }
    if target.grpc {
        let code = body
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or(grpc_in_headers)
            .unwrap_or_else(|| "missing".into());
        if code != "0" {
            return Err(format!("grpc-status {code}"));
        }
    }
    // The sample app's JSON names the caller its sidecar verified.
    let caller = (!target.grpc)
        .then(|| serde_json::from_slice::<serde_json::Value>(&body.to_bytes()).ok())
        .flatten()
        .and_then(|v| v["caller"].as_str().map(str::to_string));
    let cluster = served_by.ok_or_else(|| "answer without x-sample-cluster".to_string())?;
    Ok(Served { cluster, caller })
}

/// How long the demo, as the frontend application, waits for an answer
/// before counting the request failed (a request the mesh delays across
/// a failover is late, not lost: the scenarios report the latency too).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Every how many HTTP requests one is a POST (not idempotent).
const POST_EVERY: u64 = 4;

/// Calls `target` through `sidecar` `rate` times a second until `stop`,
/// open loop: each request leaves on its tick whatever the ones before it
/// are doing, on an idle keep-alive connection or a new one (so a slow
/// path neither lowers the rate nor hides failures).
pub async fn run(
    frontend: &'static str,
    via: Via,
    target: Target,
    rate: u32,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let expected = Arc::new(frontend_id(frontend));
    let (target, via) = (Arc::new(target), Arc::new(via));
    let idle: Arc<Mutex<Vec<Conn>>> = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut in_flight = tokio::task::JoinSet::new();
    for n in 0u64.. {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        while in_flight.try_join_next().is_some() {}
        let post = !target.grpc && n % POST_EVERY == POST_EVERY - 1;
        let (idle, target, stats, expected, via) = (
            idle.clone(),
            target.clone(),
            stats.clone(),
            expected.clone(),
            via.clone(),
        );
        in_flight.spawn(async move {
            let start = Instant::now();
            let mut conn = None;
            let result = tokio::time::timeout(CLIENT_TIMEOUT, async {
                let (c, reused) = checkout(&idle, &via, &target).await?;
                let c = conn.insert(c);
                match call(c, &target, post, &[]).await {
                    Err(e) if resend(reused, post, target.grpc, &e) => {
                        let c = conn.insert(connect(&via, &target).await?);
                        call(c, &target, post, &[]).await
                    }
                    r => r,
                }
            })
            .await
            .unwrap_or_else(|_| Err(format!("timeout ({} s)", CLIENT_TIMEOUT.as_secs())));
            let (served_by, error, verified) = match result {
                Ok(s) => {
                    // Kept for the next request.
                    idle.lock().extend(conn);
                    let verified = s.caller.map(|c| c == *expected);
                    (Some(s.cluster), None, verified)
                }
                // The connection is dropped: a fresh one next time.
                Err(e) => (None, Some(e), None),
            };
            stats.record(Answer {
                at: Instant::now(),
                frontend,
                service: target.service,
                idempotent: !target.grpc && !post,
                served_by,
                latency: start.elapsed(),
                error,
                verified,
            });
        });
    }
}

/// The SPIFFE ID of the frontend of `cluster` (the demo's caller).
pub fn frontend_id(cluster: &str) -> String {
    format!("spiffe://{cluster}.isthmus.local/ns/shop/sa/frontend")
}

/// One request on a fresh connection (readiness checks).
pub async fn once(via: &Via, target: &Target, headers: &[(&str, &str)]) -> Result<Served, String> {
    tokio::time::timeout(CLIENT_TIMEOUT, async {
        let mut conn = connect(via, target).await?;
        call(&mut conn, target, false, headers).await
    })
    .await
    .unwrap_or_else(|_| Err(format!("timeout ({} s)", CLIENT_TIMEOUT.as_secs())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(by: Option<&str>, ms: u64, error: Option<&str>) -> Answer {
        Answer {
            at: Instant::now(),
            frontend: "eu-west",
            service: "catalog",
            idempotent: true,
            served_by: by.map(str::to_string),
            latency: Duration::from_millis(ms),
            error: error.map(str::to_string),
            verified: by.map(|_| true),
        }
    }

    #[test]
    fn only_a_get_on_a_reused_connection_that_got_no_answer_is_sent_again() {
        let lost = "request: connection error";
        assert!(resend(true, false, false, lost));
        assert!(!resend(false, false, false, lost), "a new connection");
        assert!(!resend(true, true, false, lost), "a POST");
        assert!(!resend(true, false, true, lost), "a gRPC call");
        assert!(!resend(true, false, false, "HTTP 503 no healthy endpoint"));
        assert!(!resend(true, false, false, "response body: closed"));
    }

    #[test]
    fn windows_count_by_cluster_and_errors() {
        let mut w = Window::default();
        for ms in 1..=100 {
            let by = if ms % 10 == 0 { "us-east" } else { "eu-west" };
            w.record(&answer(Some(by), ms, None));
        }
        w.record(&answer(None, 2000, Some("timeout (2 s)")));
        assert_eq!(w.requests(), 101);
        assert_eq!(w.served["eu-west"], 90);
        assert_eq!(w.served["us-east"], 10);
        assert_eq!(w.errors, 1);
        assert_eq!(w.last_error.as_deref(), Some("timeout (2 s)"));
        assert_eq!(w.percentile(50.0), Some(Duration::from_millis(51)));
        assert_eq!(w.percentile(99.0), Some(Duration::from_millis(100)));
        assert_eq!(w.percentile(100.0), Some(Duration::from_millis(2000)));
        assert_eq!(Window::default().percentile(50.0), None);
        assert_eq!((w.told_caller, w.caller_verified), (100, 100));
    }

    #[test]
    fn taking_the_windows_empties_them() {
        let s = Stats::new();
        let mut feed = s.feed.subscribe();
        s.record(answer(Some("eu-west"), 1, None));
        assert_eq!(
            feed.try_recv().unwrap().served_by.as_deref(),
            Some("eu-west")
        );
        assert_eq!(s.take()[&("eu-west", "catalog")].requests(), 1);
        assert!(s.take().is_empty());
    }
}
