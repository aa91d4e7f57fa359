//! The client side: an HTTP/2 connection that opens CONNECT streams.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{H2Stream, Settings};

/// A handle on a client connection; clones share it. The connection lives
/// while a handle or a stream of it does (and its driver runs).
#[derive(Clone)]
pub struct Client {
    send: h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl Client {
    /// The HTTP/2 handshake over `io`; the returned future drives the
    /// connection (spawn it) until it ends or stops answering pings.
    pub async fn handshake<IO>(
        io: IO,
        s: &Settings,
    ) -> Result<(Client, impl Future<Output = ()> + Send + 'static), h2::Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, mut conn) = h2::client::Builder::new()
            .initial_window_size(s.stream_window)
            .initial_connection_window_size(s.connection_window)
            .max_frame_size(s.max_frame)
            .max_header_list_size(s.max_header_list)
            .max_send_buffer_size(s.send_buffer)
            .handshake::<_, Bytes>(io)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let done = closed.clone();
        let (every, timeout) = (s.ping_every, s.ping_timeout);
        let driver = async move {
            let ping = conn.ping_pong();
            tokio::select! {
                r = &mut conn => if let Err(e) = r {
                    tracing::debug!("CONNECT connection ended: {e}");
                },
                why = super::keepalive(ping, every, timeout) => {
                    tracing::debug!("CONNECT connection closed: {why}");
                }
            }
            done.store(true, Ordering::Release);
        };
        Ok((Client { send, closed }, driver))
    }

    /// Opens a CONNECT (or any) stream with `req`; the response and, when
    /// it is 200, the stream. Any other status came with the end of the
    /// stream: drop it.
    pub async fn open(&self, req: Request<()>) -> Result<(Response<()>, H2Stream), h2::Error> {
        let result = async {
            let mut send = self.send.clone().ready().await?;
            let (response, stream) = send.send_request(req, false)?;
            let (parts, body) = response.await?.into_parts();
            Ok::<_, h2::Error>((Response::from_parts(parts, ()), H2Stream::new(stream, body)))
        }
        .await;
        if let Err(e) = &result
            && (e.is_io() || e.is_go_away())
        {
            // The connection is going: new streams need a new one.
            self.closed.store(true, Ordering::Release);
        }
        result
    }

    /// Closed, closing (GOAWAY) or failed: make a new one.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}
