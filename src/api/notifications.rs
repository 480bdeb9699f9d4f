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
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::admin::{TenantPath, tenant_from_path};
use super::error::{ApiError, bounded_param};
use super::openapi::{
    Invalid, NoUser, NotAdmin, NotFound, Notification, TooLarge, Unauthenticated, Unavailable,
};
use crate::auth::{AdminAuth, UserAuth};
use crate::gateway::Node;
use crate::metrics;
use crate::notifications::stats::{MAX_DAYS, day_of};
use crate::notifications::{EventFilter, Preferences, ReadChange, ReadState};
use crate::protocol::{EventId, EventType, Severity, now_ms};

/// Most items one list request returns.
const MAX_LIMIT: usize = 200;
/// Items the engine hands over per step while a filtered list is collected.
const SCAN_BATCH: usize = 500;
/// Notifications one list request looks at, at most; past it the page is shorter and
/// `nextBefore` says where to continue.
const MAX_SCAN: usize = 5_000;

/// `GET /api/notifications` query parameters, read as text so errors can name them.
#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Most items in the page: 1–200 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// Only notifications older than this id (`nextBefore` of the previous page).
    #[param(pattern = r"^[0-9]{1,19}-[0-9]{1,19}$")]
    before: Option<String>,
    /// Only unread ones.
    #[param(value_type = Option<bool>)]
    unread: Option<String>,
    /// Only these types, comma-separated.
    types: Option<String>,
    /// Only this severity and above.
    #[param(value_type = Option<Severity>)]
    min_severity: Option<String>,
}

/// A page of the user's notifications.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationPage {
    /// Newest first.
    pub items: Vec<Notification>,
    /// The user's unread notifications in all (not only this page).
    pub unread_count: u64,
    /// Where the next page starts (`?before=`), or `null` at the end.
    pub next_before: Option<String>,
}

/// The user's unread count after a change.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnreadCount {
    /// Unread notifications left.
    pub unread_count: u64,
}

/// `POST /api/notifications/read-all` body (optional).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = ReadAllRequest)]
pub struct ReadAllSchema {
    /// Only up to this id (inclusive); absent or `null` for everything.
    pub up_to: Option<String>,
}

/// `PUT /api/notifications/preferences` body: absent fields take their defaults (a PUT
/// replaces the whole object).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = PreferencesRequest)]
pub struct PreferencesSchema {
    /// Types not delivered (errors always are).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub muted_types: Option<Vec<EventType>>,
    /// Events below it are not delivered (default `info`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub min_severity: Option<Severity>,
    /// Events naming a module are delivered only for these (up to 50); `null` for every one.
    pub modules: Option<Vec<String>>,
}

/// The `{id}` of a notification.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct NotificationPath {
    /// Its event id; a malformed one is as unknown as another tenant's (404).
    pub id: String,
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

/// The user's notifications, newest first, with their read flags.
///
/// A filtered page looks at 5,000 notifications at most; it may then be shorter than `limit`,
/// and `nextBefore` says where to continue.
#[utoipa::path(
    get,
    path = "/api/notifications",
    tag = "tenant",
    operation_id = "listNotifications",
    security(("tenantToken" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page.", body = NotificationPage),
        Invalid, Unauthenticated, NoUser, Unavailable,
    )
)]
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

async fn change(
    node: &Node,
    auth: &UserAuth,
    change: ReadChange,
) -> Result<Json<UnreadCount>, ApiError> {
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
    Ok(Json(UnreadCount {
        unread_count: state.unread,
    }))
}

/// Mark one notification read, on every tab of the user.
#[utoipa::path(
    post,
    path = "/api/notifications/{id}/read",
    tag = "tenant",
    operation_id = "markRead",
    security(("tenantToken" = [])),
    params(NotificationPath),
    responses(
        (status = 200, description = "Marked.", body = UnreadCount),
        Unauthenticated, NoUser, NotFound, Unavailable,
    )
)]
pub async fn read(
    State(node): State<Arc<Node>>,
    auth: UserAuth,
    Path(NotificationPath { id }): Path<NotificationPath>,
) -> Result<Json<UnreadCount>, ApiError> {
    change(&node, &auth, ReadChange::Read(notification_id(&id)?)).await
}

/// Mark one notification unread again.
#[utoipa::path(
    post,
    path = "/api/notifications/{id}/unread",
    tag = "tenant",
    operation_id = "markUnread",
    security(("tenantToken" = [])),
    params(NotificationPath),
    responses(
        (status = 200, description = "Marked.", body = UnreadCount),
        Unauthenticated, NoUser, NotFound, Unavailable,
    )
)]
pub async fn unread(
    State(node): State<Arc<Node>>,
    auth: UserAuth,
    Path(NotificationPath { id }): Path<NotificationPath>,
) -> Result<Json<UnreadCount>, ApiError> {
    change(&node, &auth, ReadChange::Unread(notification_id(&id)?)).await
}

/// Mark every notification read, or every one up to an id.
#[utoipa::path(
    post,
    path = "/api/notifications/read-all",
    tag = "tenant",
    operation_id = "markAllRead",
    security(("tenantToken" = [])),
    request_body(content = Option<ReadAllSchema>, description = "Optional: `{}` or no body for everything."),
    responses(
        (status = 200, description = "Marked.", body = UnreadCount),
        Invalid, Unauthenticated, NoUser, NotFound, TooLarge, Unavailable,
    )
)]
pub async fn read_all(
    State(node): State<Arc<Node>>,
    auth: UserAuth,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<UnreadCount>, ApiError> {
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

/// The user's delivery preferences.
#[utoipa::path(
    get,
    path = "/api/notifications/preferences",
    tag = "tenant",
    operation_id = "getPreferences",
    security(("tenantToken" = [])),
    responses(
        (status = 200, description = "The preferences (the defaults if never set).", body = Preferences),
        Unauthenticated, NoUser, Unavailable,
    )
)]
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

/// Replace the user's delivery preferences, live on every node.
#[utoipa::path(
    put,
    path = "/api/notifications/preferences",
    tag = "tenant",
    operation_id = "putPreferences",
    security(("tenantToken" = [])),
    request_body = PreferencesSchema,
    responses(
        (status = 200, description = "Stored.", body = Preferences),
        Invalid, Unauthenticated, NoUser, TooLarge, Unavailable,
    )
)]
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
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// The window, in days up to today: 1–366 (default 30).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 366)]
    days: Option<String>,
}

/// A tenant's notification figures over a window.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationStats {
    /// The tenant.
    pub tenant_id: String,
    /// The window in days.
    pub days: u32,
    /// Every event type's figures.
    pub types: BTreeMap<&'static str, TypeFigures>,
}

/// One type's figures in [`NotificationStats`].
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TypeFigures {
    /// Notifications published.
    pub published: u64,
    /// Connections they reached.
    pub delivered: u64,
    /// Distinct users who read at least one (approximate on Redis).
    pub read_by: u64,
    /// Median seconds from publish to an explicit read, over the sampled reads.
    pub median_seconds_to_read: Option<f64>,
}

/// Per event type: published, delivered, read by how many users, how fast.
#[utoipa::path(
    get,
    path = "/api/admin/tenants/{tenant}/notifications/stats",
    tag = "admin",
    operation_id = "notificationStats",
    security(("adminKey" = []), ("adminApiKey" = [])),
    params(TenantPath, StatsQuery),
    responses(
        (status = 200, description = "The figures.", body = NotificationStats),
        Invalid, Unauthenticated, NotAdmin, Unavailable,
    )
)]
pub async fn stats(
    State(node): State<Arc<Node>>,
    _admin: AdminAuth,
    Path(TenantPath { tenant }): Path<TenantPath>,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<NotificationStats>, ApiError> {
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
            TypeFigures {
                published: s.map_or(0, |s| s.published),
                delivered: s.map_or(0, |s| s.delivered),
                read_by: s.map_or(0, |s| s.read_by),
                median_seconds_to_read: s.and_then(|s| s.median_seconds_to_read),
            },
        );
    }
    Ok(Json(NotificationStats {
        tenant_id: tenant,
        days,
        types,
    }))
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
