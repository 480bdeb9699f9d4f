//! In-process tests of the node over the embedded engine: the hub's subscription and position
//! contracts, and whole sessions on a loopback socket past the HTTP upgrade, read by a
//! tungstenite client. Each test names the invariant it guards; they run in milliseconds. The
//! real-process suites in `tests/` prove the same behaviour end to end.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::session::{self, Handshake};
use super::websocket::WebSocket;
use super::{Node, Settings, lifecycle};
use crate::auth::{Signer, Verifier};
use crate::config::AuthArgs;
use crate::engine::memory::MemoryEngine;
use crate::engine::{
    Broker, Control, EngineError, EventSink, History, HistoryConfig, Position, Published,
};
use crate::protocol::{EventDraft, EventId, EventType, ResyncReason};

const SECRET: &str = "in-process-test-secret-0123456789abcdef";

fn auth_args() -> AuthArgs {
    AuthArgs::hs256(SECRET)
}

fn token(tenant: &str) -> String {
    token_for(tenant, None)
}

fn token_for(tenant: &str, user: Option<&str>) -> String {
    Signer::from_args(&auth_args())
        .expect("signer")
        .mint(tenant, user, 3600)
}

/// A started node over a fresh embedded engine keeping `history` events per tenant.
async fn node(history: u32) -> (Arc<Node>, Arc<MemoryEngine>) {
    let engine = Arc::new(MemoryEngine::new(HistoryConfig {
        size: history,
        ttl: Duration::from_secs(3600),
        ..HistoryConfig::default()
    }));
    let node = node_over(engine.clone(), engine.clone()).await;
    (node, engine)
}

async fn node_over(broker: Arc<dyn Broker>, engine: Arc<MemoryEngine>) -> Arc<Node> {
    let verifier = Arc::new(Verifier::from_args(&auth_args()).expect("verifier"));
    let node = Arc::new(Node::new(
        Settings::for_tests("test-node"),
        verifier,
        broker,
        engine.clone(),
        engine.clone(),
        engine,
    ));
    lifecycle::start(&node).await.expect("start");
    node
}

async fn publish(engine: &MemoryEngine, tenant: &str, n: u64) -> Published {
    let mut data = serde_json::Map::new();
    data.insert("n".into(), n.into());
    let draft = EventDraft::new(tenant, EventType::LicenseUpdated, data);
    engine.publish(&draft).await.expect("publish")
}

/// The test's end of a session.
struct Client {
    ws: WebSocketStream<TcpStream>,
}

impl Client {
    /// Opens a session of `tenant` on `node`, resuming after `last` when given.
    async fn open(node: &Arc<Node>, tenant: &str, last: Option<&str>) -> Self {
        Self::open_as(node, &token(tenant), last).await
    }

    /// Opens a session with `token`. The HTTP upgrade is the route's (tests/conformance.rs):
    /// the session starts on a socket past it.
    async fn open_as(node: &Arc<Node>, token: &str, last: Option<&str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        let handshake = Handshake {
            auth: node.verifier.verify_tenant(token).await,
            refuse: None,
            guard: node.admit(None),
            last_event_id: last.map(str::to_owned),
            filter: None,
        };
        let (server, _) = accepted.expect("accept");
        let socket = WebSocket::new(server, None, node.settings.max_frame_bytes);
        tokio::spawn(session::run(socket, node.clone(), handshake));
        let ws =
            WebSocketStream::from_raw_socket(client.expect("connect"), Role::Client, None).await;
        Self { ws }
    }

    async fn next(&mut self) -> Message {
        tokio::time::timeout(Duration::from_secs(2), self.ws.next())
            .await
            .expect("a frame within 2 s")
            .expect("session open")
            .expect("a readable frame")
    }

    async fn json(&mut self) -> Value {
        match self.next().await {
            Message::Text(text) => serde_json::from_str(&text).expect("JSON"),
            other => panic!("expected text, got {other:?}"),
        }
    }

    /// Nothing more arrives for a short while.
    async fn silent(&mut self) {
        let more = tokio::time::timeout(Duration::from_millis(50), self.ws.next()).await;
        assert!(more.is_err(), "unexpected frame: {more:?}");
    }

    async fn send(&mut self, value: Value) {
        let text = Message::Text(value.to_string().into());
        self.ws.send(text).await.expect("session open");
    }

    async fn expect_close(&mut self, code: u16, reason: &str) {
        match self.next().await {
            Message::Close(Some(frame)) => {
                assert_eq!(
                    (u16::from(frame.code), frame.reason.as_str()),
                    (code, reason)
                );
            }
            other => panic!("expected close {code}, got {other:?}"),
        }
    }
}

/// Invariant: a fresh session's stream starts at the tenant's position, told in
/// `connected.lastEventId`; earlier events are not sent, later ones are, once.
#[tokio::test]
async fn a_fresh_session_starts_at_the_tenant_position() {
    let (node, engine) = node(100).await;
    let first = publish(&engine, "acme", 1).await;
    let mut client = Client::open(&node, "acme", None).await;
    let connected = client.json().await;
    assert_eq!(connected["type"], "connected");
    assert_eq!(connected["lastEventId"], first.id.to_string());
    let second = publish(&engine, "acme", 2).await;
    assert_eq!(client.json().await["id"], second.id.to_string());
    client.silent().await;
}

/// Invariant: a resume replays every event after `lastEventId` in order, then live events,
/// with no gap and no duplicate across the switch.
#[tokio::test]
async fn resume_replays_after_the_id_then_goes_live_without_duplicates() {
    let (node, engine) = node(100).await;
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(publish(&engine, "acme", n).await.id.to_string());
    }
    // A session already holds the tenant's subscription, so live events flow during replay.
    let mut other = Client::open(&node, "acme", None).await;
    other.json().await;
    let mut client = Client::open(&node, "acme", Some(&ids[0])).await;
    assert_eq!(client.json().await["type"], "connected");
    assert_eq!(client.json().await["id"], ids[1]);
    assert_eq!(client.json().await["id"], ids[2]);
    let live = publish(&engine, "acme", 4).await;
    assert_eq!(client.json().await["id"], live.id.to_string());
    client.silent().await;
}

/// Invariant: an event that reaches a resuming session both live (its outbox joined first) and
/// from the history replay is sent once: the switch from history to live has no duplicate.
#[tokio::test]
async fn an_event_both_replayed_and_live_is_sent_once() {
    let broker = Arc::new(TestBroker::new(TestBroker::GATED));
    let node = node_over(broker.clone(), Arc::new(MemoryEngine::new(test_history()))).await;
    let engine = &broker.inner;
    let first = publish(engine, "acme", 1).await.id.to_string();
    let second = publish(engine, "acme", 2).await.id.to_string();
    // Subscribed from here: the node's window of recent events starts after `second`, so a
    // resume from `first` reads the history (and waits at the gate).
    let mut holder = Client::open(&node, "acme", None).await;
    holder.json().await;
    let mut client = Client::open(&node, "acme", Some(&first)).await;
    assert_eq!(client.json().await["type"], "connected");
    // Joined, not yet replayed: this event goes into the outbox and into the history.
    let both = publish(engine, "acme", 3).await.id.to_string();
    assert_eq!(holder.json().await["id"], both, "fanned out");
    broker.gate.add_permits(Semaphore::MAX_PERMITS);
    assert_eq!(client.json().await["id"], second);
    assert_eq!(client.json().await["id"], both, "replayed from the history");
    client.silent().await;
    let next = publish(engine, "acme", 4).await.id.to_string();
    assert_eq!(client.json().await["id"], next);
}

/// Invariant: a gap fill through the hub delivers every event once to each outbox: those held
/// back while the gap was open are not queued again after the history has delivered them.
#[tokio::test]
async fn a_gap_fill_through_the_hub_delivers_each_event_once() {
    let (node, engine) = node(100).await;
    let (member, _) = node.hub.join("acme", None, None).await.expect("join");
    let queued = || {
        let mut ids = Vec::new();
        while let super::outbox::Next::Event(Some(id), _) = member.outbox.next() {
            ids.push(id);
        }
        ids
    };
    let e1 = publish(&engine, "acme", 1).await.id;
    assert_eq!(queued(), [e1]);
    node.hub.gap_begins();
    let e2 = publish(&engine, "acme", 2).await.id;
    let e3 = publish(&engine, "acme", 3).await.id;
    assert_eq!(queued(), [], "held while the gap is open");
    assert!(node.hub.fill("acme").await);
    assert_eq!(queued(), [e2, e3]);
    node.hub.leave(&member);
}

/// Invariant: a position the history cannot honour gets `resync_required` with the reason,
/// nothing replayed, and live events still follow.
#[tokio::test]
async fn unresumable_positions_get_resync_with_their_reason() {
    let (node, engine) = node(2).await;
    let mut ids = Vec::new();
    for n in 1..=4 {
        ids.push(publish(&engine, "acme", n).await.id.to_string());
    }
    let cases = [
        ("acme", ids[0].clone(), ResyncReason::TooOld),
        ("acme", "not-an-id".to_owned(), ResyncReason::Malformed),
        ("acme", "99999999999999-0".to_owned(), ResyncReason::TooNew),
        ("empty", ids[3].clone(), ResyncReason::HistoryEmpty),
    ];
    for (tenant, last, reason) in cases {
        let mut client = Client::open(&node, tenant, Some(&last)).await;
        assert_eq!(client.json().await["type"], "connected");
        let resync = client.json().await;
        assert_eq!(resync["type"], "resync_required", "{last}");
        assert_eq!(resync["reason"], reason.text(), "{last}");
        client.silent().await;
    }
    let mut client = Client::open(&node, "acme", Some(&ids[0])).await;
    client.json().await;
    client.json().await;
    let live = publish(&engine, "acme", 5).await;
    assert_eq!(client.json().await["id"], live.id.to_string());
}

/// Invariant (the race of 2f32d83): a session's start position is read under the lock that
/// adds its outbox, so an event delivered between joining and `connected` is after the start
/// and reaches the session.
#[tokio::test]
async fn the_start_position_is_taken_when_the_outbox_joins() {
    let (node, engine) = node(100).await;
    let first = publish(&engine, "acme", 1).await;
    let (holder, _) = node.hub.join("acme", None, None).await.expect("join");
    let (joined, start) = node.hub.join("acme", None, None).await.expect("join");
    assert_eq!(start, Some(first.id));
    let second = publish(&engine, "acme", 2).await;
    assert!(second.id > start.expect("start"));
    assert!(matches!(
        joined.outbox.next(),
        super::outbox::Next::Event(Some(id), _) if id == second.id
    ));
    node.hub.leave(&joined);
    node.hub.leave(&holder);
}

/// Invariant: client messages are answered (`pong`, `error` for junk, `auth_ok` for a fresh
/// token of the same tenant) and a refresh naming another tenant closes with 1008.
#[tokio::test]
async fn client_messages_and_in_band_refresh() {
    let (node, _engine) = node(10).await;
    let mut client = Client::open(&node, "acme", None).await;
    client.json().await;
    client.send(json!({"type": "ping"})).await;
    assert_eq!(client.json().await["type"], "pong");
    client.send(json!({"type": "shout"})).await;
    let error = client.json().await;
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("bad_request"))
    );
    client
        .send(json!({"type": "auth", "token": token("acme")}))
        .await;
    assert_eq!(client.json().await["type"], "auth_ok");
    client
        .send(json!({"type": "auth", "token": token("globex")}))
        .await;
    client.expect_close(1008, "invalid token").await;
}

/// Invariant: a drain closes every session with 1001 `going away`.
#[tokio::test]
async fn drain_closes_sessions_with_going_away() {
    let (node, _engine) = node(10).await;
    let mut a = Client::open(&node, "acme", None).await;
    let mut b = Client::open(&node, "globex", None).await;
    a.json().await;
    b.json().await;
    node.hub
        .close_gradually(crate::protocol::CloseReason::GoingAway, Duration::ZERO)
        .await;
    a.expect_close(1001, "going away").await;
    b.expect_close(1001, "going away").await;
}

fn test_history() -> HistoryConfig {
    HistoryConfig {
        size: 10,
        ttl: Duration::from_secs(60),
        ..HistoryConfig::default()
    }
}

/// A broker over the embedded engine that can fail or hold back history reads: with
/// [`TestBroker::NO_NEWEST`] reading the newest id fails (subscriptions are only counted);
/// with [`TestBroker::GATED`] a history page waits until the test adds permits to `gate`.
struct TestBroker {
    inner: MemoryEngine,
    subscribed: AtomicUsize,
    mode: u8,
    gate: Semaphore,
}

impl TestBroker {
    const NO_NEWEST: u8 = 1;
    const GATED: u8 = 2;

    fn new(mode: u8) -> Self {
        Self {
            inner: MemoryEngine::new(test_history()),
            subscribed: AtomicUsize::new(0),
            mode,
            gate: Semaphore::new(0),
        }
    }
}

#[async_trait]
impl Broker for TestBroker {
    async fn start(
        &self,
        sink: std::sync::Weak<dyn EventSink>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<(), EngineError> {
        self.inner.start(sink, shutdown, tracker).await
    }
    async fn publish(&self, draft: &EventDraft) -> Result<Published, EngineError> {
        self.inner.publish(draft).await
    }
    async fn publish_idempotent(
        &self,
        draft: &EventDraft,
        key: &crate::engine::IdempotencyKey,
    ) -> Result<crate::engine::Applied, EngineError> {
        self.inner.publish_idempotent(draft, key).await
    }
    async fn publish_control(&self, tenant: &str, control: &Control) -> Result<(), EngineError> {
        self.inner.publish_control(tenant, control).await
    }
    async fn subscribe(&self, tenant: &str) -> Result<(), EngineError> {
        self.subscribed.fetch_add(1, Ordering::SeqCst);
        if self.mode == Self::NO_NEWEST {
            return Ok(());
        }
        self.inner.subscribe(tenant).await
    }
    async fn unsubscribe(&self, tenant: &str) -> Result<(), EngineError> {
        self.subscribed.fetch_sub(1, Ordering::SeqCst);
        if self.mode == Self::NO_NEWEST {
            return Ok(());
        }
        self.inner.unsubscribe(tenant).await
    }
    async fn newest_id(&self, tenant: &str) -> Result<Option<EventId>, EngineError> {
        if self.mode == Self::NO_NEWEST {
            return Err(EngineError::Unavailable("history down".into()));
        }
        self.inner.newest_id(tenant).await
    }
    async fn history_page(
        &self,
        tenant: &str,
        after: Option<EventId>,
        position: Position,
        limit: usize,
    ) -> Result<History, EngineError> {
        if self.mode == Self::GATED {
            let _ = self.gate.acquire().await;
        }
        self.inner
            .history_page(tenant, after, position, limit)
            .await
    }
    fn is_ready(&self) -> bool {
        true
    }
}

/// Invariant: subscribing is both steps or neither — when the history's newest id cannot be
/// read, the subscription just made is undone and the session is refused.
#[tokio::test]
async fn a_half_made_subscription_is_undone() {
    let broker = Arc::new(TestBroker::new(TestBroker::NO_NEWEST));
    let node = node_over(broker.clone(), Arc::new(MemoryEngine::new(test_history()))).await;
    assert!(node.hub.join("acme", None, None).await.is_err());
    assert_eq!(broker.subscribed.load(Ordering::SeqCst), 0);
    assert!(node.hub.tenant_connections().is_empty());
}

/// Invariant: a revocation closes the connections of the named user of the named tenant with
/// 1008 `revoked`, nobody else's; without a user, every connection of the tenant; and a refresh
/// cannot switch a connection to another user.
#[tokio::test]
async fn revocation_closes_exactly_the_named_connections() {
    let (node, engine) = node(10).await;
    let mut alice = Client::open_as(&node, &token_for("acme", Some("alice")), None).await;
    let mut bob = Client::open_as(&node, &token_for("acme", Some("bob")), None).await;
    let mut other = Client::open_as(&node, &token_for("globex", Some("alice")), None).await;
    for client in [&mut alice, &mut bob, &mut other] {
        assert_eq!(client.json().await["type"], "connected");
    }
    let revoke = |user: Option<&str>| Control::Disconnect {
        user: user.map(str::to_owned),
    };
    engine
        .publish_control("acme", &revoke(Some("alice")))
        .await
        .unwrap();
    alice.expect_close(1008, "revoked").await;
    bob.silent().await;
    other.silent().await;
    bob.send(json!({"type": "auth", "token": token_for("acme", Some("mallory"))}))
        .await;
    bob.expect_close(1008, "invalid token").await;
    let mut carol = Client::open_as(&node, &token_for("acme", None), None).await;
    carol.json().await;
    engine.publish_control("acme", &revoke(None)).await.unwrap();
    carol.expect_close(1008, "revoked").await;
    other.silent().await;
}

/// Invariant: a resume from far back is read page by page and still delivers every event after
/// the client's id once and in order, across page boundaries (exactly two full pages here,
/// then a partial one), then live events.
#[tokio::test]
async fn a_long_resume_is_paged_without_gaps_or_duplicates() {
    let (node, engine) = node(1000).await;
    let mut ids = Vec::new();
    for n in 0..251 {
        ids.push(publish(&engine, "acme", n).await.id.to_string());
    }
    let mut client = Client::open(&node, "acme", Some(&ids[0])).await;
    assert_eq!(client.json().await["type"], "connected");
    for expected in &ids[1..] {
        assert_eq!(&client.json().await["id"], expected);
    }
    let live = publish(&engine, "acme", 999).await.id.to_string();
    assert_eq!(client.json().await["id"], live);
    client.silent().await;
}
