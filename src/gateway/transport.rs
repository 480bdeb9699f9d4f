//! What a session needs from the connection it runs on: send a message or a heartbeat, hear
//! the client, close with a reason. The WebSocket ([`super::websocket`]) and Server-Sent Events
//! ([`super::sse`]) implement it; everything else about a session is shared
//! ([`super::session`]).

use std::future::Future;

use crate::protocol::{CloseReason, EventId, Payload};

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

/// Something the session sends.
pub enum Frame {
    /// An event with its id, or a server message (`connected`, `resync_required`, …) without.
    Message(Option<EventId>, Payload),
    /// A heartbeat: a WebSocket ping, an SSE comment.
    Heartbeat,
}

/// What the session hears from the client.
pub enum Incoming {
    /// A text message.
    Text(axum::extract::ws::Utf8Bytes),
    /// A binary message (not part of the protocol; answered with an error).
    Binary,
    /// A ping or pong: the peer is alive.
    Alive,
    /// A message over `MAX_FRAME_BYTES`.
    TooBig,
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

    /// Sends one frame; false when the connection failed.
    fn send(&mut self, frame: Frame) -> impl Future<Output = bool> + Send;

    /// The next thing the client did.
    fn receive(&mut self) -> impl Future<Output = Incoming> + Send;

    /// Tells the client why the server ends the connection, and ends it.
    fn close(&mut self, reason: CloseReason) -> impl Future<Output = ()> + Send;
}
