//! Copies between a CONNECT stream (HTTP/3, or the fallback's HTTP/2) and
//! a TCP connection, both ways, until both directions end; on HTTP/3
//! resets cross over as resets (RFC 9114 §4.4), clean ends as clean ends.
//! (On the HTTP/2 fallback hyper reads a stream reset as its end, so an
//! abort arrives as a clean end there.) Received DATA is coalesced:
//! `recv_data` yields about one QUIC packet per call, so chunks already
//! available are gathered (up to 256 KiB) before one write.

use bytes::{Buf, Bytes, BytesMut};
use h3::quic::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// Which side ended a spliced connection abruptly.
#[derive(Debug)]
enum Abort {
    /// The CONNECT stream was reset (or stopped) by the peer.
    Stream(std::io::Error),
    /// The TCP connection failed (reset by the endpoint).
    Tcp(std::io::Error),
}

/// Joins a CONNECT stream and a TCP connection until both directions end.
/// Bytes moved: (from the stream to `tcp`, from `tcp` to the stream).
///
/// Resets propagate as RFC 9114 §4.4 says: a reset of the stream resets
/// the TCP connection (RST, by a zero linger), and a TCP reset or error
/// resets the stream with H3_CONNECT_ERROR (and stops the peer's sending);
/// a clean end of either is a clean end (FIN) of the other.
pub async fn splice<S, R>(
    mut send: h3::server::RequestStream<S, Bytes>,
    mut recv: h3::server::RequestStream<R, Bytes>,
    mut tcp: TcpStream,
) -> std::io::Result<(u64, u64)>
where
    S: SendStream<Bytes>,
    R: RecvStream,
{
    let (mut rd, mut wr) = tcp.split();
    let down = async {
        let mut n = 0u64;
        let mut buf = BytesMut::new();
        loop {
            let first = recv
                .recv_data()
                .await
                .map_err(|e| Abort::Stream(std::io::Error::other(e)))?;
            let Some(mut chunk) = first else { break };
            buf.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
            // Whatever else is ready now goes in the same write.
            while buf.len() < COALESCE {
                match futures_now(recv.recv_data()) {
                    Some(Ok(Some(mut c))) => buf.extend_from_slice(&c.copy_to_bytes(c.remaining())),
                    _ => break,
                }
            }
            n += buf.len() as u64;
            wr.write_all(&buf).await.map_err(Abort::Tcp)?;
            buf.clear();
        }
        wr.shutdown().await.map_err(Abort::Tcp)?;
        Ok::<_, Abort>(n)
    };
    let up = async {
        let mut n = 0u64;
        let mut reader = AdaptiveReader::new();
        while let Some(b) = reader.read(&mut rd).await.map_err(Abort::Tcp)? {
            n += b.len() as u64;
            send.send_data(b)
                .await
                .map_err(|e| Abort::Stream(std::io::Error::other(e)))?;
        }
        send.finish()
            .await
            .map_err(|e| Abort::Stream(std::io::Error::other(e)))?;
        Ok::<_, Abort>(n)
    };
    match tokio::try_join!(down, up) {
        Ok(moved) => Ok(moved),
        Err(Abort::Stream(e)) => {
            // RST to the endpoint; whatever of the stream is left goes too.
            let _ = tcp.set_zero_linger();
            send.stop_stream(h3::error::Code::H3_CONNECT_ERROR);
            Err(e)
        }
        Err(Abort::Tcp(e)) => {
            // The receive half stops the peer when dropped (quinn sends
            // STOP_SENDING): h3-quinn 0.0.10's stop_sending panics while a
            // read is in flight, which an aborted join leaves.
            send.stop_stream(h3::error::Code::H3_CONNECT_ERROR);
            let _ = tcp.set_zero_linger();
            drop(recv);
            Err(e)
        }
    }
}

/// The fallback's splice: an HTTP/2 CONNECT stream (upgraded) and a TCP
/// connection. A reset of the stream resets the TCP connection; a TCP
/// failure drops the stream unfinished (an RST_STREAM to the peer).
pub async fn splice_io<IO>(io: IO, mut tcp: TcpStream) -> std::io::Result<(u64, u64)>
where
    IO: AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut ird, mut iwr) = tokio::io::split(io);
    let (mut trd, mut twr) = tcp.split();
    let down = async {
        let mut n = 0u64;
        let mut reader = AdaptiveReader::new();
        while let Some(b) = reader.read(&mut ird).await.map_err(Abort::Stream)? {
            n += b.len() as u64;
            twr.write_all(&b).await.map_err(Abort::Tcp)?;
        }
        twr.shutdown().await.map_err(Abort::Tcp)?;
        Ok::<_, Abort>(n)
    };
    let up = async {
        let mut n = 0u64;
        let mut reader = AdaptiveReader::new();
        while let Some(b) = reader.read(&mut trd).await.map_err(Abort::Tcp)? {
            n += b.len() as u64;
            iwr.write_all(&b).await.map_err(Abort::Stream)?;
        }
        iwr.shutdown().await.map_err(Abort::Stream)?;
        Ok::<_, Abort>(n)
    };
    match tokio::try_join!(down, up) {
        Ok(moved) => Ok(moved),
        Err(Abort::Stream(e)) => {
            let _ = tcp.set_zero_linger();
            Err(e)
        }
        // Dropping the stream's halves unfinished resets it.
        Err(Abort::Tcp(e)) => Err(e),
    }
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
