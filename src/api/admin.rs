//! Admin routes: publish an event, cluster-wide stats.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::auth::{AdminAuth, valid_tenant_id};
use crate::engine::{Applied, Control, EngineError, IdempotencyKey, NodeStats, Published};
use crate::gateway::Node;
use crate::protocol::{EventDraft, EventType};

/// Body of `POST /api/admin/tenants/{tenant}/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    #[serde(rename = "type", default)]
    event_type: Option<String>,
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
    let event_type = body
        .event_type
        .ok_or_else(|| ApiError::field("missing_field", "type", "required"))?;
    let event_type: EventType =
        event_type
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
    State(node): State<Arc<Node>>,
    _admin: AdminAuth,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    tenant_from_path(&tenant)?;
    let key = idempotency_header(&headers)?;
    let body = body.map_err(ApiError::from_body)?;
    let draft = parse_publish(&tenant, &body)?;
    let Some(key) = key else {
        let published = node.broker.publish(&draft).await?;
        tracing::info!(%tenant, event_type = %draft.event_type, id = %published.id, "event published via API");
        return Ok(envelope_response(StatusCode::CREATED, &published, false));
    };
    let key = IdempotencyKey {
        key: key.to_owned(),
        fingerprint: draft.fingerprint(),
        ttl: node.settings.idempotency_ttl,
    };
    match node.broker.publish_idempotent(&draft, &key).await? {
        Applied::Done(published) if published.len() == 1 => {
            let published = &published[0];
            tracing::info!(%tenant, event_type = %draft.event_type, id = %published.id, "event published via API (idempotency key)");
            Ok(envelope_response(StatusCode::CREATED, published, false))
        }
        Applied::Replayed(published) => {
            tracing::info!(%tenant, id = %published.id, "idempotent publish replayed");
            Ok(envelope_response(StatusCode::OK, &published, true))
        }
        Applied::KeyReused => Err(ApiError::Unprocessable {
            code: "idempotency_key_reused",
            message: "this Idempotency-Key was used for a different event of this tenant".into(),
        }),
        other => {
            Err(EngineError::Protocol(format!("idempotent publish answered {other:?}")).into())
        }
    }
}

/// The `Idempotency-Key` header, if sent: 1–128 printable ASCII characters.
fn idempotency_header(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if IdempotencyKey::valid(key) => Ok(Some(key)),
        _ => Err(ApiError::field(
            "invalid_header",
            IDEMPOTENCY_KEY,
            "Idempotency-Key must be 1-128 printable ASCII characters",
        )),
    }
}

/// The header of a publisher's idempotency key.
const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// A publish answer: the envelope, and on a replay `Idempotent-Replayed: true`.
fn envelope_response(status: StatusCode, published: &Published, replayed: bool) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        published.payload.as_str().to_owned(),
    )
        .into_response();
    if replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    response
}

/// Body of `POST /api/admin/tenants/{tenant}/disconnect`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    #[serde(rename = "userId", default)]
    user_id: Option<String>,
}

/// `POST /api/admin/tenants/{tenant}/disconnect`: closes the tenant's connections (or one
/// user's) on every node with 1008 `revoked`; 202, since the nodes act on their own.
pub async fn disconnect(
    State(node): State<Arc<Node>>,
    _admin: AdminAuth,
    Path(tenant): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    tenant_from_path(&tenant)?;
    let body = body.map_err(ApiError::from_body)?;
    let body: DisconnectBody = if body.is_empty() {
        DisconnectBody { user_id: None }
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("invalid_body", format!("invalid JSON body: {e}")))?
    };
    if body
        .user_id
        .as_deref()
        .is_some_and(|u| u.is_empty() || u.len() > 256)
    {
        return Err(ApiError::field(
            "invalid_user",
            "userId",
            "userId is 1-256 characters",
        ));
    }
    let control = Control::Disconnect {
        user: body.user_id.clone(),
    };
    node.broker.publish_control(&tenant, &control).await?;
    tracing::info!(%tenant, user = body.user_id.as_deref(), "disconnect requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"requested": true})),
    )
        .into_response())
}

/// `GET /api/admin/stats`: connections and tenants across all live nodes.
pub async fn stats(
    State(node): State<Arc<Node>>,
    _admin: AdminAuth,
) -> Result<Json<Value>, ApiError> {
    let mut nodes = node.registry.nodes().await?;
    // This node's own entry is always live, not as of its last refresh.
    nodes.retain(|n| n.id != node.settings.node_id);
    if !node.is_draining() {
        nodes.push(node.stats());
    }
    Ok(Json(cluster_stats(nodes)))
}

/// Live stats across `nodes`, in the seed's `getStats` shape plus the node list.
fn cluster_stats(mut nodes: Vec<NodeStats>) -> Value {
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let mut tenant_connections: BTreeMap<String, usize> = BTreeMap::new();
    for node in &nodes {
        for (tenant, n) in &node.tenant_connections {
            *tenant_connections.entry(tenant.clone()).or_default() += n;
        }
    }
    tenant_connections.retain(|_, n| *n > 0);
    let total: usize = nodes.iter().map(|n| n.connections).sum();
    serde_json::json!({
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, tenants: &[(&str, usize)]) -> NodeStats {
        let tenant_connections: BTreeMap<String, usize> =
            tenants.iter().map(|(t, n)| (t.to_string(), *n)).collect();
        NodeStats {
            id: id.into(),
            connections: tenant_connections.values().sum(),
            tenants: tenant_connections.len(),
            started_at: "s".into(),
            last_seen: "l".into(),
            tenant_connections,
        }
    }

    /// Invariant: stats add up every node's connections per tenant, and count only tenants
    /// that have at least one.
    #[test]
    fn cluster_stats_sum_tenants_across_nodes() {
        let stats = cluster_stats(vec![
            node("b", &[("acme", 2), ("idle", 0)]),
            node("a", &[("acme", 1), ("globex", 3)]),
        ]);
        assert_eq!(stats["totalConnections"], 6);
        assert_eq!(stats["totalTenants"], 2);
        assert_eq!(stats["tenantConnections"]["acme"], 3);
        assert!(stats["tenantConnections"].get("idle").is_none());
        assert_eq!(stats["nodes"][0]["id"], "a");
    }
}
