//! The hub: which local sessions belong to which tenant, and the node's tenant subscriptions —
//! subscribe on a tenant's first session, unsubscribe a short delay after its last. Events from
//! the broker enter here ([`EventSink`]) and go through each tenant's [`TenantStream`]
//! (ordering, dedup, gap fill) into the sessions' outboxes.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::outbox::{Outbox, QueueLimits};
use super::recovery::{FillOutcome, Member, Sessions, TenantStream, resync_reason};
use super::window::WindowLimits;
use crate::engine::{Broker, Control, EngineError, EventSink, Position};
use crate::notifications::EventFilter;
use crate::notifications::Versioned;
use crate::protocol::{CloseReason, EventId, EventType, Payload};

/// How long a first session waits for its tenant's subscription before giving up.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
const SHARDS: usize = 16;
/// How soon a failed gap fill (Redis away again) is retried.
const FILL_RETRY: Duration = Duration::from_millis(500);

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
    sessions: Sessions,
    stream: TenantStream,
    // Async mutex: held across the broker's (un)subscribe so concurrent first sessions of a
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
    broker: Arc<dyn Broker>,
    queue: QueueLimits,
    /// Bounds of each tenant's recent-event window.
    window: WindowLimits,
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
    /// A hub over `broker`; delayed unsubscribes run on `tracker` and stop at `shutdown`.
    pub fn new(
        broker: Arc<dyn Broker>,
        queue: QueueLimits,
        window: WindowLimits,
        unsubscribe_delay: Duration,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            broker,
            queue,
            window,
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
        // A poisoned lock only means a panic elsewhere mid-push; the map is still consistent.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every shard in turn, for the rare whole-node walks (stats, gaps, drain).
    fn each_shard(&self) -> impl Iterator<Item = MutexGuard<'_, HashMap<Arc<str>, TenantEntry>>> {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Registers a session of `tenant` (and `user`, when its token names one, and `filter`,
    /// applied at fan-out) and returns once the node's subscription for the tenant is in place.
    ///
    /// With the membership comes the tenant's position when the outbox joined, read under the
    /// same lock: every event after it reaches the outbox, none before it does. `None` when the
    /// node had no position for the tenant yet (its first session); [`Hub::position`] tells it
    /// after subscribing. Returned apart because only the greeting needs it, while the
    /// membership is kept for the session's life.
    pub async fn join(
        self: &Arc<Self>,
        tenant: &str,
        user: Option<&str>,
        filter: Option<Arc<EventFilter>>,
    ) -> Result<(Membership, Option<EventId>), EngineError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::new(self.queue));
        let (key, subscribed, start) = {
            let mut shard = self.shard(tenant);
            let key: Arc<str> = match shard.get_key_value(tenant) {
                Some((k, _)) => k.clone(),
                None => Arc::from(tenant),
            };
            let entry = shard.entry(key.clone()).or_insert_with(|| TenantEntry {
                sessions: Sessions::new(),
                stream: TenantStream::new(self.window),
                subscribed: Arc::new(tokio::sync::Mutex::new(false)),
            });
            let member = Member {
                outbox: outbox.clone(),
                user: user.map(Box::from),
                filter,
                prefs: None,
            };
            entry.sessions.insert(id, member);
            (key, entry.subscribed.clone(), entry.stream.position())
        };
        let membership = Membership {
            tenant: key,
            id,
            outbox,
        };
        let mut is_subscribed = subscribed.lock().await;
        if !*is_subscribed {
            match tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.subscribe(tenant)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    drop(is_subscribed);
                    self.leave(&membership);
                    return Err(error);
                }
                Err(_) => {
                    drop(is_subscribed);
                    self.leave(&membership);
                    return Err(EngineError::Unavailable("subscribe timed out".into()));
                }
            }
            *is_subscribed = true;
            crate::metrics::tenants_subscribed(1.0);
            tracing::debug!(tenant, "subscribed tenant channel");
        }
        self.changed.notify_one();
        Ok((membership, start))
    }

    /// Subscribes `tenant` and records the history's newest id as its stream's baseline. Both
    /// or neither: when the second step fails the subscription is undone, so a later session
    /// subscribes afresh instead of trusting a half-made one.
    async fn subscribe(&self, tenant: &str) -> Result<(), EngineError> {
        self.broker.subscribe(tenant).await?;
        match self.broker.newest_id(tenant).await {
            Ok(baseline) => {
                if let Some(entry) = self.shard(tenant).get_mut(tenant) {
                    entry.stream.set_baseline(baseline);
                }
                Ok(())
            }
            Err(error) => {
                if let Err(undo) = self.broker.unsubscribe(tenant).await {
                    tracing::warn!(tenant, error = %undo, "could not undo a half-made subscription");
                }
                Err(error)
            }
        }
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
        let still_idle = |shard: &HashMap<Arc<str>, TenantEntry>| {
            shard
                .get(tenant)
                .is_some_and(|e| e.sessions.is_empty() && Arc::ptr_eq(&e.subscribed, &subscribed))
        };
        if !still_idle(&self.shard(tenant)) {
            return;
        }
        if *is_subscribed {
            match self.broker.unsubscribe(tenant).await {
                Ok(()) => tracing::debug!(tenant = &**tenant, "unsubscribed tenant channel"),
                // Not fatal: the channel stays subscribed and its events find no session.
                Err(error) => tracing::warn!(tenant = &**tenant, %error, "unsubscribe failed"),
            }
            *is_subscribed = false;
            crate::metrics::tenants_subscribed(-1.0);
        }
        let mut shard = self.shard(tenant);
        if still_idle(&shard) {
            shard.remove(tenant);
        }
    }

    /// Whether `membership`'s session was opened for `user` (read when a refresh token comes,
    /// rarely, so the session itself does not carry a copy).
    pub fn is_user(&self, membership: &Membership, user: Option<&str>) -> bool {
        self.shard(&membership.tenant)
            .get(&membership.tenant)
            .and_then(|e| e.sessions.get(&membership.id))
            .is_some_and(|m| m.user.as_deref() == user)
    }

    /// Applies the user's preferences, as read at connect, to a session, unless a newer
    /// version already arrived (a change made meanwhile).
    pub fn set_preferences(&self, membership: &Membership, preferences: Arc<Versioned>) {
        let mut shard = self.shard(&membership.tenant);
        if let Some(member) = shard
            .get_mut(&membership.tenant)
            .and_then(|e| e.sessions.get_mut(&membership.id))
        {
            apply_preferences(member, &preferences);
        }
    }

    /// The user's preferences as this node applies them to `membership`'s session (for a
    /// resume replay).
    pub fn preferences(&self, membership: &Membership) -> Option<Arc<Versioned>> {
        self.shard(&membership.tenant)
            .get(&membership.tenant)
            .and_then(|e| e.sessions.get(&membership.id))
            .and_then(|m| m.prefs.clone())
    }

    /// The user `membership`'s session was opened for (read once, at connect: the session
    /// itself does not carry a copy).
    pub fn user(&self, membership: &Membership) -> Option<Box<str>> {
        self.shard(&membership.tenant)
            .get(&membership.tenant)
            .and_then(|e| e.sessions.get(&membership.id))
            .and_then(|m| m.user.clone())
    }

    /// Connections reached per tenant and event type since the last call, for the stats. (The
    /// same periodic walk ages out the recent-event windows of quiet tenants.)
    pub fn take_delivered(&self) -> Vec<(Arc<str>, EventType, u64)> {
        let mut out = Vec::new();
        let now = std::time::Instant::now();
        for mut shard in self.each_shard() {
            for (tenant, entry) in shard.iter_mut() {
                for (t, n) in entry.stream.take_delivered() {
                    out.push((tenant.clone(), t, n));
                }
                entry.stream.window.trim(now);
            }
        }
        out
    }

    /// The events of `tenant` after `after` from the node's recent-event window, when it covers
    /// them: a resume served without reading the history.
    pub fn recent_after(&self, tenant: &str, after: EventId) -> Option<Vec<(EventId, Payload)>> {
        let mut shard = self.shard(tenant);
        let entry = shard.get_mut(tenant)?;
        if entry.stream.is_held() {
            return None;
        }
        entry.stream.window.after(after, std::time::Instant::now())
    }

    /// Takes in a history page a resume of `tenant` read after `after` (`complete`: not cut at
    /// the page size), so that later resumes from there are served from the window.
    pub fn remember_history(
        &self,
        tenant: &str,
        after: EventId,
        page: &[(EventId, Payload)],
        complete: bool,
    ) {
        let mut shard = self.shard(tenant);
        if let Some(entry) = shard.get_mut(tenant) {
            if entry.stream.is_held() {
                return;
            }
            let position = entry.stream.position();
            let now = std::time::Instant::now();
            entry
                .stream
                .window
                .remember(after, page, complete, position, now);
        }
    }

    /// Sessions per tenant on this node (tenants with at least one session).
    pub fn tenant_connections(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for shard in self.each_shard() {
            for (tenant, entry) in shard.iter() {
                if !entry.sessions.is_empty() {
                    out.insert(tenant.to_string(), entry.sessions.len());
                }
            }
        }
        out
    }

    /// Where a new session of `tenant` starts (see [`TenantStream::position`]).
    pub fn position(&self, tenant: &str) -> Option<EventId> {
        self.shard(tenant)
            .get(tenant)
            .and_then(|e| e.stream.position())
    }

    /// Resolves after sessions joined or left.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Fills every held tenant's gap from the history, then releases its held events; runs
    /// until `shutdown`. A failed fill (Redis away again) is retried.
    pub async fn fill_gaps(self: Arc<Self>, shutdown: CancellationToken) {
        let mut retry = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.gap.notified() => {}
                _ = tokio::time::sleep(FILL_RETRY), if retry => {}
            }
            retry = false;
            let held: Vec<Arc<str>> = self
                .each_shard()
                .flat_map(|shard| {
                    shard
                        .iter()
                        .filter(|(_, e)| e.stream.is_held())
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
    pub async fn fill(&self, tenant: &str) -> bool {
        let Some(from) = self.shard(tenant).get(tenant).map(|e| e.stream.position()) else {
            return true;
        };
        let history = match self
            .broker
            .history_after(tenant, from, Position::ByOrder)
            .await
        {
            Ok(history) => history,
            Err(error) => {
                tracing::warn!(tenant, %error, "gap fill failed; retrying");
                return false;
            }
        };
        if let Some(reason) = resync_reason(&history).filter(|_| from.is_some()) {
            tracing::warn!(
                tenant,
                reason = reason.text(),
                "history cannot fill the gap"
            );
        }
        let mut shard = self.shard(tenant);
        let Some(entry) = shard.get_mut(tenant) else {
            return true;
        };
        match entry.stream.fill(&entry.sessions, from, history) {
            FillOutcome::Filled(0) => {}
            FillOutcome::Filled(filled) => {
                tracing::info!(tenant, filled, "filled a delivery gap from history");
                crate::metrics::gap_fill("filled");
            }
            FillOutcome::Resync => crate::metrics::gap_fill("resync"),
        }
        true
    }

    /// Closes every session with `reason`, spread evenly over `window` so that clients do not
    /// all reconnect at once.
    pub async fn close_gradually(&self, reason: CloseReason, window: Duration) {
        let outboxes: Vec<Arc<Outbox>> = self
            .each_shard()
            .flat_map(|shard| {
                shard
                    .values()
                    .flat_map(|e| e.sessions.values().map(|m| m.outbox.clone()))
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

/// Sets a member's preferences unless it has a newer version.
fn apply_preferences(member: &mut Member, preferences: &Arc<Versioned>) {
    if member
        .prefs
        .as_ref()
        .is_none_or(|p| preferences.version > p.version)
    {
        member.prefs = Some(preferences.clone());
    }
}

impl EventSink for Hub {
    fn deliver(&self, tenant: &str, id: Option<EventId>, payload: Payload) {
        let mut shard = self.shard(tenant);
        if let Some(entry) = shard.get_mut(tenant) {
            entry.stream.on_live(&entry.sessions, id, payload);
        }
    }

    fn control(&self, tenant: &str, control: Control) {
        match control {
            Control::Disconnect { user } => {
                let shard = self.shard(tenant);
                let Some(entry) = shard.get(tenant) else {
                    return;
                };
                let mut closed = 0;
                for member in entry.sessions.values() {
                    if user.is_none() || member.user.as_deref() == user.as_deref() {
                        member.outbox.close(CloseReason::Revoked);
                        closed += 1;
                    }
                }
                tracing::info!(
                    tenant,
                    user = user.as_deref(),
                    closed,
                    "connections revoked"
                );
            }
            Control::NotificationState { user, state } => {
                // Encoded once per node; the user's connections share the bytes.
                let payload = Payload::from(state.message());
                let shard = self.shard(tenant);
                let Some(entry) = shard.get(tenant) else {
                    return;
                };
                for member in entry.sessions.values() {
                    if member.user.as_deref() == Some(user.as_str()) {
                        member.outbox.push(None, payload.clone());
                        crate::metrics::notification_state_sent();
                    }
                }
            }
            Control::Preferences { user, preferences } => {
                // One copy shared by the user's sessions on this node.
                let preferences = Arc::new(preferences);
                let mut shard = self.shard(tenant);
                let Some(entry) = shard.get_mut(tenant) else {
                    return;
                };
                for member in entry.sessions.values_mut() {
                    if member.user.as_deref() == Some(user.as_str()) {
                        apply_preferences(member, &preferences);
                    }
                }
            }
        }
    }

    fn gap_begins(&self) {
        for mut shard in self.each_shard() {
            for entry in shard.values_mut() {
                entry.stream.hold();
            }
        }
    }

    fn gap_ends(&self) {
        self.gap.notify_one();
    }
}
