//! The engine: where events are made durable and fanned out between nodes, where licenses are
//! stored, and where nodes register. Three roles, each its own trait so that every user depends
//! only on what it uses (centrifuge keeps `Broker` and `PresenceManager` apart the same way):
//!
//! - [`Broker`] ([`broker`]): atomic publish, per-tenant subscription, history for resume.
//! - [`LicenseStore`] ([`store`]): documents, usage, notice state and deadlines, changed by
//!   atomic compare-and-set steps that may publish events in the same step.
//! - [`NodeRegistry`] ([`registry`]): which gateway nodes are alive and what they hold.
//!
//! Two implementations provide all three: [`memory::MemoryEngine`] (one node, no Redis) and
//! [`redis::RedisEngine`] (any number of stateless nodes). [`Engines`] bundles the three
//! handles of one implementation. One conformance suite (`tests/conformance.rs`) runs against
//! both.

pub mod broker;
pub mod memory;
pub mod redis;
pub mod registry;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

pub use broker::{Broker, Control, EventSink, History, Position, Published};
pub use registry::{NODE_TTL, NodeRegistry, NodeStats, SEAT_TTL};
pub use store::{
    Applied, Change, DocWrite, Expect, FieldSwap, IDEMPOTENCY_MAX_KEYS, IdempotencyKey,
    LicenseStore, TenantRecord,
};

/// History retention (`HISTORY_SIZE`, `HISTORY_TTL_SECS`).
#[derive(Debug, Clone, Copy)]
pub struct HistoryConfig {
    /// Entries kept per tenant (at least this many).
    pub size: u32,
    /// Entries older than this are trimmed.
    pub ttl: Duration,
}

impl HistoryConfig {
    /// The retention `HISTORY_SIZE` and `HISTORY_TTL_SECS` ask for.
    pub fn from_args(args: &crate::config::HistoryArgs) -> Self {
        Self {
            size: args.history_size,
            ttl: Duration::from_secs(args.history_ttl_secs),
        }
    }
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

/// The three role handles of one engine implementation; cheap to clone.
#[derive(Clone)]
pub struct Engines {
    /// Short name for logs (`memory`, `redis`).
    pub name: &'static str,
    /// Publish, subscribe, history.
    pub broker: Arc<dyn Broker>,
    /// Licenses, usage, notices, deadlines.
    pub store: Arc<dyn LicenseStore>,
    /// Live nodes.
    pub registry: Arc<dyn NodeRegistry>,
}

impl Engines {
    /// All three roles served by one engine.
    pub fn of<E: Broker + LicenseStore + NodeRegistry>(name: &'static str, engine: E) -> Self {
        let engine = Arc::new(engine);
        Self {
            name,
            broker: engine.clone(),
            store: engine.clone(),
            registry: engine,
        }
    }
}
