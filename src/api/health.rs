//! Liveness and readiness.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;

use crate::gateway::Node;

/// `GET /healthz`: 200 while the process runs.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /metrics`: Prometheus text format.
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

/// `GET /readyz`: 200 when the engine is connected and subscriptions are in place; 503 while it
/// is not, and while the node drains.
pub async fn readyz(State(node): State<Arc<Node>>) -> (StatusCode, Json<serde_json::Value>) {
    match unready(&node) {
        Some(status) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": status })),
        ),
        None => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "node": node.settings.node_id })),
        ),
    }
}

/// `GET /metrics` on a node: the readiness gauges as of this scrape, then every metric.
pub async fn node_metrics(State(node): State<Arc<Node>>) -> impl axum::response::IntoResponse {
    crate::metrics::readiness(unready(&node).is_none(), node.broker.is_ready());
    metrics().await
}
