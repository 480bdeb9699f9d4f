//! Clients that follow a tenant's events through failures, resuming after every disconnect,
//! and record what they saw (loss, duplicates, order).

use std::time::{Duration, Instant};

use crate::client::{AnyClient, Transport};
use crate::ws::Read;
use serde_json::Value;

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
        let Some(mut client) = AnyClient::open(transport, url, &token, seen.ids.last()).await
        else {
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
