//! Forwarding to the pod's resolvers (`/etc/resolv.conf`, read with the
//! `resolv-conf` crate): over UDP, on a connected socket per server taken
//! from a small pool (one query at a time on each; only the server's
//! datagrams are read, and only a response with the query's ID is taken;
//! a socket that timed out is closed, not pooled), each server in turn
//! with a per-try timeout;
//! over TCP when the UDP answer was truncated (kept whole when it fits
//! the client's UDP limit, else passed on truncated so the client asks
//! again over TCP) or when the client asked over TCP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot read the resolvers' configuration {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid resolv.conf: {message}")]
    Syntax { path: String, message: String },
    #[error(
        "{path} names no nameserver: names the proxy does not know cannot be resolved (give the pod a DNS server)"
    )]
    NoServers { path: String },
    #[error("no upstream resolver answered ({0}): is the cluster's DNS reachable from the pod?")]
    Unanswered(String),
}

/// The resolvers to forward to.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub servers: Vec<SocketAddr>,
    /// Per try and server.
    pub timeout: Duration,
    /// Rounds over all servers.
    pub attempts: u32,
    /// Idle sockets connected to each server.
    pub idle: Arc<Mutex<HashMap<SocketAddr, Vec<Pooled>>>>,
    /// SO_MARK on every socket (capture exempts the proxy by this mark
    /// when not by its uid: without it the forwarded query would come
    /// back to the proxy).
    pub mark: Option<u32>,
}

/// Idle sockets kept per server: enough for the bursts of one pod.
const IDLE_PER_SERVER: usize = 16;

/// A connected UDP socket to one server and its receive buffer.
#[derive(Debug)]
pub struct Pooled {
    socket: UdpSocket,
    buf: Box<[u8]>,
}

impl Upstream {
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration, attempts: u32) -> Self {
        Self {
            servers,
            timeout,
            attempts,
            idle: Arc::default(),
            mark: None,
        }
    }

    /// Marks every socket with `mark`.
    pub fn with_mark(mut self, mark: Option<u32>) -> Self {
        self.mark = mark;
        self
    }

    fn marked<S: std::os::fd::AsFd>(&self, s: &S) -> std::io::Result<()> {
        match self.mark {
            Some(m) => socket2::SockRef::from(s).set_mark(m),
            None => Ok(()),
        }
    }
}

/// What a resolv.conf says that the proxy uses.
#[derive(Debug, Clone)]
pub struct ResolvConf {
    pub upstream: Upstream,
    /// The search list (`shop.svc.cluster.local svc.cluster.local ...`).
    pub search: Vec<String>,
}

/// A try is never longer than this, whatever resolv.conf says: the
/// client's own resolver gives up after its timeout (5 s by default), and
/// the next server must be asked before that.
const MAX_TRY: Duration = Duration::from_secs(2);

impl ResolvConf {
    pub fn read(path: &Path) -> Result<Self, UpstreamError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| UpstreamError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&shown, &bytes)
    }

    pub fn parse(path: &str, bytes: &[u8]) -> Result<Self, UpstreamError> {
        let c = resolv_conf::Config::parse(bytes).map_err(|e| UpstreamError::Syntax {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        let servers: Vec<SocketAddr> = c
            .nameservers
            .iter()
            .map(|ip| SocketAddr::new(IpAddr::from(ip), 53))
            .collect();
        if servers.is_empty() {
            return Err(UpstreamError::NoServers {
                path: path.to_string(),
            });
        }
        Ok(Self {
            upstream: Upstream::new(
                servers,
                Duration::from_secs(u64::from(c.timeout.max(1))).min(MAX_TRY),
                c.attempts.clamp(1, 5),
            ),
            search: c.get_search().cloned().unwrap_or_default(),
        })
    }

    /// The cluster's DNS domain, from the search list's `svc.<domain>`
    /// (or `<ns>.svc.<domain>`) entry (`cluster.local` when there is none).
    pub fn cluster_domain(&self) -> String {
        self.search
            .iter()
            .find_map(|s| {
                s.strip_prefix("svc.")
                    .or_else(|| s.split_once(".svc.").map(|(_, d)| d))
            })
            .unwrap_or("cluster.local")
            .trim_end_matches('.')
            .to_string()
    }
}

fn id(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
}

/// The question section of a message with one question (header excluded).
fn question(m: &[u8]) -> Option<&[u8]> {
    let mut at = 12;
    loop {
        let len = usize::from(*m.get(at)?);
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return None; // compressed: not how a stub asks
        }
        at += 1 + len;
    }
    m.get(12..at + 5)
}

/// Whether `reply` answers `query`: a response with its ID and, unless it
/// is an error without one, its question (a pooled socket may still hold
/// a duplicate answer to an earlier query that had the same ID).
fn is_response_to(reply: &[u8], query: &[u8]) -> bool {
    if reply.len() < 12 || id(reply) != id(query) || reply[2] & 0x80 == 0 {
        return false;
    }
    let error_without_question = reply[3] & 0x0f != 0 && reply[4..6] == [0, 0];
    error_without_question
        || match question(query) {
            Some(q) => reply.get(12..12 + q.len()) == Some(q),
            None => true,
        }
}

fn truncated(reply: &[u8]) -> bool {
    reply[2] & 0x02 != 0
}

impl Upstream {
    /// Forwards a query that came over UDP; the reply fits `max_udp`.
    pub async fn udp(&self, query: &[u8], max_udp: usize) -> Result<Vec<u8>, UpstreamError> {
        let mut failures = Vec::new();
        for _ in 0..self.attempts {
            for server in &self.servers {
                match self.udp_once(*server, query).await {
                    Ok(reply) if truncated(&reply) => {
                        // The whole answer over TCP, when it fits.
                        match self.tcp_once(*server, query).await {
                            Ok(full) if full.len() <= max_udp => return Ok(full),
                            _ => return Ok(reply),
                        }
                    }
                    Ok(reply) => return Ok(reply),
                    Err(e) => failures.push(format!("{server}: {e}")),
                }
            }
        }
        Err(UpstreamError::Unanswered(failures.join("; ")))
    }

    /// Forwards a query that came over TCP.
    pub async fn tcp(&self, query: &[u8]) -> Result<Vec<u8>, UpstreamError> {
        let mut failures = Vec::new();
        for _ in 0..self.attempts {
            for server in &self.servers {
                match self.tcp_once(*server, query).await {
                    Ok(reply) => return Ok(reply),
                    Err(e) => failures.push(format!("{server}: {e}")),
                }
            }
        }
        Err(UpstreamError::Unanswered(failures.join("; ")))
    }

    async fn udp_once(&self, server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
        let pooled = self.idle.lock().get_mut(&server).and_then(Vec::pop);
        let mut p = match pooled {
            Some(p) => p,
            None => {
                let local: SocketAddr = if server.is_ipv4() {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let socket = UdpSocket::bind(local).await?;
                self.marked(&socket)?;
                socket.connect(server).await?;
                Pooled {
                    socket,
                    buf: vec![0u8; 65_535].into_boxed_slice(),
                }
            }
        };
        p.socket.send(query).await?;
        let got = tokio::time::timeout(self.timeout, async {
            loop {
                let n = p.socket.recv(&mut p.buf).await?;
                if is_response_to(&p.buf[..n], query) {
                    return Ok::<_, std::io::Error>(p.buf[..n].to_vec());
                }
            }
        })
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))??;
        // Answered: the socket is clean for the next query.
        let mut idle = self.idle.lock();
        let list = idle.entry(server).or_default();
        if list.len() < IDLE_PER_SERVER {
            list.push(p);
        }
        Ok(got)
    }

    async fn tcp_once(&self, server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
        tokio::time::timeout(self.timeout, async {
            let socket = if server.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            self.marked(&socket)?;
            let mut s = socket.connect(server).await?;
            s.set_nodelay(true)?;
            write_frame(&mut s, query).await?;
            loop {
                let reply = read_frame(&mut s)
                    .await?
                    .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
                if is_response_to(&reply, query) {
                    return Ok(reply);
                }
            }
        })
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?
    }
}

/// One DNS-over-TCP message (RFC 1035 §4.2.2: a two-byte length first).
pub async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "message over 64 KiB"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    w.write_all(&out).await
}

/// The next message, or None at a clean end of the stream.
pub async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    fn query(name: &str) -> Vec<u8> {
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        q.to_vec().unwrap()
    }

    /// `n` answers to `q`, truncated (no answers, TC) when `tc`.
    fn reply(q: &[u8], n: u8, tc: bool) -> Vec<u8> {
        let q = Message::from_vec(q).unwrap();
        let mut r = Message::response(q.metadata.id, q.metadata.op_code);
        r.add_queries(q.queries.clone());
        r.metadata.truncation = tc;
        if !tc {
            for i in 0..n {
                r.add_answer(Record::from_rdata(
                    q.queries[0].name.clone(),
                    5,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, i))),
                ));
            }
        }
        r.to_vec().unwrap()
    }

    /// A resolver on loopback whose UDP answers are truncated (after a
    /// stray datagram with the wrong ID) and whose TCP answers hold `n`
    /// records.
    async fn truncating_server(n: u8) -> SocketAddr {
        // A UDP port whose TCP twin is free too (another process may hold
        // that TCP port: try again with another).
        let (udp, at, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let at = udp.local_addr().unwrap();
            if let Ok(tcp) = tokio::net::TcpListener::bind(at).await {
                break (udp, at, tcp);
            }
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((len, from)) = udp.recv_from(&mut buf).await {
                let mut stray = reply(&buf[..len], 1, false);
                stray[0] ^= 0xff;
                let _ = udp.send_to(&stray, from).await;
                let _ = udp.send_to(&reply(&buf[..len], 0, true), from).await;
            }
        });
        tokio::spawn(async move {
            while let Ok((mut s, _)) = tcp.accept().await {
                tokio::spawn(async move {
                    while let Ok(Some(q)) = read_frame(&mut s).await {
                        let _ = write_frame(&mut s, &reply(&q, n, false)).await;
                    }
                });
            }
        });
        at
    }

    fn upstream(servers: Vec<SocketAddr>) -> Upstream {
        Upstream::new(servers, Duration::from_millis(300), 1)
    }

    #[tokio::test]
    async fn a_truncated_answer_is_fetched_over_tcp_when_the_client_takes_it() {
        let server = truncating_server(3).await;
        let up = upstream(vec![server]);
        let q = query("many.example.");
        let full = Message::from_vec(&up.udp(&q, 4096).await.unwrap()).unwrap();
        assert!(!full.metadata.truncation);
        assert_eq!(full.answers.len(), 3);
        // Too big for a client without EDNS: passed on truncated.
        let big = truncating_server(40).await;
        let r = upstream(vec![big]).udp(&q, 512).await.unwrap();
        let r = Message::from_vec(&r).unwrap();
        assert!(r.metadata.truncation && r.answers.is_empty());
        // Asked over TCP: over TCP.
        let r = Message::from_vec(&up.tcp(&q).await.unwrap()).unwrap();
        assert_eq!(r.answers.len(), 3);
    }

    #[test]
    fn only_an_answer_to_the_question_asked_is_taken() {
        let q = query("a.example.");
        let r = reply(&q, 1, false);
        assert!(is_response_to(&r, &q));
        // The same ID, another question: an old duplicate.
        let mut other = query("b.example.");
        other[..2].copy_from_slice(&q[..2]);
        assert!(!is_response_to(&reply(&other, 1, false), &q));
        assert!(!is_response_to(&q, &q), "a query is not a response");
        assert!(!is_response_to(&r[..11], &q));
        // An error with no question section is an answer.
        let mut formerr = r[..12].to_vec();
        formerr[3] = 0x81;
        formerr[4..12].fill(0);
        assert!(is_response_to(&formerr, &q));
    }

    #[tokio::test]
    async fn sockets_are_reused_and_answers_never_mixed_up() {
        let server = truncating_server(1).await;
        let up = upstream(vec![server]);
        for name in ["a.example.", "b.example.", "c.example."] {
            let r = Message::from_vec(&up.udp(&query(name), 4096).await.unwrap()).unwrap();
            assert_eq!(r.queries[0].name.to_ascii(), name);
        }
        assert_eq!(up.idle.lock()[&server].len(), 1, "one socket, reused");
    }

    /// With a mark (capture exempting the proxy by mark, not uid), its
    /// forwarded queries carry it. Setting a mark needs CAP_NET_ADMIN.
    #[tokio::test]
    async fn forwarded_queries_carry_the_proxys_mark() {
        let server = truncating_server(1).await;
        let up = upstream(vec![server]).with_mark(Some(1337));
        match up.udp(&query("a.example."), 4096).await {
            Ok(_) => {
                let idle = up.idle.lock();
                let s = &idle[&server][0].socket;
                assert_eq!(socket2::SockRef::from(s).mark().unwrap(), 1337);
            }
            Err(e) => assert!(
                e.to_string().contains("ermission") || e.to_string().contains("not permitted"),
                "only a missing capability may stop it: {e}"
            ),
        }
    }

    #[tokio::test]
    async fn a_silent_server_is_passed_over_and_none_answering_is_named() {
        // Bound, never answering.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let good = truncating_server(1).await;
        let up = upstream(vec![silent.local_addr().unwrap(), good]);
        let r = up.udp(&query("a.example."), 4096).await.unwrap();
        assert_eq!(Message::from_vec(&r).unwrap().answers.len(), 1);
        let e = upstream(vec![silent.local_addr().unwrap()])
            .udp(&query("a.example."), 4096)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("no upstream resolver answered"), "{e}");
        assert!(e.contains("timed out"), "{e}");
    }

    #[test]
    fn resolv_conf_gives_servers_search_and_bounded_timeouts() {
        let c = ResolvConf::parse(
            "/etc/resolv.conf",
            b"search shop.svc.cluster.local svc.cluster.local cluster.local\n\
              nameserver 10.96.0.10\nnameserver fd00::10\noptions ndots:5 timeout:30 attempts:9\n",
        )
        .unwrap();
        assert_eq!(
            c.upstream.servers,
            [
                "10.96.0.10:53".parse().unwrap(),
                "[fd00::10]:53".parse().unwrap()
            ]
        );
        assert_eq!(c.upstream.timeout, MAX_TRY);
        assert_eq!(c.upstream.attempts, 5);
        assert_eq!(c.cluster_domain(), "cluster.local");
        let c =
            ResolvConf::parse("x", b"search a.svc.corp.example\nnameserver 10.0.0.1\n").unwrap();
        assert_eq!(c.cluster_domain(), "corp.example");
        let e = ResolvConf::parse("/etc/resolv.conf", b"search x\n").unwrap_err();
        assert!(e.to_string().contains("names no nameserver"), "{e}");
    }
}
