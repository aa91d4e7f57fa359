//! Copies between an HTTP/3 CONNECT stream and a byte stream, both ways,
//! until both directions end. Received DATA is coalesced: `recv_data`
//! yields about one QUIC packet per call, so chunks already available are
//! gathered (up to 256 KiB) before one write.

use bytes::{Buf, Bytes, BytesMut};
use h3::quic::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

/// Bytes moved: (from the stream to `io`, from `io` to the stream).
pub async fn splice<S, R, IO>(
    mut send: h3::server::RequestStream<S, Bytes>,
    mut recv: h3::server::RequestStream<R, Bytes>,
    io: IO,
) -> std::io::Result<(u64, u64)>
where
    S: SendStream<Bytes>,
    R: RecvStream,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let down = async {
        let mut n = 0u64;
        let mut buf = BytesMut::new();
        loop {
            let first = recv.recv_data().await.map_err(std::io::Error::other)?;
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
            wr.write_all(&buf).await?;
            buf.clear();
        }
        wr.shutdown().await?;
        Ok::<_, std::io::Error>(n)
    };
    let up = async {
        let mut n = 0u64;
        let mut reader = AdaptiveReader::new();
        while let Some(b) = reader.read(&mut rd).await? {
            n += b.len() as u64;
            send.send_data(b).await.map_err(std::io::Error::other)?;
        }
        send.finish().await.map_err(std::io::Error::other)?;
        Ok::<_, std::io::Error>(n)
    };
    tokio::try_join!(down, up)
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
