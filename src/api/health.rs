//! Liveness and readiness.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::gateway::Node;

/// Liveness: 200 while the process runs.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain"))
)]
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /metrics` where no node runs (a worker, a starting node): Prometheus text format.
pub async fn metrics() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
}

/// Why the node is not ready, if it is not.
fn unready(node: &Node) -> Option<&'static str> {
    if node.is_draining() {
        Some("draining")
    } else if !node.verifier.is_ready() {
        Some("keys_unavailable")
    } else if !node.broker.is_ready() {
        Some("engine_unavailable")
    } else {
        None
    }
}

/// A readiness answer.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`; otherwise `starting`, `draining`, `keys_unavailable` or `engine_unavailable`.
    pub status: &'static str,
    /// This node's id, when ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Readiness: 200 when the engine is connected and subscriptions are in place; 503 while it is
/// not, and while the node drains.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    responses(
        (status = 200, description = "Ready: send traffic.", body = Readiness),
        (status = 503, description = "Not ready, with the reason.", body = Readiness),
    )
)]
pub async fn readyz(State(node): State<Arc<Node>>) -> (StatusCode, Json<Readiness>) {
    match unready(&node) {
        Some(status) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness { status, node: None }),
        ),
        None => (
            StatusCode::OK,
            Json(Readiness {
                status: "ready",
                node: Some(node.settings.node_id.clone()),
            }),
        ),
    }
}

/// Prometheus metrics (text format): the readiness gauges as of this scrape, then every metric.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    responses((status = 200, description = "Prometheus text format 0.0.4.", body = String,
               content_type = "text/plain"))
)]
pub async fn node_metrics(State(node): State<Arc<Node>>) -> impl axum::response::IntoResponse {
    crate::metrics::readiness(unready(&node).is_none(), node.broker.is_ready());
    metrics().await
}
