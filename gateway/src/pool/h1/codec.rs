//! The HTTP/1.1 client's wire format, sans I/O: a request head and body
//! encoded into bytes; response bytes decoded into events (head, data,
//! trailers, end). No sockets and no clocks: the connection (`super`) moves
//! bytes, this decides what they mean.
//!
//! Strict where two parsers could disagree (RFC 9112 §6): only the
//! `chunked` transfer coding, Transfer-Encoding winning over Content-Length
//! (and the connection closed after such a message), no Transfer-Encoding
//! on HTTP/1.0, lengths of digits only, chunk lines without control
//! characters or bare LF, a bounded number of interim responses. What is
//! refused is a named [`CodecError`], never a guess. Fuzzed
//! (`fuzz/fuzz_targets/h1_response.rs`) and checked against hyper's parser
//! (`tests/h1_differential.rs`).

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};

/// Largest response head (and trailer block) accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Header fields in one head or trailer block.
pub const MAX_HEADERS: usize = 128;
/// Longest chunk-size line (with its extensions).
pub const MAX_CHUNK_LINE: usize = 4096;
/// Interim (1xx) responses skipped before one final response.
pub const MAX_INTERIM: u32 = 16;

/// Why a response was refused. Each is the upstream's fault: its HTTP/1.1
/// is not what RFC 9112 allows, or is ambiguous.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("invalid response head: {0}")]
    Head(httparse::Error),
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("response head or trailer block larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid status code {0}")]
    Status(u16),
    #[error("invalid header name")]
    HeaderName,
    #[error("invalid value of header {0}")]
    HeaderValue(HeaderName),
    #[error("invalid content-length {0:?} (digits only)")]
    ContentLength(String),
    #[error("conflicting content-length values")]
    ConflictingContentLength,
    #[error("transfer-encoding {0:?}: only a single `chunked` is supported")]
    TransferCoding(String),
    #[error("transfer-encoding in an HTTP/1.0 response (RFC 9112 §6.1: faulty framing)")]
    TransferEncodingOnHttp10,
    #[error("more than {MAX_INTERIM} interim (1xx) responses")]
    TooManyInterim,
    #[error("invalid chunk size")]
    ChunkSize,
    #[error("chunk size line too long, or with a control character or a bare LF")]
    ChunkLine,
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    #[error("trailers: {0}")]
    Trailers(httparse::Error),
    #[error("invalid trailer field")]
    TrailerField,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// A response head and what the connection may do after its body.
#[derive(Debug)]
pub struct ResponseHead {
    /// Status, version and headers as received. How the body is delimited
    /// is `framing`; forwarding writes the framing headers anew from the
    /// body (`proxy::headers::frame_response`), never copies them.
    pub response: Response<()>,
    pub framing: Framing,
    /// The connection may carry another request once the body has ended.
    pub reusable: bool,
    /// 101 Switching Protocols: the connection now belongs to the upgrade.
    pub upgraded: bool,
}

/// What the decoder made of the bytes it was given.
#[derive(Debug)]
pub enum Event {
    Head(ResponseHead),
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// More bytes are needed; what was given is kept in the buffer.
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body(Framing),
    Done,
}

/// Decodes one response (its interim responses, head and body) from the
/// bytes of a connection, consuming what it decoded from the buffer.
#[derive(Debug)]
pub struct ResponseDecoder {
    state: State,
    /// The request was HEAD: the response has no body whatever it says.
    head_only: bool,
    interim: u32,
}

impl ResponseDecoder {
    pub fn new(head_only: bool) -> Self {
        Self {
            state: State::Head,
            head_only,
            interim: 0,
        }
    }

    /// The next event: a head first, then the body's data, trailers and end.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Event, CodecError> {
        match self.state {
            State::Head => Ok(self.head(buf)?.map_or(Event::NeedMore, Event::Head)),
            State::Body(_) | State::Done => self.body(buf),
        }
    }

    /// The final response head, skipping interim responses other than 101.
    pub fn head(&mut self, buf: &mut BytesMut) -> Result<Option<ResponseHead>, CodecError> {
        loop {
            let Some(head) = parse_head(buf, self.head_only)? else {
                if buf.len() > MAX_HEAD {
                    return Err(CodecError::HeadTooLarge);
                }
                return Ok(None);
            };
            let code = head.response.status().as_u16();
            if (100..200).contains(&code) && code != 101 {
                self.interim += 1;
                if self.interim > MAX_INTERIM {
                    return Err(CodecError::TooManyInterim);
                }
                continue;
            }
            self.state = if head.upgraded || head.framing == Framing::Empty {
                State::Done
            } else {
                State::Body(head.framing)
            };
            return Ok(Some(head));
        }
    }

    /// The next piece of the body. After the head only.
    pub fn body(&mut self, buf: &mut BytesMut) -> Result<Event, CodecError> {
        let framing = match &mut self.state {
            State::Head => return Ok(Event::NeedMore),
            State::Done => return Ok(Event::End),
            State::Body(f) => f,
        };
        let event = match framing {
            Framing::Empty | Framing::Length(0) => Event::End,
            Framing::Length(n) => {
                let Some(data) = take_upto(n, buf) else {
                    return Ok(Event::NeedMore);
                };
                if *n == 0 {
                    // The last bytes end the body at once: a consumer may
                    // stop polling once the body says it ended.
                    self.state = State::Done;
                }
                return Ok(Event::Data(data));
            }
            Framing::UntilClose => {
                return Ok(if buf.is_empty() {
                    Event::NeedMore
                } else {
                    Event::Data(buf.split().freeze())
                });
            }
            Framing::Chunked(state) => chunked(state, buf)?,
        };
        if matches!(event, Event::End | Event::Trailers(_)) {
            self.state = State::Done;
        }
        Ok(event)
    }

    /// The upstream closed the connection: true when that ends the body
    /// cleanly (a close-delimited body), false when it cut it short.
    pub fn eof(&mut self) -> bool {
        match self.state {
            State::Body(Framing::UntilClose) | State::Done => {
                self.state = State::Done;
                true
            }
            _ => false,
        }
    }

    /// The head was decoded and the body has ended.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// What is left of the body, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Done | State::Body(Framing::Empty) => Some(0),
            State::Body(Framing::Length(n)) => Some(n),
            _ => None,
        }
    }
}

fn chunked(state: &mut Chunk, buf: &mut BytesMut) -> Result<Event, CodecError> {
    loop {
        match state {
            Chunk::Size => {
                let window = &buf[..buf.len().min(MAX_CHUNK_LINE + 2)];
                let Some(lf) = window.iter().position(|&b| b == b'\n') else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(CodecError::ChunkLine);
                    }
                    return Ok(Event::NeedMore);
                };
                if lf == 0 || buf[lf - 1] != b'\r' {
                    return Err(CodecError::ChunkLine);
                }
                let size = parse_chunk_line(&buf[..lf - 1])?;
                buf.advance(lf + 1);
                *state = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(n) => {
                let Some(data) = take_upto(n, buf) else {
                    return Ok(Event::NeedMore);
                };
                if *n == 0 {
                    *state = Chunk::DataEnd;
                }
                return Ok(Event::Data(data));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    if buf.first().is_some_and(|&b| b != b'\r') {
                        return Err(CodecError::ChunkEnd);
                    }
                    return Ok(Event::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(CodecError::ChunkEnd);
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers => return trailers(buf),
        }
    }
}

/// Up to `n` bytes of what `buf` holds (None when it holds none), taken
/// off `n`.
fn take_upto(n: &mut u64, buf: &mut BytesMut) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let k = (*n).min(buf.len() as u64);
    *n -= k;
    Some(buf.split_to(k as usize).freeze())
}

fn trailers(buf: &mut BytesMut) -> Result<Event, CodecError> {
    if buf.starts_with(b"\r\n") {
        buf.advance(2);
        return Ok(Event::End);
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete((n, _))) if n > MAX_HEAD => Err(CodecError::HeadTooLarge),
        Ok(httparse::Status::Complete((n, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for f in fields.iter() {
                let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(f.name.as_bytes()),
                    HeaderValue::from_bytes(f.value),
                ) else {
                    return Err(CodecError::TrailerField);
                };
                // RFC 9110 §6.5.1: no framing or routing in trailers.
                if !is_forbidden_trailer(&name) {
                    map.append(name, value);
                }
            }
            buf.advance(n);
            Ok(Event::Trailers(map))
        }
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => Ok(Event::NeedMore),
        Ok(httparse::Status::Partial) => Err(CodecError::HeadTooLarge),
        Err(httparse::Error::TooManyHeaders) => Err(CodecError::TooManyHeaders),
        Err(e) => Err(CodecError::Trailers(e)),
    }
}

/// Fields a trailer block must not carry (framing, routing, hop-by-hop).
pub fn is_forbidden_trailer(name: &HeaderName) -> bool {
    [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::HOST,
        header::CONNECTION,
        header::TRAILER,
        header::TE,
    ]
    .contains(name)
}

/// `chunk-size [ chunk-ext ]` (RFC 9112 §7.1): hex digits, then nothing or
/// extensions after optional whitespace and `;`. Extensions are ignored.
fn parse_chunk_line(line: &[u8]) -> Result<u64, CodecError> {
    if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(CodecError::ChunkLine);
    }
    let end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(end);
    if digits.is_empty() || digits.len() > 15 {
        return Err(CodecError::ChunkSize);
    }
    if !rest.is_empty() && rest.trim_ascii_start().first() != Some(&b';') {
        return Err(CodecError::ChunkSize);
    }
    let mut n = 0u64;
    for &d in digits {
        n = n * 16 + u64::from((d as char).to_digit(16).unwrap_or(0));
    }
    Ok(n)
}

/// Parses a response head at the start of `buf`, consuming it when complete.
fn parse_head(buf: &mut BytesMut, head_only: bool) -> Result<Option<ResponseHead>, CodecError> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Header spans are taken as offsets, so values can share one buffer.
    let mut spans = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
    let (len, code, minor, count) = {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
                return Err(CodecError::HeadTooLarge);
            }
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(CodecError::TooManyHeaders),
            Err(e) => return Err(CodecError::Head(e)),
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
    let status = StatusCode::from_u16(code).map_err(|_| CodecError::Status(code))?;
    let mut map = HeaderMap::with_capacity(count);
    for &(ns, ne, vs, ve) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[ns..ne]).map_err(|_| CodecError::HeaderName)?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| CodecError::HeaderValue(name.clone()))?;
        map.append(name, value);
    }
    let keep_alive = if minor >= 1 {
        !connection_has(&map, "close")
    } else {
        connection_has(&map, "keep-alive")
    };
    let (framing, delimited) = framing_of(code, minor, head_only, &map)?;
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
fn framing_of(
    code: u16,
    minor: u8,
    head_only: bool,
    h: &HeaderMap,
) -> Result<(Framing, bool), CodecError> {
    let te = h.contains_key(header::TRANSFER_ENCODING);
    if te && minor == 0 {
        return Err(CodecError::TransferEncodingOnHttp10);
    }
    let no_body = head_only || (100..200).contains(&code) || code == 204 || code == 304;
    if te {
        let codings = list(h.get_all(header::TRANSFER_ENCODING));
        if codings.len() != 1 || !codings[0].eq_ignore_ascii_case("chunked") {
            return Err(CodecError::TransferCoding(codings.join(", ")));
        }
        // Transfer-Encoding wins; with a Content-Length as well the
        // message is suspect and the connection is not reused.
        let clean = !h.contains_key(header::CONTENT_LENGTH);
        return Ok(if no_body {
            (Framing::Empty, clean)
        } else {
            (Framing::Chunked(Chunk::Size), clean)
        });
    }
    let length = content_length(h)?;
    Ok(match length {
        _ if no_body => (Framing::Empty, true),
        Some(0) => (Framing::Empty, true),
        Some(n) => (Framing::Length(n), true),
        None => (Framing::UntilClose, false),
    })
}

/// The Content-Length of a message, if any: every value (and every
/// element of a list) must be digits only and all must agree.
pub fn content_length(h: &HeaderMap) -> Result<Option<u64>, CodecError> {
    let mut length: Option<u64> = None;
    for v in h.get_all(header::CONTENT_LENGTH) {
        let text = String::from_utf8_lossy(v.as_bytes());
        for part in v.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(CodecError::ContentLength(text.into_owned()));
            }
            let n = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| CodecError::ContentLength(text.to_string()))?;
            if length.is_some_and(|l| l != n) {
                return Err(CodecError::ConflictingContentLength);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// The elements of a comma-separated list header. Empty elements are kept
/// (as ""): parsers disagree on what `chunked,` means, so it is refused.
fn list(values: header::GetAll<'_, HeaderValue>) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|e| e.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn connection_has(h: &HeaderMap, token: &str) -> bool {
    h.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// How a request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyMode {
    None,
    Length(u64),
    Chunked,
}

/// What is known of a request body before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodySize {
    /// No body at all.
    Empty,
    Exact(u64),
    Unknown,
}

impl BodySize {
    /// The length, when known (an empty body's is 0).
    pub fn known(self) -> Option<u64> {
        match self {
            BodySize::Empty => Some(0),
            BodySize::Exact(n) => Some(n),
            BodySize::Unknown => None,
        }
    }
}

/// Request line and headers. The body's framing is ours to decide from
/// what the body is, never from a header the client sent: Content-Length
/// and Transfer-Encoding are dropped and written anew (a known size gets a
/// Content-Length, an unknown one is chunked).
pub fn encode_request_head(
    parts: &http::request::Parts,
    size: BodySize,
    out: &mut BytesMut,
) -> BodyMode {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING || name == header::CONTENT_LENGTH {
            continue;
        }
        encode_field(name, value, out);
    }
    let mode = match size {
        BodySize::Empty | BodySize::Exact(0) => {
            if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            BodyMode::None
        }
        BodySize::Exact(n) => {
            out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
            BodyMode::Length(n)
        }
        BodySize::Unknown => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            BodyMode::Chunked
        }
    };
    out.extend_from_slice(b"\r\n");
    mode
}

/// One chunk of a chunked body (nothing for empty data: a zero-size chunk
/// would end the body).
pub fn encode_chunk(data: &[u8], out: &mut BytesMut) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk of a chunked body, with its trailers (framing fields
/// left out).
pub fn encode_last_chunk(trailers: Option<&HeaderMap>, out: &mut BytesMut) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        if !is_forbidden_trailer(name) {
            encode_field(name, value, out);
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn encode_field(name: &HeaderName, value: &HeaderValue, out: &mut BytesMut) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
