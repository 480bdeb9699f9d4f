//! HTTP routes besides the streams: health, readiness, the license view, the notification
//! center, the admin API and the OpenAPI document of them all.
//! Generic over the router state: each handler extracts only the part it uses.

pub mod admin;
pub mod error;
pub mod health;
pub mod license;
pub mod notifications;
pub mod openapi;
pub mod tickets;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::routing::get;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
/// stats, publish), the validator (license changes), the verifier and the admin keys. Each is
/// registered from its `#[utoipa::path]`, which also puts it in the OpenAPI document.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Node>: FromRef<S>,
    Arc<Validator>: FromRef<S>,
    Arc<Verifier>: FromRef<S>,
    Arc<AdminKeys>: FromRef<S>,
    Arc<webhooks::DeliveryApi>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::node_metrics))
        .routes(routes!(health::readyz))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(admin::publish_event))
        .routes(routes!(admin::stats))
        .routes(routes!(admin::disconnect))
        .routes(routes!(license::get_license))
        .routes(routes!(tickets::connect_ticket))
        .routes(routes!(license::put_license, license::delete_license))
        .routes(routes!(license::put_usage))
        .routes(routes!(notifications::list))
        .routes(routes!(notifications::read_all))
        .routes(routes!(
            notifications::get_preferences,
            notifications::put_preferences
        ))
        .routes(routes!(notifications::read))
        .routes(routes!(notifications::unread))
        .routes(routes!(notifications::stats))
        .routes(routes!(webhooks::list_webhooks))
        .routes(routes!(
            webhooks::put_email,
            webhooks::get_email,
            webhooks::delete_email
        ))
        .routes(routes!(webhooks::email_deliveries))
        .routes(routes!(webhooks::put_webhook, webhooks::delete_webhook))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(webhooks::redeliver))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}
