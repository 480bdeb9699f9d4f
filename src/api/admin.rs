//! Admin routes: publish an event, cluster-wide stats.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;
use super::openapi::{
    Conflict, EventEnvelope, Invalid, NotAdmin, TooLarge, Unauthenticated, Unavailable,
};
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

/// The `{tenant}` path parameter.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantPath {
    /// The tenant id: 1–128 visible ASCII characters without braces.
    #[param(
        min_length = 1,
        max_length = 128,
        pattern = r"^[!-z|~]+$",
        example = "acme"
    )]
    pub tenant: String,
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

/// What `POST …/events` accepts (parsed by hand, so errors can name the field).
#[derive(Serialize, ToSchema)]
#[schema(
    as = PublishRequest,
    example = json!({"type": "usage_limit_warning",
                     "data": {"metric": "users", "used": 85, "limit": 100, "percent": 85.0}})
)]
pub struct PublishSchema {
    /// The event type; its severity follows from it.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// Type-specific fields; `null` or absent for none.
    #[schema(value_type = Option<Object>)]
    pub data: Option<Map<String, Value>>,
}

/// Publish one event to every connection of the tenant, on every node.
///
/// With an `Idempotency-Key`, a retry with the same key and body answers the first publish
/// (200, `Idempotent-Replayed: true`) instead of publishing again.
#[utoipa::path(
    post,
    path = "/api/admin/tenants/{tenant}/events",
    tag = "admin",
    operation_id = "publishEvent",
    security(("adminKey" = []), ("adminApiKey" = [])),
    params(
        TenantPath,
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 128, pattern = r"^[ -~]+$",
         description = "Makes the publish safe to retry: 1–128 printable ASCII characters, kept `IDEMPOTENCY_TTL_SECS`."),
    ),
    request_body = PublishSchema,
    responses(
        (status = 201, description = "Published: the full envelope.", body = EventEnvelope),
        (status = 200, description = "A retry of an earlier publish with this key: its envelope.",
         body = EventEnvelope, headers(("Idempotent-Replayed" = String, description = "`true`"))),
        Invalid, Unauthenticated, NotAdmin, TooLarge, Conflict, Unavailable,
    )
)]
pub async fn publish_event(
    State(node): State<Arc<Node>>,
    _admin: AdminAuth,
    Path(TenantPath { tenant }): Path<TenantPath>,
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

/// Body of `POST /api/admin/tenants/{tenant}/disconnect` (optional).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = DisconnectRequest)]
pub struct DisconnectBody {
    /// Only this user's connections; absent for all of the tenant's.
    #[serde(rename = "userId", default)]
    #[schema(min_length = 1, max_length = 256)]
    user_id: Option<String>,
}

/// The answer to a request the nodes carry out on their own.
#[derive(Serialize, ToSchema)]
pub struct Requested {
    /// Always true.
    pub requested: bool,
}

/// Close the tenant's connections (or one user's) on every node, with 1008 `revoked`.
///
/// Answers 202: each node acts on its own as the request reaches it.
#[utoipa::path(
    post,
    path = "/api/admin/tenants/{tenant}/disconnect",
    tag = "admin",
    operation_id = "disconnectTenant",
    security(("adminKey" = []), ("adminApiKey" = [])),
    params(TenantPath),
    request_body(content = Option<DisconnectBody>, description = "Optional: `{}` or no body for every connection."),
    responses(
        (status = 202, description = "Requested on every node.", body = Requested),
        Invalid, Unauthenticated, NotAdmin, TooLarge, Unavailable,
    )
)]
pub async fn disconnect(
    State(node): State<Arc<Node>>,
    _admin: AdminAuth,
    Path(TenantPath { tenant }): Path<TenantPath>,
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
        .is_some_and(|u| u.is_empty() || u.chars().count() > 256)
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
    Ok((StatusCode::ACCEPTED, Json(Requested { requested: true })).into_response())
}

/// Connections and tenants across all live nodes (the seed's `getStats`, cluster-wide).
///
/// A node that died drops out within 30 s.
#[utoipa::path(
    get,
    path = "/api/admin/stats",
    tag = "admin",
    operation_id = "clusterStats",
    security(("adminKey" = []), ("adminApiKey" = [])),
    responses(
        (status = 200, description = "Live figures.", body = ClusterStats),
        Unauthenticated, NotAdmin, Unavailable,
    )
)]
pub async fn stats(
    State(node): State<Arc<Node>>,
    _admin: AdminAuth,
) -> Result<Json<ClusterStats>, ApiError> {
    let mut nodes = node.registry.nodes().await?;
    // This node's own entry is always live, not as of its last refresh.
    nodes.retain(|n| n.id != node.settings.node_id);
    if !node.is_draining() {
        nodes.push(node.stats());
    }
    Ok(Json(cluster_stats(nodes)))
}

/// `GET /api/admin/stats`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStats {
    /// Tenants with at least one connection.
    pub total_tenants: usize,
    /// Connections on all nodes.
    pub total_connections: usize,
    /// Connections per tenant (tenants with at least one).
    pub tenant_connections: BTreeMap<String, usize>,
    /// Every live node, by id.
    pub nodes: Vec<NodeEntry>,
}

/// One node in [`ClusterStats`].
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeEntry {
    /// `NODE_ID`.
    pub id: String,
    /// Its connections.
    pub connections: usize,
    /// Tenants it serves.
    pub tenants: usize,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Its last heartbeat (RFC 3339).
    pub last_seen: String,
}

/// Live stats across `nodes`, in the seed's `getStats` shape plus the node list.
fn cluster_stats(mut nodes: Vec<NodeStats>) -> ClusterStats {
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let mut tenant_connections: BTreeMap<String, usize> = BTreeMap::new();
    for node in &nodes {
        for (tenant, n) in &node.tenant_connections {
            *tenant_connections.entry(tenant.clone()).or_default() += n;
        }
    }
    tenant_connections.retain(|_, n| *n > 0);
    let total: usize = nodes.iter().map(|n| n.connections).sum();
    ClusterStats {
        total_tenants: tenant_connections.len(),
        total_connections: total,
        tenant_connections,
        nodes: nodes
            .into_iter()
            .map(|n| NodeEntry {
                id: n.id,
                connections: n.connections,
                tenants: n.tenants,
                started_at: n.started_at,
                last_seen: n.last_seen,
            })
            .collect(),
    }
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
        assert_eq!(stats.total_connections, 6);
        assert_eq!(stats.total_tenants, 2);
        assert_eq!(stats.tenant_connections["acme"], 3);
        assert!(!stats.tenant_connections.contains_key("idle"));
        assert_eq!(stats.nodes[0].id, "a");
    }
}
