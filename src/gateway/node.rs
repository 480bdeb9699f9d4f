//! The node's shared state: settings, token verifier, hub, the engine roles it uses, and the
//! counters of open connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Settings;
use super::hub::Hub;
use crate::auth::Verifier;
use crate::engine::{Broker, NodeRegistry, NodeStats, NotificationStore, TicketStore};
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
    /// Notifications: unread counts and preferences at connect, delivery stats.
    pub notifications: Arc<dyn NotificationStore>,
    /// Connection tickets (`?ticket=` at the upgrade, `POST /api/connect-ticket`).
    pub tickets: Arc<dyn TicketStore>,
    /// Local sessions and subscriptions.
    pub hub: Arc<Hub>,
    /// Start time, RFC 3339.
    pub started_at: String,
    draining: AtomicBool,
    /// Authenticated WebSocket connections.
    connections: AtomicUsize,
    /// Connections per client address, while `MAX_CONNECTIONS_PER_IP` is set; an entry goes
    /// with its last connection. std Mutex: held for a lookup, never across an await.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Seats this node holds per tenant, while `MAX_CONNECTIONS_PER_TENANT` is set: what the
    /// periodic refresh writes back to the engine. std Mutex, never held across an await.
    seats: Mutex<HashMap<String, usize>>,
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
        notifications: Arc<dyn NotificationStore>,
        tickets: Arc<dyn TicketStore>,
    ) -> Self {
        let background = TaskTracker::new();
        let background_stop = CancellationToken::new();
        let hub = Arc::new(Hub::new(
            broker.clone(),
            super::outbox::QueueLimits {
                len: settings.session_queue_len,
                bytes: settings.session_queue_bytes,
            },
            settings.recent_window,
            settings.unsubscribe_delay,
            background.clone(),
            background_stop.clone(),
        ));
        Self {
            settings,
            verifier,
            broker,
            registry,
            notifications,
            tickets,
            hub,
            started_at: rfc3339_millis(time::OffsetDateTime::now_utc()),
            draining: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            seats: Mutex::new(HashMap::new()),
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

    /// Admits a connection from `ip` when the node and that address are under their limits;
    /// the guard uncounts it when dropped. `None`: a limit is reached (nothing is counted).
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Option<ConnectionGuard> {
        let open = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let mut guard = ConnectionGuard {
            node: self.clone(),
            ip: None,
            tenant: None,
        };
        let max = self.settings.max_connections;
        if max > 0 && open > max {
            return None;
        }
        let per_ip = self.settings.max_connections_per_ip;
        if let (Some(ip), true) = (ip, per_ip > 0) {
            let mut counts = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let count = counts.entry(ip).or_insert(0);
            if *count >= per_ip {
                return None;
            }
            *count += 1;
            guard.ip = Some(ip);
        }
        Some(guard)
    }

    /// Counts the admitted connection toward its tenant's cluster-wide cap
    /// (`MAX_CONNECTIONS_PER_TENANT`); `Ok(false)` when the tenant is at its cap. An engine
    /// failure refuses too: the cap cannot be checked, and the node cannot subscribe then either.
    pub async fn claim_seat(
        &self,
        guard: &mut ConnectionGuard,
        tenant: &str,
    ) -> Result<bool, crate::engine::EngineError> {
        let limit = self.settings.max_connections_per_tenant;
        if limit == 0 {
            return Ok(true);
        }
        let node = &self.settings.node_id;
        if !self.registry.claim_seat(tenant, node, limit).await? {
            return Ok(false);
        }
        let mut seats = self.seats.lock().unwrap_or_else(|e| e.into_inner());
        *seats.entry(tenant.to_owned()).or_insert(0) += 1;
        guard.tenant = Some(tenant.into());
        Ok(true)
    }

    /// The seats this node holds, per tenant (for the periodic refresh).
    pub fn held_seats(&self) -> Vec<(String, usize)> {
        let seats = self.seats.lock().unwrap_or_else(|e| e.into_inner());
        seats.iter().map(|(t, n)| (t.clone(), *n)).collect()
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

/// Counts a connection toward the node's limits (and its address's and tenant's) while it
/// lives.
pub struct ConnectionGuard {
    node: Arc<Node>,
    ip: Option<IpAddr>,
    /// The tenant whose seat this connection holds (boxed, not a `String`: every session
    /// carries the guard).
    tenant: Option<Box<str>>,
}

/// One fewer for `key` in `counts`; the entry goes with its last one.
fn uncount<K, Q>(counts: &Mutex<HashMap<K, usize>>, key: &Q)
where
    K: std::hash::Hash + Eq + std::borrow::Borrow<Q>,
    Q: std::hash::Hash + Eq + ?Sized,
{
    let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(count) = counts.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(key);
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let node = &self.node;
        node.connections.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            uncount(&node.per_ip, &ip);
        }
        if let Some(tenant) = self.tenant.take() {
            uncount(&node.seats, &*tenant);
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return; // no runtime left to release on: the seats expire with the node's
            };
            // Given back at once so a reconnect elsewhere finds it free; a release that fails
            // is repaired by the next refresh, or expires with the node's seats.
            let registry = node.registry.clone();
            let id = node.settings.node_id.clone();
            node.background.spawn_on(
                async move {
                    if let Err(error) = registry.release_seat(&tenant, &id).await {
                        tracing::debug!(%error, "seat release failed; the refresh repairs it");
                    }
                },
                &runtime,
            );
        }
    }
}
