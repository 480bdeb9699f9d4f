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

/// Durable publish, per-tenant subscription and node registry. Implementations are cheap to
/// share (`Arc<dyn Engine>`).
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

    /// Appends the event to the tenant's history and publishes it on the tenant's channel, as
    /// one atomic step; returns the assigned id and the envelope.
    async fn publish(&self, draft: &EventDraft) -> Result<Published, EngineError>;

    /// Starts receiving `tenant`'s events on this node. Returns once the subscription is in
    /// place: an event published after that reaches the sink.
    async fn subscribe(&self, tenant: &str) -> Result<(), EngineError>;

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
