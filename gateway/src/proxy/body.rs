//! Bodies on the request path. `ReqBody` streams a request body upstream
//! while keeping a copy of it (up to a cap) so a retry or a mirror can
//! replay it; `ObservedBody` wraps a response body and reports, once, how
//! it ended (bytes, gRPC status from trailers, error) for metrics and the
//! access log.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type RespBody = UnsyncBoxBody<Bytes, BoxError>;

/// Request bodies larger than this are streamed without a copy and are not
/// retried or mirrored (Linkerd uses 64 KiB too).
pub const REPLAY_CAP: usize = 64 * 1024;

#[derive(Debug, Default)]
struct Recorded {
    chunks: Vec<Bytes>,
    len: usize,
    trailers: Option<HeaderMap>,
    complete: bool,
    overflow: bool,
}

/// Bodies announced (Content-Length) at or below this size are read whole
/// before being forwarded, so head and body leave in one write instead of
/// two (and a retry never waits on the client). Larger or chunked bodies
/// (gRPC, streams) are streamed.
pub const COALESCE_MAX: u64 = 64 * 1024;

/// True when a body is known to hold between 1 and COALESCE_MAX bytes (its
/// size as its framing says, not as a header claims).
pub fn small_known_length(hint: &SizeHint) -> bool {
    hint.exact().is_some_and(|n| n > 0 && n <= COALESCE_MAX)
}

/// Reads a whole body: its bytes and trailers.
pub async fn read_all<B>(body: B) -> Result<(Bytes, Option<HeaderMap>), B::Error>
where
    B: Body<Data = Bytes>,
{
    use http_body_util::BodyExt;
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok((collected.to_bytes(), trailers))
}

/// Reads a whole request body, as a replayable body and its recording.
pub async fn read_whole<B>(body: B) -> Result<(ReqBody, Recording), B::Error>
where
    B: Body<Data = Bytes>,
{
    let (data, trailers) = read_all(body).await?;
    let rec = Recording::default();
    {
        let mut r = rec.inner.lock();
        r.len = data.len();
        r.chunks.push(data.clone());
        r.trailers = trailers.clone();
        r.complete = true;
    }
    Ok((
        ReqBody::Replay {
            chunks: [data].into_iter().collect(),
            trailers,
        },
        rec,
    ))
}

/// A copy of a request body being sent, shared with whoever may replay it.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    inner: Arc<Mutex<Recorded>>,
    done: Arc<tokio::sync::Notify>,
}

impl Recording {
    /// A body that replays the recorded request, if it was read to the end
    /// and fit under the cap.
    pub fn replay(&self) -> Option<ReqBody> {
        let r = self.inner.lock();
        (r.complete && !r.overflow).then(|| ReqBody::Replay {
            chunks: r.chunks.iter().cloned().collect(),
            trailers: r.trailers.clone(),
        })
    }

    /// Waits until the original body has been read to its end (or gave up
    /// recording), then replays it.
    pub async fn replay_when_complete(&self) -> Option<ReqBody> {
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let r = self.inner.lock();
                if r.overflow {
                    return None;
                }
                if r.complete {
                    break;
                }
            }
            notified.await;
        }
        self.replay()
    }

    fn finish(&self, overflow: bool) {
        {
            let mut r = self.inner.lock();
            if overflow {
                r.overflow = true;
                r.chunks.clear();
            } else {
                r.complete = true;
            }
        }
        self.done.notify_waiters();
    }
}

/// The body of a request sent upstream.
pub enum ReqBody {
    Empty,
    /// A replay of a recorded body.
    Replay {
        chunks: VecDeque<Bytes>,
        trailers: Option<HeaderMap>,
    },
    /// The downstream body, recorded when `rec` is set.
    Stream {
        inner: Incoming,
        rec: Option<Recording>,
    },
}

impl ReqBody {
    /// Wraps a downstream body; an empty one needs no recording to replay.
    pub fn from_incoming(body: Incoming, record: bool) -> (Self, Option<Recording>) {
        if body.is_end_stream() {
            let rec = Recording::default();
            rec.finish(false);
            return (Self::Empty, Some(rec));
        }
        let rec = record.then(Recording::default);
        (
            Self::Stream {
                inner: body,
                rec: rec.clone(),
            },
            rec,
        )
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Replay { chunks, trailers } => {
                if let Some(c) = chunks.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(c))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            ReqBody::Stream { inner, rec } => {
                let frame = match Pin::new(&mut *inner).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(f) => f,
                };
                if let Some(r) = rec.as_ref() {
                    match &frame {
                        Some(Ok(f)) => {
                            let mut over = false;
                            {
                                let mut g = r.inner.lock();
                                if let Some(d) = f.data_ref() {
                                    if !g.overflow && g.len + d.len() <= REPLAY_CAP {
                                        g.len += d.len();
                                        g.chunks.push(d.clone());
                                    } else {
                                        over = true;
                                    }
                                } else if let Some(t) = f.trailers_ref() {
                                    g.trailers = Some(t.clone());
                                }
                            }
                            if over {
                                r.finish(true);
                                *rec = None;
                            } else if inner.is_end_stream() {
                                // hyper may never poll past the last frame.
                                r.finish(false);
                            }
                        }
                        Some(Err(_)) => {
                            r.finish(true);
                            *rec = None;
                        }
                        None => r.finish(false),
                    }
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Replay { chunks, trailers } => chunks.is_empty() && trailers.is_none(),
            ReqBody::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Replay { chunks, .. } => {
                SizeHint::with_exact(chunks.iter().map(|c| c.len() as u64).sum())
            }
            ReqBody::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

/// How a response body ended.
#[derive(Debug, Clone, Default)]
pub struct BodyEnd {
    pub bytes: u64,
    /// grpc-status from trailers, if any.
    pub grpc_status: Option<u32>,
    /// The stream failed (upstream reset) or the client went away first.
    pub error: Option<String>,
}

type OnEnd = Box<dyn FnOnce(BodyEnd) + Send>;

/// A response body that calls `on_end` exactly once: at its end, on error,
/// or when dropped early (the client went away).
pub struct ObservedBody {
    inner: RespBody,
    bytes: u64,
    on_end: Option<OnEnd>,
}

impl ObservedBody {
    pub fn new(inner: RespBody, on_end: impl FnOnce(BodyEnd) + Send + 'static) -> Self {
        Self {
            inner,
            bytes: 0,
            on_end: Some(Box::new(on_end)),
        }
    }

    fn end(&mut self, grpc_status: Option<u32>, error: Option<String>) {
        if let Some(f) = self.on_end.take() {
            f(BodyEnd {
                bytes: self.bytes,
                grpc_status,
                error,
            });
        }
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if self.on_end.is_some() {
            self.end(
                None,
                Some("downstream closed before the response ended".into()),
            );
        }
    }
}

pub fn grpc_status_of(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.end(None, None);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.end(None, Some(format!("upstream body: {e}")));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                } else if let Some(t) = f.trailers_ref() {
                    let s = grpc_status_of(t);
                    this.end(s, None);
                }
                if this.inner.is_end_stream() {
                    this.end(None, None);
                }
                Poll::Ready(Some(Ok(f)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A complete body from bytes.
pub fn full(b: impl Into<Bytes>) -> RespBody {
    use http_body_util::BodyExt;
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> RespBody {
    use http_body_util::BodyExt;
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A response body from upstream: read by our HTTP/1.1 client, or a
/// stream of a hyper HTTP/2 connection.
pub enum UpBody {
    H1(crate::pool::h1::H1Body),
    H2(Incoming),
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpBody::H1(b) => Pin::new(b).poll_frame(cx),
            UpBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::H1(b) => b.is_end_stream(),
            UpBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::H1(b) => b.size_hint(),
            UpBody::H2(b) => b.size_hint(),
        }
    }
}
