//! A session's socket as its writers see it: the fan-out (which writes an event straight to the
//! socket when nothing is waiting before it) and the session task (its own messages, and what
//! the socket could not take at once). Each frame is one vectored write of a few header bytes
//! made per write and the payload every recipient shares, never a copy of it; only the part of
//! a frame a full socket did not take is copied.

use std::io::{self, IoSlice};
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::protocol::{CloseReason, EventId, Payload};

/// How frames are put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// WebSocket frames ([`super::websocket`]).
    WebSocket,
    /// Server-Sent Events ([`super::sse`]).
    Sse,
}

/// Something written to a session's socket, in order.
#[derive(Debug)]
pub enum Out {
    /// An event with its id, or a server message (`connected`, `resync_required`, …) without.
    Message(Option<EventId>, Payload),
    /// A heartbeat: a WebSocket ping, an SSE comment.
    Heartbeat,
    /// The answer to a client's WebSocket ping, with its payload.
    Pong(Box<[u8]>),
    /// The server's last word: a close frame, or the SSE `close` message, with its code and
    /// reason text.
    Close(u16, &'static str),
}

impl From<CloseReason> for Out {
    fn from(reason: CloseReason) -> Self {
        Self::Close(reason.code(), reason.text())
    }
}

impl Out {
    /// Bytes this item counts for in a session's queue bound.
    pub fn queued_bytes(&self) -> usize {
        match self {
            Self::Message(_, payload) => payload.as_str().len(),
            Self::Pong(payload) => payload.len(),
            Self::Heartbeat | Self::Close(..) => 0,
        }
    }
}

/// How much of a frame the socket took.
#[derive(Debug)]
pub enum Written {
    /// All of it.
    All,
    /// Part of it: the rest, to be written before anything else.
    Part(Vec<u8>),
    /// Nothing: the socket is full.
    Nothing,
}

/// The encoding of one frame: a prefix made per write (at most 64 bytes), the body (the shared
/// payload, or a rewrite of it), a constant suffix.
pub struct Encoded<'a> {
    /// Bytes used at the start of the prefix buffer.
    pub prefix_len: usize,
    /// The body.
    pub body: &'a [u8],
    /// The suffix.
    pub suffix: &'static [u8],
}

/// A session's socket and its framing. Shared (`Arc<TcpStream>`): the session task reads it,
/// and whoever holds the session's outbox lock writes it.
pub struct Wire {
    stream: Arc<TcpStream>,
    framing: Framing,
}

impl Wire {
    /// Writes to `stream` with `framing`.
    pub fn new(stream: Arc<TcpStream>, framing: Framing) -> Self {
        Self { stream, framing }
    }

    /// Writes as much of `head` (a response head still to go out) and `out` as the socket takes
    /// now, without waiting.
    pub fn write(&self, head: Option<&[u8]>, out: &Out) -> io::Result<Written> {
        let mut prefix = [0u8; 64];
        let mut owned = Vec::new();
        let encoded = match self.framing {
            Framing::WebSocket => super::websocket::encode(out, &mut prefix, &mut owned),
            Framing::Sse => super::sse::encode(out, &mut prefix, &mut owned),
        };
        let parts = [
            head.unwrap_or_default(),
            &prefix[..encoded.prefix_len],
            encoded.body,
            encoded.suffix,
        ];
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total == 0 {
            return Ok(Written::All);
        }
        let slices = parts.map(IoSlice::new);
        // Straight to the socket rather than through tokio's `try_write_vectored`, which first
        // reads the readiness tokio keeps for the socket: one more object per recipient, a cache
        // miss per delivery at fan-out. A full socket goes through tokio after all, so that its
        // readiness is cleared and `writable()` then waits for the socket to drain instead of
        // returning at once.
        let written = match socket2::SockRef::from(&*self.stream).send_vectored(&slices) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match self.stream.try_write_vectored(&slices) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Written::Nothing),
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        if written == total {
            return Ok(Written::All);
        }
        let mut rest = Vec::with_capacity(total - written);
        let mut skip = written;
        for part in parts {
            let from = skip.min(part.len());
            rest.extend_from_slice(&part[from..]);
            skip -= from;
        }
        Ok(Written::Part(rest))
    }

    /// Writes as much of `rest` as the socket takes now and removes it; true when none is left.
    pub fn write_rest(&self, rest: &mut Vec<u8>) -> io::Result<bool> {
        while !rest.is_empty() {
            match self.stream.try_write(rest) {
                Ok(n) => {
                    rest.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        // Give the memory back: a session holds none between frames.
        *rest = Vec::new();
        Ok(true)
    }

    /// Resolves when the socket may take more bytes.
    pub async fn writable(&self) -> io::Result<()> {
        self.stream.writable().await
    }

    /// Ends the write side (the peer reads the end of the stream).
    pub fn shutdown(&self) {
        let _ = socket2::SockRef::from(&*self.stream).shutdown(std::net::Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// The fan-out's write bypasses tokio, but a full socket must still clear tokio's
    /// readiness: otherwise `writable()` resolves at once and the session task spins instead
    /// of waiting for the client to read.
    #[tokio::test]
    async fn a_full_socket_waits_for_the_peer_to_read() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        let mut peer = client.expect("connect");
        let (server, _) = accepted.expect("accept");
        let wire = Wire::new(Arc::new(server), Framing::WebSocket);
        // Ready to write, as a live session's socket is.
        wire.writable().await.expect("writable");
        let out = Out::Message(None, Payload::from("x".repeat(16 * 1024)));
        let mut writes = 0;
        while !matches!(wire.write(None, &out).expect("write"), Written::Nothing) {
            writes += 1;
        }
        assert!(writes > 0, "the socket took nothing");
        let waited = tokio::time::timeout(Duration::from_millis(300), wire.writable()).await;
        assert!(
            waited.is_err(),
            "writable() resolved while the socket was full"
        );

        let reader = tokio::spawn(async move {
            let mut buffer = vec![0u8; 1 << 16];
            while peer.read(&mut buffer).await.is_ok_and(|n| n > 0) {}
        });
        tokio::time::timeout(Duration::from_secs(5), wire.writable())
            .await
            .expect("writable once the peer reads")
            .expect("writable");
        reader.abort();
    }
}
