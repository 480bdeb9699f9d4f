//! Clients of either transport behind one type, so a suite runs the same scenario over the
//! WebSocket and over SSE.

use std::time::Duration;

use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::sse::SseClient;
use crate::ws::{Read, WsClient};

/// Which transport a client uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `/ws/license`.
    WebSocket,
    /// `/sse/license`.
    Sse,
}

/// A connection of either transport, read the same way.
pub enum AnyClient {
    Ws(WsClient),
    Sse(SseClient),
}

impl AnyClient {
    /// Connects to `url` (a `ws://host:port/ws/license` URL; SSE uses its host and port) with
    /// the token, resuming after `last` when given; `None` when that failed.
    pub async fn open(
        transport: Transport,
        url: &str,
        token: &str,
        last: Option<&String>,
    ) -> Option<Self> {
        match transport {
            Transport::WebSocket => {
                let mut request = url.into_client_request().ok()?;
                let mut protocols = format!("license.v1, bearer.{token}");
                if let Some(last) = last {
                    protocols.push_str(&format!(", last.{last}"));
                }
                request.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    HeaderValue::from_str(&protocols).unwrap(),
                );
                let connected = tokio::time::timeout(
                    Duration::from_secs(3),
                    tokio_tungstenite::connect_async(request),
                )
                .await;
                let Ok(Ok((ws, _))) = connected else {
                    return None;
                };
                Some(Self::Ws(WsClient { ws, protocol: None }))
            }
            Transport::Sse => {
                let port = port_of(url)?;
                let auth = format!("Bearer {token}");
                let mut headers = vec![("Authorization", auth.as_str())];
                if let Some(last) = last {
                    headers.push(("Last-Event-ID", last.as_str()));
                }
                let client = tokio::time::timeout(
                    Duration::from_secs(3),
                    SseClient::open(port, "/sse/license", &headers),
                )
                .await;
                match client {
                    Ok(Ok(client)) if client.status == 200 => Some(Self::Sse(client)),
                    _ => None,
                }
            }
        }
    }

    /// Connects (it must work) and reads `connected`.
    pub async fn connected(transport: Transport, url: &str, token: &str) -> (Self, Value) {
        let mut client = Self::open(transport, url, token, None)
            .await
            .unwrap_or_else(|| panic!("{transport:?} connection to {url}"));
        let hello = client.next_json().await;
        assert_eq!(
            hello["type"], "connected",
            "expected connected, got {hello}"
        );
        (client, hello)
    }

    /// The next message as JSON.
    pub async fn next_json(&mut self) -> Value {
        match self {
            Self::Ws(c) => c.next_json().await,
            Self::Sse(c) => c.next_json().await,
        }
    }

    /// Expects the server to close with this code and reason (SSE: its close message, then
    /// the end of the stream).
    pub async fn expect_close(&mut self, code: u16, reason: &str) {
        match self {
            Self::Ws(c) => c.expect_close(code, reason).await,
            Self::Sse(c) => c.expect_close(code, reason).await,
        }
    }

    /// The next message, close or end, skipping heartbeats.
    pub async fn read(&mut self, within: Duration) -> Option<Read> {
        match self {
            Self::Ws(c) => c.read(within).await,
            Self::Sse(c) => c.read(within).await,
        }
    }

    /// Closes from the client's side.
    pub async fn close(self) {
        match self {
            Self::Ws(mut c) => {
                let _ = c.ws.close(None).await;
            }
            Self::Sse(c) => drop(c),
        }
    }
}

/// The port of a `ws://127.0.0.1:<port>/…` URL.
pub fn port_of(url: &str) -> Option<u16> {
    url.trim_start_matches("ws://")
        .split(['/', '?'])
        .next()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()
}

/// A client on a socket with a tiny receive buffer that reads `connected` and then nothing:
/// the server's writes to it stall and its queue overflows.
pub async fn stalled(transport: Transport, url: &str, token: &str) -> AnyClient {
    let port = port_of(url).expect("a ws:// URL with a port");
    match transport {
        Transport::WebSocket => {
            let mut ws = crate::ws::stalled_client(port, url, token).await;
            use futures_util::StreamExt;
            let first = ws.next().await;
            assert!(
                matches!(first, Some(Ok(tokio_tungstenite::tungstenite::Message::Text(ref t))) if t.contains("connected"))
            );
            AnyClient::Ws(WsClient { ws, protocol: None })
        }
        Transport::Sse => {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            let stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
            let auth = format!("Bearer {token}");
            let mut client =
                SseClient::open_on(stream, port, "/sse/license", &[("Authorization", &auth)])
                    .await
                    .expect("stalled SSE request");
            assert_eq!(client.next_json().await["type"], "connected");
            AnyClient::Sse(client)
        }
    }
}
