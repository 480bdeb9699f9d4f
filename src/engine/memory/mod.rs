//! The embedded engine: one node, no Redis. Events are numbered, kept for resume and delivered
//! in-process; the node registry holds just this node. Notifications: [`notifications`].

mod deliveries;
mod notifications;
mod tickets;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, OnceLock, Weak};
use std::time::Instant;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    Applied, Broker, Change, Control, DocWrite, EngineError, EventSink, Expect, History,
    HistoryConfig, IDEMPOTENCY_MAX_KEYS, IdempotencyKey, LicenseStore, NodeRegistry, NodeStats,
    Position, Published, TenantRecord, store,
};
use crate::notifications::inbox::Inbox;
use crate::protocol::{EventDraft, EventId, Payload, now_ms};

/// One tenant's retained events and license state.
#[derive(Default)]
struct TenantLog {
    last: Option<EventId>,
    entries: VecDeque<(EventId, Payload)>,
    record: TenantRecord,
    /// Idempotency keys: key → (fingerprint, the event, when the key is forgotten).
    keys: HashMap<String, (String, Published, Instant)>,
    /// Notifications, read state, preferences, stats.
    inbox: Inbox,
    /// Webhook endpoints, queued deliveries, delivery logs.
    outbound: deliveries::Outbound,
}

impl TenantLog {
    /// What an earlier publish with `key` settles for this one, if anything (expired keys are
    /// forgotten first).
    fn idempotent_outcome(&mut self, key: &IdempotencyKey) -> Option<Applied> {
        let now = Instant::now();
        self.keys.retain(|_, (_, _, until)| *until > now);
        let (fingerprint, published, _) = self.keys.get(&key.key)?;
        Some(if *fingerprint == key.fingerprint {
            Applied::Replayed(published.clone())
        } else {
            Applied::KeyReused
        })
    }

    /// Remembers `key` for `published`, forgetting the soonest to expire beyond the cap.
    fn remember(&mut self, key: &IdempotencyKey, published: &Published) {
        let until = Instant::now() + key.ttl;
        let entry = (key.fingerprint.clone(), published.clone(), until);
        self.keys.insert(key.key.clone(), entry);
        while self.keys.len() > IDEMPOTENCY_MAX_KEYS {
            let soonest = self.keys.iter().min_by_key(|(_, (_, _, until))| *until);
            let Some(soonest) = soonest.map(|(k, _)| k.clone()) else {
                break;
            };
            self.keys.remove(&soonest);
        }
    }
}

/// In-memory engine for single-node mode.
pub struct MemoryEngine {
    history: HistoryConfig,
    // std Mutex: held only for id assignment, a push and a non-blocking delivery, never across
    // an await. Delivery happens under it so concurrent publishes reach sessions in id order.
    tenants: Mutex<HashMap<String, TenantLog>>,
    node: Mutex<Option<NodeStats>>,
    /// Connections per tenant (one node holds them all).
    seats: Mutex<HashMap<String, usize>>,
    deadlines: Mutex<BTreeMap<String, u64>>,
    sink: OnceLock<Weak<dyn EventSink>>,
    /// Connection tickets by digest, with when they expire.
    tickets: Mutex<HashMap<String, (super::tickets::TicketClaims, Instant)>>,
}

impl MemoryEngine {
    /// A new, empty engine.
    pub fn new(history: HistoryConfig) -> Self {
        Self {
            history,
            tenants: Mutex::new(HashMap::new()),
            node: Mutex::new(None),
            seats: Mutex::new(HashMap::new()),
            deadlines: Mutex::new(BTreeMap::new()),
            sink: OnceLock::new(),
            tickets: Mutex::new(HashMap::new()),
        }
    }
}

impl MemoryEngine {
    fn lock_tenants(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, HashMap<String, TenantLog>>, EngineError> {
        self.tenants
            .lock()
            .map_err(|_| EngineError::Unavailable("memory engine lock poisoned".into()))
    }

    /// Numbers, retains and delivers one event; the caller holds the tenants lock, so delivery
    /// order is id order.
    fn append(&self, log: &mut TenantLog, draft: &EventDraft, trace: Option<&str>) -> Published {
        let now = now_ms();
        let id = match log.last {
            Some(last) => last.next_after(now),
            None => EventId { ms: now, seq: 0 },
        };
        log.last = Some(id);
        let payload = Payload::from(draft.envelope_json(id, trace));
        crate::metrics::event_published(draft.event_type);
        log.entries.push_back((id, payload.clone()));
        log.inbox
            .record(id, &payload, now, self.history.notifications);
        log.outbound.enqueue(id, &payload, draft.event_type, now);
        while log.entries.len() > self.history.size as usize {
            log.entries.pop_front();
        }
        let horizon = now.saturating_sub(self.history.ttl.as_millis() as u64);
        while log.entries.front().is_some_and(|(id, _)| id.ms < horizon) {
            log.entries.pop_front();
        }
        if let Some(sink) = self.sink.get().and_then(Weak::upgrade) {
            sink.deliver(&draft.tenant, Some(id), payload.clone());
        }
        Published { id, payload }
    }
}

#[async_trait]
impl Broker for MemoryEngine {
    async fn start(
        &self,
        sink: Weak<dyn EventSink>,
        _shutdown: CancellationToken,
        _tracker: &TaskTracker,
    ) -> Result<(), EngineError> {
        let _ = self.sink.set(sink);
        Ok(())
    }

    async fn publish(&self, draft: &EventDraft) -> Result<Published, EngineError> {
        let change = Change::publish(vec![draft.clone()]);
        store::single(self.apply(&draft.tenant, &change).await?)
    }

    async fn publish_idempotent(
        &self,
        draft: &EventDraft,
        key: &IdempotencyKey,
    ) -> Result<Applied, EngineError> {
        store::publish_idempotent(self, draft, key).await
    }

    async fn publish_control(&self, tenant: &str, control: &Control) -> Result<(), EngineError> {
        if let Some(sink) = self.sink.get().and_then(Weak::upgrade) {
            sink.control(tenant, control.clone());
        }
        Ok(())
    }

    async fn subscribe(&self, _tenant: &str) -> Result<(), EngineError> {
        // Every publish reaches this node's sink; the hub drops tenants without sessions.
        Ok(())
    }

    async fn unsubscribe(&self, _tenant: &str) -> Result<(), EngineError> {
        Ok(())
    }

    async fn newest_id(&self, tenant: &str) -> Result<Option<EventId>, EngineError> {
        Ok(self
            .lock_tenants()?
            .get(tenant)
            .and_then(|log| log.entries.back().map(|(id, _)| *id)))
    }

    async fn history_page(
        &self,
        tenant: &str,
        after: Option<EventId>,
        position: Position,
        limit: usize,
    ) -> Result<History, EngineError> {
        let tenants = self.lock_tenants()?;
        let Some(entries) = tenants
            .get(tenant)
            .map(|log| &log.entries)
            .filter(|e| !e.is_empty())
        else {
            return Ok(History::Empty);
        };
        let start = match after {
            None => 0,
            Some(after) => match entries.binary_search_by(|(id, _)| id.cmp(&after)) {
                Ok(i) => i + 1,
                Err(i) if position == Position::ByOrder && i > 0 => i,
                Err(_) => {
                    let (first, last) = (entries[0].0, entries[entries.len() - 1].0);
                    return Ok(History::miss(after, first, last));
                }
            },
        };
        Ok(History::After(
            entries.range(start..).take(limit).cloned().collect(),
        ))
    }

    fn is_ready(&self) -> bool {
        true
    }
}

#[async_trait]
impl LicenseStore for MemoryEngine {
    #[tracing::instrument(name = "publish", skip_all, fields(otel.kind = "producer", engine = "memory", tenant = %tenant, events = change.events.len()))]
    async fn apply(&self, tenant: &str, change: &Change) -> Result<Applied, EngineError> {
        let mut tenants = self.lock_tenants()?;
        let log = tenants.entry(tenant.to_owned()).or_default();
        if let Some(outcome) = change
            .idempotency
            .as_ref()
            .and_then(|key| log.idempotent_outcome(key))
        {
            return Ok(outcome);
        }
        let record = &mut log.record;
        let doc_ok = match &change.doc_expect {
            Expect::Any => true,
            Expect::Absent => record.doc.is_none(),
            Expect::Value(v) => record.doc.as_ref() == Some(v),
        };
        let fields_ok = change
            .notices
            .iter()
            .all(|f| record.notices.get(&f.field) == f.expect.as_ref());
        if !doc_ok || !fields_ok {
            return Ok(Applied::Conflict);
        }
        match &change.doc {
            DocWrite::Keep => {}
            DocWrite::Set(doc) => record.doc = Some(doc.clone()),
            DocWrite::Delete => record.doc = None,
        }
        for swap in &change.notices {
            match &swap.set {
                Some(v) => record.notices.insert(swap.field.clone(), v.clone()),
                None => record.notices.remove(&swap.field),
            };
        }
        let trace = crate::telemetry::current_traceparent();
        let published: Vec<Published> = change
            .events
            .iter()
            .map(|draft| self.append(log, draft, trace.as_deref()))
            .collect();
        if let (Some(key), [one]) = (&change.idempotency, published.as_slice()) {
            log.remember(key, one);
        }
        Ok(Applied::Done(published))
    }

    async fn load(&self, tenant: &str) -> Result<TenantRecord, EngineError> {
        Ok(self
            .lock_tenants()?
            .get(tenant)
            .map(|log| log.record.clone())
            .unwrap_or_default())
    }

    async fn merge_usage(
        &self,
        tenant: &str,
        usage: &[(String, String)],
    ) -> Result<(), EngineError> {
        let mut tenants = self.lock_tenants()?;
        let record = &mut tenants.entry(tenant.to_owned()).or_default().record;
        for (metric, value) in usage {
            record.usage.insert(metric.clone(), value.clone());
        }
        Ok(())
    }

    async fn licensed_tenants(&self) -> Result<Vec<String>, EngineError> {
        Ok(self
            .lock_tenants()?
            .iter()
            .filter(|(_, log)| log.record.doc.is_some())
            .map(|(t, _)| t.clone())
            .collect())
    }

    async fn set_deadline(&self, tenant: &str, at_ms: Option<u64>) -> Result<(), EngineError> {
        let mut deadlines = self.deadlines.lock().unwrap_or_else(|e| e.into_inner());
        match at_ms {
            Some(ms) => deadlines.insert(tenant.to_owned(), ms),
            None => deadlines.remove(tenant),
        };
        Ok(())
    }

    async fn due_tenants(&self, now_ms: u64) -> Result<Vec<String>, EngineError> {
        let deadlines = self.deadlines.lock().unwrap_or_else(|e| e.into_inner());
        Ok(deadlines
            .iter()
            .filter(|(_, at)| **at <= now_ms)
            .map(|(t, _)| t.clone())
            .collect())
    }
}

#[async_trait]
impl NodeRegistry for MemoryEngine {
    async fn report_node(&self, stats: &NodeStats) -> Result<(), EngineError> {
        if let Ok(mut node) = self.node.lock() {
            *node = Some(stats.clone());
        }
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeStats>, EngineError> {
        Ok(self
            .node
            .lock()
            .ok()
            .and_then(|n| n.clone())
            .into_iter()
            .collect())
    }

    async fn claim_seat(
        &self,
        tenant: &str,
        _node: &str,
        limit: usize,
    ) -> Result<bool, EngineError> {
        let mut seats = self.seats.lock().unwrap_or_else(|e| e.into_inner());
        let held = seats.entry(tenant.to_owned()).or_insert(0);
        if *held >= limit {
            return Ok(false);
        }
        *held += 1;
        Ok(true)
    }

    async fn release_seat(&self, tenant: &str, _node: &str) -> Result<(), EngineError> {
        let mut seats = self.seats.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = seats.get_mut(tenant) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                seats.remove(tenant);
            }
        }
        Ok(())
    }

    async fn refresh_seats(
        &self,
        _node: &str,
        _held: &[(String, usize)],
    ) -> Result<(), EngineError> {
        // One process: claims and releases are never lost, so there is nothing to repair.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::FieldSwap;
    use crate::protocol::EventType;

    fn engine(size: u32) -> MemoryEngine {
        MemoryEngine::new(HistoryConfig {
            size,
            ttl: Duration::from_secs(3600),
            ..HistoryConfig::default()
        })
    }

    async fn publish(engine: &MemoryEngine, tenant: &str) -> EventId {
        let draft = EventDraft::new(tenant, EventType::LicenseUpdated, Default::default());
        engine.publish(&draft).await.expect("publish").id
    }

    fn ids(history: History) -> Vec<EventId> {
        match history {
            History::After(events) => events.into_iter().map(|(id, _)| id).collect(),
            other => panic!("expected events, got {other:?}"),
        }
    }

    /// Invariant: ids increase strictly per tenant, and the history answers exactly: a
    /// retained id gives what follows it; a trimmed, unknown or future id is a miss that says
    /// which, while a node's own gap (`ByOrder`) continues after an absent id the history
    /// still reaches back to.
    #[tokio::test]
    async fn history_answers_exact_and_by_order_positions() {
        let engine = engine(3);
        let mut all = Vec::new();
        for _ in 0..5 {
            all.push(publish(&engine, "acme").await);
            // Distinct milliseconds, so an absent id fits between two retained ones.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        let exact = |after| engine.history_after("acme", Some(after), Position::Exact);
        assert_eq!(ids(exact(all[2]).await.unwrap()), &all[3..]);
        assert_eq!(ids(exact(all[4]).await.unwrap()), []);
        assert!(matches!(exact(all[0]).await, Ok(History::TooOld)));
        let future = EventId {
            ms: u64::MAX,
            seq: 0,
        };
        assert!(matches!(exact(future).await, Ok(History::TooNew)));
        let between = EventId {
            seq: all[3].seq + 1,
            ..all[3]
        };
        assert!(all[3] < between && between < all[4]);
        assert!(matches!(exact(between).await, Ok(History::Unknown)));
        let by_order = engine.history_after("acme", Some(between), Position::ByOrder);
        assert_eq!(ids(by_order.await.unwrap()), &all[4..]);
        let other = engine.history_after("globex", None, Position::Exact).await;
        assert!(matches!(other, Ok(History::Empty)));
    }

    /// Invariant: a change applies only when every condition holds, and then all of it.
    #[tokio::test]
    async fn changes_are_all_or_nothing() {
        let engine = engine(10);
        let swap = |expect: Option<&str>, set: &str| FieldSwap {
            field: "f".into(),
            expect: expect.map(str::to_owned),
            set: Some(set.into()),
        };
        let draft = EventDraft::new("acme", EventType::LicenseUpdated, Default::default());
        let change = |expect, set| Change {
            doc_expect: Expect::Absent,
            doc: DocWrite::Set("{}".into()),
            notices: vec![swap(expect, set)],
            events: vec![draft.clone()],
            idempotency: None,
        };
        assert!(
            matches!(engine.apply("acme", &change(None, "1")).await, Ok(Applied::Done(p)) if p.len() == 1)
        );
        // The document is no longer absent: nothing of this change may apply.
        assert!(matches!(
            engine.apply("acme", &change(Some("1"), "2")).await,
            Ok(Applied::Conflict)
        ));
        let record = engine.load("acme").await.unwrap();
        assert_eq!(record.notices.get("f").map(String::as_str), Some("1"));
        let all = engine
            .history_after("acme", None, Position::Exact)
            .await
            .unwrap();
        assert_eq!(ids(all).len(), 1);
    }

    #[tokio::test]
    async fn seats_stop_at_the_cap_and_come_back_when_released() {
        let engine = engine(10);
        for _ in 0..2 {
            assert!(engine.claim_seat("acme", "n", 2).await.unwrap());
        }
        assert!(!engine.claim_seat("acme", "n", 2).await.unwrap());
        assert!(engine.claim_seat("globex", "n", 2).await.unwrap());
        engine.release_seat("acme", "n").await.unwrap();
        assert!(engine.claim_seat("acme", "n", 2).await.unwrap());
        assert!(!engine.claim_seat("acme", "n", 2).await.unwrap());
    }

    #[tokio::test]
    async fn idempotency_keys_replay_refuse_expire_and_stay_bounded() {
        let engine = engine(100);
        let draft = EventDraft::new("acme", EventType::LicenseUpdated, Default::default());
        let key = |k: &str, fingerprint: &str, ttl_ms: u64| IdempotencyKey {
            key: k.into(),
            fingerprint: fingerprint.into(),
            ttl: Duration::from_millis(ttl_ms),
        };
        let Applied::Done(first) = engine
            .publish_idempotent(&draft, &key("k", "a", 60_000))
            .await
            .unwrap()
        else {
            panic!("first publish");
        };
        match engine
            .publish_idempotent(&draft, &key("k", "a", 60_000))
            .await
            .unwrap()
        {
            Applied::Replayed(p) => assert_eq!(p.id, first[0].id),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            engine
                .publish_idempotent(&draft, &key("k", "b", 60_000))
                .await
                .unwrap(),
            Applied::KeyReused
        ));
        // Expired keys publish anew.
        engine
            .publish_idempotent(&draft, &key("short", "a", 1))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(matches!(
            engine
                .publish_idempotent(&draft, &key("short", "a", 1))
                .await
                .unwrap(),
            Applied::Done(_)
        ));
        // Bounded: beyond the cap the soonest to expire ("k", 60 s against 120 s) goes first.
        for i in 0..IDEMPOTENCY_MAX_KEYS {
            let k = key(&format!("bulk-{i}"), "a", 120_000);
            engine.publish_idempotent(&draft, &k).await.unwrap();
        }
        let tenants = engine.lock_tenants().unwrap();
        assert_eq!(tenants["acme"].keys.len(), IDEMPOTENCY_MAX_KEYS);
        assert!(!tenants["acme"].keys.contains_key("k"));
    }
}
