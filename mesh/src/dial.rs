//! Outbound TCP as every part of the mesh makes it: no Nagle, the proxy's
//! SO_MARK (so its own traffic is not captured again), a connect timeout,
//! and TCP_USER_TIMEOUT, so that a peer gone silent (packets dropped, host
//! frozen: nothing resets the connection) is given up on in about a
//! second instead of after the kernel's ~15 minutes of retransmissions.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// Socket options for upstream connections.
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketOptions {
    /// SO_MARK, so iptables rules can exempt the proxy's own traffic.
    pub mark: Option<u32>,
    /// TCP_USER_TIMEOUT: a connection whose sent data stays unacknowledged
    /// this long is aborted (the kernel acknowledges, not the app: a slow
    /// app never trips it). Meant for peers inside the cluster, where a
    /// round trip takes well under a millisecond; None: the kernel's.
    pub user_timeout: Option<Duration>,
}

impl SocketOptions {
    /// TCP_USER_TIMEOUT of the mesh's connections inside a cluster.
    pub const USER_TIMEOUT: Duration = Duration::from_secs(1);

    /// The same, without a user timeout (destinations outside the mesh,
    /// possibly far away).
    pub fn far(self) -> Self {
        Self {
            user_timeout: None,
            ..self
        }
    }
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
        if opts.user_timeout.is_some() {
            socket2::SockRef::from(&socket).set_tcp_user_timeout(opts.user_timeout)?;
        }
        socket.connect(addr).await
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(DialError::Connect { addr, source }),
        Err(_) => Err(DialError::Timeout { addr, timeout }),
    }
}
