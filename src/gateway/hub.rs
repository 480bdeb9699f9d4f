//! The hub: which local sessions belong to which tenant, the node's tenant subscriptions
//! (subscribe on the first session, unsubscribe a short delay after the last), and fan-out of
//! each event's shared bytes into every session's bounded outbox.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::{EngineError, EventSink, History, Position, SharedEngine};
use crate::protocol::{CloseReason, EventId, ServerMessage};

/// How long a first session waits for its tenant's subscription before giving up.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
const SHARDS: usize = 16;

/// One session's outgoing queue, shared by the hub (producer) and the session task (consumer).
/// Starts without an allocation; bounded by `cap`; overflowing it closes the session.
pub struct Outbox {
    // std Mutex: held for a push or a pop, never across an await.
    state: Mutex<OutboxState>,
    notify: Notify,
    cap: usize,
}

/// A queued message: an event with its id, or a control message (`None`).
type Item = (Option<EventId>, Utf8Bytes);

#[derive(Default)]
struct OutboxState {
    queue: VecDeque<Item>,
    close: Option<CloseReason>,
}

/// What a session finds in its outbox.
pub enum Next {
    /// A message to send, with its event id when it is an event.
    Event(Option<EventId>, Utf8Bytes),
    /// Close the connection with this reason (queued events are dropped).
    Close(CloseReason),
    /// Nothing for now.
    Empty,
}

impl Outbox {
    fn new(cap: usize) -> Self {
        Self {
            state: Mutex::new(OutboxState::default()),
            notify: Notify::new(),
            cap,
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        // A poisoned lock only means a panic elsewhere mid-push; the queue is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an event; on overflow marks the session a slow consumer instead. Returns false
    /// when the event was not queued.
    pub fn push(&self, id: Option<EventId>, payload: Utf8Bytes) -> bool {
        let mut state = self.lock();
        if state.close.is_some() {
            return false;
        }
        if state.queue.len() >= self.cap {
            state.close = Some(CloseReason::SlowConsumer);
            state.queue = VecDeque::new();
            drop(state);
            self.notify.notify_one();
            return false;
        }
        state.queue.push_back((id, payload));
        drop(state);
        self.notify.notify_one();
        true
    }

    /// Asks the session to close with `reason` (the first reason wins).
    pub fn close(&self, reason: CloseReason) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(reason);
        }
        drop(state);
        self.notify.notify_one();
    }

    /// The next thing for the session to do. A close request takes precedence over queued events.
    pub fn next(&self) -> Next {
        let mut state = self.lock();
        if let Some(reason) = state.close {
            return Next::Close(reason);
        }
        match state.queue.pop_front() {
            Some((id, payload)) => Next::Event(id, payload),
            None => {
                // Give back the memory of a burst once it has drained.
                if state.queue.capacity() > 64 {
                    state.queue = VecDeque::new();
                }
                Next::Empty
            }
        }
    }

    /// Resolves when something was pushed or a close was requested since the last call.
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

/// A session's membership in the hub; hand it back to [`Hub::leave`].
pub struct Membership {
    tenant: Arc<str>,
    id: u64,
    /// The session's outbox.
    pub outbox: Arc<Outbox>,
    /// The tenant's position when the outbox joined, read under the same lock: every event
    /// after it reaches the outbox, none before it does. `None` when the node had no position
    /// for the tenant yet (its first session); [`Hub::position`] tells it after subscribing.
    pub start: Option<EventId>,
}

impl Membership {
    /// The session's tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }
}

/// Live events held per tenant while a gap is filled, at most this many (then: resync).
const PENDING_CAP: usize = 100_000;

struct TenantEntry {
    sessions: HashMap<u64, Arc<Outbox>>,
    /// Newest event id handed to this tenant's sessions: where a gap fill resumes, and at or
    /// below which events are duplicates.
    last_id: Option<EventId>,
    /// The history's newest id when the subscription started: where a gap fill resumes while
    /// nothing has been delivered yet. Never a duplicate line — an event published before it
    /// may still be on its way over pub/sub.
    baseline: Option<EventId>,
    /// While a gap is being filled: live events held back (`overflow` when too many).
    pending: Option<Vec<Item>>,
    overflow: bool,
    // Async mutex: held across the engine's (un)subscribe so concurrent first sessions of a
    // tenant wait for one subscription instead of racing. Per tenant, never on the event path.
    subscribed: Arc<tokio::sync::Mutex<bool>>,
}

/// One shard of the tenant map.
type Shard = Mutex<HashMap<Arc<str>, TenantEntry>>;

/// Local sessions by tenant, and the node's tenant subscriptions.
pub struct Hub {
    // Sharded so connects of different tenants and fan-out do not contend on one lock. std
    // Mutex: fan-out only pushes into outboxes, never awaits under it.
    shards: Box<[Shard]>,
    hasher: RandomState,
    engine: SharedEngine,
    queue_len: usize,
    unsubscribe_delay: Duration,
    next_id: AtomicU64,
    /// Signalled when sessions join or leave, so the node registry refreshes promptly.
    changed: Notify,
    /// Signalled when held tenants should be filled from history.
    gap: Notify,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Hub {
    /// A hub over `engine`; delayed unsubscribes run on `tracker` and stop at `shutdown`.
    pub fn new(
        engine: SharedEngine,
        queue_len: usize,
        unsubscribe_delay: Duration,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            engine,
            queue_len,
            unsubscribe_delay,
            next_id: AtomicU64::new(1),
            changed: Notify::new(),
            gap: Notify::new(),
            tracker,
            shutdown,
        }
    }

    fn shard(&self, tenant: &str) -> MutexGuard<'_, HashMap<Arc<str>, TenantEntry>> {
        let i = self.hasher.hash_one(tenant) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a session of `tenant` and returns once the node's subscription for the tenant
    /// is in place.
    pub async fn join(self: &Arc<Self>, tenant: &str) -> Result<Membership, EngineError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::new(self.queue_len));
        let (key, subscribed, start) = {
            let mut shard = self.shard(tenant);
            let (key, entry) = match shard.get_key_value(tenant) {
                Some((k, _)) => {
                    let k = k.clone();
                    let entry = shard.get_mut(&k).expect("key just found");
                    (k, entry)
                }
                None => {
                    let k: Arc<str> = Arc::from(tenant);
                    let entry = shard.entry(k.clone()).or_insert_with(|| TenantEntry {
                        sessions: HashMap::new(),
                        last_id: None,
                        baseline: None,
                        pending: None,
                        overflow: false,
                        subscribed: Arc::new(tokio::sync::Mutex::new(false)),
                    });
                    (k, entry)
                }
            };
            entry.sessions.insert(id, outbox.clone());
            (
                key,
                entry.subscribed.clone(),
                entry.last_id.or(entry.baseline),
            )
        };
        let membership = Membership {
            tenant: key,
            id,
            outbox,
            start,
        };
        let mut is_subscribed = subscribed.lock().await;
        if !*is_subscribed {
            let result = tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.engine.subscribe(tenant))
                .await
                .unwrap_or_else(|_| Err(EngineError::Unavailable("subscribe timed out".into())));
            let baseline = match result {
                Ok(baseline) => baseline,
                Err(error) => {
                    drop(is_subscribed);
                    self.leave(&membership);
                    return Err(error);
                }
            };
            if let Some(entry) = self.shard(tenant).get_mut(tenant) {
                entry.baseline = baseline;
            }
            *is_subscribed = true;
            crate::metrics::tenants_subscribed(1.0);
            tracing::debug!(tenant, "subscribed tenant channel");
        }
        self.changed.notify_one();
        Ok(membership)
    }

    /// Removes a session; the tenant's subscription goes after the unsubscribe delay if no
    /// session of it arrived meanwhile.
    pub fn leave(self: &Arc<Self>, membership: &Membership) {
        let now_empty = {
            let mut shard = self.shard(&membership.tenant);
            match shard.get_mut(&membership.tenant) {
                Some(entry) => {
                    entry.sessions.remove(&membership.id);
                    entry.sessions.is_empty()
                }
                None => false,
            }
        };
        self.changed.notify_one();
        if now_empty {
            let hub = self.clone();
            let tenant = membership.tenant.clone();
            self.tracker.spawn(async move {
                tokio::select! {
                    _ = hub.shutdown.cancelled() => {}
                    _ = tokio::time::sleep(hub.unsubscribe_delay) => hub.release(&tenant).await,
                }
            });
        }
    }

    /// Unsubscribes `tenant` if it still has no session.
    async fn release(&self, tenant: &Arc<str>) {
        let subscribed = {
            let shard = self.shard(tenant);
            match shard.get(tenant) {
                Some(entry) if entry.sessions.is_empty() => entry.subscribed.clone(),
                _ => return,
            }
        };
        let mut is_subscribed = subscribed.lock().await;
        let still_idle = {
            let shard = self.shard(tenant);
            shard
                .get(tenant)
                .is_some_and(|e| e.sessions.is_empty() && Arc::ptr_eq(&e.subscribed, &subscribed))
        };
        if !still_idle {
            return;
        }
        if *is_subscribed {
            match self.engine.unsubscribe(tenant).await {
                Ok(()) => tracing::debug!(tenant = &**tenant, "unsubscribed tenant channel"),
                // Not fatal: the channel stays subscribed and its events find no session.
                Err(error) => tracing::warn!(tenant = &**tenant, %error, "unsubscribe failed"),
            }
            *is_subscribed = false;
            crate::metrics::tenants_subscribed(-1.0);
        }
        let mut shard = self.shard(tenant);
        if shard
            .get(tenant)
            .is_some_and(|e| e.sessions.is_empty() && Arc::ptr_eq(&e.subscribed, &subscribed))
        {
            shard.remove(tenant);
        }
    }

    /// Sessions per tenant on this node (tenants with at least one session).
    pub fn tenant_connections(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (tenant, entry) in shard.iter() {
                if !entry.sessions.is_empty() {
                    out.insert(tenant.to_string(), entry.sessions.len());
                }
            }
        }
        out
    }

    /// Where a new session of `tenant` starts: the newest event id handed to the tenant's
    /// sessions, or the history's newest when the subscription started.
    pub fn position(&self, tenant: &str) -> Option<EventId> {
        self.shard(tenant)
            .get(tenant)
            .and_then(|e| e.last_id.or(e.baseline))
    }

    /// Resolves after sessions joined or left.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

/// Hands one message to every session of a tenant; returns how many took it.
fn fan_out(entry: &TenantEntry, id: Option<EventId>, payload: &Utf8Bytes) -> u64 {
    // One span per event and node, never per recipient; none at all unless traces export.
    let span = if crate::telemetry::exporting() {
        tracing::info_span!("deliver", recipients = tracing::field::Empty)
    } else {
        tracing::Span::none()
    };
    let _entered = span.enter();
    let mut delivered = 0;
    for outbox in entry.sessions.values() {
        // A clone of `Utf8Bytes` is a reference count: every recipient shares one buffer.
        if outbox.push(id, payload.clone()) {
            delivered += 1;
        }
    }
    span.record("recipients", delivered);
    delivered
}

/// Delivers an event unless it is not newer than the last one (a duplicate from a gap fill).
fn deliver_in_order(entry: &mut TenantEntry, id: Option<EventId>, payload: &Utf8Bytes) {
    if let Some(id) = id {
        if entry.last_id.is_some_and(|last| id <= last) {
            return;
        }
        entry.last_id = Some(id);
    }
    crate::metrics::event_fanned_out(fan_out(entry, id, payload));
}

impl Hub {
    /// Fills every held tenant's gap from the history, then releases its held events; runs
    /// until `shutdown`. A failed fill (Redis away again) is retried.
    pub async fn fill_gaps(self: Arc<Self>, shutdown: CancellationToken) {
        let mut retry = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.gap.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)), if retry => {}
            }
            retry = false;
            let held: Vec<Arc<str>> = self
                .shards
                .iter()
                .flat_map(|shard| {
                    let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
                    shard
                        .iter()
                        .filter(|(_, e)| e.pending.is_some())
                        .map(|(t, _)| t.clone())
                        .collect::<Vec<_>>()
                })
                .collect();
            for tenant in held {
                if !self.fill(&tenant).await {
                    retry = true;
                }
            }
        }
    }

    /// One tenant's gap fill; false when the history could not be read (still held).
    async fn fill(&self, tenant: &Arc<str>) -> bool {
        let last = match self.shard(tenant).get(tenant) {
            Some(entry) => entry.last_id.or(entry.baseline),
            None => return true,
        };
        let history = self
            .engine
            .history_after(tenant, last, Position::ByOrder)
            .await;
        let mut shard = self.shard(tenant);
        let Some(entry) = shard.get_mut(tenant) else {
            return true;
        };
        let lost = match history {
            Err(error) => {
                tracing::warn!(tenant = &**tenant, %error, "gap fill failed; retrying");
                return false;
            }
            Ok(History::After(events)) => {
                let filled = events.len();
                entry.last_id = entry.last_id.max(last);
                for (id, payload) in events {
                    deliver_in_order(entry, Some(id), &payload);
                }
                if filled > 0 {
                    tracing::info!(
                        tenant = &**tenant,
                        filled,
                        "filled a delivery gap from history"
                    );
                    crate::metrics::gap_fill("filled");
                }
                entry.overflow
            }
            Ok(History::Empty) if last.is_none() => entry.overflow,
            Ok(other) => {
                tracing::warn!(
                    tenant = &**tenant,
                    reason = other.resync_reason(),
                    "history cannot fill the gap"
                );
                true
            }
        };
        if lost {
            crate::metrics::gap_fill("resync");
            // Events may be missing and cannot be recovered: say so instead of pretending.
            let message = ServerMessage::ResyncRequired {
                reason: "events may have been missed (history lost or trimmed); refetch the license",
            };
            fan_out(entry, None, &Utf8Bytes::from(message.to_json()));
            entry.last_id = None;
        }
        for (id, payload) in entry.pending.take().unwrap_or_default() {
            deliver_in_order(entry, id, &payload);
        }
        entry.overflow = false;
        true
    }

    /// Closes every session with `reason`, spread evenly over `window` so that clients do not
    /// all reconnect at once.
    pub async fn close_gradually(&self, reason: CloseReason, window: Duration) {
        let outboxes: Vec<Arc<Outbox>> = self
            .shards
            .iter()
            .flat_map(|shard| {
                let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
                shard
                    .values()
                    .flat_map(|e| e.sessions.values().cloned())
                    .collect::<Vec<_>>()
            })
            .collect();
        const STEP: Duration = Duration::from_millis(100);
        let steps = (window.as_millis() / STEP.as_millis()).max(1) as usize;
        let per_step = outboxes.len().div_ceil(steps).max(1);
        for (i, batch) in outboxes.chunks(per_step).enumerate() {
            if i > 0 {
                tokio::time::sleep(STEP).await;
            }
            for outbox in batch {
                outbox.close(reason);
            }
        }
    }
}

impl EventSink for Hub {
    fn deliver(&self, tenant: &str, id: Option<EventId>, payload: Utf8Bytes) {
        let mut shard = self.shard(tenant);
        let Some(entry) = shard.get_mut(tenant) else {
            return;
        };
        if let Some(pending) = &mut entry.pending {
            if pending.len() < PENDING_CAP {
                pending.push((id, payload));
            } else {
                entry.overflow = true;
            }
            return;
        }
        deliver_in_order(entry, id, &payload);
    }

    fn gap_begins(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for entry in shard.values_mut() {
                entry.pending.get_or_insert_with(Vec::new);
            }
        }
    }

    fn gap_ends(&self) {
        self.gap.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_overflow_becomes_a_slow_consumer_close() {
        let outbox = Outbox::new(2);
        assert!(outbox.push(None, "a".into()));
        assert!(outbox.push(None, "b".into()));
        assert!(!outbox.push(None, "c".into()));
        assert!(matches!(
            outbox.next(),
            Next::Close(CloseReason::SlowConsumer)
        ));
        assert!(!outbox.push(None, "d".into()));
    }

    #[test]
    fn outbox_keeps_order_and_first_close_reason() {
        let outbox = Outbox::new(8);
        outbox.push(None, "a".into());
        outbox.push(None, "b".into());
        assert!(matches!(outbox.next(), Next::Event(None, p) if p == "a"));
        assert!(matches!(outbox.next(), Next::Event(None, p) if p == "b"));
        assert!(matches!(outbox.next(), Next::Empty));
        outbox.close(CloseReason::GoingAway);
        outbox.close(CloseReason::SlowConsumer);
        assert!(matches!(outbox.next(), Next::Close(CloseReason::GoingAway)));
    }
}
