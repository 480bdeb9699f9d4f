//! The notification center's routes: a user's list, read state and preferences (tenant token
//! naming a user) and the tenant's stats (admin key).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::admin::tenant_from_path;
use super::error::{ApiError, bounded_param};
use crate::auth::{AdminAuth, UserAuth};
use crate::gateway::Node;
use crate::metrics;
use crate::notifications::stats::{MAX_DAYS, day_of};
use crate::notifications::{EventFilter, Preferences, ReadChange, ReadState};
use crate::protocol::{EventId, EventType, now_ms};

/// Most items one list request returns.
const MAX_LIMIT: usize = 200;
/// Items the engine hands over per step while a filtered list is collected.
const SCAN_BATCH: usize = 500;
/// Notifications one list request looks at, at most; past it the page is shorter and
/// `nextBefore` says where to continue.
const MAX_SCAN: usize = 5_000;

/// `GET /api/notifications` query parameters, read as text so errors can name them.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    limit: Option<String>,
    before: Option<String>,
    unread: Option<String>,
    types: Option<String>,
    min_severity: Option<String>,
}

fn not_found() -> ApiError {
    ApiError::NotFound {
        code: "not_found",
        message: "no such notification of this tenant".into(),
    }
}

/// An id from a path or body: malformed ones are as unknown as another tenant's.
fn notification_id(text: &str) -> Result<EventId, ApiError> {
    text.parse().map_err(|_| not_found())
}

/// `GET /api/notifications`: newest first, with the user's read flags.
pub async fn list(
    State(node): State<Arc<Node>>,
    auth: UserAuth,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = bounded_param("limit", query.limit.as_deref(), 50, MAX_LIMIT)?;
    let before = query
        .before
        .as_deref()
        .map(|b| {
            b.parse::<EventId>()
                .map_err(|_| ApiError::field("invalid_query", "before", "not an event id"))
        })
        .transpose()?;
    let unread_only = match query.unread.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::field("invalid_query", "unread", "true or false"));
        }
    };
    let filter =
        EventFilter::from_query(query.types.as_deref(), query.min_severity.as_deref(), None)
            .map_err(|e| {
                let field = e.split(':').next().unwrap_or("query").to_owned();
                ApiError::field("invalid_query", field, e)
            })?;

    let store = &node.notifications;
    let mut items: Vec<String> = Vec::new();
    let mut cursor = before;
    let mut scanned = 0;
    let (unread, next_before) = loop {
        let batch = store
            .notifications_before(&auth.tenant, &auth.user, cursor, SCAN_BATCH)
            .await?;
        let count = batch.items.len();
        let mut full = None;
        for (i, (id, payload, read)) in batch.items.into_iter().enumerate() {
            if items.len() == limit {
                full = Some(i < count || batch.more);
                break;
            }
            cursor = Some(id);
            if (unread_only && read) || filter.as_ref().is_some_and(|f| !f.allows_payload(&payload))
            {
                continue;
            }
            items.push(with_read_flag(payload.as_str(), read));
        }
        scanned += count;
        match full {
            Some(more) => break (batch.unread, cursor.filter(|_| more)),
            None if items.len() == limit && batch.more => break (batch.unread, cursor),
            None if !batch.more => break (batch.unread, None),
            None if scanned >= MAX_SCAN => break (batch.unread, cursor),
            None => {}
        }
    };
    metrics::notification_listed();
    let next = next_before.map_or("null".to_owned(), |id| format!("\"{id}\""));
    // The stored envelopes are spliced in as they are: no parse and re-encode per item.
    let body = format!(
        "{{\"items\":[{}],\"unreadCount\":{unread},\"nextBefore\":{next}}}",
        items.join(",")
    );
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// An envelope with `"read": <flag>` added as its last field.
fn with_read_flag(envelope: &str, read: bool) -> String {
    let body = envelope.trim_end();
    let body = body.strip_suffix('}').unwrap_or(body);
    format!("{body},\"read\":{read}}}")
}

async fn change(node: &Node, auth: &UserAuth, change: ReadChange) -> Result<Json<Value>, ApiError> {
    let state: ReadState = node
        .notifications
        .change_read_state(&auth.tenant, &auth.user, change)
        .await?
        .ok_or_else(not_found)?;
    metrics::notification_read(match change {
        ReadChange::Read(_) => "read",
        ReadChange::Unread(_) => "unread",
        ReadChange::ReadAll(_) => "read_all",
    });
    Ok(Json(json!({ "unreadCount": state.unread })))
}

/// `POST /api/notifications/{id}/read`.
pub async fn read(
    State(node): State<Arc<Node>>,
    auth: UserAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    change(&node, &auth, ReadChange::Read(notification_id(&id)?)).await
}

/// `POST /api/notifications/{id}/unread`.
pub async fn unread(
    State(node): State<Arc<Node>>,
    auth: UserAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    change(&node, &auth, ReadChange::Unread(notification_id(&id)?)).await
}

/// `POST /api/notifications/read-all`: body `{}` or `{"upTo": "<id>"}` (or none).
pub async fn read_all(
    State(node): State<Arc<Node>>,
    auth: UserAuth,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(ApiError::from_body)?;
    let up_to = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::field("invalid_json", "body", format!("invalid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(ApiError::field("invalid_body", "body", "must be an object"));
        };
        let mut up_to = None;
        for (field, value) in map {
            match (field.as_str(), value) {
                ("upTo", Value::String(id)) => up_to = Some(notification_id(&id)?),
                ("upTo", Value::Null) => {}
                ("upTo", _) => {
                    return Err(ApiError::field("invalid_field", "upTo", "an event id"));
                }
                (other, _) => {
                    return Err(ApiError::field("invalid_field", other, "unknown field"));
                }
            }
        }
        up_to
    };
    change(&node, &auth, ReadChange::ReadAll(up_to)).await
}

/// `GET /api/notifications/preferences`.
pub async fn get_preferences(
    State(node): State<Arc<Node>>,
    auth: UserAuth,
) -> Result<Json<Preferences>, ApiError> {
    let summary = node
        .notifications
        .user_summary(&auth.tenant, &auth.user)
        .await?;
    Ok(Json(
        summary
            .preferences
            .map(|p| p.preferences)
            .unwrap_or_default(),
    ))
}

/// `PUT /api/notifications/preferences`: replaces the user's preferences, live on every node.
pub async fn put_preferences(
    State(node): State<Arc<Node>>,
    auth: UserAuth,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Preferences>, ApiError> {
    let body = body.map_err(ApiError::from_body)?;
    let preferences = Preferences::parse(&body)
        .map_err(|e| ApiError::field("invalid_field", e.field, e.message))?;
    node.notifications
        .set_preferences(&auth.tenant, &auth.user, &preferences)
        .await?;
    metrics::notification_preferences_set();
    Ok(Json(preferences))
}

/// `GET /api/admin/tenants/{tenant}/notifications/stats` query.
#[derive(Deserialize)]
pub struct StatsQuery {
    days: Option<String>,
}

/// `GET /api/admin/tenants/{tenant}/notifications/stats?days=30`: per event type.
pub async fn stats(
    State(node): State<Arc<Node>>,
    _admin: AdminAuth,
    Path(tenant): Path<String>,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    tenant_from_path(&tenant)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let days = bounded_param("days", query.days.as_deref(), 30, MAX_DAYS as usize)? as u32;
    let first_day = day_of(now_ms()).saturating_sub(u64::from(days) - 1);
    let figures = node
        .notifications
        .notification_stats(&tenant, first_day)
        .await?;
    let mut types = BTreeMap::new();
    for t in EventType::ALL {
        let s = figures.iter().find(|s| s.event_type == t);
        types.insert(
            t.as_str(),
            json!({
                "published": s.map_or(0, |s| s.published),
                "delivered": s.map_or(0, |s| s.delivered),
                "readBy": s.map_or(0, |s| s.read_by),
                "medianSecondsToRead": s.and_then(|s| s.median_seconds_to_read),
            }),
        );
    }
    Ok(Json(
        json!({ "tenantId": tenant, "days": days, "types": types }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_flags_are_spliced_into_envelopes() {
        let out = with_read_flag(r#"{"id":"1-0","type":"license_updated"}"#, true);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["read"], true);
        assert_eq!(v["id"], "1-0");
    }
}
