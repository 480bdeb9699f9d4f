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

use crate::engine::{EngineError, EventSink, SharedEngine};
use crate::protocol::{CloseReason, EventId};

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

#[derive(Default)]
struct OutboxState {
    queue: VecDeque<Utf8Bytes>,
    close: Option<CloseReason>,
}

/// What a session finds in its outbox.
pub enum Next {
    /// An event to send.
    Event(Utf8Bytes),
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
    pub fn push(&self, payload: Utf8Bytes) -> bool {
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
        state.queue.push_back(payload);
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
            Some(payload) => Next::Event(payload),
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
}

impl Membership {
    /// The session's tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }
}

struct TenantEntry {
    sessions: HashMap<u64, Arc<Outbox>>,
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
    /// Events handed to sessions (for tests and metrics).
    deliveries: AtomicU64,
    /// Signalled when sessions join or leave, so the node registry refreshes promptly.
    changed: Notify,
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
            deliveries: AtomicU64::new(0),
            changed: Notify::new(),
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
        let (key, subscribed) = {
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
                        subscribed: Arc::new(tokio::sync::Mutex::new(false)),
                    });
                    (k, entry)
                }
            };
            entry.sessions.insert(id, outbox.clone());
            (key, entry.subscribed.clone())
        };
        let membership = Membership {
            tenant: key,
            id,
            outbox,
        };
        let mut is_subscribed = subscribed.lock().await;
        if !*is_subscribed {
            let result = tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.engine.subscribe(tenant))
                .await
                .unwrap_or_else(|_| Err(EngineError::Unavailable("subscribe timed out".into())));
            if let Err(error) = result {
                drop(is_subscribed);
                self.leave(&membership);
                return Err(error);
            }
            *is_subscribed = true;
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
        }
        let mut shard = self.shard(tenant);
        if shard
            .get(tenant)
            .is_some_and(|e| e.sessions.is_empty() && Arc::ptr_eq(&e.subscribed, &subscribed))
        {
            shard.remove(tenant);
        }
    }

    /// Asks every session to close with `reason`.
    pub fn close_all(&self, reason: CloseReason) {
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for entry in shard.values() {
                for outbox in entry.sessions.values() {
                    outbox.close(reason);
                }
            }
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

    /// Resolves after sessions joined or left.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Events handed to sessions so far.
    pub fn deliveries(&self) -> u64 {
        self.deliveries.load(Ordering::Relaxed)
    }
}

impl EventSink for Hub {
    fn deliver(&self, tenant: &str, _id: Option<EventId>, payload: Utf8Bytes) {
        let shard = self.shard(tenant);
        let Some(entry) = shard.get(tenant) else {
            return;
        };
        let mut delivered = 0;
        for outbox in entry.sessions.values() {
            // A clone of `Utf8Bytes` is a reference count: every recipient shares one buffer.
            if outbox.push(payload.clone()) {
                delivered += 1;
            }
        }
        drop(shard);
        self.deliveries.fetch_add(delivered, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_overflow_becomes_a_slow_consumer_close() {
        let outbox = Outbox::new(2);
        assert!(outbox.push("a".into()));
        assert!(outbox.push("b".into()));
        assert!(!outbox.push("c".into()));
        assert!(matches!(
            outbox.next(),
            Next::Close(CloseReason::SlowConsumer)
        ));
        assert!(!outbox.push("d".into()));
    }

    #[test]
    fn outbox_keeps_order_and_first_close_reason() {
        let outbox = Outbox::new(8);
        outbox.push("a".into());
        outbox.push("b".into());
        assert!(matches!(outbox.next(), Next::Event(p) if p == "a"));
        assert!(matches!(outbox.next(), Next::Event(p) if p == "b"));
        assert!(matches!(outbox.next(), Next::Empty));
        outbox.close(CloseReason::GoingAway);
        outbox.close(CloseReason::SlowConsumer);
        assert!(matches!(outbox.next(), Next::Close(CloseReason::GoingAway)));
    }
}
