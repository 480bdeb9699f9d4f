//! What a session needs from the connection it runs on: the socket's write side for its outbox
//! ([`super::wire`]), the client's messages, and its part of the close. The WebSocket
//! ([`super::websocket`]) and Server-Sent Events ([`super::sse`]) implement it; everything
//! else about a session is shared ([`super::session`]).

use std::future::Future;

use super::wire::{Out, Wire};
use crate::protocol::CloseReason;

/// Which transport a session uses (a label on the connection metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// `/ws/license`.
    WebSocket,
    /// `/sse/license`.
    Sse,
}

impl TransportKind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Sse => "sse",
        }
    }
}

/// What the session hears from the client.
pub enum Incoming {
    /// A text message.
    Text(axum::extract::ws::Utf8Bytes),
    /// A binary message (not part of the protocol; answered with an error).
    Binary,
    /// A ping, whose payload the pong echoes: the peer is alive.
    Ping(Box<[u8]>),
    /// A pong: the peer is alive.
    Alive,
    /// Bytes that break the transport's rules: a message over `MAX_FRAME_BYTES`, a framing
    /// error, text that is not UTF-8. The connection closes with this reason.
    Violation(CloseReason),
    /// The client closed the connection, or it broke.
    Gone,
}

/// A connection as a session sees it.
pub trait Transport: Send {
    /// The transport's kind.
    const KIND: TransportKind;
    /// Whether the client answers heartbeats. A WebSocket peer silent for two intervals is
    /// dropped; an SSE client never speaks, and a dead one shows as a failed write.
    const ANSWERS_HEARTBEATS: bool;

    /// The socket's write side with this transport's framing, and the response head still to
    /// be written before the first frame (taken: asked once).
    fn wire(&mut self) -> (Wire, Option<Box<[u8]>>);

    /// The next thing the client did.
    fn receive(&mut self) -> impl Future<Output = Incoming> + Send;

    /// The answer owed to a client that closed the connection itself (a WebSocket close frame
    /// is echoed), if any.
    fn peer_close(&self) -> Option<Out>;

    /// After the server's last frame: waits for the client's part of the close, if the
    /// transport has one (bounded by the caller).
    fn closed(&mut self) -> impl Future<Output = ()> + Send;
}
