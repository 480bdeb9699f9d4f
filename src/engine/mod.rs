//! The engine: where events are made durable and fanned out between nodes, where licenses are
//! stored, and where nodes register. Three roles, each its own trait so that every user depends
//! only on what it uses (centrifuge keeps `Broker` and `PresenceManager` apart the same way):
//!
//! - [`Broker`] ([`broker`]): atomic publish, per-tenant subscription, history for resume.
//! - [`LicenseStore`] ([`store`]): documents, usage, notice state and deadlines, changed by
//!   atomic compare-and-set steps that may publish events in the same step.
//! - [`NodeRegistry`] ([`registry`]): which gateway nodes are alive and what they hold.
//! - [`NotificationStore`] ([`notifications`]): notifications, read state, preferences, stats.
//! - [`DeliveryStore`] ([`deliveries`]): webhook endpoints and the durable delivery schedule.
//! - [`TicketStore`] ([`tickets`]): single-use connection tickets.
//!
//! Two implementations provide all four: [`memory::MemoryEngine`] (one node, no Redis) and
//! [`redis::RedisEngine`] (any number of stateless nodes). [`Engines`] bundles the three
//! handles of one implementation. One conformance suite (`tests/conformance.rs`) runs against
//! both.

pub mod broker;
pub mod deliveries;
pub mod memory;
pub mod notifications;
pub mod redis;
pub mod registry;
pub mod store;
pub mod tickets;

use std::sync::Arc;
use std::time::Duration;

use crate::notifications::Retention;

pub use broker::{Broker, Control, EventSink, History, Position, Published};
pub use deliveries::DeliveryStore;
pub use notifications::{Delivered, NotificationStore};
pub use registry::{NODE_TTL, NodeRegistry, NodeStats, SEAT_TTL};
pub use store::{
    Applied, Change, DocWrite, Expect, FieldSwap, IDEMPOTENCY_MAX_KEYS, IdempotencyKey,
    LicenseStore, TenantRecord,
};
pub use tickets::TicketStore;

/// What every publish keeps: the resume history (`HISTORY_SIZE`, `HISTORY_TTL_SECS`) and the
/// notifications (`NOTIFICATION_MAX`, `NOTIFICATION_RETENTION_DAYS`), each with its own limits.
#[derive(Debug, Clone, Copy)]
pub struct HistoryConfig {
    /// Entries kept per tenant (at least this many).
    pub size: u32,
    /// Entries older than this are trimmed.
    pub ttl: Duration,
    /// Notification retention.
    pub notifications: Retention,
}

impl Default for HistoryConfig {
    /// The documented defaults.
    fn default() -> Self {
        Self {
            size: 1000,
            ttl: Duration::from_secs(86_400),
            notifications: Retention::default(),
        }
    }
}

impl HistoryConfig {
    /// The retention the history and notification settings ask for.
    pub fn from_args(args: &crate::config::HistoryArgs) -> Self {
        Self {
            size: args.history_size,
            ttl: Duration::from_secs(args.history_ttl_secs),
            notifications: Retention {
                max: args.notification_max,
                age: Duration::from_secs_f64(args.notification_retention_days * 86_400.0),
            },
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

/// The role handles of one engine implementation; cheap to clone.
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
    /// Notifications, read state, preferences.
    pub notifications: Arc<dyn NotificationStore>,
    /// Webhook endpoints and deliveries.
    pub deliveries: Arc<dyn DeliveryStore>,
    /// Connection tickets.
    pub tickets: Arc<dyn TicketStore>,
}

impl Engines {
    /// All roles served by one engine.
    pub fn of<
        E: Broker + LicenseStore + NodeRegistry + NotificationStore + DeliveryStore + TicketStore,
    >(
        name: &'static str,
        engine: E,
    ) -> Self {
        let engine = Arc::new(engine);
        Self {
            name,
            broker: engine.clone(),
            store: engine.clone(),
            registry: engine.clone(),
            notifications: engine.clone(),
            deliveries: engine.clone(),
            tickets: engine,
        }
    }
}
