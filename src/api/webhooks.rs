//! Webhook endpoints of a tenant (admin key): register, list (secrets redacted), delete, read
//! the delivery log, redeliver.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::admin::tenant_from_path;
use super::error::{ApiError, bounded_param};
use crate::auth::AdminAuth;
use crate::delivery::endpoint::{EMAIL_ENDPOINT, EmailSettings, Webhook, valid_name};
use crate::delivery::ssrf;
use crate::engine::DeliveryStore;
use crate::engine::deliveries::LOG_LEN;
use crate::protocol::EventId;

/// What the webhook routes use: the engine's delivery store and `WEBHOOK_ALLOW_PRIVATE`.
pub struct DeliveryApi {
    /// Endpoints and logs.
    pub store: Arc<dyn DeliveryStore>,
    /// Internal addresses and `http://` allowed.
    pub allow_private: bool,
}

fn endpoint_name(name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::field(
            "invalid_name",
            "name",
            "endpoint names are 1-64 letters, digits, '_', '-', '.'",
        ))
    }
}

fn unknown_endpoint() -> ApiError {
    ApiError::NotFound {
        code: "not_found",
        message: "no such webhook endpoint".into(),
    }
}

/// `PUT /api/admin/tenants/{tenant}/webhooks/{name}`: 201 created, 200 replaced.
pub async fn put_webhook(
    State(api): State<Arc<DeliveryApi>>,
    _admin: AdminAuth,
    Path((tenant, name)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    tenant_from_path(&tenant)?;
    endpoint_name(&name)?;
    let body = body.map_err(ApiError::from_body)?;
    let webhook =
        Webhook::parse(&body).map_err(|e| ApiError::field("invalid_field", e.field, e.message))?;
    ssrf::check_url(&webhook.url, api.allow_private)
        .await
        .map_err(|e| ApiError::field("url_refused", "url", e.to_string()))?;
    let created = api.store.put_webhook(&tenant, &name, &webhook).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(webhook.redacted(&name))))
}

/// `GET /api/admin/tenants/{tenant}/webhooks`: secrets are counted, never shown.
pub async fn list_webhooks(
    State(api): State<Arc<DeliveryApi>>,
    _admin: AdminAuth,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    tenant_from_path(&tenant)?;
    let hooks = api.store.webhooks(&tenant).await?;
    let shown: Vec<Value> = hooks.iter().map(|(name, w)| w.redacted(name)).collect();
    Ok(Json(json!({ "tenantId": tenant, "webhooks": shown })))
}

/// `DELETE /api/admin/tenants/{tenant}/webhooks/{name}`: 204, or 404.
pub async fn delete_webhook(
    State(api): State<Arc<DeliveryApi>>,
    _admin: AdminAuth,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    tenant_from_path(&tenant)?;
    endpoint_name(&name)?;
    if api.store.delete_webhook(&tenant, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(unknown_endpoint())
    }
}

/// `…/deliveries` query.
#[derive(Deserialize)]
pub struct LogQuery {
    limit: Option<String>,
}

/// `GET /api/admin/tenants/{tenant}/webhooks/{name}/deliveries?limit=50`: newest first.
pub async fn deliveries(
    State(api): State<Arc<DeliveryApi>>,
    _admin: AdminAuth,
    Path((tenant, name)): Path<(String, String)>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    tenant_from_path(&tenant)?;
    endpoint_name(&name)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = bounded_param("limit", query.limit.as_deref(), 50, LOG_LEN)?;
    if !api
        .store
        .webhooks(&tenant)
        .await?
        .iter()
        .any(|(n, _)| *n == name)
    {
        return Err(unknown_endpoint());
    }
    let log = api.store.attempts(&tenant, &name, limit).await?;
    Ok(Json(
        json!({ "tenantId": tenant, "endpoint": name, "deliveries": log }),
    ))
}

/// `POST …/webhooks/{name}/deliveries/{eventId}/redeliver`: 202, queued once more.
pub async fn redeliver(
    State(api): State<Arc<DeliveryApi>>,
    _admin: AdminAuth,
    Path((tenant, name, event)): Path<(String, String, String)>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    tenant_from_path(&tenant)?;
    endpoint_name(&name)?;
    let not_found = || ApiError::NotFound {
        code: "not_found",
        message: "no such endpoint, or no such event retained for this tenant".into(),
    };
    let event: EventId = event.parse().map_err(|_| not_found())?;
    if api.store.redeliver(&tenant, &name, event).await? {
        Ok((StatusCode::ACCEPTED, Json(json!({ "queued": true }))))
    } else {
        Err(not_found())
    }
}

/// `PUT /api/admin/tenants/{tenant}/email`: `{"recipients":[…],"minSeverity":"error"}`; 201
/// created, 200 replaced.
pub async fn put_email(
    State(api): State<Arc<DeliveryApi>>,
    _admin: AdminAuth,
    Path(tenant): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<EmailSettings>), ApiError> {
    tenant_from_path(&tenant)?;
    let body = body.map_err(ApiError::from_body)?;
    let settings = EmailSettings::parse(&body)
        .map_err(|e| ApiError::field("invalid_field", e.field, e.message))?;
    let replaced = api.store.put_email(&tenant, Some(&settings)).await?;
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(settings)))
}

fn no_email() -> ApiError {
    ApiError::NotFound {
        code: "not_found",
        message: "this tenant has no email settings".into(),
    }
}

/// `GET /api/admin/tenants/{tenant}/email`.
pub async fn get_email(
    State(api): State<Arc<DeliveryApi>>,
    _admin: AdminAuth,
    Path(tenant): Path<String>,
) -> Result<Json<EmailSettings>, ApiError> {
    tenant_from_path(&tenant)?;
    api.store
        .email(&tenant)
        .await?
        .map(Json)
        .ok_or_else(no_email)
}

/// `DELETE /api/admin/tenants/{tenant}/email`: 204, or 404.
pub async fn delete_email(
    State(api): State<Arc<DeliveryApi>>,
    _admin: AdminAuth,
    Path(tenant): Path<String>,
) -> Result<StatusCode, ApiError> {
    tenant_from_path(&tenant)?;
    if api.store.put_email(&tenant, None).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_email())
    }
}

/// `GET /api/admin/tenants/{tenant}/email/deliveries?limit=50`: messages and digests, newest
/// first.
pub async fn email_deliveries(
    State(api): State<Arc<DeliveryApi>>,
    _admin: AdminAuth,
    Path(tenant): Path<String>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    tenant_from_path(&tenant)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = bounded_param("limit", query.limit.as_deref(), 50, LOG_LEN)?;
    if api.store.email(&tenant).await?.is_none() {
        return Err(no_email());
    }
    let log = api.store.attempts(&tenant, EMAIL_ENDPOINT, limit).await?;
    Ok(Json(json!({ "tenantId": tenant, "deliveries": log })))
}
