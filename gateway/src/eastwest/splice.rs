//! Joins two byte streams both ways until both directions end: a CONNECT
//! stream (HTTP/3, the fallback's HTTP/2) with a TCP connection at the
//! receiving gateway, the local entry's HTTP/2 stream with a link stream
//! at the sending one. Whatever the transports, an abort crosses as an
//! abort (RFC 9114 §4.4, RFC 9113 §8.5: a stream reset resets the TCP
//! connection, a TCP reset resets the stream with CONNECT_ERROR) and a
//! clean end as a clean end. Received chunks already available are
//! coalesced (up to 256 KiB) before one write: HTTP/3 yields about one
//! QUIC packet per read.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::transport::{StreamRecv, StreamSend};
use isthmus_mesh::h2connect::Abort;

const COALESCE: usize = 256 * 1024;

/// Reads into a buffer that starts small and doubles (to 64 KiB) while
/// reads fill it: an idle stream holds 4 KiB, a bulk one reads 64 KiB at
/// a time. Each read is handed out without copying.
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
    const MAX: usize = 64 * 1024;

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

/// The receiving gateway's HTTP/3 stream halves.
impl<S: h3::quic::SendStream<Bytes> + Send> StreamSend for h3::server::RequestStream<S, Bytes> {
    async fn send(&mut self, data: Bytes) -> std::io::Result<()> {
        self.send_data(data).await.map_err(std::io::Error::other)
    }
    async fn finish(&mut self) -> std::io::Result<()> {
        h3::server::RequestStream::finish(self)
            .await
            .map_err(std::io::Error::other)
    }
    /// H3_CONNECT_ERROR. (The receive half stops the peer when dropped:
    /// h3-quinn 0.0.10's stop_sending panics while a read is in flight,
    /// which an aborted splice leaves.)
    fn reset(&mut self) {
        self.stop_stream(h3::error::Code::H3_CONNECT_ERROR);
    }
}

impl<R: h3::quic::RecvStream + Send> StreamRecv for h3::server::RequestStream<R, Bytes> {
    async fn recv(&mut self) -> std::io::Result<Option<Bytes>> {
        Ok(self
            .recv_data()
            .await
            .map_err(std::io::Error::other)?
            .map(|mut b| b.copy_to_bytes(b.remaining())))
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
    while !ended {
        let Some(first) = recv.recv().await.map_err(|e| (from, e))? else {
            break;
        };
        // Whatever else is ready now goes in the same write.
        let mut more: Option<BytesMut> = None;
        loop {
            let len = more.as_ref().map_or(first.len(), |m| m.len());
            if len >= COALESCE {
                break;
            }
            match futures_now(recv.recv()) {
                Some(Ok(Some(c))) => more
                    .get_or_insert_with(|| BytesMut::from(&first[..]))
                    .extend_from_slice(&c),
                Some(Ok(None)) => {
                    ended = true;
                    break;
                }
                Some(Err(e)) => return Err((from, e)),
                None => break,
            }
        }
        let chunk = more.map_or(first, BytesMut::freeze);
        n += chunk.len() as u64;
        send.send(chunk).await.map_err(|e| (to, e))?;
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
    let (rd, wr) = tcp.split();
    splice(stream, (IoSend(wr), IoRecv::new(rd))).await
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
