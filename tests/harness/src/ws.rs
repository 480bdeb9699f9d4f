//! WebSocket clients of the gateway (tokio-tungstenite): every token carrier, reads with
//! deadlines, close frames, and a client that never reads.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::WAIT;

/// A WebSocket client on a socket with a tiny receive buffer, meant never to read: the
/// server's writes to it stall and its queue overflows.
pub async fn stalled_client(port: u16, url: &str, token: &str) -> Ws {
    stalled_client_at(port, &format!("{url}?token={token}")).await
}

/// [`stalled_client`] on a URL with its whole query (a token and, say, a resume position).
pub async fn stalled_client_at(port: u16, url: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    tokio_tungstenite::client_async(url, stream)
        .await
        .expect("stalled client upgrade")
        .0
}

/// Reads everything the server sent until its close frame; returns the code and reason.
pub async fn final_close(ws: &mut Ws, within: Duration) -> Option<(u16, String)> {
    tokio::time::timeout(within, async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Close(frame) = message {
                return frame.map(|f| (u16::from(f.code), f.reason.to_string()));
            }
        }
        None
    })
    .await
    .expect("the server closed the connection in time")
}

/// Where a client puts its token.
#[derive(Clone, Copy, Debug)]
pub enum Carrier {
    /// `?token=` (the seed's form).
    Query,
    /// `Sec-WebSocket-Protocol: license.v1, bearer.<JWT>`.
    Subprotocol,
    /// `Authorization: Bearer`.
    Header,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket test client.
pub struct WsClient {
    pub ws: Ws,
    /// The `Sec-WebSocket-Protocol` the server answered.
    pub protocol: Option<String>,
}

/// Connects (the upgrade must succeed); the caller reads `connected` or the close.
pub async fn ws_connect(url: &str, token: Option<&str>, carrier: Carrier) -> WsClient {
    try_ws_connect(url, token, carrier, &[])
        .await
        .expect("websocket upgrade")
}

/// Connects with extra headers; returns the handshake error (e.g. a 403) instead of panicking.
pub async fn try_ws_connect(
    url: &str,
    token: Option<&str>,
    carrier: Carrier,
    headers: &[(&'static str, &str)],
) -> Result<WsClient, tungstenite::Error> {
    let url = match (token, carrier) {
        (Some(t), Carrier::Query) => format!("{url}?token={t}"),
        _ => url.to_owned(),
    };
    let mut request = url.into_client_request()?;
    match (token, carrier) {
        (Some(t), Carrier::Subprotocol) => {
            let value = format!("license.v1, bearer.{t}");
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(&value).unwrap(),
            );
        }
        (Some(t), Carrier::Header) => {
            request.headers_mut().insert(
                "Authorization",
                HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
            );
        }
        _ => {}
    }
    for (k, v) in headers {
        request
            .headers_mut()
            .insert(*k, HeaderValue::from_str(v).unwrap());
    }
    let (ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| tungstenite::Error::Io(std::io::Error::other("connect timeout")))??;
    let protocol = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok(WsClient { ws, protocol })
}

/// What a client read.
#[derive(Debug)]
pub enum Read {
    Text(String),
    Close(Option<(u16, String)>),
    Ended,
}

impl WsClient {
    /// Connects and reads the `connected` message.
    pub async fn connected(url: &str, token: &str) -> (Self, Value) {
        let mut client = ws_connect(url, Some(token), Carrier::Subprotocol).await;
        let hello = client.next_json().await;
        assert_eq!(
            hello["type"], "connected",
            "expected connected, got {hello}"
        );
        (client, hello)
    }

    /// The next text, close or end of stream, skipping pings and pongs.
    pub async fn read(&mut self, within: Duration) -> Option<Read> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            return Some(match next {
                Some(Ok(Message::Text(t))) => Read::Text(t.to_string()),
                Some(Ok(Message::Close(frame))) => Read::Close(
                    frame.map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string())),
                ),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(b))) => {
                    Read::Text(String::from_utf8_lossy(&b).into_owned())
                }
                Some(Err(_)) | None => Read::Ended,
            });
        }
    }

    /// Every message until `quiet` passes without one, as JSON.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(read) = self.read(quiet).await {
            match read {
                Read::Text(t) => out.push(serde_json::from_str(&t).expect("JSON message")),
                other => panic!("expected messages, got {other:?}"),
            }
        }
        out
    }

    /// The next text message as raw text; panics on anything else.
    pub async fn next_text(&mut self) -> String {
        match self.read(WAIT).await {
            Some(Read::Text(t)) => t,
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// The next text message as JSON.
    pub async fn next_json(&mut self) -> Value {
        let text = self.next_text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// Expects the server to close with this code and reason.
    pub async fn expect_close(&mut self, code: u16, reason: &str) {
        match self.read(WAIT).await {
            Some(Read::Close(Some((c, r)))) => {
                assert_eq!((c, r.as_str()), (code, reason), "close code and reason")
            }
            Some(Read::Text(t)) => panic!("expected close {code} {reason:?}, got message {t}"),
            other => panic!("expected close {code} {reason:?}, got {other:?}"),
        }
    }

    /// Expects no message for `quiet` (pings aside).
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(read) = self.read(quiet).await {
            panic!("expected silence, got {read:?}");
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
