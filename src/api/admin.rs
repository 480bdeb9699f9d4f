//! Admin routes: publish an event, cluster-wide stats.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::auth::{AdminAuth, valid_tenant_id};
use crate::gateway::{AppState, cluster_stats};
use crate::protocol::{EventDraft, EventType};

/// Body of `POST /api/admin/tenants/{tenant}/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    data: Option<Value>,
}

/// Checks a tenant id taken from a path.
pub fn tenant_from_path(tenant: &str) -> Result<(), ApiError> {
    if valid_tenant_id(tenant) {
        Ok(())
    } else {
        Err(ApiError::field(
            "invalid_tenant",
            "tenant",
            "tenant ids are 1-128 visible ASCII characters without braces",
        ))
    }
}

/// Validates a publish request into a draft: known type, `data` an object.
pub fn parse_publish(tenant: &str, body: &[u8]) -> Result<EventDraft, ApiError> {
    let body: PublishBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("invalid JSON body: {e}")))?;
    let event_type: EventType =
        body.event_type
            .parse()
            .map_err(|e: crate::protocol::UnknownEventType| {
                ApiError::field("unknown_event_type", "type", e.to_string())
            })?;
    let data = match body.data {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(ApiError::field(
                "invalid_data",
                "data",
                "data must be a JSON object",
            ));
        }
    };
    Ok(EventDraft::new(tenant, event_type, data))
}

/// `POST /api/admin/tenants/{tenant}/events`: publish one event; 201 with the full envelope.
pub async fn publish_event(
    State(state): State<AppState>,
    _admin: AdminAuth,
    Path(tenant): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    tenant_from_path(&tenant)?;
    let body = body.map_err(ApiError::from_body)?;
    let draft = parse_publish(&tenant, &body)?;
    let published = state.engine.publish(&draft).await?;
    tracing::info!(%tenant, event_type = %draft.event_type, id = %published.id, "event published via API");
    Ok((
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        published.payload.as_str().to_owned(),
    )
        .into_response())
}

/// `GET /api/admin/stats`: connections and tenants across all live nodes.
pub async fn stats(
    State(state): State<AppState>,
    _admin: AdminAuth,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(cluster_stats(&state).await?))
}
