//! The small interface the tunnel code is written against, as h3's `quic`
//! traits abstract a QUIC stack: a link opens CONNECT streams, each a pair
//! of halves that send (finish, reset) and receive bytes. HTTP/3 over
//! quinn and the HTTP/2-over-TLS fallback implement it (`client::Link`,
//! `LinkSend`, `LinkRecv`); `crate::splice` sees only these traits, so
//! another QUIC stack, or an in-memory transport in a test, fits in. (The
//! WAN emulator in `e2e/` impairs the real stacks at packet level.)

use std::future::Future;

use bytes::{Buf, Bytes};

use super::Source;
use super::client::{LinkError, Transport};

pub use crate::splice::{StreamRecv, StreamSend};

/// A connection to a peer gateway that carries CONNECT streams.
pub trait LinkTransport: Send + Sync {
    type Send: StreamSend;
    type Recv: StreamRecv;

    /// Opens a stream to `authority` (`<service>.<ns>:<port>`) in the
    /// peer's cluster, saying where it comes from.
    fn open(
        &self,
        authority: &str,
        source: &Source,
    ) -> impl Future<Output = Result<(Self::Send, Self::Recv), LinkError>> + Send;

    /// Which transport this is (metrics, status).
    fn kind(&self) -> Transport;

    /// Closed for good: a new link is needed.
    fn is_closed(&self) -> bool;
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

#[cfg(test)]
mod tests {
    //! The tunnel code over an in-memory transport: `splice` joins a local
    //! byte stream with a stream of any `LinkTransport`.

    use super::*;
    use crate::splice::{IoRecv, IoSend, Side, splice};
    use std::io;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;

    type Item = io::Result<Option<Bytes>>;

    struct MemSend(mpsc::UnboundedSender<Item>);
    struct MemRecv(mpsc::UnboundedReceiver<Item>);

    impl StreamSend for MemSend {
        async fn send(&mut self, data: Bytes) -> io::Result<()> {
            self.0
                .send(Ok(Some(data)))
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
        }
        async fn finish(&mut self) -> io::Result<()> {
            self.0
                .send(Ok(None))
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn reset(&mut self) {
            let _ = self
                .0
                .send(Err(io::Error::from(io::ErrorKind::ConnectionReset)));
        }
    }

    impl StreamRecv for MemRecv {
        async fn recv(&mut self) -> io::Result<Option<Bytes>> {
            self.0.recv().await.unwrap_or(Ok(None))
        }
    }

    /// A link whose far end echoes every stream, upper-cased.
    struct MemLink;

    impl LinkTransport for MemLink {
        type Send = MemSend;
        type Recv = MemRecv;

        async fn open(
            &self,
            _authority: &str,
            _source: &Source,
        ) -> Result<(MemSend, MemRecv), LinkError> {
            let (to_far, mut far_in) = mpsc::unbounded_channel::<Item>();
            let (far_out, from_far) = mpsc::unbounded_channel::<Item>();
            tokio::spawn(async move {
                while let Some(item) = far_in.recv().await {
                    let end = !matches!(item, Ok(Some(_)));
                    let item = item.map(|o| o.map(|b| Bytes::from(b.to_ascii_uppercase())));
                    let _ = far_out.send(item);
                    if end {
                        return;
                    }
                }
            });
            Ok((MemSend(to_far), MemRecv(from_far)))
        }

        fn kind(&self) -> Transport {
            Transport::Quic
        }

        fn is_closed(&self) -> bool {
            false
        }
    }

    /// The local byte stream of these tests: a pipe, which cannot be reset.
    struct Pipe(tokio::io::WriteHalf<tokio::io::DuplexStream>);

    impl isthmus_mesh::h2connect::Abort for Pipe {
        fn abort(&mut self) {}
    }

    impl tokio::io::AsyncWrite for Pipe {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
        }
    }

    fn local(
        io: tokio::io::DuplexStream,
    ) -> (
        IoSend<Pipe>,
        IoRecv<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
    ) {
        let (r, w) = tokio::io::split(io);
        (IoSend(Pipe(w)), IoRecv::new(r))
    }

    #[tokio::test]
    async fn splice_carries_both_ways_and_half_closes_over_any_transport() {
        let (mut app, gateway_side) = tokio::io::duplex(64 * 1024);
        let link = MemLink.open("x.shop:80", &Source::default()).await.unwrap();
        let spliced = tokio::spawn(splice(local(gateway_side), link));
        app.write_all(b"hello ").await.unwrap();
        app.write_all(b"isthmus").await.unwrap();
        app.shutdown().await.unwrap();
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"HELLO ISTHMUS");
        assert_eq!(spliced.await.unwrap().unwrap(), (13, 13));
    }

    /// A local stream that fails when read.
    struct Failing;

    impl StreamRecv for Failing {
        async fn recv(&mut self) -> io::Result<Option<Bytes>> {
            Err(io::ErrorKind::ConnectionReset.into())
        }
    }

    #[tokio::test]
    async fn a_local_failure_resets_the_link_stream_and_a_link_reset_fails_the_splice() {
        // The local side fails: the far end reads a reset, not an end.
        let (to_far, mut far) = mpsc::unbounded_channel();
        let (_keep, from_far) = mpsc::unbounded_channel::<Item>();
        let (_app, gateway_side) = tokio::io::duplex(1024);
        let (send, _) = local(gateway_side);
        let r = splice((send, Failing), (MemSend(to_far), MemRecv(from_far))).await;
        assert_eq!(r.unwrap_err().0, Side::A, "the local side failed");
        let item = far.recv().await.expect("something reached the far end");
        assert_eq!(
            item.unwrap_err().kind(),
            io::ErrorKind::ConnectionReset,
            "the far end sees a reset"
        );
        // The far end resets: the splice ends in an error of that side.
        let (to_far, _far) = mpsc::unbounded_channel();
        let (reset, from_far) = mpsc::unbounded_channel::<Item>();
        reset
            .send(Err(io::ErrorKind::ConnectionReset.into()))
            .unwrap();
        let (_app, gateway_side) = tokio::io::duplex(1024);
        let (side, e) = splice(local(gateway_side), (MemSend(to_far), MemRecv(from_far)))
            .await
            .unwrap_err();
        assert_eq!((side, e.kind()), (Side::B, io::ErrorKind::ConnectionReset));
    }
}
