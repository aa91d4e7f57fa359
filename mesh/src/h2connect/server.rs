//! The server side: an HTTP/2 connection that accepts CONNECT streams.

use std::io;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::{H2Stream, Settings};

/// A stream a peer opened: its request, to be accepted or refused.
pub struct Incoming {
    request: Request<()>,
    body: RecvStream,
    respond: SendResponse<Bytes>,
}

impl Incoming {
    pub fn request(&self) -> &Request<()> {
        &self.request
    }

    /// Answers with `response` and ends the stream.
    pub fn refuse(mut self, response: Response<()>) {
        let _ = self.respond.send_response(response, true);
    }

    /// Answers 200: the stream is the connection from here on.
    pub fn accept(self) -> io::Result<H2Stream> {
        self.accept_with(http::HeaderMap::new())
    }

    /// `accept`, with these headers on the 200.
    pub fn accept_with(mut self, headers: http::HeaderMap) -> io::Result<H2Stream> {
        let mut ok = Response::new(());
        *ok.status_mut() = StatusCode::OK;
        *ok.headers_mut() = headers;
        let send = self
            .respond
            .send_response(ok, false)
            .map_err(|e| io::Error::new(io::ErrorKind::ConnectionAborted, e))?;
        Ok(H2Stream::new(send, self.body))
    }
}

/// Serves one connection: the handshake over `io`, then each stream the
/// peer opens goes to `handler` (which spawns what it needs), until the
/// peer closes, stops answering pings, or `drain` asks for a graceful
/// close (GOAWAY; open streams finish). Callers wanting a hard stop drop
/// the future.
pub async fn serve<IO, H>(
    io: IO,
    s: &Settings,
    drain: &CancellationToken,
    mut handler: H,
) -> Result<(), h2::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Incoming),
{
    let mut conn = h2::server::Builder::new()
        .initial_window_size(s.stream_window)
        .initial_connection_window_size(s.connection_window)
        .max_frame_size(s.max_frame)
        .max_concurrent_streams(s.max_streams)
        .max_header_list_size(s.max_header_list)
        .max_send_buffer_size(s.send_buffer)
        .handshake::<_, Bytes>(io)
        .await?;
    let keepalive = super::keepalive(conn.ping_pong(), s.ping_every, s.ping_timeout);
    tokio::pin!(keepalive);
    let mut draining = false;
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    let (parts, body) = req.into_parts();
                    handler(Incoming {
                        request: Request::from_parts(parts, ()),
                        body,
                        respond,
                    });
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
            _ = drain.cancelled(), if !draining => {
                draining = true;
                conn.graceful_shutdown();
            }
            why = &mut keepalive => {
                tracing::debug!("CONNECT connection closed: {why}");
                return Ok(());
            }
        }
    }
}
