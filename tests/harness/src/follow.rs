//! Clients that follow a tenant's events through failures, resuming after every disconnect,
//! and record what they saw (loss, duplicates, order).

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::sse::SseClient;
use crate::ws::{Read, WsClient};

/// What a [`follow`]ing client saw.
#[derive(Debug, Default, Clone)]
pub struct Followed {
    /// Event ids in arrival order.
    pub ids: Vec<String>,
    /// `resync_required` messages received.
    pub resyncs: usize,
    /// Connections made (1 + reconnects).
    pub connections: usize,
    /// Nodes that served it.
    pub nodes: std::collections::BTreeSet<String>,
}

/// The id a [`follow`]ing client waits for (the last event published), once known.
#[derive(Clone, Default)]
pub struct Target(std::sync::Arc<std::sync::Mutex<Option<(u64, u64)>>>);

impl Target {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the last id; `None` when nothing was published.
    pub fn set(&self, last: Option<&String>) {
        *self.0.lock().unwrap() = Some(last.map(|id| id_key(id)).unwrap_or((0, 0)));
    }

    fn reached(&self, seen: &Followed) -> bool {
        match *self.0.lock().unwrap() {
            None => false,
            Some(last) => seen.ids.last().is_some_and(|id| id_key(id) >= last) || last == (0, 0),
        }
    }
}

/// Which transport a client uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `/ws/license`.
    WebSocket,
    /// `/sse/license`.
    Sse,
}

/// A connection of either transport, read the same way.
enum Conn {
    Ws(WsClient),
    Sse(SseClient),
}

impl Conn {
    /// Connects to `url` (a `ws://host:port/ws/license` URL; SSE uses its host and port) with
    /// the token, resuming after `last` when given.
    async fn open(
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
                let port: u16 = url
                    .trim_start_matches("ws://")
                    .split(['/', '?'])
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
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

    async fn read(&mut self, within: Duration) -> Option<Read> {
        match self {
            Self::Ws(c) => c.read(within).await,
            Self::Sse(c) => c.read(within).await,
        }
    }

    async fn close(self) {
        match self {
            Self::Ws(mut c) => {
                let _ = c.ws.close(None).await;
            }
            Self::Sse(c) => drop(c),
        }
    }
}

/// A client that stays subscribed through failures: it connects to `urls` in turn, resumes
/// with `last.<id>` after every disconnect, and stops once it holds the `target` id (ids are
/// ordered: everything before it was delivered too, or the checks will say otherwise) or
/// `give_up` passes.
pub async fn follow(
    urls: Vec<String>,
    token: String,
    target: Target,
    give_up: Duration,
) -> Followed {
    follow_over(Transport::WebSocket, urls, token, target, give_up, None).await
}

/// [`follow`], also disconnecting on purpose every `hop` to resume on the next URL.
pub async fn follow_hopping(
    urls: Vec<String>,
    token: String,
    target: Target,
    give_up: Duration,
    hop: Option<Duration>,
) -> Followed {
    follow_over(Transport::WebSocket, urls, token, target, give_up, hop).await
}

/// [`follow_hopping`] over either transport (SSE resumes with `Last-Event-ID`).
pub async fn follow_over(
    transport: Transport,
    urls: Vec<String>,
    token: String,
    target: Target,
    give_up: Duration,
    hop: Option<Duration>,
) -> Followed {
    let mut seen = Followed::default();
    let deadline = Instant::now() + give_up;
    let mut attempt = 0usize;
    let done = |seen: &Followed| target.reached(seen);
    while !done(&seen) && Instant::now() < deadline {
        let url = &urls[attempt % urls.len()];
        attempt += 1;
        let Some(mut client) = Conn::open(transport, url, &token, seen.ids.last()).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        seen.connections += 1;
        let hop_at = hop.map(|h| Instant::now() + h);
        loop {
            if done(&seen) || hop_at.is_some_and(|t| Instant::now() >= t) {
                break;
            }
            match client.read(Duration::from_millis(500)).await {
                None => {
                    if Instant::now() > deadline {
                        break;
                    }
                }
                Some(Read::Text(text)) => {
                    let message: Value = serde_json::from_str(&text).expect("JSON");
                    match message["type"].as_str() {
                        Some("connected") => {
                            seen.nodes
                                .insert(message["node"].as_str().unwrap_or_default().to_owned());
                        }
                        Some("resync_required") => seen.resyncs += 1,
                        _ => seen
                            .ids
                            .push(message["id"].as_str().unwrap_or_default().to_owned()),
                    }
                }
                Some(Read::Close(_) | Read::Ended) => break,
            }
        }
        client.close().await;
    }
    seen
}

/// Parses `<ms>-<seq>` for ordering checks.
pub fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("event id");
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}
