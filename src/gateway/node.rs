//! The node's shared state: settings, token verifier, hub, the engine roles it uses, and the
//! counters of open connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Settings;
use super::hub::Hub;
use crate::auth::Verifier;
use crate::engine::{Broker, NodeRegistry, NodeStats};
use crate::protocol::rfc3339_millis;

/// One gateway node; shared behind an `Arc`.
pub struct Node {
    /// Settings.
    pub settings: Settings,
    /// Token verification (upgrade, in-band refresh, API extractors).
    pub verifier: Arc<Verifier>,
    /// Publish, subscribe, history.
    pub broker: Arc<dyn Broker>,
    /// Live nodes.
    pub registry: Arc<dyn NodeRegistry>,
    /// Local sessions and subscriptions.
    pub hub: Arc<Hub>,
    /// Start time, RFC 3339.
    pub started_at: String,
    draining: AtomicBool,
    /// Open WebSocket connections, including ones being refused.
    connections: AtomicUsize,
    next_connection: AtomicU64,
    /// Session tasks, waited for at shutdown (axum does not track upgraded connections).
    pub(crate) sessions: TaskTracker,
    /// Background tasks (engine loops, delayed unsubscribes, registry, gap fills).
    pub(crate) background: TaskTracker,
    /// Stops the background tasks, after the sessions.
    pub(crate) background_stop: CancellationToken,
}

impl Node {
    /// Builds the node. Nothing runs until [`super::lifecycle::start`].
    pub fn new(
        settings: Settings,
        verifier: Arc<Verifier>,
        broker: Arc<dyn Broker>,
        registry: Arc<dyn NodeRegistry>,
    ) -> Self {
        let background = TaskTracker::new();
        let background_stop = CancellationToken::new();
        let hub = Arc::new(Hub::new(
            broker.clone(),
            settings.session_queue_len,
            settings.unsubscribe_delay,
            background.clone(),
            background_stop.clone(),
        ));
        Self {
            settings,
            verifier,
            broker,
            registry,
            hub,
            started_at: rfc3339_millis(time::OffsetDateTime::now_utc()),
            draining: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            next_connection: AtomicU64::new(1),
            sessions: TaskTracker::new(),
            background,
            background_stop,
        }
    }

    /// A number for the next connection (its id is `<node>-<number>`).
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a new connection; returns the open count including it and the guard that
    /// uncounts it when dropped.
    pub fn admit(self: &Arc<Self>) -> (usize, ConnectionGuard) {
        let open = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        (open, ConnectionGuard(self.clone()))
    }

    /// Whether the node is draining (readiness off, new connections refused).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Turns readiness off for good (shutdown).
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// This node's live registry entry.
    pub fn stats(&self) -> NodeStats {
        let tenant_connections = self.hub.tenant_connections();
        NodeStats {
            id: self.settings.node_id.clone(),
            connections: tenant_connections.values().sum(),
            tenants: tenant_connections.len(),
            started_at: self.started_at.clone(),
            last_seen: rfc3339_millis(time::OffsetDateTime::now_utc()),
            tenant_connections,
        }
    }
}

/// Counts a connection toward the node limit while it lives.
pub struct ConnectionGuard(Arc<Node>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}
