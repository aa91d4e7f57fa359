//! The fallback link: HTTP/2 over TLS on TCP, the same CONNECT streams,
//! for peers whose UDP does not get through; a refused handshake is told
//! apart by waiting for the server's first bytes (`Prefixed`).

use super::*;

/// The HTTP/2-over-TLS fallback connection to a peer gateway.
pub struct H2Link {
    addr: SocketAddr,
    pub(super) conn: isthmus_mesh::h2connect::Client,
}

impl H2Link {
    pub async fn connect(
        tls: &isthmus_mesh::tls::MeshTls,
        addr: SocketAddr,
        expected: &str,
    ) -> Result<Self, LinkError> {
        Self::connect_with(tls, addr, expected, &TaskTracker::new()).await
    }

    /// `connect`, its connection driver in `tasks` (it ends when the
    /// connection closes).
    pub async fn connect_with(
        tls: &isthmus_mesh::tls::MeshTls,
        addr: SocketAddr,
        expected: &str,
        tasks: &TaskTracker,
    ) -> Result<Self, LinkError> {
        let fail = |reason: String| LinkError::Connect {
            addr,
            transport: "the TCP fallback",
            reason,
        };
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                LinkError::NotListening { addr }
            } else {
                fail(e.to_string())
            }
        })?;
        let _ = tcp.set_nodelay(true);
        let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
        let s = tokio_rustls::TlsConnector::from(tls.client.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| tls_refusal(addr, &e).unwrap_or_else(|| fail(e.to_string())))?;
        let got = isthmus_mesh::tls::peer_id(s.get_ref().1)
            .map(|i| i.to_string())
            .unwrap_or_default();
        if got != expected {
            return Err(LinkError::WrongPeer {
                addr,
                got,
                expected: expected.into(),
            });
        }
        // TLS 1.3: the peer verifies our certificate after our side of the
        // handshake is done. Its first bytes (HTTP/2 SETTINGS) say it
        // accepted us; an alert says why not, here rather than on a stream.
        let s = first_bytes(s, HANDSHAKE_TIMEOUT)
            .await
            .map_err(|e| tls_refusal(addr, &e).unwrap_or_else(|| fail(e.to_string())))?;
        let (conn, driver) = isthmus_mesh::h2connect::Client::handshake(
            s,
            &crate::eastwest::quic::fallback_settings(),
        )
        .await
        .map_err(|e| LinkError::Http2 {
            addr,
            reason: e.to_string(),
        })?;
        tasks.spawn(driver);
        Ok(Self { addr, conn })
    }

    pub async fn open(
        &self,
        authority: &str,
        source: &crate::eastwest::Source,
    ) -> Result<isthmus_mesh::h2connect::H2Stream, LinkError> {
        self.open_target(authority, source).await.map(|(s, _)| s)
    }

    /// `open`, with the application port the peer said it joined.
    pub async fn open_target(
        &self,
        authority: &str,
        source: &crate::eastwest::Source,
    ) -> Result<(isthmus_mesh::h2connect::H2Stream, Option<u16>), LinkError> {
        let failed = |status: StatusCode, reason: String| LinkError::Refused {
            addr: self.addr,
            authority: authority.into(),
            status,
            reason,
        };
        let mut req = Request::new(());
        *req.method_mut() = Method::CONNECT;
        *req.uri_mut() = authority
            .parse()
            .map_err(|e: http::uri::InvalidUri| failed(StatusCode::BAD_REQUEST, e.to_string()))?;
        source.write(req.headers_mut());
        let (resp, stream) = self.conn.open(req).await.map_err(|e| LinkError::Http2 {
            addr: self.addr,
            reason: e.to_string(),
        })?;
        if resp.status() != StatusCode::OK {
            return Err(failed(
                resp.status(),
                crate::eastwest::refusal_reason(resp.headers()),
            ));
        }
        Ok((stream, crate::eastwest::target_port(resp.headers())))
    }

    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }
}

/// Reads the peer's first bytes from `io` (within `wait`) and gives them
/// back ahead of the rest: whether the peer accepted the connection is
/// known once they arrive.
async fn first_bytes<IO>(mut io: IO, wait: std::time::Duration) -> std::io::Result<Prefixed<IO>>
where
    IO: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(wait, io.read(&mut buf))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "the peer sent nothing")
        })??;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the peer closed the connection",
        ));
    }
    buf.truncate(n);
    Ok(Prefixed {
        head: Bytes::from(buf),
        io,
    })
}

/// `io` with bytes already read from it put back in front.
struct Prefixed<IO> {
    head: Bytes,
    io: IO,
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.remaining());
            let head = self.head.split_to(n);
            buf.put_slice(&head);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
