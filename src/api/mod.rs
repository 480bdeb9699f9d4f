//! HTTP routes besides the WebSocket: health, readiness, and the admin API.

pub mod admin;
pub mod error;
pub mod health;
pub mod license;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};

use crate::gateway::AppState;

/// Largest accepted request body (SPEC §4: larger ones get 413).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Liveness and metrics, which need no node state: served by the gateway and by a worker with
/// `METRICS_ADDR`.
pub fn probe_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(health::metrics))
}

/// The API routes, to merge into the node's router.
pub fn routes() -> Router<AppState> {
    probe_routes()
        .route("/readyz", get(health::readyz))
        .route(
            "/api/admin/tenants/{tenant}/events",
            post(admin::publish_event),
        )
        .route("/api/admin/stats", get(admin::stats))
        .route("/api/license", get(license::get_license))
        .route(
            "/api/admin/tenants/{tenant}/license",
            put(license::put_license).delete(license::delete_license),
        )
        .route("/api/admin/tenants/{tenant}/usage", put(license::put_usage))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}
