//! The gateway node: HTTP + WebSocket server, its state, and its lifecycle (start, drain, stop).

pub mod hub;
pub mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRef, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{AuthError, Verifier, bearer_token};
use crate::engine::{EngineError, EventSink, NodeStats, SharedEngine};
use crate::license::rules::Rules;
use crate::protocol::{BEARER_PREFIX, CloseReason, LAST_ID_PREFIX, SUBPROTOCOL, rfc3339_millis};
use crate::worker::Validator;
use hub::Hub;

/// How often a node refreshes its registry entry.
const REGISTRY_INTERVAL: Duration = Duration::from_secs(5);
/// How long membership changes are batched before a registry refresh.
const REGISTRY_BATCH: Duration = Duration::from_millis(200);

/// Gateway settings derived from configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's id.
    pub node_id: String,
    /// Allowed `Origin` values; `None` = any.
    pub allowed_origins: Option<Vec<String>>,
    /// Connection limit; 0 = none.
    pub max_connections: usize,
    /// Largest client frame.
    pub max_frame_bytes: usize,
    /// Server ping interval.
    pub ping_interval: Duration,
    /// Per-session queue bound.
    pub session_queue_len: usize,
    /// Delay before unsubscribing an idle tenant.
    pub unsubscribe_delay: Duration,
    /// Longest wait for sessions to close at shutdown, after the drain window.
    pub shutdown_timeout: Duration,
    /// On SIGTERM: how long readiness is off before sessions are closed (balancer notices).
    pub drain_delay: Duration,
    /// On SIGTERM: the window over which sessions are closed, spread evenly.
    pub drain_window: Duration,
    /// Run the validator loop in-process (embedded engine), with this full-pass interval.
    pub embedded_validator: Option<Duration>,
}

/// Shared state of a gateway node; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// The contents of [`AppState`].
pub struct Inner {
    /// Settings.
    pub settings: Settings,
    /// Token verification.
    pub verifier: Arc<Verifier>,
    /// The engine.
    pub engine: SharedEngine,
    /// Local sessions and subscriptions.
    pub hub: Arc<Hub>,
    /// License evaluation and notices.
    pub validator: Arc<Validator>,
    /// Start time, RFC 3339.
    pub started_at: String,
    draining: AtomicBool,
    connections: AtomicUsize,
    next_connection: AtomicU64,
    sessions: TaskTracker,
    background: TaskTracker,
    background_stop: CancellationToken,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl FromRef<AppState> for Arc<Verifier> {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

impl AppState {
    /// Builds the node state. Nothing runs until [`run`].
    pub fn new(settings: Settings, verifier: Verifier, engine: SharedEngine, rules: Rules) -> Self {
        let background = TaskTracker::new();
        let background_stop = CancellationToken::new();
        let hub = Arc::new(Hub::new(
            engine.clone(),
            settings.session_queue_len,
            settings.unsubscribe_delay,
            background.clone(),
            background_stop.clone(),
        ));
        Self(Arc::new(Inner {
            settings,
            verifier: Arc::new(verifier),
            validator: Arc::new(Validator::new(engine.clone(), rules)),
            engine,
            hub,
            started_at: rfc3339_millis(time::OffsetDateTime::now_utc()),
            draining: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            next_connection: AtomicU64::new(1),
            sessions: TaskTracker::new(),
            background,
            background_stop,
        }))
    }

    fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Open WebSocket connections on this node (including ones being refused).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Whether the node is draining (readiness off).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// This node's live registry entry.
    pub fn node_stats(&self) -> NodeStats {
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

/// Counts a connection for the node limit while it lives.
pub struct ConnectionGuard(AppState);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The HTTP routes of a node.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws/license", get(ws_handler))
        .merge(crate::api::routes())
        .merge(crate::web::routes())
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct WsQuery {
    token: Option<String>,
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
}

/// The value of the first subprotocol entry with `prefix`.
fn protocol_entry<'a>(headers: &'a HeaderMap, prefix: &str) -> Option<&'a str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(prefix))
}

/// The token a client presented: subprotocol `bearer.<JWT>` first (the browser carrier), then
/// `Authorization: Bearer`, then `?token=` (the seed's form).
fn presented_token<'a>(headers: &'a HeaderMap, query: &'a WsQuery) -> Option<&'a str> {
    protocol_entry(headers, BEARER_PREFIX)
        .or_else(|| bearer_token(headers))
        .or(query.token.as_deref())
        .filter(|t| !t.is_empty())
}

async fn ws_handler(
    State(state): State<AppState>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Some(allowed) = &state.settings.allowed_origins
        && let Some(origin) = headers.get(header::ORIGIN)
    {
        let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
        if !allowed.iter().any(|a| a == origin) {
            tracing::info!(origin, "upgrade refused: origin not allowed");
            return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
        }
    }
    let open = state.connections.fetch_add(1, Ordering::Relaxed) + 1;
    let guard = ConnectionGuard(state.clone());
    let max = state.settings.max_connections;
    let refuse = if state.is_draining() {
        Some(CloseReason::GoingAway)
    } else if max > 0 && open > max {
        Some(CloseReason::TryAgainLater)
    } else {
        None
    };
    let auth = match presented_token(&headers, &query) {
        Some(token) => state.verifier.verify_tenant(token),
        None => Err(AuthError::Missing),
    };
    let last_event_id = protocol_entry(&headers, LAST_ID_PREFIX)
        .map(str::to_owned)
        .or(query.last_event_id);
    let handshake = session::Handshake {
        auth,
        refuse,
        guard,
        last_event_id,
    };
    let frame = state.settings.max_frame_bytes;
    let sessions = state.sessions.clone();
    upgrade
        .protocols([SUBPROTOCOL])
        // Small buffers: tungstenite's 128 KiB defaults cost ~130 KiB per idle connection. The
        // read chunk is what an idle connection keeps; the buffer grows for a larger frame, and
        // client frames are few and small (a ping is 21 bytes, a refresh a few hundred). 64 B
        // instead of 1 KiB saved ~0.25 KiB each.
        .read_buffer_size(frame.min(64))
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(frame)
        .max_frame_size(frame)
        // The session gets a task of its own, and axum's upgrade task ends: awaited inside it,
        // the session would be stored beside the slots axum keeps for the socket and config.
        .on_upgrade(move |socket| {
            sessions.spawn(session::run(socket, state, handshake));
            std::future::ready(())
        })
}

/// Failure to run a node.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The engine could not start.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The listener failed.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves on `listener` until `shutdown` fires, then drains: readiness off, no new
/// connections, every session closed with 1001, background tasks stopped — all within the
/// configured shutdown timeout.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let sink: Weak<dyn EventSink> = {
        let hub: Arc<dyn EventSink> = state.hub.clone();
        Arc::downgrade(&hub)
    };
    state
        .engine
        .start(sink, state.background_stop.clone(), &state.background)
        .await?;
    spawn_registry(&state);
    state
        .background
        .spawn(state.hub.clone().fill_gaps(state.background_stop.clone()));
    if let Some(interval) = state.settings.embedded_validator {
        let validator = state.validator.clone();
        let stop = state.background_stop.clone();
        state.background.spawn(validator.run(interval, stop));
    }

    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, node = %state.settings.node_id, engine = state.engine.name(), "gateway listening");
    let app = router(state.clone());
    let stop_accepting = CancellationToken::new();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(stop_accepting.clone().cancelled_owned())
            .into_future(),
    );

    shutdown.cancelled().await;
    // Drain: readiness off first; keep serving while the balancer notices; then stop accepting
    // and close sessions with 1001 spread over the window, so clients reconnect elsewhere
    // gradually instead of all at once.
    let (delay, window) = (state.settings.drain_delay, state.settings.drain_window);
    tracing::info!(?delay, ?window, "draining: readiness off");
    state.draining.store(true, Ordering::Relaxed);
    tokio::time::sleep(delay).await;
    stop_accepting.cancel();
    state
        .hub
        .close_gradually(CloseReason::GoingAway, window)
        .await;
    state.sessions.close();
    let timeout = state.settings.shutdown_timeout;
    if tokio::time::timeout(timeout, state.sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!(?timeout, "sessions did not all close in time");
    }
    // Leave the registry at once rather than after its expiry.
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        state.engine.report_node(&NodeStats {
            connections: 0,
            tenants: 0,
            tenant_connections: Default::default(),
            ..state.node_stats()
        }),
    )
    .await;
    state.background_stop.cancel();
    state.background.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), state.background.wait()).await;
    match tokio::time::timeout(Duration::from_secs(2), server).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join)) => tracing::warn!(error = %join, "server task failed"),
        Err(_) => tracing::warn!("HTTP connections still open at exit"),
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// Refreshes this node's registry entry every few seconds, and shortly after sessions join or
/// leave (batched), until shutdown.
fn spawn_registry(state: &AppState) {
    let state = state.clone();
    let stop = state.background_stop.clone();
    state.background.clone().spawn(async move {
        let mut tick = tokio::time::interval(REGISTRY_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
                _ = state.hub.changed() => {
                    // Let a burst of connects settle into one refresh.
                    tokio::time::sleep(REGISTRY_BATCH).await;
                }
            }
            if let Err(error) = state.engine.report_node(&state.node_stats()).await {
                tracing::debug!(%error, "node registry refresh failed");
            }
        }
    });
}

/// Live stats across all nodes, in the seed's `getStats` shape plus the node list.
pub async fn cluster_stats(state: &AppState) -> Result<serde_json::Value, EngineError> {
    let mut nodes = state.engine.nodes().await?;
    // This node's own entry is always live, not as of its last refresh.
    nodes.retain(|n| n.id != state.settings.node_id);
    if !state.is_draining() {
        nodes.push(state.node_stats());
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let mut tenant_connections: HashMap<String, usize> = HashMap::new();
    for node in &nodes {
        for (tenant, n) in &node.tenant_connections {
            *tenant_connections.entry(tenant.clone()).or_default() += n;
        }
    }
    tenant_connections.retain(|_, n| *n > 0);
    let total: usize = nodes.iter().map(|n| n.connections).sum();
    Ok(serde_json::json!({
        "totalTenants": tenant_connections.len(),
        "totalConnections": total,
        "tenantConnections": tenant_connections,
        "nodes": nodes.iter().map(|n| serde_json::json!({
            "id": n.id,
            "connections": n.connections,
            "tenants": n.tenants,
            "startedAt": n.started_at,
            "lastSeen": n.last_seen,
        })).collect::<Vec<_>>(),
    }))
}
