//! Our own HTTP/1.1 client connection. The request's task writes the request
//! and reads the response itself, so a proxied request costs no hop to a
//! connection task and no channel in between (hyper's client dispatches
//! through both, which was a tenth of the sidecar's CPU per request).
//!
//! What the bytes mean is decided by the sans-I/O `codec`; this module
//! moves them between it and the socket. A connection goes back to its
//! pool only when the response body was read to its end with nothing left
//! over; anything unusual (an early response while the request body was
//! still being sent, a close-delimited body, an interrupted exchange,
//! `Connection: close`, a message with suspect framing) closes it instead.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, header};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;

pub mod codec;

use codec::{BodyMode, BodySize, Event, ResponseDecoder};
pub use codec::{CodecError, Framing, ResponseHead};

use super::io::Io;
use super::{ConnGuard, Lease};
use crate::proxy::body::{BoxError, ReqBody};

const READ_CHUNK: usize = 16 * 1024;
/// Room below which a read buffer is grown (by READ_CHUNK). A buffer whose
/// front was handed out as a body keeps serving the next responses from
/// the rest of its allocation instead of allocating anew each time.
const READ_MIN_ROOM: usize = 2 * 1024;
/// Request bytes gathered before a write.
const WRITE_BATCH: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("upstream I/O error: {0}")]
    Io(#[from] io::Error),
    /// The connection failed before any byte of the request was written
    /// (a keep-alive connection the upstream had reset): nothing reached
    /// it, so the request may go elsewhere whatever its method.
    #[error("the connection failed before any of the request was written: {0}")]
    NotSent(io::Error),
    #[error("upstream closed the connection before sending a response")]
    Closed,
    #[error("upstream closed the connection in the middle of the response")]
    Truncated,
    #[error(
        "malformed upstream response: {0} (refused rather than guessed: fix the upstream's HTTP/1.1)"
    )]
    Malformed(#[from] CodecError),
    #[error("reading the request body failed: {0}")]
    RequestBody(BoxError),
    #[error("request body length ({sent}) differs from its content-length ({declared})")]
    BodyLength { declared: u64, sent: u64 },
    #[error("upstream answered 101 Switching Protocols to a request that asked for no upgrade")]
    UnexpectedUpgrade,
}

/// An HTTP/1.1 connection to one endpoint, idle or in use by one request.
pub struct H1Conn {
    io: Io,
    buf: BytesMut,
    /// The connection-limit slot, held as long as the socket.
    guard: ConnGuard,
}

impl H1Error {
    /// Nothing of the request reached the upstream.
    pub fn not_sent(&self) -> bool {
        matches!(self, H1Error::NotSent(_))
    }

    /// The client's side of the exchange failed, not the upstream.
    pub fn is_downstream(&self) -> bool {
        matches!(self, H1Error::RequestBody(_) | H1Error::BodyLength { .. })
    }
}

/// What a request body is known to be before it is sent.
fn body_size(body: &ReqBody) -> BodySize {
    if body.is_end_stream() {
        BodySize::Empty
    } else {
        body.size_hint()
            .exact()
            .map_or(BodySize::Unknown, BodySize::Exact)
    }
}

impl H1Conn {
    pub fn new(io: Io, guard: ConnGuard) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            guard,
        }
    }

    /// True when an idle connection cannot be used: the upstream closed it
    /// (or sent bytes nobody asked for). Costs no system call unless the
    /// reactor saw the socket become readable.
    pub fn is_stale(&mut self) -> bool {
        !self.buf.is_empty() || self.io.is_stale()
    }

    /// The socket, bytes the upstream already sent past the response head,
    /// and the connection-limit slot: what an upgraded connection splices.
    pub fn into_parts(self) -> (Io, Bytes, ConnGuard) {
        (self.io, self.buf.freeze(), self.guard)
    }

    /// Sends a request (origin-form URI, headers as given but for the
    /// framing, which comes from the body) and reads the response head,
    /// skipping interim 1xx responses other than 101. The exchange is full
    /// duplex: a response may start while the request body is still being
    /// sent (an echo, an early 413), and whatever is left of the upload
    /// comes back with the head, for the response body to finish.
    pub async fn send(
        &mut self,
        parts: &http::request::Parts,
        body: ReqBody,
    ) -> Result<Exchange, H1Error> {
        let upgrade = parts.headers.contains_key(header::UPGRADE);
        let size = body_size(&body);
        // A client's Content-Length that is not its body's length is a lie
        // about the body (hyper checks what it reads; this catches a
        // header set apart from the body).
        if let (Ok(Some(declared)), Some(sent)) =
            (codec::content_length(&parts.headers), size.known())
            && declared != sent
        {
            return Err(H1Error::BodyLength { declared, sent });
        }
        let mut out = BytesMut::with_capacity(512);
        let mode = codec::encode_request_head(parts, size, &mut out);
        let mut upload = Some(Upload {
            body,
            mode,
            out,
            sent: 0,
            body_done: false,
            wrote: false,
        });
        let mut upload_error = None;
        let mut decoder = ResponseDecoder::new(parts.method == Method::HEAD);
        let mut head = std::future::poll_fn(|cx| {
            self.poll_exchange(&mut decoder, &mut upload, &mut upload_error, cx)
        })
        .await?;
        if head.upgraded && !upgrade {
            return Err(H1Error::UnexpectedUpgrade);
        }
        // An upload cut short leaves the connection in an unknown state.
        head.reusable &= upload_error.is_none();
        Ok(Exchange {
            head,
            decoder,
            upload,
        })
    }

    fn poll_exchange(
        &mut self,
        decoder: &mut ResponseDecoder,
        upload: &mut Option<Upload>,
        upload_error: &mut Option<H1Error>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<ResponseHead, H1Error>> {
        if let Some(u) = upload.as_mut() {
            match u.poll(&mut self.io, cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(())) => *upload = None,
                // The client's own body failed or lied about its length:
                // nothing sensible to forward.
                Poll::Ready(Err(e)) if e.is_downstream() => return Poll::Ready(Err(e)),
                // A write failed: the upstream may still have answered (and
                // closed); read what it sent before giving up.
                Poll::Ready(Err(e)) => {
                    *upload = None;
                    *upload_error = Some(e);
                }
            }
        }
        loop {
            if let Some(head) = decoder.head(&mut self.buf)? {
                return Poll::Ready(Ok(head));
            }
            reserve_room(&mut self.buf);
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.io),
                cx,
                &mut self.buf
            )) {
                Ok(0) if self.buf.is_empty() => {
                    return Poll::Ready(Err(upload_error.take().unwrap_or(H1Error::Closed)));
                }
                Ok(0) => return Poll::Ready(Err(H1Error::Truncated)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(upload_error.take().unwrap_or(e.into()))),
            }
        }
    }
}

/// A response head, the decoder positioned at its body, and what is left
/// of the request to send.
pub struct Exchange {
    pub head: ResponseHead,
    pub decoder: ResponseDecoder,
    pub upload: Option<Upload>,
}

/// The part of a request still to be written: encoded bytes not yet sent
/// and the body they come from.
pub struct Upload {
    body: ReqBody,
    mode: BodyMode,
    out: BytesMut,
    sent: u64,
    body_done: bool,
    /// Some byte of the request went into the socket.
    wrote: bool,
}

impl Upload {
    /// Writes what is ready; frames that are ready at once are gathered, so
    /// a buffered body leaves with its head in one write. Ready(Ok) when
    /// the whole request is written.
    fn poll(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<Result<(), H1Error>> {
        loop {
            while !self.body_done && self.out.len() < WRITE_BATCH {
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(None) => self.end(None)?,
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(H1Error::RequestBody(e))),
                    Poll::Ready(Some(Ok(f))) => self.encode(f)?,
                }
            }
            if self.out.is_empty() {
                return if self.body_done {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending // the body's waker is registered
                };
            }
            match ready!(Pin::new(&mut *io).poll_write(cx, &self.out)) {
                Ok(0) => return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into())),
                Ok(n) => {
                    self.wrote = true;
                    self.out.advance(n);
                }
                Err(e) if !self.wrote => return Poll::Ready(Err(H1Error::NotSent(e))),
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    fn encode(&mut self, f: Frame<Bytes>) -> Result<(), H1Error> {
        match f.into_data() {
            Ok(data) => {
                self.sent += data.len() as u64;
                match self.mode {
                    BodyMode::Length(declared) if self.sent > declared => {
                        Err(H1Error::BodyLength {
                            declared,
                            sent: self.sent,
                        })
                    }
                    BodyMode::None if self.sent > 0 => Err(H1Error::BodyLength {
                        declared: 0,
                        sent: self.sent,
                    }),
                    BodyMode::Chunked => {
                        codec::encode_chunk(&data, &mut self.out);
                        Ok(())
                    }
                    _ => {
                        self.out.extend_from_slice(&data);
                        Ok(())
                    }
                }
            }
            // Trailers end the body; they travel only in a chunked one.
            Err(f) => self.end(f.into_trailers().ok()),
        }
    }

    fn end(&mut self, trailers: Option<HeaderMap>) -> Result<(), H1Error> {
        self.body_done = true;
        match self.mode {
            BodyMode::Chunked => codec::encode_last_chunk(trailers.as_ref(), &mut self.out),
            BodyMode::Length(declared) if self.sent != declared => {
                return Err(H1Error::BodyLength {
                    declared,
                    sent: self.sent,
                });
            }
            _ => {}
        }
        Ok(())
    }
}

fn reserve_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_MIN_ROOM {
        buf.reserve(READ_CHUNK);
    }
}

/// A response body read straight from the upstream connection by whoever
/// polls it. Holds the connection's lease: handed back to the pool at a
/// clean end, closed if the body is dropped or fails first.
pub struct H1Body {
    lease: Option<Lease>,
    decoder: ResponseDecoder,
    reusable: bool,
    /// The rest of the request, sent while the response is read (boxed:
    /// rarely there, and a body should stay small).
    upload: Option<Box<Upload>>,
}

impl H1Body {
    pub fn new(lease: Lease, exchange: Exchange) -> Self {
        let Exchange {
            head,
            decoder,
            upload,
        } = exchange;
        let mut body = Self {
            lease: Some(lease),
            decoder,
            reusable: head.reusable,
            upload: upload.map(Box::new),
        };
        if body.decoder.is_done() {
            body.finish();
        }
        body
    }

    /// The (empty) body of a 101 Switching Protocols response: it keeps
    /// the connection for `into_conn`.
    pub fn upgraded(lease: Lease, exchange: Exchange) -> Self {
        Self {
            lease: Some(lease),
            decoder: exchange.decoder,
            reusable: false,
            upload: None,
        }
    }

    /// The connection itself, for a 101 Switching Protocols response.
    pub fn into_conn(mut self) -> Option<H1Conn> {
        self.lease.take()?.take_h1()
    }

    /// The body ended: the connection goes back to its pool if it may
    /// carry another request and holds no bytes past this response.
    fn finish(&mut self) {
        // A response that ended before its request did: the upstream will
        // not read the rest, so the connection cannot carry another.
        if self.upload.take().is_some() {
            self.reusable = false;
        }
        if let Some(mut lease) = self.lease.take() {
            let clean = lease.h1_mut().is_some_and(|c| c.buf.is_empty());
            if self.reusable && clean {
                // An idle connection holds no buffer (a pool may keep
                // many): the next response allocates its own.
                if let Some(c) = lease.h1_mut() {
                    c.buf = BytesMut::new();
                }
                lease.release();
            }
        }
    }

    fn fail(&mut self) {
        self.upload = None;
        self.lease = None;
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            // An upgraded connection's body is empty and keeps the lease.
            if this.decoder.is_done() {
                return Poll::Ready(None);
            }
            let Some(conn) = this.lease.as_mut().and_then(Lease::h1_mut) else {
                // Ended (or failed), or an upgrade took the connection.
                return Poll::Ready(None);
            };
            if let Some(u) = this.upload.as_mut() {
                match u.poll(&mut conn.io, cx) {
                    Poll::Pending => {}
                    Poll::Ready(Ok(())) => this.upload = None,
                    // The response goes on; the connection will not be reused.
                    Poll::Ready(Err(_)) => {
                        this.upload = None;
                        this.reusable = false;
                    }
                }
            }
            let event = match this.decoder.body(&mut conn.buf) {
                Ok(e) => e,
                Err(e) => {
                    this.fail();
                    return Poll::Ready(Some(Err(H1Error::from(e).into())));
                }
            };
            match event {
                Event::Data(d) => {
                    // The last bytes give the connection back at once.
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Event::Trailers(t) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Event::End | Event::Head(_) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Event::NeedMore => {
                    reserve_room(&mut conn.buf);
                    let read = ready!(tokio_util::io::poll_read_buf(
                        Pin::new(&mut conn.io),
                        cx,
                        &mut conn.buf
                    ));
                    match read {
                        Ok(0) if this.decoder.eof() => {
                            this.reusable = false;
                            this.finish();
                            return Poll::Ready(None);
                        }
                        Ok(0) => {
                            this.fail();
                            return Poll::Ready(Some(Err(H1Error::Truncated.into())));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            this.fail();
                            return Poll::Ready(Some(Err(H1Error::Io(e).into())));
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.lease.is_none() || self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// The client against scripted upstreams on real sockets.
#[cfg(test)]
mod wire_tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::pool::{Pool, SocketOptions, Version};
    use http::{Request, StatusCode};

    /// An upstream that runs `script` on every connection it accepts and
    /// counts them.
    async fn upstream<F, Fut>(script: F) -> (SocketAddr, Arc<AtomicUsize>)
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(script(s));
            }
        });
        (addr, accepted)
    }

    /// Reads one request head (and a content-length body) from `s`.
    async fn read_request(s: &mut TcpStream) -> Option<String> {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut b).await.ok()? == 0 {
                return None;
            }
            head.push(b[0]);
        }
        let text = String::from_utf8(head).ok()?;
        let len = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.ok()?;
        Some(text + &String::from_utf8_lossy(&body))
    }

    fn pool() -> Pool {
        Pool::new(
            Default::default(),
            Default::default(),
            SocketOptions::default(),
            Default::default(),
            None,
        )
    }

    /// One request through the pool: status, body, trailers.
    async fn exchange(
        pool: &Pool,
        addr: SocketAddr,
        req: Request<ReqBody>,
    ) -> Result<(StatusCode, Bytes, Option<HeaderMap>), String> {
        let mut lease = pool
            .acquire(&crate::config::EndpointSpec::at(addr), addr, Version::Http1)
            .await
            .map_err(|e| e.to_string())?;
        let conn = lease.h1_mut().unwrap();
        let (parts, body) = req.into_parts();
        let exchange = conn.send(&parts, body).await.map_err(|e| e.to_string())?;
        let status = exchange.head.response.status();
        let body = H1Body::new(lease, exchange);
        let collected = body.collect().await.map_err(|e| e.to_string())?;
        let trailers = collected.trailers().cloned();
        Ok((status, collected.to_bytes(), trailers))
    }

    fn get() -> Request<ReqBody> {
        Request::get("/")
            .header("host", "up")
            .body(ReqBody::Empty)
            .unwrap()
    }

    /// A connection the upstream reset before the request went out: the
    /// write fails with nothing written, and the error says so (the
    /// request may then go elsewhere whatever its method).
    #[tokio::test]
    async fn a_reset_before_any_byte_is_written_is_not_sent() {
        let (reset_tx, reset_rx) = tokio::sync::oneshot::channel();
        let reset_tx = std::sync::Mutex::new(Some(reset_tx));
        let (addr, _) = upstream(move |s| {
            // Closed with SO_LINGER 0: an RST, not a FIN.
            s.set_zero_linger().unwrap();
            drop(s);
            if let Some(tx) = reset_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            async {}
        })
        .await;
        let pool = pool();
        let mut lease = pool
            .acquire(&crate::config::EndpointSpec::at(addr), addr, Version::Http1)
            .await
            .unwrap();
        reset_rx.await.unwrap();
        let (parts, body) = get().into_parts();
        let err = match lease.h1_mut().unwrap().send(&parts, body).await {
            Err(e) => e,
            Ok(_) => panic!("a reset connection answered"),
        };
        assert!(err.not_sent(), "{err}");
        assert!(
            err.to_string()
                .contains("before any of the request was written")
        );
    }

    #[tokio::test]
    async fn keep_alive_reuses_one_connection_for_length_and_chunked_bodies() {
        let (addr, accepted) = upstream(|mut s| async move {
            let mut n = 0;
            while let Some(req) = read_request(&mut s).await {
                assert!(req.starts_with("GET / HTTP/1.1\r\nhost: up\r\n"), "{req}");
                n += 1;
                let resp: &[u8] = if n % 2 == 1 {
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                } else {
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 7\r\n\r\n"
                };
                s.write_all(resp).await.unwrap();
            }
        })
        .await;
        let pool = pool();
        for i in 0..4 {
            let (status, body, trailers) = exchange(&pool, addr, get()).await.unwrap();
            assert_eq!(status, 200);
            if i % 2 == 0 {
                assert_eq!(body, "hello", "the interim 100 is skipped");
            } else {
                assert_eq!(body, "abc");
                assert_eq!(trailers.unwrap()["x-sum"], "7");
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.open_connections(), 1);
    }

    #[tokio::test]
    async fn an_early_response_ends_the_exchange_and_the_connection() {
        // The upstream refuses a large body without reading it and keeps
        // the connection open: the client must not block on its upload.
        let (addr, _) = upstream(|mut s| async move {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut b).await.unwrap();
                head.push(b[0]);
            }
            s.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!")
                .await
                .unwrap();
            // Hold the connection open, unread, until the test ends.
            std::future::pending::<()>().await;
        })
        .await;
        let pool = pool();
        let big = Bytes::from(vec![b'x'; 16 << 20]);
        let req = Request::post("/upload")
            .body(ReqBody::Replay {
                chunks: [big].into_iter().collect(),
                trailers: None,
            })
            .unwrap();
        let (status, body, _) =
            tokio::time::timeout(Duration::from_secs(10), exchange(&pool, addr, req))
                .await
                .expect("no deadlock on an unread upload")
                .unwrap();
        assert_eq!(
            (status, &body[..]),
            (StatusCode::PAYLOAD_TOO_LARGE, &b"big!"[..])
        );
        assert_eq!(
            pool.open_connections(),
            0,
            "a half-sent request closes its connection"
        );
    }

    #[tokio::test]
    async fn close_delimited_bodies_read_to_eof_and_are_not_reused() {
        let (addr, _) = upstream(|mut s| async move {
            read_request(&mut s).await;
            s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
                .await
                .unwrap();
        })
        .await;
        let pool = pool();
        let (_, body, _) = exchange(&pool, addr, get()).await.unwrap();
        assert_eq!(body, "until the end");
        assert_eq!(pool.open_connections(), 0);
    }

    #[tokio::test]
    async fn an_idle_connection_closed_by_the_upstream_is_not_reused() {
        let (addr, accepted) = upstream(|mut s| async move {
            read_request(&mut s).await;
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
            // then close the kept-alive connection
        })
        .await;
        let pool = pool();
        exchange(&pool, addr, get()).await.unwrap();
        let ep = pool.endpoint(crate::config::EndpointSpec::at(addr).key());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ep.idle.lock()[0].conn.is_stale() {
            assert!(
                Instant::now() < deadline,
                "the upstream's FIN was never noticed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (status, _, _) = exchange(&pool, addr, get()).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "a fresh connection was dialled"
        );
    }

    #[tokio::test]
    async fn a_body_shorter_than_its_content_length_fails_at_once() {
        // The upstream waits for the promised bytes; the client must not
        // wait with it for a response that cannot come.
        let (addr, _) = upstream(|mut s| async move {
            read_request(&mut s).await;
        })
        .await;
        let pool = pool();
        let req = Request::post("/")
            .header("content-length", "10")
            .body(ReqBody::Replay {
                chunks: [Bytes::from_static(b"hello")].into_iter().collect(),
                trailers: None,
            })
            .unwrap();
        let e = tokio::time::timeout(Duration::from_secs(10), exchange(&pool, addr, req))
            .await
            .expect("the exchange waited for a response")
            .unwrap_err();
        assert!(
            e.contains("request body length (5) differs from its content-length (10)"),
            "{e}"
        );
        assert_eq!(pool.open_connections(), 0);
    }

    #[tokio::test]
    async fn malformed_responses_are_errors_that_name_the_problem() {
        for (wire, expect) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"[..],
                "in the middle",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "chunk size",
            ),
            (b"NOPE\r\n\r\n", "malformed upstream response"),
            (b"", "before sending a response"),
        ] {
            let (addr, _) = upstream(move |mut s| async move {
                read_request(&mut s).await;
                s.write_all(wire).await.unwrap();
            })
            .await;
            let pool = pool();
            let e = exchange(&pool, addr, get()).await.unwrap_err();
            assert!(e.contains(expect), "{wire:?}: {e}");
            assert_eq!(pool.open_connections(), 0);
        }
    }
}
