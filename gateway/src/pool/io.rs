//! An upstream byte stream: a plain TCP connection, or one CONNECT stream
//! of the mesh transport (mTLS HTTP/2 to the endpoint's sidecar). The HTTP
//! clients and the TCP proxy read and write either the same way.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use isthmus_mesh::transport::TunnelStream;

use crate::splice::{Either, Halves};

pub enum Io {
    Tcp(TcpStream),
    /// Boxed: a stream with its connection handles is several times a
    /// socket's size, and pooled connections move a lot.
    Tunnel(Box<TunnelStream>),
}

impl Io {
    /// Whether the peer closed (or sent bytes nobody asked for) while the
    /// connection sat idle. No system call unless readiness was reported.
    pub fn is_stale(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self {
            Io::Tcp(s) => match s.poll_read_ready(&mut cx) {
                Poll::Pending => false,
                Poll::Ready(Err(_)) => true,
                Poll::Ready(Ok(())) => {
                    let mut probe = [0u8; 1];
                    !matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
            Io::Tunnel(t) => {
                let mut probe = [0u8; 1];
                let mut buf = ReadBuf::new(&mut probe);
                !Pin::new(t).poll_read(&mut cx, &mut buf).is_pending()
            }
        }
    }

    pub fn is_tunnel(&self) -> bool {
        matches!(self, Io::Tunnel(_))
    }
}

impl isthmus_mesh::h2connect::Abort for Io {
    fn abort(&mut self) {
        match self {
            Io::Tcp(s) => s.abort(),
            Io::Tunnel(s) => s.abort(),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tunnel(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tunnel(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tunnel(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Tunnel(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tunnel(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tunnel(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A TCP connection splits into socket halves, a mesh stream into its
/// HTTP/2 halves (the splice then hands h2 its chunks as they are).
impl crate::splice::Halves for Io {
    type Send<'a> = Either<
        <TcpStream as Halves>::Send<'a>,
        <isthmus_mesh::h2connect::H2Stream as Halves>::Send<'a>,
    >;
    type Recv<'a> = Either<
        <TcpStream as Halves>::Recv<'a>,
        <isthmus_mesh::h2connect::H2Stream as Halves>::Recv<'a>,
    >;
    fn halves(&mut self) -> (Self::Send<'_>, Self::Recv<'_>) {
        match self {
            Io::Tcp(s) => {
                let (w, r) = s.halves();
                (Either::A(w), Either::A(r))
            }
            Io::Tunnel(t) => {
                let (w, r) = Halves::halves(t.stream());
                (Either::B(w), Either::B(r))
            }
        }
    }
}
