//! An in-process sidecar started through its production path (YAML file
//! → store → listeners) from YAML, the YAML of services and configs, an
//! HTTP client for HTTP/1.1 and h2c, metrics, and polling with a deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use isthmus_gateway::pool::SocketOptions;
use isthmus_gateway::sidecar::{ConfigSource, Options, Sidecar};
use isthmus_gateway::telemetry::accesslog::{Entry, Sink};
use tokio::sync::mpsc;

pub const LOCAL: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

pub struct Env {
    pub sidecar: Sidecar,
    pub log: mpsc::UnboundedReceiver<Entry>,
    pub path: PathBuf,
    /// Removes `path` when the test is done with it.
    pub file: TempFile,
}

/// A file removed when dropped (tests left thousands of sidecar configs
/// in the temp directory).
pub struct TempFile(pub PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

pub fn temp_path(name: &str) -> PathBuf {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("isthmus-test-{}-{n}-{name}", std::process::id()))
}

pub async fn start(yaml: &str) -> Env {
    start_with_identity(yaml, None).await
}

/// A sidecar holding a workload identity (mesh transport enabled).
pub async fn start_with_identity(
    yaml: &str,
    identity: Option<std::sync::Arc<isthmus_mesh::identity::Identity>>,
) -> Env {
    let path = temp_path("sidecar.yaml");
    std::fs::write(&path, yaml).unwrap();
    let (tx, log) = mpsc::unbounded_channel();
    let sidecar = Sidecar::start(Options {
        config: ConfigSource::File {
            path: path.clone(),
            poll: Duration::from_millis(50),
        },
        admin: LOCAL,
        access_log: Sink::Channel(tx),
        socket: SocketOptions::default(),
        mesh: identity.map(|i| std::sync::Arc::new(isthmus_mesh::tls::MeshTls::new(i))),
        prebound: Vec::new(),
        peer_liveness: true,
    })
    .await
    .unwrap_or_else(|e| panic!("sidecar failed to start: {e}"));
    Env {
        sidecar,
        log,
        file: TempFile(path.clone()),
        path,
    }
}

impl Env {
    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.sidecar
            .listener_addr(listener)
            .expect("listener bound")
    }

    /// Rewrites the config file and waits until the sidecar applied it.
    pub async fn reload(&self, yaml: &str) {
        let before = self.sidecar.store().generation();
        std::fs::write(&self.path, yaml).unwrap();
        let store = self.sidecar.store().clone();
        eventually("config reloaded", || {
            let s = store.clone();
            async move { s.generation() > before }
        })
        .await;
    }

    /// Access log entries until one matches `f`.
    pub async fn log_entry(&mut self, f: impl Fn(&Entry) -> bool) -> Entry {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.log.recv()).await {
                Ok(Some(e)) if f(&e) => return e,
                Ok(Some(_)) => continue,
                _ => panic!("no matching access log entry within 10s"),
            }
        }
    }

    pub async fn metrics(&self) -> String {
        let (status, _, body) = get(self.sidecar.admin_addr(), "admin", "/metrics", &[]).await;
        assert_eq!(status, StatusCode::OK);
        body
    }

    /// Sum of a metric's samples whose label text contains every `labels`.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric_value(&self.metrics().await, name, labels)
    }
}

pub fn metric_value(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `f` until it is true (`isthmus_testkit::eventually`, for a
/// condition rather than a value).
pub async fn eventually<F, Fut>(what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    isthmus_testkit::eventually(what, || {
        let fut = f();
        async move { fut.await.then_some(()) }
    })
    .await
}

pub type Http = Client<HttpConnector, Full<Bytes>>;

pub fn h1() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn request(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .uri(format!("http://{addr}{path}"))
        .header("host", host);
    if !body.is_empty() {
        b = b.method("POST");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

pub async fn send(client: &Http, req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, String) {
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

pub async fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    send(&h1(), request(addr, host, path, headers, "")).await
}

/// The JSON the sample app answers with.
pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// One HTTP/2 (h2c, prior knowledge) request to `addr` with `:authority`
/// set to `authority`, as a gRPC client or an h2 app using an explicit
/// proxy sends it.
pub async fn h2_send(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (StatusCode, HeaderMap, Bytes, Option<HeaderMap>) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder()
        .method(if body.is_empty() { "GET" } else { "POST" })
        .uri(format!("http://{authority}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(20),
        sender.send_request(b.body(Full::new(body)).unwrap()),
    )
    .await
    .expect("h2 request timed out")
    .expect("h2 request failed");
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (parts.status, parts.headers, collected.to_bytes(), trailers)
}

/// YAML of a service named `name` with one port and the given endpoints
/// (each "ip:port", optionally followed by a locality), plus `extra` YAML
/// lines already indented for the service.
pub fn service(name: &str, protocol: &str, endpoints: &[SocketAddr], extra: &str) -> String {
    let mut s = format!(
        "  - name: {name}\n    ports: [{{port: 80, protocol: {protocol}}}]\n    endpoints:\n"
    );
    for e in endpoints {
        s.push_str(&format!("      - {{address: \"{e}\"}}\n"));
    }
    if endpoints.is_empty() {
        s = s.replace("    endpoints:\n", "    endpoints: []\n");
    }
    s.push_str(extra);
    s
}

/// A config with an explicit HTTP listener "out" and these services.
pub fn config(services: &[String]) -> String {
    format!(
        "node: {{name: tester, namespace: shop, locality: {{region: eu-west, zone: eu-west-a}}}}\n\
         listeners:\n  - {{name: out, address: \"127.0.0.1:0\", http: {{}}}}\n\
         services:\n{}",
        services.concat()
    )
}
