//! The WebSocket transport: a session's messages as text frames, heartbeats as pings, close
//! codes as close frames, over a socket taken from hyper at the upgrade ([`super::takeover`]).
//! The framing is ours ([`frame`]): the fan-out writes a shared payload behind a per-write
//! header, and an idle connection holds no buffer.

pub mod frame;

use std::io;
use std::sync::Arc;

use tokio::net::TcpStream;

use self::frame::{ClientFrame, Header, Reader};
use super::transport::{Incoming, Transport, TransportKind};
use super::wire::{Encoded, Framing, Out, Wire};

/// A session's transport over a WebSocket.
pub struct WebSocket {
    stream: Arc<TcpStream>,
    reader: Reader,
    /// Largest client frame or message (`MAX_FRAME_BYTES`).
    max_frame: usize,
    /// The `101 Switching Protocols` response, until the session's outbox takes it to write
    /// with the first frame.
    head: Option<Box<[u8]>>,
    /// The code of the client's close frame (`Some(None)`: one without a code), once it sent one.
    peer_close: Option<Option<u16>>,
}

impl WebSocket {
    /// A WebSocket on `stream`, whose handshake answer `head` has not been written yet (`None`
    /// when it has).
    pub fn new(stream: TcpStream, head: Option<Box<[u8]>>, max_frame: usize) -> Self {
        Self {
            stream: Arc::new(stream),
            reader: Reader::default(),
            max_frame,
            head,
            peer_close: None,
        }
    }

    /// Reads more of the client's bytes into the frame reader; false at the end of the
    /// connection.
    async fn read_more(&mut self) -> bool {
        loop {
            // `poll_read_ready` keeps one waker in the socket's reader slot; `readable()`
            // would add a waiter beside it.
            if std::future::poll_fn(|cx| self.stream.poll_read_ready(cx))
                .await
                .is_err()
            {
                return false;
            }
            // A chunk on the stack: nothing is kept between reads unless a frame is partial.
            let mut chunk = [0u8; 512];
            match self.stream.try_read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    self.reader.extend(&chunk[..n]);
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return false,
            }
        }
    }
}

/// How a frame goes on the wire: a header made per write before the shared payload.
pub fn encode<'a>(out: &'a Out, prefix: &mut [u8; 64], owned: &'a mut Vec<u8>) -> Encoded<'a> {
    let (header, body): (Header, &[u8]) = match out {
        Out::Message(_, payload) => {
            let body = payload.as_str().as_bytes();
            (Header::new(frame::OP_TEXT, body.len()), body)
        }
        Out::Heartbeat => (Header::new(frame::OP_PING, 0), b""),
        Out::Pong(payload) => (Header::new(frame::OP_PONG, payload.len()), payload),
        Out::Close(code, reason) => {
            *owned = frame::close_frame(*code, reason);
            return Encoded {
                prefix_len: 0,
                body: owned,
                suffix: b"",
            };
        }
    };
    let header = header.as_bytes();
    prefix[..header.len()].copy_from_slice(header);
    Encoded {
        prefix_len: header.len(),
        body,
        suffix: b"",
    }
}

impl Transport for WebSocket {
    const KIND: TransportKind = TransportKind::WebSocket;
    const ANSWERS_HEARTBEATS: bool = true;

    fn wire(&mut self) -> (Wire, Option<Box<[u8]>>) {
        (
            Wire::new(self.stream.clone(), Framing::WebSocket),
            self.head.take(),
        )
    }

    async fn receive(&mut self) -> Incoming {
        loop {
            match self.reader.next(self.max_frame) {
                Ok(Some(ClientFrame::Text(text))) => return Incoming::Text(text.into()),
                Ok(Some(ClientFrame::Binary)) => return Incoming::Binary,
                Ok(Some(ClientFrame::Ping(payload))) => {
                    return Incoming::Ping(payload.into_boxed_slice());
                }
                Ok(Some(ClientFrame::Pong)) => return Incoming::Alive,
                Ok(Some(ClientFrame::Close(code))) => {
                    self.peer_close = Some(code);
                    return Incoming::Gone;
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::debug!(%error, "websocket frame refused");
                    return Incoming::Violation(error.close_reason());
                }
            }
            if !self.read_more().await {
                return Incoming::Gone;
            }
        }
    }

    fn peer_close(&self) -> Option<Out> {
        // Echo the client's code (RFC 6455 §5.5.1); a close without one is answered with 1000.
        self.peer_close
            .map(|code| Out::Close(code.unwrap_or(1000), ""))
    }

    async fn closed(&mut self) {
        // After the server's close frame: the client answers with its own, then the server
        // ends the TCP connection (RFC 6455 §7.1.1). What else arrives meanwhile is dropped.
        while self.peer_close.is_none() {
            match self.reader.next(self.max_frame) {
                Ok(Some(ClientFrame::Close(code))) => self.peer_close = Some(code),
                Ok(Some(_)) => {}
                Ok(None) => {
                    if !self.read_more().await {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }
}
