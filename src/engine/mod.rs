//! The engine: where events are made durable and fanned out between nodes. One trait, two
//! implementations — [`memory::MemoryEngine`] (one node, no Redis) and [`redis::RedisEngine`]
//! (any number of stateless nodes) — and one conformance suite (`tests/conformance.rs`) run
//! against both, as centrifuge does with its brokers.

pub mod memory;
pub mod redis;

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::protocol::{EventDraft, EventId};

/// How long a node's registry entry lives without a refresh; a dead node drops out of stats
/// after this (SPEC §4: within 30 s).
pub const NODE_TTL: Duration = Duration::from_secs(30);

/// An event as the engine stored it: the id it assigned and the exact envelope bytes, shared
/// (reference-counted) by every recipient.
#[derive(Debug, Clone)]
pub struct Published {
    /// The event id (`<ms>-<seq>`), equal to its history entry's id.
    pub id: EventId,
    /// The envelope JSON.
    pub payload: Utf8Bytes,
}

/// Where an engine delivers events of the tenants this node is subscribed to.
pub trait EventSink: Send + Sync {
    /// One event of `tenant`, in the tenant's publish order. Must not block: called from the
    /// engine's receive loop.
    fn deliver(&self, tenant: &str, id: Option<EventId>, payload: Utf8Bytes);

    /// Live delivery may have missed events (connection lost, receive loop lagged): hold live
    /// events back until [`EventSink::gap_ends`]. Called before subscriptions are restored.
    fn gap_begins(&self) {}

    /// Subscriptions are back: fill each tenant's gap from the history, then release the held
    /// events. Must not block.
    fn gap_ends(&self) {}
}

/// The events of a tenant's history after a given id (resume, gap filling).
#[derive(Debug, Clone)]
pub enum History {
    /// The id is in the history; these events follow it, in order (possibly none).
    After(Vec<(EventId, Utf8Bytes)>),
    /// The history is empty (never written, expired, or lost with its store).
    Empty,
    /// The id is older than the oldest retained event: events may have been trimmed.
    TooOld,
    /// The id is newer than the newest event.
    TooNew,
    /// The id lies within the history but is not one of its events (or the history was lost
    /// and rewritten since).
    Unknown,
}

impl History {
    /// Classifies a missed id against the first and last retained ids.
    pub fn miss(after: EventId, first: EventId, last: EventId) -> History {
        if after < first {
            History::TooOld
        } else if after > last {
            History::TooNew
        } else {
            History::Unknown
        }
    }

    /// The reason a client is told when it must resync instead.
    pub fn resync_reason(&self) -> Option<&'static str> {
        match self {
            History::After(_) => None,
            History::Empty => Some("history is empty"),
            History::TooOld => Some("lastEventId is older than the oldest retained event"),
            History::TooNew => Some("lastEventId is newer than the newest event"),
            History::Unknown => Some("lastEventId is not in the history"),
        }
    }
}

/// How [`Engine::history_after`] treats an id that is not itself in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// A client's `lastEventId`: it must name a retained event, else the client resyncs.
    Exact,
    /// A node's own gap: every event after the id by id order, provided the history reaches
    /// back that far. A failover may lose the newest entries a node had already delivered
    /// (replication is asynchronous); what follows them is still owed.
    ByOrder,
}

/// History retention (SPEC §1 `HISTORY_SIZE`, `HISTORY_TTL_SECS`).
#[derive(Debug, Clone, Copy)]
pub struct HistoryConfig {
    /// Entries kept per tenant (at least this many).
    pub size: u32,
    /// Entries older than this are trimmed.
    pub ttl: Duration,
}

/// One node's entry in the cluster-wide registry (`GET /api/admin/stats`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    /// Node id.
    pub id: String,
    /// Open WebSocket sessions.
    pub connections: usize,
    /// Tenants with at least one session here.
    pub tenants: usize,
    /// Start time, RFC 3339.
    pub started_at: String,
    /// Last refresh, RFC 3339.
    pub last_seen: String,
    /// Sessions per tenant.
    pub tenant_connections: BTreeMap<String, usize>,
}

/// Engine failures. Callers map `Unavailable` to 503 / exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The backing store cannot be reached or did not answer in time.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// The backing store answered something this engine cannot use.
    #[error("unexpected engine reply: {0}")]
    Protocol(String),
}

/// A tenant's stored license state, read in one atomic step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantRecord {
    /// The license document JSON, if any.
    pub doc: Option<String>,
    /// Usage counters: metric → number (JSON number text).
    pub usage: BTreeMap<String, String>,
    /// Notice state: field → value (see `license::rules`).
    pub notices: BTreeMap<String, String>,
}

/// What the stored document must be for a [`Change`] to apply.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// Not checked.
    Any,
    /// No document stored.
    Absent,
    /// Exactly this JSON stored.
    Value(String),
}

impl Expect {
    /// `Absent` for `None`, `Value` otherwise.
    pub fn from_option(doc: Option<&String>) -> Self {
        doc.map_or(Expect::Absent, |d| Expect::Value(d.clone()))
    }
}

/// A compare-and-set on one notice-state field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSwap {
    /// The field.
    pub field: String,
    /// Its expected current value (`None`: absent).
    pub expect: Option<String>,
    /// Its new value (`None`: remove).
    pub set: Option<String>,
}

/// An atomic change of a tenant's state: every condition holds and everything is applied and
/// published, or nothing is (SPEC §2: a publish is never half-applied; §3: notices once).
#[derive(Debug, Clone)]
pub struct Change {
    /// Condition on the stored document.
    pub doc_expect: Expect,
    /// New document (`Some(None)`: delete; `None`: leave as is).
    pub doc_set: Option<Option<String>>,
    /// Compare-and-set on notice-state fields.
    pub notices: Vec<FieldSwap>,
    /// Events to append to the history and publish, in order, all of the change's tenant.
    pub events: Vec<EventDraft>,
}

impl Change {
    /// A change that only publishes events.
    pub fn publish(events: Vec<EventDraft>) -> Self {
        Self {
            doc_expect: Expect::Any,
            doc_set: None,
            notices: Vec::new(),
            events,
        }
    }
}

/// Outcome of [`Engine::apply`].
#[derive(Debug, Clone)]
pub enum Applied {
    /// Conditions held; the events were published with these ids.
    Done(Vec<Published>),
    /// A condition did not hold (someone else changed the state first); nothing was applied.
    Conflict,
}

/// Durable publish, per-tenant subscription, license storage and node registry.
/// Implementations are cheap to share (`Arc<dyn Engine>`).
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Short name for logs (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// Starts background work (receive loop, health checks); events of subscribed tenants go
    /// to `sink` until `shutdown` fires. Tasks are spawned on `tracker`.
    async fn start(
        &self,
        sink: Weak<dyn EventSink>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<(), EngineError>;

    /// Checks the change's conditions and applies it — state writes, history appends and
    /// channel publishes — as one atomic step.
    async fn apply(&self, tenant: &str, change: &Change) -> Result<Applied, EngineError>;

    /// Appends the event to the tenant's history and publishes it on the tenant's channel, as
    /// one atomic step; returns the assigned id and the envelope.
    async fn publish(&self, draft: &EventDraft) -> Result<Published, EngineError> {
        match self
            .apply(&draft.tenant, &Change::publish(vec![draft.clone()]))
            .await?
        {
            Applied::Done(mut published) if published.len() == 1 => Ok(published.remove(0)),
            other => Err(EngineError::Protocol(format!(
                "unconditional publish returned {other:?}"
            ))),
        }
    }

    /// The tenant's document, usage and notice state, read atomically.
    async fn load(&self, tenant: &str) -> Result<TenantRecord, EngineError>;

    /// Merges usage counters (metric → JSON number text) into the stored ones.
    async fn merge_usage(
        &self,
        tenant: &str,
        usage: &[(String, String)],
    ) -> Result<(), EngineError>;

    /// Tenants that have a license document.
    async fn licensed_tenants(&self) -> Result<Vec<String>, EngineError>;

    /// Records when the tenant next owes a notice (Unix ms), or that it never will.
    async fn set_deadline(&self, tenant: &str, at_ms: Option<u64>) -> Result<(), EngineError>;

    /// Tenants whose recorded deadline is at or before `now_ms`.
    async fn due_tenants(&self, now_ms: u64) -> Result<Vec<String>, EngineError>;

    /// Starts receiving `tenant`'s events on this node. Returns once the subscription is in
    /// place — an event published after that reaches the sink — with the id of the newest
    /// event in the history then (the point from which a gap would be filled).
    async fn subscribe(&self, tenant: &str) -> Result<Option<EventId>, EngineError>;

    /// The tenant's events after `after` (all retained events when `None`), at most the
    /// history size; `position` says whether `after` must itself be retained.
    async fn history_after(
        &self,
        tenant: &str,
        after: Option<EventId>,
        position: Position,
    ) -> Result<History, EngineError>;

    /// Stops receiving `tenant`'s events on this node.
    async fn unsubscribe(&self, tenant: &str) -> Result<(), EngineError>;

    /// Refreshes this node's registry entry.
    async fn report_node(&self, stats: &NodeStats) -> Result<(), EngineError>;

    /// Registry entries of all live nodes (this one included once it has reported).
    async fn nodes(&self) -> Result<Vec<NodeStats>, EngineError>;

    /// Connected, and every subscription this node wants is in place.
    fn is_ready(&self) -> bool;
}

/// Shared handle to an engine.
pub type SharedEngine = Arc<dyn Engine>;
