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

/// `GET /readyz`: 200 when the engine is connected and subscriptions are in place; 503 while it
/// is not, and while the node drains.
pub async fn readyz(State(node): State<Arc<Node>>) -> (StatusCode, Json<serde_json::Value>) {
    if node.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "draining" })),
        )
    } else if !node.verifier.is_ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "keys_unavailable" })),
        )
    } else if !node.broker.is_ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "engine_unavailable" })),
        )
    } else {
        (
            StatusCode::OK,
            Json(json!({ "status": "ready", "node": node.settings.node_id })),
        )
    }
}
