use super::*;
use http::Request;

/// What a whole response decoded to.
#[derive(Debug)]
struct Decoded {
    head: ResponseHead,
    body: Vec<u8>,
    trailers: Option<HeaderMap>,
    /// Bytes left in the buffer after the response: the connection must
    /// not be reused with them.
    leftover: usize,
}

#[derive(Debug, PartialEq)]
enum Failed {
    Codec(CodecError),
    /// The bytes ran out before the response ended.
    Truncated,
}

/// Feeds `wire` to a decoder `piece` bytes at a time, as reads would, until
/// the response ends; the end of `wire` is the upstream closing.
fn decode(wire: &[u8], piece: usize, head_only: bool) -> Result<Decoded, Failed> {
    let mut d = ResponseDecoder::new(head_only);
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut head = None;
    let mut body = Vec::new();
    loop {
        match d.decode(&mut buf).map_err(Failed::Codec)? {
            Event::Head(h) => head = Some(h),
            Event::Data(x) => body.extend_from_slice(&x),
            Event::Trailers(t) => {
                return Ok(Decoded {
                    head: head.unwrap(),
                    body,
                    trailers: Some(t),
                    leftover: buf.len(),
                });
            }
            Event::End => {
                return Ok(Decoded {
                    head: head.unwrap(),
                    body,
                    trailers: None,
                    leftover: buf.len(),
                });
            }
            Event::NeedMore if fed == wire.len() => {
                return match head {
                    Some(head) if d.eof() => Ok(Decoded {
                        head,
                        body,
                        trailers: None,
                        leftover: 0,
                    }),
                    _ => Err(Failed::Truncated),
                };
            }
            Event::NeedMore => {
                let end = (fed + piece).min(wire.len());
                buf.extend_from_slice(&wire[fed..end]);
                fed = end;
            }
        }
        if d.is_done()
            && let Some(head) = head.take()
        {
            return Ok(Decoded {
                head,
                body,
                trailers: None,
                leftover: buf.len(),
            });
        }
    }
}

/// The headers a decoded head is forwarded with: hop-by-hop fields gone,
/// the framing written anew from the body (what the proxy does).
fn forwarded(h: &ResponseHead, head_request: bool) -> HeaderMap {
    let mut headers = h.response.headers().clone();
    let size = match h.framing {
        Framing::Empty => http_body::SizeHint::with_exact(0),
        Framing::Length(n) => http_body::SizeHint::with_exact(n),
        _ => http_body::SizeHint::default(),
    };
    crate::proxy::headers::strip_hop_by_hop(&mut headers);
    crate::proxy::headers::frame_response(&mut headers, h.response.status(), &size, head_request);
    headers
}

fn codec_error(wire: &[u8]) -> CodecError {
    match decode(wire, 64, false) {
        Err(Failed::Codec(e)) => e,
        other => panic!(
            "{:?} was not refused: {:?}",
            String::from_utf8_lossy(&wire[..wire.len().min(200)]),
            other.map(|d| d.body.len())
        ),
    }
}

#[test]
fn chunked_bodies_decode_whatever_the_read_sizes() {
    let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7 ; a=\"b\"\r\n, world\r\n0\r\nx-checksum: 42\r\n\r\n";
    for piece in 1..wire.len() {
        let d = decode(wire, piece, false).unwrap();
        assert_eq!(d.body, b"hello, world");
        assert_eq!(d.trailers.unwrap()["x-checksum"], "42");
        assert_eq!(d.leftover, 0);
        assert!(d.head.reusable);
    }
    let d = decode(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
        3,
        false,
    )
    .unwrap();
    assert_eq!(d.body, b"0123456789");
    assert!(d.trailers.is_none());
}

#[test]
fn malformed_chunks_are_named() {
    let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (chunks, expect) in [
        ("zz\r\nhello\r\n0\r\n\r\n", CodecError::ChunkSize),
        ("5\r\nhelloXX0\r\n\r\n", CodecError::ChunkEnd),
        ("ffffffffffffffffff\r\n", CodecError::ChunkSize),
        ("\r\n", CodecError::ChunkSize),
        // Whitespace around the size: only before a `;` extension.
        (" 5\r\nhello\r\n0\r\n\r\n", CodecError::ChunkSize),
        ("5 \r\nhello\r\n0\r\n\r\n", CodecError::ChunkSize),
        ("+5\r\nhello\r\n0\r\n\r\n", CodecError::ChunkSize),
        ("0x5\r\nhello\r\n0\r\n\r\n", CodecError::ChunkSize),
        // A bare LF, or one hidden in an extension.
        ("5\nhello\r\n0\r\n\r\n", CodecError::ChunkLine),
        ("5;a=\nb\r\nhello\r\n0\r\n\r\n", CodecError::ChunkLine),
        ("5;a=\0\r\nhello\r\n0\r\n\r\n", CodecError::ChunkLine),
    ] {
        let wire = format!("{head}{chunks}");
        assert_eq!(codec_error(wire.as_bytes()), expect, "{chunks:?}");
    }
    let long = format!(
        "{head}5;{}\r\nhello\r\n0\r\n\r\n",
        "x".repeat(MAX_CHUNK_LINE)
    );
    assert_eq!(codec_error(long.as_bytes()), CodecError::ChunkLine);
    assert_eq!(
        decode(format!("{head}5\r\nhel").as_bytes(), 64, false).unwrap_err(),
        Failed::Truncated
    );
}

#[test]
fn length_bodies_stop_at_their_length() {
    let d = decode(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1",
        64,
        false,
    )
    .unwrap();
    assert_eq!(d.body, b"hello");
    assert_eq!(
        d.leftover, 8,
        "bytes after the body make the connection unusable"
    );
}

#[test]
fn response_heads_decide_framing_and_reuse() {
    let head = |wire: &[u8], head_only| decode(wire, wire.len(), head_only).unwrap().head;
    let h = head(
        b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-A: b\r\n\r\n0123456789ab",
        false,
    );
    assert_eq!(h.response.status(), 200);
    assert_eq!(h.response.headers()["x-a"], "b");
    assert_eq!(h.framing, Framing::Length(12));
    assert!(h.reusable);
    assert_eq!(
        forwarded(&h, false)[header::CONTENT_LENGTH],
        "12",
        "the length is the body's"
    );

    let h = head(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx",
        false,
    );
    assert!(!h.reusable);

    let h = head(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", false);
    assert!(!h.reusable, "HTTP/1.0 closes unless it asks for keep-alive");

    let h = head(b"HTTP/1.1 200 OK\r\n\r\n", false);
    assert_eq!(h.framing, Framing::UntilClose);
    assert!(!h.reusable);

    let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true);
    assert_eq!(h.framing, Framing::Empty, "a HEAD response has no body");
    assert_eq!(
        forwarded(&h, true)[header::CONTENT_LENGTH],
        "9",
        "a HEAD response's length describes the representation and is kept"
    );
    let h = head(
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9, 9\r\n\r\n",
        false,
    );
    assert_eq!(h.framing, Framing::Empty);
    assert_eq!(forwarded(&h, false)[header::CONTENT_LENGTH], "9");
    let h = head(
        b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
        false,
    );
    assert_eq!(h.framing, Framing::Empty);
    assert!(!forwarded(&h, false).contains_key(header::CONTENT_LENGTH));

    let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc", false);
    assert_eq!(h.framing, Framing::Length(3));

    let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Len"[..]);
    assert!(
        ResponseDecoder::new(false)
            .head(&mut partial)
            .unwrap()
            .is_none()
    );
}

#[test]
fn transfer_encoding_wins_over_content_length_and_the_connection_closes() {
    let d = decode(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nhello ab\r\n0\r\n\r\n",
        64,
        false,
    )
    .unwrap();
    assert_eq!(d.body, b"hello ab");
    assert_eq!(d.head.framing, Framing::Chunked(Chunk::Size));
    assert!(!d.head.reusable, "a message with both framings is suspect");
    let h = forwarded(&d.head, false);
    assert!(
        !h.contains_key(header::CONTENT_LENGTH),
        "removed: RFC 9112 §6.3"
    );
    assert!(!h.contains_key(header::TRANSFER_ENCODING));
}

#[test]
fn malformed_heads_are_named() {
    for (wire, expect) in [
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"[..],
            CodecError::ConflictingContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            CodecError::ContentLength("-1".into()),
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
            CodecError::ContentLength("+5".into()),
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5 5\r\n\r\nhello",
            CodecError::ContentLength("5 5".into()),
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\nhello",
            CodecError::ContentLength("0x5".into()),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
            CodecError::TransferCoding("gzip".into()),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            CodecError::TransferCoding("gzip, chunked".into()),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            CodecError::TransferCoding("chunked, chunked".into()),
        ),
        (
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            CodecError::TransferEncodingOnHttp10,
        ),
        (
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello",
            CodecError::TransferEncodingOnHttp10,
        ),
        (b"HTTP/1.1 2000 OK\r\n\r\n", CodecError::Head(httparse::Error::Status)),
        (b"SMTP ready\r\n\r\n", CodecError::Head(httparse::Error::Version)),
    ] {
        assert_eq!(codec_error(wire), expect, "{:?}", String::from_utf8_lossy(wire));
    }
}

#[test]
fn interim_responses_are_skipped_but_bounded() {
    let one = "HTTP/1.1 100 Continue\r\n\r\n";
    let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let wire = format!("{}{ok}", one.repeat(MAX_INTERIM as usize));
    let d = decode(wire.as_bytes(), 7, false).unwrap();
    assert_eq!(
        (d.head.response.status().as_u16(), &d.body[..]),
        (200, &b"ok"[..])
    );
    let wire = format!("{}{ok}", one.repeat(MAX_INTERIM as usize + 1));
    assert_eq!(codec_error(wire.as_bytes()), CodecError::TooManyInterim);
    // An endless stream of them stops at the bound, whatever the reads.
    let mut d = ResponseDecoder::new(false);
    let mut buf = BytesMut::from(one.repeat(1000).as_bytes());
    assert_eq!(d.head(&mut buf).unwrap_err(), CodecError::TooManyInterim);
}

#[test]
fn heads_and_trailers_are_bounded() {
    let big = format!(
        "HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n",
        "a".repeat(MAX_HEAD + 1)
    );
    assert_eq!(codec_error(big.as_bytes()), CodecError::HeadTooLarge);
    let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
    let wire = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
    assert_eq!(codec_error(wire.as_bytes()), CodecError::TooManyHeaders);
    let wire = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx-t: {}\r\n\r\n",
        "a".repeat(MAX_HEAD + 1)
    );
    assert_eq!(codec_error(wire.as_bytes()), CodecError::HeadTooLarge);
}

#[test]
fn trailers_lose_framing_fields() {
    let d = decode(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\ncontent-length: 9\r\ngrpc-status: 0\r\n\r\n",
        64,
        false,
    )
    .unwrap();
    let t = d.trailers.unwrap();
    assert_eq!(t["grpc-status"], "0");
    assert!(!t.contains_key(header::CONTENT_LENGTH));
}

#[test]
fn a_body_less_response_followed_by_bytes_leaves_them_for_the_connection_to_refuse() {
    // A 204 "with a body" that is really a second response: decoded as an
    // empty body, the rest left over (the connection is then not reused).
    let d = decode(
        b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
        1024,
        false,
    )
    .unwrap();
    assert!(d.body.is_empty());
    assert!(d.leftover > 0);
}

fn encode(req: Request<()>, size: BodySize) -> (String, BodyMode) {
    let (parts, ()) = req.into_parts();
    let mut out = BytesMut::new();
    let mode = encode_request_head(&parts, size, &mut out);
    (String::from_utf8(out.to_vec()).unwrap(), mode)
}

#[test]
fn request_heads_take_their_framing_from_the_body() {
    let (text, mode) = encode(
        Request::post("/echo?x=1")
            .header("host", "up")
            .header("transfer-encoding", "chunked")
            .header("content-length", "99")
            .body(())
            .unwrap(),
        BodySize::Exact(5),
    );
    assert_eq!(
        text,
        "POST /echo?x=1 HTTP/1.1\r\nhost: up\r\ncontent-length: 5\r\n\r\n"
    );
    assert_eq!(mode, BodyMode::Length(5));
    let (text, mode) = encode(
        Request::post("/")
            .header("content-length", "5")
            .body(())
            .unwrap(),
        BodySize::Unknown,
    );
    assert_eq!(
        text,
        "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    assert_eq!(mode, BodyMode::Chunked);
    let (text, mode) = encode(Request::post("/").body(()).unwrap(), BodySize::Empty);
    assert_eq!(text, "POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    assert_eq!(mode, BodyMode::None);
    let (text, _) = encode(Request::get("/").body(()).unwrap(), BodySize::Empty);
    assert_eq!(text, "GET / HTTP/1.1\r\n\r\n");
}

#[test]
fn chunks_and_trailers_encode_without_framing_fields() {
    let mut out = BytesMut::new();
    encode_chunk(b"", &mut out);
    assert!(out.is_empty(), "an empty chunk would end the body");
    encode_chunk(b"hello", &mut out);
    let mut t = HeaderMap::new();
    t.insert("x-sum", HeaderValue::from_static("7"));
    t.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
    encode_last_chunk(Some(&t), &mut out);
    assert_eq!(&out[..], b"5\r\nhello\r\n0\r\nx-sum: 7\r\n\r\n");
}

mod differential;
