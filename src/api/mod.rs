//! HTTP routes besides the WebSocket: health, readiness, the license view, the notification
//! center and the admin API.
//! Generic over the router state: each handler extracts only the part it uses.

pub mod admin;
pub mod error;
pub mod health;
pub mod license;
pub mod notifications;
pub mod tickets;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::routing::{get, post, put};

use crate::auth::{AdminKeys, Verifier};
use crate::gateway::Node;
use crate::worker::Validator;

/// Largest accepted request body (larger ones get 413).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Liveness and metrics, which need no node state: served by the gateway and by a worker with
/// `METRICS_ADDR`.
pub fn probe_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(health::metrics))
}

/// The API routes, for any router state that can hand out what they use: the node (readiness,
/// stats, publish), the validator (license changes), the verifier and the admin keys.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Node>: FromRef<S>,
    Arc<Validator>: FromRef<S>,
    Arc<Verifier>: FromRef<S>,
    Arc<AdminKeys>: FromRef<S>,
    Arc<webhooks::DeliveryApi>: FromRef<S>,
{
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(health::node_metrics))
        .route("/readyz", get(health::readyz))
        .route(
            "/api/admin/tenants/{tenant}/events",
            post(admin::publish_event),
        )
        .route("/api/admin/stats", get(admin::stats))
        .route(
            "/api/admin/tenants/{tenant}/disconnect",
            post(admin::disconnect),
        )
        .route("/api/license", get(license::get_license))
        .route("/api/connect-ticket", post(tickets::connect_ticket))
        .route(
            "/api/admin/tenants/{tenant}/license",
            put(license::put_license).delete(license::delete_license),
        )
        .route("/api/admin/tenants/{tenant}/usage", put(license::put_usage))
        .route("/api/notifications", get(notifications::list))
        .route("/api/notifications/read-all", post(notifications::read_all))
        .route(
            "/api/notifications/preferences",
            get(notifications::get_preferences).put(notifications::put_preferences),
        )
        .route("/api/notifications/{id}/read", post(notifications::read))
        .route(
            "/api/notifications/{id}/unread",
            post(notifications::unread),
        )
        .route(
            "/api/admin/tenants/{tenant}/notifications/stats",
            get(notifications::stats),
        )
        .route(
            "/api/admin/tenants/{tenant}/webhooks",
            get(webhooks::list_webhooks),
        )
        .route(
            "/api/admin/tenants/{tenant}/email",
            put(webhooks::put_email)
                .get(webhooks::get_email)
                .delete(webhooks::delete_email),
        )
        .route(
            "/api/admin/tenants/{tenant}/email/deliveries",
            get(webhooks::email_deliveries),
        )
        .route(
            "/api/admin/tenants/{tenant}/webhooks/{name}",
            put(webhooks::put_webhook).delete(webhooks::delete_webhook),
        )
        .route(
            "/api/admin/tenants/{tenant}/webhooks/{name}/deliveries",
            get(webhooks::deliveries),
        )
        .route(
            "/api/admin/tenants/{tenant}/webhooks/{name}/deliveries/{event}/redeliver",
            post(webhooks::redeliver),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}
