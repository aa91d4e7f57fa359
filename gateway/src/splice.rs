//! Joins two byte streams both ways until both directions end, without
//! copying the bytes in between: what one side yields as `Bytes` the
//! other is handed as is. It joins the sidecar's opaque TCP connections
//! with their upstreams (a TCP connection, a mesh transport stream), the
//! east-west gateway's CONNECT streams (HTTP/3, the fallback's HTTP/2)
//! with TCP connections and with the local entry's streams.
//!
//! Whatever the transports, an abort crosses as an abort (RFC 9114 §4.4,
//! RFC 9113 §8.5: a stream reset resets the TCP connection, a TCP reset
//! resets the stream with CONNECT_ERROR) and a clean end as a clean end.
//! Received chunks already available are sent together (up to 256 KiB):
//! one vectored write to a socket, each chunk as it is to an HTTP/2
//! stream, coalesced for HTTP/3 (which yields about one QUIC packet per
//! read).
//!
//! - `StreamSend` / `StreamRecv`: the halves of a stream, as the splice
//!   drives them; `Halves` splits a whole stream (a TCP connection, an
//!   HTTP/2 CONNECT stream, a pooled upstream) into them.
//! - `IoSend` / `IoRecv`: any byte stream (TCP, a test's pipe) as halves;
//!   reads go into a buffer that grows with the traffic.

use std::future::Future;
use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use isthmus_mesh::h2connect::{Abort, H2Recv, H2Send, H2Stream};

/// At most this much is gathered from what is already received before it
/// is sent on.
const COALESCE: usize = 256 * 1024;

/// The sending half of a stream.
pub trait StreamSend: Send {
    fn send(&mut self, data: Bytes) -> impl Future<Output = io::Result<()>> + Send;
    /// Sends `chunks` in order and empties it. By default they are joined
    /// into one `send` (a copy); halves that take several chunks cheaply
    /// (a vectored write, HTTP/2's frame queue) send them as they are.
    fn send_all(&mut self, chunks: &mut Vec<Bytes>) -> impl Future<Output = io::Result<()>> + Send {
        let data = match chunks.len() {
            1 => chunks.pop().expect("one chunk"),
            _ => {
                let mut joined = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
                for c in chunks.drain(..) {
                    joined.extend_from_slice(&c);
                }
                joined.freeze()
            }
        };
        self.send(data)
    }
    /// Half-closes: the peer reads the end of the stream.
    fn finish(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// Aborts: the peer sees a reset, not an end.
    fn reset(&mut self);
}

/// The receiving half of a stream. Dropping it before the end stops the
/// peer's sending.
pub trait StreamRecv: Send {
    /// The next bytes; `None` at a clean end, an error at a reset.
    fn recv(&mut self) -> impl Future<Output = io::Result<Option<Bytes>>> + Send;
}

impl<T: StreamSend + ?Sized> StreamSend for &mut T {
    fn send(&mut self, data: Bytes) -> impl Future<Output = io::Result<()>> + Send {
        (**self).send(data)
    }
    fn send_all(&mut self, chunks: &mut Vec<Bytes>) -> impl Future<Output = io::Result<()>> + Send {
        (**self).send_all(chunks)
    }
    fn finish(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        (**self).finish()
    }
    fn reset(&mut self) {
        (**self).reset()
    }
}

/// A whole byte stream, split into the halves a splice drives (borrowed:
/// the stream is still there to abort or close when the splice ends).
pub trait Halves {
    type Send<'a>: StreamSend
    where
        Self: 'a;
    type Recv<'a>: StreamRecv
    where
        Self: 'a;
    fn halves(&mut self) -> (Self::Send<'_>, Self::Recv<'_>);
}

impl Halves for tokio::net::TcpStream {
    type Send<'a> = IoSend<tokio::net::tcp::WriteHalf<'a>>;
    type Recv<'a> = IoRecv<tokio::net::tcp::ReadHalf<'a>>;
    fn halves(&mut self) -> (Self::Send<'_>, Self::Recv<'_>) {
        let (r, w) = self.split();
        (IoSend(w), IoRecv::new(r))
    }
}

impl Halves for H2Stream {
    type Send<'a> = &'a mut H2Send;
    type Recv<'a> = H2RecvHalf<'a>;
    fn halves(&mut self) -> (Self::Send<'_>, Self::Recv<'_>) {
        let (send, recv, unread) = self.parts();
        (send, H2RecvHalf { unread, recv })
    }
}

/// The HTTP/2 CONNECT streams of the mesh transport, the fallback and
/// the local entry: each chunk goes into h2's frame queue as it is.
impl StreamSend for H2Send {
    async fn send(&mut self, data: Bytes) -> io::Result<()> {
        H2Send::send(self, data).await
    }
    async fn send_all(&mut self, chunks: &mut Vec<Bytes>) -> io::Result<()> {
        for c in chunks.drain(..) {
            H2Send::send(self, c).await?;
        }
        Ok(())
    }
    async fn finish(&mut self) -> io::Result<()> {
        H2Send::finish(self)
    }
    fn reset(&mut self) {
        H2Send::reset(self)
    }
}

impl StreamRecv for H2Recv {
    async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        H2Recv::recv(self).await
    }
}

/// An HTTP/2 stream's receiving half, borrowed, after the bytes it had
/// received but not yet handed out.
pub struct H2RecvHalf<'a> {
    unread: Bytes,
    recv: &'a mut H2Recv,
}

impl StreamRecv for H2RecvHalf<'_> {
    async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        if !self.unread.is_empty() {
            return Ok(Some(std::mem::take(&mut self.unread)));
        }
        self.recv.recv().await
    }
}

/// One of two kinds of half (a pooled upstream: TCP or a mesh stream).
pub enum Either<A, B> {
    A(A),
    B(B),
}

impl<A: StreamSend, B: StreamSend> StreamSend for Either<A, B> {
    async fn send(&mut self, data: Bytes) -> io::Result<()> {
        match self {
            Either::A(s) => s.send(data).await,
            Either::B(s) => s.send(data).await,
        }
    }
    async fn send_all(&mut self, chunks: &mut Vec<Bytes>) -> io::Result<()> {
        match self {
            Either::A(s) => s.send_all(chunks).await,
            Either::B(s) => s.send_all(chunks).await,
        }
    }
    async fn finish(&mut self) -> io::Result<()> {
        match self {
            Either::A(s) => s.finish().await,
            Either::B(s) => s.finish().await,
        }
    }
    fn reset(&mut self) {
        match self {
            Either::A(s) => s.reset(),
            Either::B(s) => s.reset(),
        }
    }
}

impl<A: StreamRecv, B: StreamRecv> StreamRecv for Either<A, B> {
    async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        match self {
            Either::A(r) => r.recv().await,
            Either::B(r) => r.recv().await,
        }
    }
}

/// Reads into a buffer that starts small, doubles (to 256 KiB) while reads
/// fill it and halves while they use a quarter of it or less: an idle or
/// interactive stream holds 4 KiB, a bulk one reads 256 KiB at a time
/// (one HTTP/2 frame, few system calls; 64 KiB carried a fifth less
/// through a mesh pair). Each read is handed out without copying.
pub struct AdaptiveReader {
    buf: BytesMut,
    next: usize,
}

impl Default for AdaptiveReader {
    fn default() -> Self {
        Self::new()
    }
}

impl AdaptiveReader {
    const MIN: usize = 4 * 1024;
    const MAX: usize = 256 * 1024;

    pub fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            next: Self::MIN,
        }
    }

    /// The next bytes read from `r`; None at its end.
    pub async fn read<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> std::io::Result<Option<Bytes>> {
        self.buf.reserve(self.next);
        let n = r.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if n >= self.next {
            self.next = (self.next * 2).min(Self::MAX);
        } else if n <= self.next / 4 {
            self.next = (self.next / 2).max(Self::MIN);
        }
        Ok(Some(self.buf.split().freeze()))
    }
}

/// A byte stream (TCP, a test's pipe) as a `StreamSend`: a reset aborts it.
pub struct IoSend<W>(pub W);

/// A byte stream as a `StreamRecv`.
pub struct IoRecv<R>(pub R, AdaptiveReader);

impl<R> IoRecv<R> {
    pub fn new(r: R) -> Self {
        Self(r, AdaptiveReader::new())
    }
}

impl<W: AsyncWrite + Abort + Unpin + Send> StreamSend for IoSend<W> {
    async fn send(&mut self, data: Bytes) -> std::io::Result<()> {
        self.0.write_all(&data).await
    }
    /// One vectored write for all the chunks (as many as it takes).
    async fn send_all(&mut self, chunks: &mut Vec<Bytes>) -> io::Result<()> {
        if let [one] = &chunks[..] {
            self.0.write_all(one).await?;
            chunks.clear();
            return Ok(());
        }
        let mut first = 0;
        while first < chunks.len() {
            let slices: Vec<io::IoSlice<'_>> = chunks[first..]
                .iter()
                .map(|c| io::IoSlice::new(c))
                .collect();
            let mut n = self.0.write_vectored(&slices).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            while n > 0 {
                let c = &mut chunks[first];
                if n >= c.len() {
                    n -= c.len();
                    first += 1;
                } else {
                    c.advance(n);
                    n = 0;
                }
            }
        }
        chunks.clear();
        Ok(())
    }
    async fn finish(&mut self) -> std::io::Result<()> {
        self.0.shutdown().await
    }
    fn reset(&mut self) {
        self.0.abort();
    }
}

impl<R: AsyncRead + Unpin + Send> StreamRecv for IoRecv<R> {
    async fn recv(&mut self) -> std::io::Result<Option<Bytes>> {
        self.1.read(&mut self.0).await
    }
}

/// Which side of a splice failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// Copies `recv` into `send` until the end, then finishes `send`; bytes
/// copied. Errors name the side that failed (`from` for reads, `to` for
/// writes).
async fn copy<R: StreamRecv, S: StreamSend>(
    recv: &mut R,
    send: &mut S,
    from: Side,
    to: Side,
) -> Result<u64, (Side, std::io::Error)> {
    let mut n = 0u64;
    let mut ended = false;
    let mut batch = Vec::new();
    while !ended {
        let Some(first) = recv.recv().await.map_err(|e| (from, e))? else {
            break;
        };
        // Whatever else is ready now goes in the same send.
        let mut len = first.len();
        batch.push(first);
        while len < COALESCE {
            match futures_now(recv.recv()) {
                Some(Ok(Some(c))) => {
                    len += c.len();
                    batch.push(c);
                }
                Some(Ok(None)) => {
                    ended = true;
                    break;
                }
                Some(Err(e)) => return Err((from, e)),
                None => break,
            }
        }
        n += len as u64;
        send.send_all(&mut batch).await.map_err(|e| (to, e))?;
    }
    send.finish().await.map_err(|e| (to, e))?;
    Ok(n)
}

/// Joins stream `a` and stream `b` until both directions end; bytes moved
/// (from `a` to `b`, from `b` to `a`). When either side fails (a reset, an
/// I/O error) both are reset and the error returned with its side.
pub async fn splice<SA, RA, SB, RB>(
    (mut a_send, mut a_recv): (SA, RA),
    (mut b_send, mut b_recv): (SB, RB),
) -> Result<(u64, u64), (Side, std::io::Error)>
where
    SA: StreamSend,
    RA: StreamRecv,
    SB: StreamSend,
    RB: StreamRecv,
{
    let r = tokio::try_join!(
        copy(&mut a_recv, &mut b_send, Side::A, Side::B),
        copy(&mut b_recv, &mut a_send, Side::B, Side::A),
    );
    if r.is_err() {
        a_send.reset();
        b_send.reset();
    }
    r
}

/// Joins a CONNECT stream with a TCP connection (see `splice`).
pub async fn splice_tcp<S, R>(
    stream: (S, R),
    mut tcp: tokio::net::TcpStream,
) -> Result<(u64, u64), (Side, std::io::Error)>
where
    S: StreamSend,
    R: StreamRecv,
{
    splice(stream, tcp.halves()).await
}

/// Polls a future once: its output if it is ready now.
fn futures_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A writer that takes at most `step` bytes per write, vectored or not.
    struct Trickle {
        got: Vec<u8>,
        step: usize,
        writes: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let me = self.get_mut();
            let n = buf.len().min(me.step);
            me.got.extend_from_slice(&buf[..n]);
            me.writes += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let me = self.get_mut();
            let mut left = me.step;
            for b in bufs {
                let n = b.len().min(left);
                me.got.extend_from_slice(&b[..n]);
                left -= n;
            }
            me.writes += 1;
            Poll::Ready(Ok(me.step - left))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Abort for Trickle {
        fn abort(&mut self) {}
    }

    #[tokio::test]
    async fn chunks_go_out_in_order_through_partial_vectored_writes() {
        for step in [1, 2, 3, 5, 7, 64] {
            let mut send = IoSend(Trickle {
                got: Vec::new(),
                step,
                writes: 0,
            });
            let mut chunks = vec![
                Bytes::from_static(b"abc"),
                Bytes::from_static(b""),
                Bytes::from_static(b"defgh"),
                Bytes::from_static(b"i"),
                Bytes::from_static(b"jklmnopq"),
            ];
            send.send_all(&mut chunks).await.unwrap();
            assert!(chunks.is_empty());
            assert_eq!(send.0.got, b"abcdefghijklmnopq", "step {step}");
            assert_eq!(send.0.writes, 17usize.div_ceil(step), "step {step}");
        }
    }

    #[tokio::test]
    async fn the_read_buffer_grows_with_bulk_reads_and_shrinks_when_they_stop() {
        let (mut w, mut r) = tokio::io::duplex(1 << 20);
        let mut reader = AdaptiveReader::new();
        assert_eq!(reader.next, AdaptiveReader::MIN);
        // Bulk: each read fills the buffer, which doubles up to its cap.
        let steps = [4, 8, 16, 32, 64, 128, 256, 256].map(|k| k * 1024);
        w.write_all(&vec![7u8; steps.iter().sum()]).await.unwrap();
        let mut sizes = Vec::new();
        while sizes.len() < steps.len() {
            sizes.push(reader.read(&mut r).await.unwrap().unwrap().len());
        }
        assert_eq!(sizes, steps);
        assert_eq!(reader.next, AdaptiveReader::MAX);
        // Interactive: small reads halve it back down to where it started.
        for _ in 0..8 {
            w.write_all(b"ping").await.unwrap();
            assert_eq!(&reader.read(&mut r).await.unwrap().unwrap()[..], b"ping");
        }
        assert_eq!(reader.next, AdaptiveReader::MIN);
        drop(w);
        assert!(reader.read(&mut r).await.unwrap().is_none());
    }
}
