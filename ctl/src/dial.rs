//! Opening TCP connections to a cluster's addresses. Plain connects,
//! unless the demo runs its clusters in network namespaces (`demo
//! --netns`): it then says which loopback range lives in which namespace,
//! and a socket toward that range is made inside it (a socket belongs to
//! the namespace it was made in, wherever it is used afterwards).

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use tokio::net::{TcpSocket, TcpStream};

/// (first three octets of a /24, namespace), set once.
static NAMESPACES: OnceLock<Vec<([u8; 3], String)>> = OnceLock::new();

/// Makes connections to each /24 (its first three octets) from inside
/// its namespace, from now on. Only the first call counts.
pub fn through_namespaces(ranges: Vec<([u8; 3], String)>) {
    let _ = NAMESPACES.set(ranges);
}

/// The namespace a connection to `addr` starts in (None: this one).
fn namespace_of(addr: SocketAddr) -> Option<&'static str> {
    let IpAddr::V4(ip) = addr.ip() else {
        return None;
    };
    let o = ip.octets();
    NAMESPACES
        .get()?
        .iter()
        .find(|(prefix, _)| prefix[..] == o[..3])
        .map(|(_, ns)| ns.as_str())
}

/// A TCP connection to `addr`, from the namespace its range lives in.
pub async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let Some(ns) = namespace_of(addr) else {
        return TcpStream::connect(addr).await;
    };
    let socket = isthmus_e2e::netns::spawn_in(ns, "dial", TcpSocket::new_v4)
        .map_err(std::io::Error::other)?
        .join()
        .map_err(|_| std::io::Error::other("the socket-making thread panicked"))??;
    socket.connect(addr).await
}
