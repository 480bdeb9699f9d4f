//! The WebSocket transport: a session's frames as WebSocket messages, close codes as close
//! frames.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::Instant;

use super::transport::{Frame, Incoming, Transport, TransportKind};
use crate::protocol::CloseReason;

/// How long the server waits for the client's close frame after sending its own.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A WebSocket as the transport sees it: messages in, messages out. axum's `WebSocket` in
/// production; in-process tests drive a session through channels.
pub trait Socket:
    Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin + Send
{
}

impl<T> Socket for T where
    T: Stream<Item = Result<Message, axum::Error>>
        + Sink<Message, Error = axum::Error>
        + Unpin
        + Send
{
}

/// A session's transport over a WebSocket.
pub struct WebSocket<W>(pub W);

impl<W: Socket> Transport for WebSocket<W> {
    const KIND: TransportKind = TransportKind::WebSocket;
    const ANSWERS_HEARTBEATS: bool = true;

    fn send(&mut self, frame: Frame) -> impl Future<Output = bool> + Send {
        let message = match frame {
            Frame::Message(_, payload) => Message::Text(payload.into_ws_text()),
            Frame::Heartbeat => Message::Ping(Default::default()),
        };
        let sending = SinkExt::send(&mut self.0, message);
        futures_util::FutureExt::map(sending, |sent| sent.is_ok())
    }

    fn receive(&mut self) -> impl Future<Output = Incoming> + Send {
        futures_util::FutureExt::map(self.0.next(), |frame| match frame {
            None | Some(Ok(Message::Close(_))) => Incoming::Gone,
            Some(Ok(Message::Text(text))) => Incoming::Text(text),
            Some(Ok(Message::Binary(_))) => Incoming::Binary,
            // Pings are answered by the WebSocket layer; pongs only prove liveness.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Incoming::Alive,
            Some(Err(error)) => read_error(error),
        })
    }

    fn close(&mut self, reason: CloseReason) -> impl Future<Output = ()> + Send {
        close(&mut self.0, reason)
    }
}

/// Maps a receive error: 1009 for an oversized frame, otherwise the connection is broken and
/// is dropped without a close frame.
fn read_error(error: axum::Error) -> Incoming {
    use tungstenite::error::Error as WsError;
    match error.into_inner().downcast::<WsError>() {
        // Every capacity error (message or frame too long) is a frame over the limit.
        Ok(ws) if matches!(*ws, WsError::Capacity(_)) => Incoming::TooBig,
        Ok(other) => {
            tracing::debug!(error = %other, "websocket read failed");
            Incoming::Gone
        }
        Err(other) => {
            tracing::debug!(error = %other, "websocket read failed");
            Incoming::Gone
        }
    }
}

/// Sends a close frame with `reason` and waits briefly for the peer's answer.
pub async fn close<W: Socket>(socket: &mut W, reason: CloseReason) {
    let frame = CloseFrame {
        code: reason.code(),
        reason: Utf8Bytes::from_static(reason.text()),
    };
    // One deadline for sending the frame and hearing the answer: a peer that never reads
    // costs the node at most this long.
    let deadline = Instant::now() + CLOSE_GRACE;
    let sent = tokio::time::timeout_at(deadline, socket.send(Message::Close(Some(frame)))).await;
    if matches!(sent, Ok(Ok(()))) {
        let _ = tokio::time::timeout_at(deadline, async {
            while let Some(Ok(_)) = socket.next().await {}
        })
        .await;
    }
}
