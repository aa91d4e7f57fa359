//! Our own HTTP/1.1 client connection. The request's task writes the request
//! and reads the response itself, so a proxied request costs no hop to a
//! connection task and no channel in between (hyper's client dispatches
//! through both, which was a tenth of the sidecar's CPU per request).
//!
//! A connection goes back to its pool only when the response body was read
//! to its end with nothing left over; anything unusual (an early response
//! while the request body was still being sent, a close-delimited body, an
//! interrupted exchange, `Connection: close`) closes it instead.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use super::io::Io;
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;

use super::{ConnGuard, Lease};
use crate::proxy::body::{BoxError, ReqBody};

/// Largest response head (and trailer block) accepted.
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
const READ_CHUNK: usize = 16 * 1024;
/// Room below which a read buffer is grown (by READ_CHUNK). A buffer whose
/// front was handed out as a body keeps serving the next responses from
/// the rest of its allocation instead of allocating anew each time.
const READ_MIN_ROOM: usize = 2 * 1024;
/// Request bytes gathered before a write.
const WRITE_BATCH: usize = 64 * 1024;
const MAX_CHUNK_LINE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("upstream I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("upstream closed the connection before sending a response")]
    Closed,
    #[error("upstream closed the connection in the middle of the response")]
    Truncated,
    #[error("malformed upstream response: {0}")]
    Malformed(String),
    #[error("upstream response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("reading the request body failed: {0}")]
    RequestBody(BoxError),
    #[error("request body length ({sent}) differs from its content-length ({declared})")]
    BodyLength { declared: u64, sent: u64 },
    #[error("upstream answered 101 Switching Protocols to a request that asked for no upgrade")]
    UnexpectedUpgrade,
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304, or a zero length).
    Empty,
    /// This many bytes remain.
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    UntilClose,
    /// The body was read to its end.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    NeedMore,
}

/// An HTTP/1.1 connection to one endpoint, idle or in use by one request.
pub struct H1Conn {
    io: Io,
    buf: BytesMut,
    /// The connection-limit slot, held as long as the socket.
    guard: ConnGuard,
}

/// A response head and what the connection may do after its body.
pub struct ResponseHead {
    pub response: Response<()>,
    pub framing: Framing,
    /// The connection may carry another request once the body has ended.
    pub reusable: bool,
    /// 101 Switching Protocols: the connection now belongs to the upgrade.
    pub upgraded: bool,
}

impl H1Error {
    /// The client's side of the exchange failed, not the upstream.
    pub fn is_downstream(&self) -> bool {
        matches!(self, H1Error::RequestBody(_) | H1Error::BodyLength { .. })
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

    /// Sends a request (origin-form URI, headers as given) and reads the
    /// response head, skipping interim 1xx responses other than 101. The
    /// exchange is full duplex: a response may start while the request body
    /// is still being sent (an echo, an early 413), and whatever is left of
    /// the upload comes back with the head, for the response body to finish.
    pub async fn send(
        &mut self,
        parts: &http::request::Parts,
        body: ReqBody,
    ) -> Result<(ResponseHead, Option<Upload>), H1Error> {
        let upgrade = parts.headers.contains_key(header::UPGRADE);
        let head_only = parts.method == Method::HEAD;
        let mut out = BytesMut::with_capacity(512);
        let mode = encode_head(parts, &body, &mut out);
        let mut upload = Some(Upload {
            body,
            mode,
            out,
            sent: 0,
            body_done: false,
        });
        let mut upload_error = None;
        let mut head = std::future::poll_fn(|cx| {
            self.poll_exchange(&mut upload, &mut upload_error, head_only, cx)
        })
        .await?;
        if head.upgraded && !upgrade {
            return Err(H1Error::UnexpectedUpgrade);
        }
        // An upload cut short leaves the connection in an unknown state.
        head.reusable &= upload_error.is_none();
        Ok((head, upload))
    }

    fn poll_exchange(
        &mut self,
        upload: &mut Option<Upload>,
        upload_error: &mut Option<H1Error>,
        head_only: bool,
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
            if let Some(head) = parse_head(&mut self.buf, head_only)? {
                let code = head.response.status().as_u16();
                if (100..200).contains(&code) && code != 101 {
                    continue;
                }
                return Poll::Ready(Ok(head));
            }
            if self.buf.len() > MAX_HEAD {
                return Poll::Ready(Err(H1Error::HeadTooLarge));
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

/// The part of a request still to be written: encoded bytes not yet sent
/// and the body they come from.
pub struct Upload {
    body: ReqBody,
    mode: BodyMode,
    out: BytesMut,
    sent: u64,
    body_done: bool,
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
                    Poll::Ready(None) => self.end()?,
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
                Ok(n) => self.out.advance(n),
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    fn encode(&mut self, f: Frame<Bytes>) -> Result<(), H1Error> {
        match f.into_data() {
            Ok(data) => {
                self.sent += data.len() as u64;
                if let BodyMode::Length(declared) = self.mode
                    && self.sent > declared
                {
                    return Err(H1Error::BodyLength {
                        declared,
                        sent: self.sent,
                    });
                }
                if data.is_empty() {
                    return Ok(());
                }
                if self.mode == BodyMode::Chunked {
                    self.out
                        .extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    self.out.extend_from_slice(&data);
                    self.out.extend_from_slice(b"\r\n");
                } else {
                    self.out.extend_from_slice(&data);
                }
                Ok(())
            }
            Err(f) => {
                // Trailers end the body; they travel only in a chunked one.
                if let (Ok(trailers), BodyMode::Chunked) = (f.into_trailers(), self.mode) {
                    self.out.extend_from_slice(b"0\r\n");
                    encode_fields(&trailers, &mut self.out);
                    self.out.extend_from_slice(b"\r\n");
                    self.body_done = true;
                    return Ok(());
                }
                self.end()
            }
        }
    }

    fn end(&mut self) -> Result<(), H1Error> {
        self.body_done = true;
        match self.mode {
            BodyMode::Chunked => self.out.extend_from_slice(b"0\r\n\r\n"),
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyMode {
    None,
    Length(u64),
    Chunked,
}

/// Request line and headers; decides how the body is delimited: a given
/// content-length is kept, a body of known size gets one, any other body
/// is chunked.
fn encode_head(parts: &http::request::Parts, body: &ReqBody, out: &mut BytesMut) -> BodyMode {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    encode_fields(&parts.headers, out);
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mode = if let Some(n) = declared {
        BodyMode::Length(n)
    } else if body.is_end_stream() {
        if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        BodyMode::None
    } else if let Some(n) = body.size_hint().exact() {
        out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
        BodyMode::Length(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        BodyMode::Chunked
    };
    out.extend_from_slice(b"\r\n");
    mode
}

fn encode_fields(headers: &HeaderMap, out: &mut BytesMut) {
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING {
            continue; // framing is ours to decide
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses a response head at the start of `buf`, consuming it when complete.
fn parse_head(buf: &mut BytesMut, head_only: bool) -> Result<Option<ResponseHead>, H1Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Header spans are taken as offsets, so values can share one buffer.
    let mut spans = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
    let (len, code, minor, count) = {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(H1Error::Malformed(format!(
                    "more than {MAX_HEADERS} header fields"
                )));
            }
            Err(e) => return Err(H1Error::Malformed(e.to_string())),
        };
        let base = buf.as_ptr() as usize;
        for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
            let n = h.name.as_ptr() as usize - base;
            let v = h.value.as_ptr() as usize - base;
            *span = (n, n + h.name.len(), v, v + h.value.len());
        }
        (
            len,
            resp.code.unwrap_or(0),
            resp.version.unwrap_or(1),
            resp.headers.len(),
        )
    };
    let head = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code)
        .map_err(|_| H1Error::Malformed(format!("invalid status code {code}")))?;
    let mut map = HeaderMap::with_capacity(count);
    for &(ns, ne, vs, ve) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[ns..ne])
            .map_err(|_| H1Error::Malformed("invalid header name".into()))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| H1Error::Malformed(format!("invalid value of header {name}")))?;
        map.append(name, value);
    }
    let keep_alive = if minor >= 1 {
        !connection_has(&map, "close")
    } else {
        connection_has(&map, "keep-alive")
    };
    let (framing, delimited) = framing_of(code, head_only, &map)?;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = if minor >= 1 {
        http::Version::HTTP_11
    } else {
        http::Version::HTTP_10
    };
    *response.headers_mut() = map;
    Ok(Some(ResponseHead {
        response,
        framing,
        reusable: keep_alive && delimited && code != 101,
        upgraded: code == 101,
    }))
}

/// The body's framing, and whether its end is known without a close.
fn framing_of(code: u16, head_only: bool, h: &HeaderMap) -> Result<(Framing, bool), H1Error> {
    if head_only || (100..200).contains(&code) || code == 204 || code == 304 {
        return Ok((Framing::Empty, true));
    }
    if let Some(te) = h.get_all(header::TRANSFER_ENCODING).iter().next_back() {
        let last = te
            .to_str()
            .ok()
            .and_then(|s| s.rsplit(',').next())
            .map(str::trim);
        let chunked = last.is_some_and(|c| c.eq_ignore_ascii_case("chunked"));
        // With both headers present the connection must not be reused.
        let clean = chunked && !h.contains_key(header::CONTENT_LENGTH);
        return Ok(if chunked {
            (Framing::Chunked(Chunk::Size), clean)
        } else {
            (Framing::UntilClose, false)
        });
    }
    let mut length: Option<u64> = None;
    for v in h.get_all(header::CONTENT_LENGTH) {
        let s = v
            .to_str()
            .map_err(|_| H1Error::Malformed("invalid content-length".into()))?;
        for part in s.split(',') {
            let n: u64 = part
                .trim()
                .parse()
                .map_err(|_| H1Error::Malformed(format!("invalid content-length {s:?}")))?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::Malformed(
                    "conflicting content-length values".into(),
                ));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => (Framing::Empty, true),
        Some(n) => (Framing::Length(n), true),
        None => (Framing::UntilClose, false),
    })
}

fn connection_has(h: &HeaderMap, token: &str) -> bool {
    h.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

impl Framing {
    /// Decodes what `buf` holds of the body.
    fn step(&mut self, buf: &mut BytesMut) -> Result<Step, H1Error> {
        match self {
            Framing::Empty | Framing::Done | Framing::Length(0) => Ok(Step::End),
            Framing::Length(n) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let k = (*n).min(buf.len() as u64);
                *n -= k;
                Ok(Step::Data(buf.split_to(k as usize).freeze()))
            }
            Framing::UntilClose => Ok(if buf.is_empty() {
                Step::NeedMore
            } else {
                Step::Data(buf.split().freeze())
            }),
            Framing::Chunked(state) => loop {
                match state {
                    Chunk::Size => {
                        let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") else {
                            if buf.len() > MAX_CHUNK_LINE {
                                return Err(H1Error::Malformed("chunk size line too long".into()));
                            }
                            return Ok(Step::NeedMore);
                        };
                        let size = parse_chunk_size(&buf[..pos])?;
                        buf.advance(pos + 2);
                        *state = if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        };
                    }
                    Chunk::Data(n) => {
                        if buf.is_empty() {
                            return Ok(Step::NeedMore);
                        }
                        let k = (*n).min(buf.len() as u64);
                        *n -= k;
                        let data = buf.split_to(k as usize).freeze();
                        if *n == 0 {
                            *state = Chunk::DataEnd;
                        }
                        return Ok(Step::Data(data));
                    }
                    Chunk::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(Step::NeedMore);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(H1Error::Malformed(
                                "chunk data not followed by CRLF".into(),
                            ));
                        }
                        buf.advance(2);
                        *state = Chunk::Size;
                    }
                    Chunk::Trailers => {
                        if buf.starts_with(b"\r\n") {
                            buf.advance(2);
                            return Ok(Step::End);
                        }
                        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                        return match httparse::parse_headers(buf, &mut fields) {
                            Ok(httparse::Status::Complete((n, fields))) => {
                                let mut map = HeaderMap::with_capacity(fields.len());
                                for f in fields.iter() {
                                    let (Ok(name), Ok(value)) = (
                                        HeaderName::from_bytes(f.name.as_bytes()),
                                        HeaderValue::from_bytes(f.value),
                                    ) else {
                                        return Err(H1Error::Malformed(
                                            "invalid trailer field".into(),
                                        ));
                                    };
                                    map.append(name, value);
                                }
                                buf.advance(n);
                                Ok(Step::Trailers(map))
                            }
                            Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => {
                                Ok(Step::NeedMore)
                            }
                            Ok(httparse::Status::Partial) => Err(H1Error::HeadTooLarge),
                            Err(e) => Err(H1Error::Malformed(format!("trailers: {e}"))),
                        };
                    }
                }
            },
        }
    }
}

fn reserve_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_MIN_ROOM {
        buf.reserve(READ_CHUNK);
    }
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(H1Error::Malformed("invalid chunk size".into()));
    }
    let mut n = 0u64;
    for &d in digits {
        let v = (d as char)
            .to_digit(16)
            .ok_or_else(|| H1Error::Malformed("invalid chunk size".into()))?;
        n = n * 16 + u64::from(v);
    }
    Ok(n)
}

/// A response body read straight from the upstream connection by whoever
/// polls it. Holds the connection's lease: handed back to the pool at a
/// clean end, closed if the body is dropped or fails first.
pub struct H1Body {
    lease: Option<Lease>,
    framing: Framing,
    reusable: bool,
    /// The rest of the request, sent while the response is read (boxed:
    /// rarely there, and a body should stay small).
    upload: Option<Box<Upload>>,
}

impl H1Body {
    pub fn new(lease: Lease, head: &ResponseHead, upload: Option<Upload>) -> Self {
        let framing = head.framing;
        let mut body = Self {
            lease: Some(lease),
            framing,
            reusable: head.reusable,
            upload: upload.map(Box::new),
        };
        if framing == Framing::Empty {
            body.finish();
        }
        body
    }

    /// The (empty) body of a 101 Switching Protocols response: it keeps
    /// the connection for `into_conn`.
    pub fn upgraded(lease: Lease) -> Self {
        Self {
            lease: Some(lease),
            framing: Framing::Done,
            reusable: false,
            upload: None,
        }
    }

    /// The connection itself, for a 101 Switching Protocols response.
    pub fn into_conn(mut self) -> Option<H1Conn> {
        self.lease.take()?.take_h1()
    }

    fn finish(&mut self) {
        self.framing = Framing::Done;
        // A response that ended before its request did: the upstream will
        // not read the rest, so the connection cannot carry another.
        if self.upload.take().is_some() {
            self.reusable = false;
        }
        if let Some(lease) = self.lease.take()
            && self.reusable
        {
            lease.release();
        }
    }

    fn fail(&mut self) {
        self.framing = Framing::Done;
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
            if this.framing == Framing::Done {
                return Poll::Ready(None);
            }
            let Some(conn) = this.lease.as_mut().and_then(Lease::h1_mut) else {
                // An upgrade took the connection.
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
            let step = match this.framing.step(&mut conn.buf) {
                Ok(s) => s,
                Err(e) => {
                    this.fail();
                    return Poll::Ready(Some(Err(e.into())));
                }
            };
            match step {
                Step::Data(d) => {
                    // The last bytes give the connection back at once: a
                    // consumer may stop polling once the body says it ended.
                    if this.framing == Framing::Length(0) {
                        this.reusable &= conn.buf.is_empty();
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Step::Trailers(t) => {
                    this.reusable &= conn.buf.is_empty();
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Step::End => {
                    this.reusable &= conn.buf.is_empty();
                    this.finish();
                    return Poll::Ready(None);
                }
                Step::NeedMore => {
                    reserve_room(&mut conn.buf);
                    let read = ready!(tokio_util::io::poll_read_buf(
                        Pin::new(&mut conn.io),
                        cx,
                        &mut conn.buf
                    ));
                    match read {
                        Ok(0) if this.framing == Framing::UntilClose => {
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
        matches!(self.framing, Framing::Done | Framing::Empty)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done | Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn decode(
        framing: Framing,
        wire: &[u8],
        piece: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>, bool), H1Error> {
        // Feeds the wire bytes `piece` at a time, as reads would.
        let mut f = framing;
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut fed = 0;
        loop {
            match f.step(&mut buf)? {
                Step::Data(d) => data.extend_from_slice(&d),
                Step::Trailers(t) => return Ok((data, Some(t), buf.is_empty())),
                Step::End => return Ok((data, None, buf.is_empty())),
                Step::NeedMore => {
                    if fed == wire.len() {
                        return Err(H1Error::Truncated);
                    }
                    let end = (fed + piece).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
            if f == Framing::Length(0) {
                return Ok((data, None, buf.is_empty()));
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let wire = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-checksum: 42\r\n\r\n";
        for piece in 1..wire.len() {
            let (data, trailers, clean) =
                decode(Framing::Chunked(Chunk::Size), wire, piece).unwrap();
            assert_eq!(data, b"hello, world");
            assert_eq!(trailers.unwrap()["x-checksum"], "42");
            assert!(clean);
        }
        let (data, trailers, _) = decode(
            Framing::Chunked(Chunk::Size),
            b"A\r\n0123456789\r\n0\r\n\r\n",
            3,
        )
        .unwrap();
        assert_eq!(data, b"0123456789");
        assert!(trailers.is_none());
    }

    #[test]
    fn malformed_chunks_are_named() {
        for wire in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
            b"\r\n",
        ] {
            let e = decode(Framing::Chunked(Chunk::Size), wire, 64).unwrap_err();
            assert!(matches!(e, H1Error::Malformed(_)), "{wire:?}: {e}");
        }
        let e = decode(Framing::Chunked(Chunk::Size), b"5\r\nhel", 64).unwrap_err();
        assert!(matches!(e, H1Error::Truncated));
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let (data, _, clean) = decode(Framing::Length(5), b"helloHTTP/1.1", 64).unwrap();
        assert_eq!(data, b"hello");
        assert!(!clean, "bytes after the body make the connection unusable");
    }

    fn head(wire: &[u8], head_only: bool) -> Result<Option<ResponseHead>, H1Error> {
        parse_head(&mut BytesMut::from(wire), head_only)
    }

    #[test]
    fn response_heads_decide_framing_and_reuse() {
        let h = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-A: b\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.response.status(), 200);
        assert_eq!(h.response.headers()["x-a"], "b");
        assert_eq!(h.framing, Framing::Length(12));
        assert!(h.reusable);

        let h = head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked(Chunk::Size));
        assert!(h.reusable);

        let h = head(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!h.reusable);

        let h = head(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(!h.reusable, "HTTP/1.0 closes unless it asks for keep-alive");

        let h = head(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.reusable);

        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty, "a HEAD response has no body");
        let h = head(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Empty);

        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(3));

        assert!(
            head(b"HTTP/1.1 200 OK\r\nContent-Len", false)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn malformed_heads_are_named() {
        for wire in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"SMTP ready\r\n\r\n",
        ] {
            let e = head(wire, false)
                .err()
                .unwrap_or_else(|| panic!("{wire:?} accepted"));
            assert!(matches!(e, H1Error::Malformed(_)), "{wire:?}: {e}");
        }
    }

    #[test]
    fn request_heads_frame_their_bodies() {
        let encode = |req: Request<ReqBody>| {
            let (parts, body) = req.into_parts();
            let mut out = BytesMut::new();
            let mode = encode_head(&parts, &body, &mut out);
            (String::from_utf8(out.to_vec()).unwrap(), mode)
        };
        let replay = |s: &'static str| ReqBody::Replay {
            chunks: [Bytes::from_static(s.as_bytes())].into_iter().collect(),
            trailers: None,
        };
        let (text, mode) = encode(
            Request::post("/echo?x=1")
                .header("host", "up")
                .header("transfer-encoding", "chunked")
                .body(replay("hello"))
                .unwrap(),
        );
        assert_eq!(
            text,
            "POST /echo?x=1 HTTP/1.1\r\nhost: up\r\ncontent-length: 5\r\n\r\n"
        );
        assert_eq!(mode, BodyMode::Length(5));
        let (text, mode) = encode(Request::post("/").body(ReqBody::Empty).unwrap());
        assert_eq!(text, "POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(mode, BodyMode::None);
        let (text, _) = encode(Request::get("/").body(ReqBody::Empty).unwrap());
        assert_eq!(text, "GET / HTTP/1.1\r\n\r\n");
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
    use http::Request;

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
            .acquire(addr, None, Version::Http1)
            .await
            .map_err(|e| e.to_string())?;
        let conn = lease.h1_mut().unwrap();
        let (parts, body) = req.into_parts();
        let (head, upload) = conn.send(&parts, body).await.map_err(|e| e.to_string())?;
        let status = head.response.status();
        let body = H1Body::new(lease, &head, upload);
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
        let ep = pool.endpoint(addr, None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ep.idle.lock().unwrap()[0].conn.is_stale() {
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
