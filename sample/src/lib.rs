//! The sample application of the sample mesh (SCENARIOS.md): an HTTP/1.1 +
//! h2c server that answers with who served the request, plus knobs tests
//! and demos use to make it fail, slow down, echo, speak gRPC or upgrade.
//! Also a TCP echo server. The `isthmus-sample` binary runs it for the
//! demo; tests run it in-process: the same app either way. Never part of
//! the proxy.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type RespBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;

fn full(b: impl Into<bytes::Bytes>) -> RespBody {
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// One instance of a sample service.
#[derive(Debug, Default)]
pub struct SampleApp {
    pub service: String,
    pub cluster: String,
    pub version: String,
    /// Requests served.
    pub hits: AtomicU64,
    /// When non-zero, every plain HTTP request gets this status.
    pub fail_status: AtomicU16,
    /// When non-zero, gRPC calls end with this grpc-status.
    pub grpc_status: AtomicU32,
    /// Added delay for every request, in milliseconds.
    pub delay_ms: AtomicU64,
    /// Headers of the last request, for assertions.
    pub last_headers: parking_lot::Mutex<Option<HeaderMap>>,
}

impl SampleApp {
    pub fn new(service: &str, cluster: &str, version: &str) -> Arc<Self> {
        Arc::new(Self {
            service: service.into(),
            cluster: cluster.into(),
            version: version.into(),
            ..Default::default()
        })
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last_header(&self, name: &str) -> Option<String> {
        self.last_headers
            .lock()
            .as_ref()?
            .get(name)?
            .to_str()
            .ok()
            .map(str::to_string)
    }
}

/// A running server; stops when dropped or on `stop()`.
pub struct Running {
    pub addr: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Running {
    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Accepts on `addr` and runs `conn(stream, peer, local addr, tasks)` per
/// connection until stopped; every connection ends when the server stops.
async fn accept_loop<F, Fut>(addr: SocketAddr, conn: F) -> std::io::Result<Running>
where
    F: Fn(tokio::net::TcpStream, SocketAddr, SocketAddr, TaskTracker) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let (s, t) = (stop.clone(), tasks.clone());
    tasks.spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = s.cancelled() => return,
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            };
            // Headers, body and trailers go out as separate writes: with
            // Nagle on, the last waits for the peer's delayed ACK (40 ms).
            let _ = stream.set_nodelay(true);
            let (s2, work) = (s.clone(), conn(stream, peer, addr, t.clone()));
            t.spawn(async move {
                tokio::select! {
                    _ = work => {}
                    _ = s2.cancelled() => {}
                }
            });
        }
    });
    Ok(Running { addr, stop, tasks })
}

/// Serves `app` on `addr` (port 0 picks one).
pub async fn serve(app: Arc<SampleApp>, addr: SocketAddr) -> std::io::Result<Running> {
    serve_with(app, addr, false).await
}

/// Serves `app` over HTTP/1.1 only, as most servers in a mesh do: an h2c
/// preface is a malformed request to it.
pub async fn serve_http1(app: Arc<SampleApp>, addr: SocketAddr) -> std::io::Result<Running> {
    serve_with(app, addr, true).await
}

async fn serve_with(
    app: Arc<SampleApp>,
    addr: SocketAddr,
    http1_only: bool,
) -> std::io::Result<Running> {
    accept_loop(addr, move |stream, peer, me, tasks| {
        let app = app.clone();
        async move {
            let svc = service_fn(move |req| handle(app.clone(), tasks.clone(), me, peer, req));
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if http1_only {
                builder = builder.http1_only();
            }
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        }
    })
    .await
}

/// A TCP server that echoes every byte back.
pub async fn serve_tcp_echo(addr: SocketAddr) -> std::io::Result<Running> {
    accept_loop(addr, |mut stream, _, _, _| async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if stream.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    })
    .await
}

fn is_grpc(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"))
}

async fn handle(
    app: Arc<SampleApp>,
    tasks: TaskTracker,
    me: SocketAddr,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    app.hits.fetch_add(1, Ordering::SeqCst);
    *app.last_headers.lock() = Some(req.headers().clone());
    let delay = app.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut resp = if req.headers().contains_key(header::UPGRADE) {
        let on = hyper::upgrade::on(&mut req);
        tasks.spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = Response::new(full(bytes::Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        let proto = req.headers()[header::UPGRADE].clone();
        r.headers_mut().insert(header::UPGRADE, proto);
        return Ok(r);
    } else if is_grpc(&req) {
        grpc_echo(&app, req).await
    } else {
        let fail = app.fail_status.load(Ordering::SeqCst);
        let path = req.uri().path().to_string();
        if fail != 0 {
            let mut r = Response::new(full(format!("{} failing on purpose\n", app.service)));
            *r.status_mut() =
                StatusCode::from_u16(fail).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            r
        } else if let Some(code) = path.strip_prefix("/status/") {
            let mut r = Response::new(full(format!("status {code}\n")));
            *r.status_mut() = code
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            r
        } else if let Some(ms) = path.strip_prefix("/delay/") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            Response::new(full("delayed\n"))
        } else if path == "/echo" {
            // Streams the request body back as it arrives.
            let body = req
                .into_body()
                .map_err(|e| -> BoxError { e.into() })
                .boxed_unsync();
            Response::new(body)
        } else {
            let body = serde_json::json!({
                "service": app.service,
                "cluster": app.cluster,
                "version": app.version,
                "instance": me.to_string(),
                "peer": peer.to_string(),
                "method": req.method().as_str(),
                "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                "protocol": format!("{:?}", req.version()),
                "host": req.headers().get(header::HOST).and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .or_else(|| req.uri().authority().map(|a| a.to_string())),
                "traceparent": req.headers().get("traceparent").and_then(|v| v.to_str().ok()),
                "caller": req.headers().get("x-isthmus-peer-identity").and_then(|v| v.to_str().ok()),
            });
            let mut r = Response::new(full(format!("{body}\n")));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
    };
    if let Ok(v) = HeaderValue::from_str(&me.to_string()) {
        resp.headers_mut().insert("x-sample-instance", v);
    }
    if let Ok(v) = HeaderValue::from_str(&app.version) {
        resp.headers_mut().insert("x-sample-version", v);
    }
    if let Ok(v) = HeaderValue::from_str(&app.cluster) {
        resp.headers_mut().insert("x-sample-cluster", v);
    }
    Ok(resp)
}

/// gRPC unary echo: answers the request's messages back, then trailers with
/// the configured grpc-status.
async fn grpc_echo(app: &SampleApp, req: Request<Incoming>) -> Response<RespBody> {
    let status = app.grpc_status.load(Ordering::SeqCst);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(status));
    if status != 0 {
        trailers.insert("grpc-message", HeaderValue::from_static("sample failure"));
    }
    let frames = [
        Ok::<_, BoxError>(hyper::body::Frame::data(body)),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    let reply = http_body_util::StreamBody::new(tokio_stream::iter(frames));
    let mut r = Response::new(reply.boxed_unsync());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    r
}
