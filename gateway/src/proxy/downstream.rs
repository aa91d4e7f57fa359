//! The server side of a downstream HTTP connection: HTTP/1.1 or h2c (prior
//! knowledge), told apart by its first bytes and served by hyper.
//!
//! An idle HTTP/1.1 connection is *parked*: once its last response is
//! written and nothing more came for `PARK_AFTER`, hyper's connection (a
//! read buffer of 8–16 KiB, a write buffer of 8 KiB, its state) is taken
//! down and the socket alone waits for the next request, which brings up a
//! new one. Applications keep pools of idle keep-alive connections to
//! their sidecar; parked, each costs its socket and a few hundred bytes
//! instead of ~30 KB (issue 24, BENCHMARKS.md "Memory per held
//! connection").
//!
//! Parking never changes what the client sees: hyper is taken down only
//! when it is between messages (every response body written and flushed,
//! nothing in flight), where its graceful shutdown closes nothing; bytes
//! it had read past the last request are handed to the next one. Streams
//! that cannot tell readiness without reading (mesh transport streams) are
//! never parked.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::body::{BoxError, RespBody};
use super::{ConnInfo, Proxy, http};

/// How long a connection stays idle before it is parked: a client making
/// requests back to back (or a few a second) keeps its hyper connection
/// and pays nothing; parking and unparking cost ~3 µs of CPU per request.
pub const PARK_AFTER: Duration = Duration::from_millis(250);

/// How long a parked connection may wait for its next request (Envoy's
/// default idle timeout for HTTP connections).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long a new connection may stay silent (hyper's header read
/// timeout, which covers the rest of the first request's head).
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

/// The client preface of HTTP/2 with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A downstream stream that can say it has bytes to read without reading
/// them, so that an idle connection can wait with no buffer.
pub trait Park: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether `poll_read_ready` tells; a stream that cannot tell without
    /// reading is never parked.
    const PARKS: bool = false;

    /// Ready when bytes (or the end) can be read.
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Park for tokio::net::TcpStream {
    const PARKS: bool = true;

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}

/// A mesh transport stream: its bytes arrive through the HTTP/2
/// connection's task, which holds them until read.
impl Park for isthmus_mesh::h2connect::H2Stream {}

/// What one connection's exchanges are doing, shared by its service, its
/// response bodies and its stream, all polled by the connection's task.
#[derive(Default)]
struct Activity {
    /// Requests whose response body hyper has not finished with.
    in_flight: AtomicUsize,
    /// Requests served by the current hyper connection.
    served: AtomicUsize,
    /// The last write to the socket could not take everything: hyper holds
    /// unflushed bytes.
    write_blocked: AtomicBool,
    /// Hyper is being taken down to park: its shutdown must not reach the
    /// socket.
    parking: AtomicBool,
}

impl Activity {
    /// Between messages: at least one served, none in flight, all written.
    fn idle(&self) -> bool {
        self.served.load(Ordering::Relaxed) > 0
            && self.in_flight.load(Ordering::Relaxed) == 0
            && !self.write_blocked.load(Ordering::Relaxed)
    }
}

/// One request in flight until its response body is done with (or the
/// request's future is dropped).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(a: &Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        a.served.fetch_add(1, Ordering::Relaxed);
        Self(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that ends its request's `InFlight` when hyper drops it.
pub struct Tracked {
    body: RespBody,
    _in_flight: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The downstream stream as hyper sees it: bytes already read (the sniffed
/// preface, what hyper had read past its last request) come first; writes
/// that block are noted; a shutdown while parking is not passed on.
struct Held<S> {
    io: S,
    prefix: Bytes,
    activity: Arc<Activity>,
}

impl<S: Park> AsyncRead for Held<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: Park> AsyncWrite for Held<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.activity
            .write_blocked
            .store(r.is_pending(), Ordering::Relaxed);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.activity
            .write_blocked
            .store(r.is_pending(), Ordering::Relaxed);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.activity.parking.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves HTTP/1.1 and h2c (prior knowledge) on one connection; on drain,
/// finishes in-flight requests and closes (GOAWAY / Connection: close).
pub async fn serve_http<S: Park>(proxy: Arc<Proxy>, conn: Arc<ConnInfo>, stream: S) {
    let mut held = Held {
        io: stream,
        prefix: Bytes::new(),
        activity: Arc::default(),
    };
    let sniffed = tokio::select! {
        r = tokio::time::timeout(FIRST_BYTES_TIMEOUT, sniff(&mut held)) => r,
        _ = proxy.drain.cancelled() => return,
    };
    let result = match sniffed {
        Ok(Ok(true)) => Box::pin(serve_h2(&proxy, conn, held)).await,
        Ok(Ok(false)) => serve_h1(&proxy, conn, held).await,
        // Closed or reset before a byte, or silent: nothing to serve.
        Ok(Err(_)) | Err(_) => Ok(()),
    };
    if let Err(e) = result {
        let kind = classify_conn_error(&*e);
        proxy.metrics.error(kind);
        tracing::debug!(kind, "downstream connection ended with an error: {e}");
    }
}

/// Reads until the bytes are, or cannot be, HTTP/2's preface; they stay
/// in `held` for the server to read. False also for a connection closed
/// before any byte (HTTP/1.1 then reads its end).
async fn sniff<S: Park>(held: &mut Held<S>) -> io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut got = 0;
    while got < buf.len() {
        let n = held.io.read(&mut buf[got..]).await?;
        got += n;
        if n == 0 || buf[..got] != H2_PREFACE[..got] {
            held.prefix = Bytes::copy_from_slice(&buf[..got]);
            return Ok(false);
        }
    }
    held.prefix = Bytes::from_static(H2_PREFACE);
    Ok(true)
}

async fn serve_h2<S: Park>(
    proxy: &Arc<Proxy>,
    conn: Arc<ConnInfo>,
    held: Held<S>,
) -> Result<(), BoxError> {
    let p = proxy.clone();
    let svc = service_fn(move |req| Box::pin(http::serve(p.clone(), conn.clone(), req)));
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        .max_concurrent_streams(1024)
        .serve_connection(TokioIo::new(held), svc);
    tokio::pin!(served);
    tokio::select! {
        r = served.as_mut() => return r.map_err(Into::into),
        _ = proxy.drain.cancelled() => served.as_mut().graceful_shutdown(),
    }
    tokio::select! {
        r = served.as_mut() => r.map_err(Into::into),
        _ = proxy.hard_stop.cancelled() => Ok(()),
    }
}

/// HTTP/1.1: hyper while there are messages, parked in between.
async fn serve_h1<S: Park>(
    proxy: &Arc<Proxy>,
    conn: Arc<ConnInfo>,
    mut held: Held<S>,
) -> Result<(), BoxError> {
    loop {
        if held.prefix.is_empty() {
            let _parked = Parked::new(&proxy.metrics.parked_connections);
            let ready = std::future::poll_fn(|cx| held.io.poll_read_ready(cx));
            tokio::select! {
                r = ready => r?,
                // Idle: nothing to finish.
                _ = proxy.drain.cancelled() => return Ok(()),
                _ = tokio::time::sleep(IDLE_TIMEOUT) => return Ok(()),
            }
        }
        // Boxed: the connection's task keeps only a pointer while parked.
        match Box::pin(serve_h1_until_idle(proxy, &conn, held)).await? {
            Some(back) => held = back,
            None => return Ok(()),
        }
    }
}

/// Counts a connection as parked while it lives.
struct Parked<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> Parked<'a> {
    fn new(g: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Runs hyper on the connection until it closes (None) or goes idle after
/// at least one exchange, when the stream is handed back to be parked.
async fn serve_h1_until_idle<S: Park>(
    proxy: &Arc<Proxy>,
    conn: &Arc<ConnInfo>,
    held: Held<S>,
) -> Result<Option<Held<S>>, BoxError> {
    let activity = held.activity.clone();
    activity.served.store(0, Ordering::Relaxed);
    let (p, c, a) = (proxy.clone(), conn.clone(), activity.clone());
    // Boxed: hyper keeps a slot for the service's future in every
    // connection; a pointer there instead of the whole request path's
    // state.
    let svc = service_fn(move |req| {
        let in_flight = InFlight::enter(&a);
        let served = http::serve(p.clone(), c.clone(), req);
        Box::pin(async move {
            let resp = served.await?;
            Ok::<_, std::convert::Infallible>(resp.map(|body| Tracked {
                body,
                _in_flight: in_flight,
            }))
        })
    });
    let mut served = Box::pin(
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .writev(false)
            .serve_connection(TokioIo::new(held), svc)
            .with_upgrades(),
    );
    let drain = proxy.drain.cancelled();
    let hard_stop = proxy.hard_stop.cancelled();
    // Armed when the connection goes idle after an exchange, for PARK_AFTER.
    let linger = tokio::time::sleep(IDLE_TIMEOUT);
    tokio::pin!(drain, hard_stop, linger);
    let mut armed_after: Option<usize> = None;
    let mut draining = false;
    let parked = std::future::poll_fn(|cx| {
        loop {
            if let Poll::Ready(r) = served.as_mut().poll(cx) {
                return Poll::Ready(r.map(|()| false));
            }
            if !draining && drain.as_mut().poll(cx).is_ready() {
                draining = true;
                served.as_mut().graceful_shutdown();
                continue;
            }
            if draining && hard_stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(false));
            }
            if draining || !S::PARKS || !activity.idle() {
                return Poll::Pending;
            }
            let exchanges = activity.served.load(Ordering::Relaxed);
            if armed_after != Some(exchanges) {
                armed_after = Some(exchanges);
                linger
                    .as_mut()
                    .reset(tokio::time::Instant::now() + PARK_AFTER);
            }
            if linger.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Between messages: hyper's graceful shutdown closes an idle
            // connection at once, and the shutdown stops at `Held`.
            activity.parking.store(true, Ordering::Relaxed);
            served.as_mut().graceful_shutdown();
            if let Poll::Ready(r) = served.as_mut().poll(cx) {
                return Poll::Ready(r.map(|()| true));
            }
            // Not between messages after all (a request body the response
            // did not wait for is still coming): keep-alive is off now, so
            // the connection ends after this exchange, as when draining.
            tracing::debug!(
                "a downstream connection could not be parked; it closes after its exchange"
            );
            activity.parking.store(false, Ordering::Relaxed);
            draining = true;
            return Poll::Pending;
        }
    });
    let result = parked.await;
    activity.parking.store(false, Ordering::Relaxed);
    if !result? {
        return Ok(None);
    }
    let Some(parts) = Pin::into_inner(served).into_parts() else {
        return Ok(None); // upgraded: the stream went with the upgrade
    };
    let mut held = parts.io.into_inner();
    if !parts.read_buf.is_empty() {
        let mut rest = BytesMut::from(&parts.read_buf[..]);
        rest.extend_from_slice(&held.prefix);
        held.prefix = rest.freeze();
    }
    Ok(Some(held))
}

fn classify_conn_error(e: &(dyn std::error::Error + 'static)) -> &'static str {
    match e.downcast_ref::<hyper::Error>() {
        Some(h) if h.is_parse() || h.is_parse_too_large() => "bad_request",
        Some(h) if h.is_timeout() => "downstream_timeout",
        Some(h) if h.is_incomplete_message() => "downstream_incomplete",
        _ => "downstream_connection",
    }
}
