//! Outbound TCP as every part of the mesh makes it: no Nagle, the proxy's
//! SO_MARK (so its own traffic is not captured again), a connect timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// Socket options for upstream connections.
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketOptions {
    /// SO_MARK, so iptables rules can exempt the proxy's own traffic.
    pub mark: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connection to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connection to {addr} timed out after {timeout:?}: is the endpoint up and reachable?")]
    Timeout { addr: SocketAddr, timeout: Duration },
}

/// A TCP connection to `addr` within `timeout`.
pub async fn dial(
    addr: SocketAddr,
    timeout: Duration,
    opts: SocketOptions,
) -> Result<TcpStream, DialError> {
    let connect = async {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }?;
        if let Some(mark) = opts.mark {
            socket2::SockRef::from(&socket).set_mark(mark)?;
        }
        socket.set_nodelay(true)?;
        socket.connect(addr).await
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(DialError::Connect { addr, source }),
        Err(_) => Err(DialError::Timeout { addr, timeout }),
    }
}
