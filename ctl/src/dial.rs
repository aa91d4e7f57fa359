//! Opening TCP connections to a cluster's addresses. Plain connects,
//! unless the demo runs its clusters in network namespaces (`demo
//! --netns`): it then says which loopback range lives in which namespace,
//! and a socket toward that range is made inside it (a socket belongs to
//! the namespace it was made in, wherever it is used afterwards).
//!
//! `marked` makes sockets inside a namespace with an SO_MARK: there the
//! demo plays an application whose traffic capture rules send to its
//! sidecar (by that mark, as a pod's rules do by namespace).

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

/// A socket of `kind` made inside namespace `ns`, carrying SO_MARK `mark`,
/// non-blocking.
fn marked(ns: &str, kind: socket2::Type, mark: u32) -> std::io::Result<socket2::Socket> {
    isthmus_e2e::netns::spawn_in(ns, "dial", move || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, kind, None)?;
        s.set_mark(mark)?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
    .map_err(std::io::Error::other)?
    .join()
    .map_err(|_| std::io::Error::other("the socket-making thread panicked"))?
}

/// A TCP connection to `addr` from inside `ns`, marked `mark`.
pub async fn connect_marked(ns: &str, addr: SocketAddr, mark: u32) -> std::io::Result<TcpStream> {
    let s = marked(ns, socket2::Type::STREAM, mark)?;
    TcpSocket::from_std_stream(std::net::TcpStream::from(s))
        .connect(addr)
        .await
}

/// A UDP socket inside `ns`, marked `mark`, bound to any port.
pub fn udp_marked(ns: &str, mark: u32) -> std::io::Result<tokio::net::UdpSocket> {
    let s = marked(ns, socket2::Type::DGRAM, mark)?;
    s.bind(&SocketAddr::from(([0, 0, 0, 0], 0)).into())?;
    tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(s))
}
