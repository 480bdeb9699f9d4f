//! The load generator's clients (WebSocket or SSE), once [`super::connect`] opened them: one
//! small task per connection that reads messages and tallies the events it sees, and where a
//! client goes when its node dies or it is replaced.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::connect::{OPEN_TIMEOUT, open_one};
use super::sse::{SseConn, SseRead};
use super::{CommonArgs, Dialect, LoadtestError};
use crate::auth::Signer;
use crate::protocol::EventId;

/// One WebSocket client connection.
pub type Ws = WebSocketStream<TcpStream>;

/// One client connection, of either transport.
pub enum Conn {
    /// `/ws/license`.
    Ws(Box<Ws>),
    /// `/sse/license`.
    Sse(SseConn),
}

/// What all connections share: the latency histogram and running totals.
pub struct Shared {
    /// Time zero of the `t` field publishers stamp into events (µs since then).
    pub epoch: Instant,
    /// Publish → receive latency, µs.
    pub latency: RefCell<Histogram<u64>>,
    /// The same since the last sample (`soak`).
    pub recent_latency: RefCell<Histogram<u64>>,
    /// Distinct events received, over all connections.
    pub delivered: Cell<u64>,
    /// When the last of them arrived.
    pub last_receive: Cell<Option<Instant>>,
}

impl Shared {
    /// Empty totals; latencies up to 60 s at 3 significant digits.
    pub fn new() -> Rc<Self> {
        let latency = Histogram::new_with_bounds(1, 60_000_000, 3)
            .unwrap_or_else(|_| Histogram::new(3).expect("3 significant digits are valid"));
        Rc::new(Self {
            epoch: Instant::now(),
            recent_latency: RefCell::new(latency.clone()),
            latency: RefCell::new(latency),
            delivered: Cell::new(0),
            last_receive: Cell::new(None),
        })
    }

    /// Microseconds since [`Shared::epoch`].
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// One connection's view of the events it received.
#[derive(Debug, Default)]
pub struct Tally {
    /// Distinct events.
    pub received: u64,
    /// Events seen twice.
    pub duplicates: u64,
    /// Events whose id was not above the previous one's.
    pub reordered: u64,
    /// Events of another tenant.
    pub foreign: u64,
    /// Text frames that were not a load-test event.
    pub other: u64,
    /// Why the connection ended before it was told to stop.
    pub ended: Option<String>,
    seen: Vec<u64>,
    last_id: Option<EventId>,
}

impl Tally {
    /// Marks sequence number `seq`; false when it was seen before.
    fn first_sighting(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        let fresh = self.seen[word] & (1 << bit) == 0;
        self.seen[word] |= 1 << bit;
        fresh
    }
}

/// The unsigned integer after `"key":` in `text`, without parsing the whole JSON.
fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&text[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// The envelope id at the start of an event (`{"id":"<ms>-<seq>",…`).
fn envelope_id(text: &[u8]) -> Option<EventId> {
    let rest = text.strip_prefix(b"{\"id\":\"")?;
    let end = rest.iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Where a WebSocket client goes when its node dies (`loadtest stampede`): a surviving node,
/// resuming after the last event it saw, as the browser client does.
pub struct Resume {
    /// The surviving nodes; connection `i` tries `survivors[i % len]` first.
    pub survivors: Vec<SocketAddr>,
    /// Query every connection adds (a filter), besides `lastEventId`.
    pub query: Option<String>,
    /// A token per tenant number.
    pub tokens: Vec<String>,
    /// Source addresses, as for the first connect.
    pub sources: super::Sources,
    /// When the victim was killed (set by the publisher).
    pub killed_at: Cell<Option<Instant>>,
    /// Kill → `connected` on a survivor, µs.
    pub latency: RefCell<Histogram<u64>>,
    /// Clients that resumed.
    pub resumed: Cell<u64>,
    /// How long a client keeps trying.
    pub within: Duration,
    /// `loadtest soak`: a signal per connection to close and resume (and resume every time).
    pub kicks: Vec<tokio::sync::Notify>,
}

impl Resume {
    /// A plan over `survivors`.
    pub fn new(
        survivors: Vec<SocketAddr>,
        common: &CommonArgs,
        within: Duration,
        kicks: usize,
    ) -> Result<Rc<Self>, LoadtestError> {
        let signer = Signer::from_args(&common.auth)?;
        let tokens = (0..common.tenants)
            .map(|t| signer.mint(&common.tenant(t), None, 3600))
            .collect();
        let latency = Histogram::new_with_bounds(1, 600_000_000, 3)
            .unwrap_or_else(|_| Histogram::new(3).expect("3 significant digits are valid"));
        Ok(Rc::new(Self {
            survivors,
            query: common.query.clone(),
            tokens,
            sources: common.sources(),
            killed_at: Cell::new(None),
            latency: RefCell::new(latency),
            resumed: Cell::new(0),
            within,
            kicks: (0..kicks).map(|_| tokio::sync::Notify::new()).collect(),
        }))
    }

    /// Connection `index` of `tenant` opens a stream on a survivor after `last`, retrying every
    /// 100 ms (a survivor may refuse at a limit) until [`Resume::within`] is up.
    async fn reopen(
        &self,
        index: usize,
        tenant: usize,
        last: Option<EventId>,
        since: Option<Instant>,
    ) -> Result<Ws, String> {
        let deadline = Instant::now() + self.within;
        let mut attempt = 0;
        loop {
            let target = self.survivors[(index + attempt) % self.survivors.len()];
            let mut query: Vec<String> = self.query.iter().cloned().collect();
            if let Some(last) = last {
                query.push(format!("lastEventId={last}"));
            }
            let url = if query.is_empty() {
                format!("ws://{target}/ws/license")
            } else {
                format!("ws://{target}/ws/license?{}", query.join("&"))
            };
            let source = self.sources.nth(index);
            let opening = open_one(&url, target, Dialect::Gateway, source, &self.tokens[tenant]);
            match tokio::time::timeout(OPEN_TIMEOUT, opening).await {
                Ok(Ok(ws)) => {
                    if let Some(since) = since.or(self.killed_at.get()) {
                        let us = since.elapsed().as_micros() as u64;
                        let _ = self.latency.borrow_mut().record(us.max(1));
                    }
                    self.resumed.set(self.resumed.get() + 1);
                    return Ok(ws);
                }
                Ok(Err(e)) if Instant::now() >= deadline => return Err(e),
                Err(_) if Instant::now() >= deadline => return Err("timed out".into()),
                _ => {}
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Starts one [`drive`] task per connection on the current `LocalSet`; with `resume`, a
/// WebSocket client whose connection ends resumes on a survivor and goes on counting.
pub fn drive_all(
    streams: Vec<(usize, Conn)>,
    shared: &Rc<Shared>,
    stop: &CancellationToken,
    resume: Option<&Rc<Resume>>,
) -> Vec<tokio::task::JoinHandle<Tally>> {
    streams
        .into_iter()
        .enumerate()
        .map(|(index, (tenant, conn))| {
            let (shared, stop) = (shared.clone(), stop.clone());
            match (conn, resume) {
                (Conn::Ws(ws), Some(resume)) => tokio::task::spawn_local(drive_ws(
                    *ws,
                    tenant,
                    shared,
                    stop,
                    Some((index, resume.clone())),
                )),
                (conn, _) => tokio::task::spawn_local(drive(conn, tenant, shared, stop)),
            }
        })
        .collect()
}

/// Reads `conn` until `stop`, tallying load-test events (`data` =
/// `{"k":tenant,"seq":n,"t":µs}`).
pub async fn drive(
    conn: Conn,
    tenant: usize,
    shared: Rc<Shared>,
    stop: CancellationToken,
) -> Tally {
    match conn {
        Conn::Ws(ws) => drive_ws(*ws, tenant, shared, stop, None).await,
        Conn::Sse(sse) => drive_sse(sse, tenant, shared, stop).await,
    }
}

impl Tally {
    /// Counts one message's text.
    fn message(&mut self, bytes: &[u8], tenant: usize, shared: &Shared) {
        let (Some(k), Some(seq), Some(t)) = (
            number_after(bytes, b"\"k\":"),
            number_after(bytes, b"\"seq\":"),
            number_after(bytes, b"\"t\":"),
        ) else {
            self.other += 1;
            return;
        };
        let now = shared.now_us();
        if k as usize != tenant {
            self.foreign += 1;
            return;
        }
        if !self.first_sighting(seq) {
            self.duplicates += 1;
            return;
        }
        let id = envelope_id(bytes);
        if id.is_some_and(|id| self.last_id.is_some_and(|last| id <= last)) {
            self.reordered += 1;
        }
        self.last_id = self.last_id.max(id);
        self.received += 1;
        let us = now.saturating_sub(t).max(1);
        let _ = shared.latency.borrow_mut().record(us);
        let _ = shared.recent_latency.borrow_mut().record(us);
        shared.delivered.set(shared.delivered.get() + 1);
        shared.last_receive.set(Some(Instant::now()));
    }
}

async fn drive_sse(
    mut sse: SseConn,
    tenant: usize,
    shared: Rc<Shared>,
    stop: CancellationToken,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        let read = tokio::select! {
            _ = stop.cancelled() => break,
            r = sse.next() => r,
        };
        match read {
            SseRead::Data(data) => tally.message(&data, tenant, &shared),
            SseRead::Ended(reason) => {
                tally.ended = Some(reason);
                break;
            }
        }
    }
    tally
}

async fn drive_ws(
    mut ws: Ws,
    tenant: usize,
    shared: Rc<Shared>,
    stop: CancellationToken,
    resume: Option<(usize, Rc<Resume>)>,
) -> Tally {
    let mut tally = Tally::default();
    let mut resumed = false;
    loop {
        let kick = async {
            match resume.as_ref().and_then(|(i, plan)| plan.kicks.get(*i)) {
                Some(kick) => kick.notified().await,
                None => std::future::pending().await,
            }
        };
        let frame = tokio::select! {
            _ = stop.cancelled() => break,
            f = ws.next() => Some(f),
            _ = kick => None,
        };
        // Replaced (soak): the client closes and comes back after the last event it saw.
        let Some(frame) = frame else {
            if let Some((index, plan)) = &resume {
                let kicked = Instant::now();
                let _ = ws.close(None).await;
                let reopening = plan.reopen(*index, tenant, tally.last_id, Some(kicked));
                let reopened = tokio::select! {
                    _ = stop.cancelled() => return tally,
                    r = reopening => r,
                };
                match reopened {
                    Ok(next) => ws = next,
                    Err(e) => {
                        tally.ended = Some(format!("replaced; not resumed: {e}"));
                        return tally;
                    }
                }
            }
            continue;
        };
        let ended = match frame {
            Some(Ok(Message::Text(text))) => {
                tally.message(text.as_bytes(), tenant, &shared);
                continue;
            }
            Some(Ok(Message::Close(frame))) => frame.map_or_else(
                || "closed".to_owned(),
                |f| format!("{} {}", f.code, f.reason),
            ),
            // Pings are answered by tungstenite on the next read.
            Some(Ok(_)) => continue,
            Some(Err(e)) => e.to_string(),
            None => "connection ended".to_owned(),
        };
        // Its node died: resume once on a survivor, after the last event seen.
        match &resume {
            Some((index, plan)) if !resumed && plan.kicks.is_empty() => {
                resumed = true;
                let reopening = plan.reopen(*index, tenant, tally.last_id, None);
                let reopened = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = reopening => r,
                };
                match reopened {
                    Ok(next) => ws = next,
                    Err(e) => {
                        tally.ended = Some(format!("{ended}; not resumed: {e}"));
                        return tally;
                    }
                }
            }
            _ => {
                tally.ended = Some(ended);
                break;
            }
        }
    }
    let _ = ws.close(None).await;
    tally
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn event_fields_are_found_without_a_parser() {
        let e = br#"{"id":"17-2","type":"module_activated","tenantId":"lt3","severity":"info","timestamp":"2026-01-01T00:00:00.000Z","data":{"k":3,"seq":41,"t":99}}"#;
        assert_eq!(number_after(e, b"\"k\":"), Some(3));
        assert_eq!(number_after(e, b"\"seq\":"), Some(41));
        assert_eq!(number_after(e, b"\"t\":"), Some(99));
        assert_eq!(envelope_id(e), Some("17-2".parse().unwrap()));
        assert_eq!(number_after(b"{}", b"\"t\":"), None);
    }

    #[test]
    fn tally_spots_duplicates() {
        let mut t = Tally::default();
        assert!(t.first_sighting(0));
        assert!(t.first_sighting(130));
        assert!(!t.first_sighting(130));
        assert!(t.first_sighting(64));
    }
}
