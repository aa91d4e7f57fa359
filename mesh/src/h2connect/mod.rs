//! CONNECT streams over HTTP/2, driven on the `h2` crate directly: the
//! mesh transport between sidecars (15008), the east-west gateway's local
//! entry (15009) and its TCP fallback (15443/tcp).
//!
//! hyper's upgraded HTTP/2 streams read every RST_STREAM as a clean end
//! and cannot send one with a code of our choosing, so an abort crossed
//! these legs as an end. Here (RFC 9113 §8.5) an abort is a RST_STREAM with
//! CONNECT_ERROR, and reading one (or any code but CANCEL / NO_ERROR, which
//! h2 sends when a finished stream is dropped) is an error, so a TCP reset
//! on one side becomes a TCP reset on the other. Writes go straight into
//! h2's flow control (no task and channel per stream, as hyper has);
//! received data is handed out without copying and its window released
//! as it is taken. Connections ping: no answer within the timeout closes
//! the connection and fails its streams.
//!
//! `client`: a connection that opens CONNECT streams; `server`: a
//! connection that accepts them.

pub mod client;
pub mod server;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use client::Client;
pub use server::Incoming;

/// HTTP/2 settings of a CONNECT connection.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub stream_window: u32,
    pub connection_window: u32,
    pub max_frame: u32,
    pub max_streams: u32,
    pub max_header_list: u32,
    /// Data queued in h2 per stream beyond what the socket took.
    pub send_buffer: usize,
    pub ping_every: Duration,
    pub ping_timeout: Duration,
}

impl Settings {
    /// The mesh transport and the gateway's local entry: windows big
    /// enough for bulk TCP through one stream, frames as big as a bulk
    /// read (1 MiB, as ztunnel's HBONE: fewer, larger writes), up to 4 MiB
    /// queued per stream for the socket (ztunnel's HBONE client queues its
    /// 4 MiB window; 1 MiB carried ~10 % less through a sidecar pair,
    /// BENCHMARKS.md; an idle stream queues nothing), many streams per
    /// connection, a ping every 30 s.
    pub const MESH: Settings = Settings {
        stream_window: 8 * 1024 * 1024,
        connection_window: 32 * 1024 * 1024,
        max_frame: 1024 * 1024,
        max_streams: 2048,
        max_header_list: 16 * 1024,
        send_buffer: 4 * 1024 * 1024,
        ping_every: Duration::from_secs(30),
        ping_timeout: Duration::from_secs(10),
    };

    /// The same windows with a ping as often as QUIC's keep-alive, and
    /// the same time to give up on a silent peer as QUIC's idle timeout.
    pub fn pinging(self, every: Duration, timeout: Duration) -> Self {
        Settings {
            ping_every: every,
            ping_timeout: timeout,
            ..self
        }
    }
}

/// Ends a byte stream abruptly: the other end sees a reset, not an end.
pub trait Abort {
    fn abort(&mut self);
}

impl Abort for tokio::net::TcpStream {
    /// Closing it then sends RST.
    fn abort(&mut self) {
        let _ = self.set_zero_linger();
    }
}

/// Closing the connection after this sends RST (the write half of a
/// split `TcpStream` borrows it; the owner closes it).
impl Abort for tokio::net::tcp::WriteHalf<'_> {
    fn abort(&mut self) {
        let _ = self.as_ref().set_zero_linger();
    }
}

/// The receiving half of a CONNECT stream.
pub struct H2Recv {
    recv: RecvStream,
}

/// The sending half of a CONNECT stream.
pub struct H2Send {
    send: SendStream<Bytes>,
}

/// How h2 reports the end of a stream's receiving side, as I/O.
fn read_error(e: h2::Error) -> Option<io::Error> {
    match e.reason() {
        // What h2 sends when a stream is dropped after it finished (and
        // what a server sends to stop a request it answered): an end.
        Some(Reason::NO_ERROR | Reason::CANCEL) if e.is_reset() => None,
        Some(reason) if e.is_reset() => Some(io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("stream reset by the peer ({reason})"),
        )),
        _ if e.is_io() => Some(e.into_io().expect("is_io")),
        _ => Some(io::Error::new(io::ErrorKind::ConnectionAborted, e)),
    }
}

/// How h2 reports a stream that can no longer send, as I/O.
fn write_error(send: &mut SendStream<Bytes>, cx: &mut Context<'_>) -> Poll<io::Error> {
    Poll::Ready(match ready!(send.poll_reset(cx)) {
        Ok(Reason::NO_ERROR | Reason::CANCEL | Reason::STREAM_CLOSED) => {
            io::ErrorKind::BrokenPipe.into()
        }
        Ok(reason) => io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("stream reset by the peer ({reason})"),
        ),
        Err(e) if e.is_io() => e.into_io().expect("is_io"),
        Err(e) => io::Error::new(io::ErrorKind::ConnectionAborted, e),
    })
}

impl H2Recv {
    /// The next bytes; `None` at a clean end, an error at a reset. The
    /// window is reopened for them as they are handed out.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            return Poll::Ready(match ready!(self.recv.poll_data(cx)) {
                None => Ok(None),
                Some(Ok(b)) if b.is_empty() => continue,
                Some(Ok(b)) => {
                    let _ = self.recv.flow_control().release_capacity(b.len());
                    Ok(Some(b))
                }
                Some(Err(e)) => match read_error(e) {
                    None => Ok(None),
                    Some(e) => Err(e),
                },
            });
        }
    }

    pub async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl H2Send {
    /// Waits until h2 takes more data: its window is open and its send
    /// buffer not full. Then a whole chunk goes in at once (h2 frames it as
    /// the window allows; its buffer holds at most one chunk beyond its
    /// limit), rather than the few bytes of capacity there may be, which
    /// cut bulk transfers into small frames.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.send.capacity() > 0 {
            return Poll::Ready(Ok(()));
        }
        // Reserve only with bytes to send: a reservation pins the
        // connection's window.
        self.send.reserve_capacity(1);
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => {}
                Some(Ok(_)) => return Poll::Ready(Ok(())),
                Some(Err(_)) | None => return write_error(&mut self.send, cx).map(Err),
            }
        }
    }

    /// Hands `buf` to h2 once it takes data; how many bytes it took (all).
    pub fn poll_send(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.poll_ready(cx))?;
        match self.send.send_data(Bytes::copy_from_slice(buf), false) {
            Ok(()) => Poll::Ready(Ok(buf.len())),
            Err(_) => write_error(&mut self.send, cx).map(Err),
        }
    }

    /// Sends `data` without copying, once h2 takes data.
    pub async fn send(&mut self, data: Bytes) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        std::future::poll_fn(|cx| self.poll_ready(cx)).await?;
        if self.send.send_data(data, false).is_err() {
            return Err(std::future::poll_fn(|cx| write_error(&mut self.send, cx)).await);
        }
        Ok(())
    }

    /// Half-closes (END_STREAM): the peer reads the end.
    pub fn finish(&mut self) -> io::Result<()> {
        self.send
            .send_data(Bytes::new(), true)
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))
    }

    /// Aborts the stream (RST_STREAM with CONNECT_ERROR, RFC 9113 §8.5):
    /// the peer sees a reset in both directions.
    pub fn reset(&mut self) {
        self.send.send_reset(Reason::CONNECT_ERROR);
    }
}

/// One CONNECT stream as a byte stream. Dropping it unfinished sends
/// RST_STREAM(CANCEL), which the peer reads as an end; `abort` sends
/// CONNECT_ERROR, which it reads as a reset.
pub struct H2Stream {
    send: H2Send,
    recv: H2Recv,
    /// Received bytes not yet read.
    buf: Bytes,
}

impl H2Stream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send: H2Send { send },
            recv: H2Recv { recv },
            buf: Bytes::new(),
        }
    }

    /// Both halves, borrowed, and the bytes received but not yet read
    /// (which come before anything the receiving half yields).
    pub fn parts(&mut self) -> (&mut H2Send, &mut H2Recv, Bytes) {
        (
            &mut self.send,
            &mut self.recv,
            std::mem::take(&mut self.buf),
        )
    }

    /// The two halves, to drive each direction on its own.
    pub fn into_split(self) -> (H2Send, H2Recv) {
        debug_assert!(self.buf.is_empty(), "split before reading");
        (self.send, self.recv)
    }
}

impl Abort for H2Stream {
    fn abort(&mut self) {
        self.send.reset();
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.buf.is_empty() {
            match ready!(me.recv.poll_recv(cx))? {
                Some(b) => me.buf = b,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = me.buf.len().min(out.remaining());
        out.put_slice(&me.buf[..n]);
        me.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().send.poll_send(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2's connection task writes out what it was given.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().send.finish())
    }
}

/// Pings the peer every `every`; returns when one goes unanswered for
/// `timeout` (or pinging fails: the connection is gone).
async fn keepalive(ping: Option<h2::PingPong>, every: Duration, timeout: Duration) -> &'static str {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(timeout, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return "the connection closed",
            Err(_) => return "the peer stopped answering pings",
        }
    }
}

#[cfg(test)]
mod tests;
