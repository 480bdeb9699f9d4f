//! Taking a connection back from hyper. An SSE stream lives for hours and sends a few bytes now
//! and then; served as a hyper response body it would keep hyper's per-connection buffers (an
//! 8 KiB read buffer and an 8 KiB header buffer: 11.5 KiB per idle stream, measured) for its
//! whole life. Instead the SSE route *takes* the connection: hyper's own response to that request
//! is discarded, hyper finishes the connection, and the socket goes to the session, which writes
//! the response itself.
//!
//! Every connection of the accept loop goes through a [`Detachable`] socket with a
//! [`Takeover`] slot that its requests can reach (a request extension). The WebSocket route
//! takes its connection the same way: a session owns its bare socket, which the fan-out writes
//! to directly.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// hyper serves the connection.
const SERVING: u8 = 0;
/// A route took the connection: hyper's output is discarded.
const TAKEN: u8 = 1;

/// What a route that took the connection runs once hyper has let go of its socket.
pub type Handoff = Box<dyn FnOnce(TcpStream) + Send>;

/// One HTTP connection's takeover slot, shared by its socket and the requests on it.
#[derive(Default)]
pub struct Takeover {
    state: AtomicU8,
    /// The route's handoff, and the socket once hyper dropped it. std Mutex: touched twice per
    /// takeover, never across an await.
    parts: Mutex<(Option<Handoff>, Option<TcpStream>)>,
}

impl Takeover {
    /// Takes the connection: whatever hyper writes from now on is discarded, and `then` runs
    /// with the socket once hyper has finished with it. The route's response should close the
    /// connection (`Connection: close`), so hyper finishes at once. False when the connection
    /// was already taken.
    pub fn take(&self, then: Handoff) -> bool {
        let mut parts = self.lock();
        if self
            .state
            .compare_exchange(SERVING, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        parts.0 = Some(then);
        true
    }

    /// Takes the connection for `then` (see [`Takeover::take`]) and returns what hyper answers
    /// meanwhile: a discarded response that closes the connection, so hyper finishes at once;
    /// a 500 if the connection was already taken.
    pub fn hand_over(&self, then: Handoff) -> axum::response::Response {
        use axum::response::IntoResponse;
        if !self.take(then) {
            return (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "connection already taken",
            )
                .into_response();
        }
        ([(axum::http::header::CONNECTION, "close")], "").into_response()
    }

    /// Called once hyper has dropped the connection: runs the handoff with the socket, if a
    /// route took it.
    pub fn finish(&self) {
        let (then, stream) = {
            let mut parts = self.lock();
            (parts.0.take(), parts.1.take())
        };
        if let (Some(then), Some(stream)) = (then, stream) {
            then(stream);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<Handoff>, Option<TcpStream>)> {
        // A poisoned lock only means a panic elsewhere; the slot itself is still consistent.
        self.parts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connection's socket as hyper sees it: the TCP stream, until a route takes it.
pub struct Detachable {
    stream: Option<TcpStream>,
    takeover: Arc<Takeover>,
}

impl Detachable {
    /// Wraps an accepted stream with its connection's slot.
    pub fn new(stream: TcpStream, takeover: Arc<Takeover>) -> Self {
        Self {
            stream: Some(stream),
            takeover,
        }
    }

    /// The stream while hyper may use it; `None` once a route took the connection.
    fn serving(&mut self) -> Option<&mut TcpStream> {
        if self.takeover.state.load(Ordering::Acquire) == TAKEN {
            return None;
        }
        self.stream.as_mut()
    }
}

impl AsyncRead for Detachable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.serving() {
            Some(stream) => Pin::new(stream).poll_read(cx, buf),
            // End of input: hyper reads nothing more of a taken connection.
            None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Detachable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.serving() {
            Some(stream) => Pin::new(stream).poll_write(cx, buf),
            None => Poll::Ready(Ok(buf.len())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.serving() {
            Some(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.serving() {
            Some(stream) => Pin::new(stream).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.serving() {
            Some(stream) => Pin::new(stream).poll_shutdown(cx),
            // The session still writes to it.
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for Detachable {
    fn drop(&mut self) {
        if self.takeover.state.load(Ordering::Acquire) == TAKEN {
            self.takeover.lock().1 = self.stream.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    /// Invariant: once taken, nothing hyper writes reaches the peer, and the socket goes to
    /// the handoff, still open, when hyper drops it.
    #[tokio::test]
    async fn a_taken_connection_discards_hyper_output_and_hands_the_socket_over() {
        let (mut client, server) = pair().await;
        let takeover = Arc::new(Takeover::default());
        let mut io = Detachable::new(server, takeover.clone());
        io.write_all(b"before ").await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(takeover.take(Box::new(move |stream| {
            let _ = tx.send(stream);
        })));
        assert!(!takeover.take(Box::new(|_| {})), "taken once");
        io.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        io.shutdown().await.unwrap();
        let mut scrap = [0u8; 8];
        assert_eq!(
            io.read(&mut scrap).await.unwrap(),
            0,
            "hyper reads end of input"
        );
        drop(io);
        takeover.finish();
        let mut stream = rx.await.unwrap();
        stream.write_all(b"after").await.unwrap();
        drop(stream);
        let mut seen = String::new();
        client.read_to_string(&mut seen).await.unwrap();
        assert_eq!(seen, "before after");
    }
}
