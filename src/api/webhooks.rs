//! Webhook endpoints of a tenant (admin key): register, list (secrets redacted), delete, read
//! the delivery log, redeliver.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::admin::{TenantPath, tenant_from_path};
use super::error::{ApiError, bounded_param};
use super::openapi::{Invalid, NotAdmin, NotFound, TooLarge, Unauthenticated, Unavailable};
use crate::auth::AdminAuth;
use crate::delivery::endpoint::{EMAIL_ENDPOINT, EmailSettings, Webhook, WebhookView, valid_name};
use crate::delivery::ssrf;
use crate::engine::DeliveryStore;
use crate::engine::deliveries::{Attempt, LOG_LEN};
use crate::protocol::{EventId, EventType, Severity};

/// What the webhook routes use: the engine's delivery store and `WEBHOOK_ALLOW_PRIVATE`.
pub struct DeliveryApi {
    /// Endpoints and logs.
    pub store: Arc<dyn DeliveryStore>,
    /// Internal addresses and `http://` allowed.
    pub allow_private: bool,
}

/// The `{tenant}` and `{name}` of an endpoint.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EndpointPath {
    /// The tenant id: 1–128 visible ASCII characters without braces.
    #[param(
        min_length = 1,
        max_length = 128,
        pattern = r"^[!-z|~]+$",
        example = "acme"
    )]
    pub tenant: String,
    /// The endpoint's name: 1–64 letters, digits, `_`, `-`, `.`.
    #[param(
        min_length = 1,
        max_length = 64,
        pattern = r"^[A-Za-z0-9_.-]+$",
        example = "ops"
    )]
    pub name: String,
}

/// `PUT …/webhooks/{name}` body (parsed by hand, so errors can name the field).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = WebhookRequest, example = json!({
    "url": "https://hooks.example.com/license",
    "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "types": ["license_expired", "usage_limit_exceeded"], "minSeverity": "warning"
}))]
pub struct WebhookSchema {
    /// `https://` on a public address (`http://` and internal ones only with
    /// `WEBHOOK_ALLOW_PRIVATE`); 1–2048 characters.
    #[schema(min_length = 1, max_length = 2048, format = "uri")]
    pub url: String,
    /// A `whsec_` secret (Standard Webhooks), or a list of 1–3 for rotation: each signs.
    pub secret: SecretSchema,
    /// Only these types (`null` or absent: every type).
    pub types: Option<Vec<EventType>>,
    /// This severity and above (default `info`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub min_severity: Option<Severity>,
    /// Default true.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub enabled: Option<bool>,
}

/// One signing secret, or several during a rotation.
// Described, not built: `Webhook::parse` reads the body by hand to name the field at fault.
#[allow(dead_code)]
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[schema(as = WebhookSecret)]
pub enum SecretSchema {
    /// `whsec_` and base64 of 24–64 bytes.
    One(String),
    /// 1–3 of them.
    Several(Vec<String>),
}

/// `PUT …/email` body.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = EmailRequest, example = json!({"recipients": ["ops@acme.example"], "minSeverity": "error"}))]
pub struct EmailSchema {
    /// 1–20 addresses.
    #[schema(min_items = 1, max_items = 20)]
    pub recipients: Vec<String>,
    /// This severity and above (default `error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub min_severity: Option<Severity>,
}

/// A tenant's endpoints.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookList {
    /// The tenant.
    pub tenant_id: String,
    /// Its endpoints, by name.
    pub webhooks: Vec<WebhookView>,
}

/// An endpoint's delivery log.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryLog {
    /// The tenant.
    pub tenant_id: String,
    /// The endpoint (absent for email).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Attempts, newest first.
    pub deliveries: Vec<Attempt>,
}

/// The answer to a redelivery request.
#[derive(Serialize, ToSchema)]
pub struct Queued {
    /// Always true.
    pub queued: bool,
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

/// Register (or replace) a webhook endpoint of the tenant.
#[utoipa::path(
    put,
    path = "/api/admin/tenants/{tenant}/webhooks/{name}",
    tag = "admin",
    operation_id = "putWebhook",
    security(("adminKey" = []), ("adminApiKey" = [])),
    params(EndpointPath),
    request_body = WebhookSchema,
    responses(
        (status = 201, description = "Created.", body = WebhookView),
        (status = 200, description = "Replaced.", body = WebhookView),
        Invalid, Unauthenticated, NotAdmin, TooLarge, Unavailable,
    )
)]
pub async fn put_webhook(
    State(api): State<Arc<DeliveryApi>>,
    _admin: AdminAuth,
    Path(EndpointPath { tenant, name }): Path<EndpointPath>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
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

/// The tenant's webhook endpoints: secrets are counted, never shown.
#[utoipa::path(
    get,
    path = "/api/admin/tenants/{tenant}/webhooks",
    tag = "admin",
    operation_id = "listWebhooks",
    security(("adminKey" = []), ("adminApiKey" = [])),
    params(TenantPath),
    responses(
        (status = 200, description = "The endpoints.", body = WebhookList),
        Invalid, Unauthenticated, NotAdmin, Unavailable,
    )
)]
pub async fn list_webhooks(
    State(api): State<Arc<DeliveryApi>>,
    _admin: AdminAuth,
    Path(TenantPath { tenant }): Path<TenantPath>,
) -> Result<Json<WebhookList>, ApiError> {
    tenant_from_path(&tenant)?;
    let hooks = api.store.webhooks(&tenant).await?;
    let webhooks = hooks.iter().map(|(name, w)| w.redacted(name)).collect();
    Ok(Json(WebhookList {
        tenant_id: tenant,
        webhooks,
    }))
}

/// Remove a webhook endpoint.
#[utoipa::path(
    delete,
    path = "/api/admin/tenants/{tenant}/webhooks/{name}",
    tag = "admin",
    operation_id = "deleteWebhook",
    security(("adminKey" = []), ("adminApiKey" = [])),
    params(EndpointPath),
    responses(
        (status = 204, description = "Removed."),
        Invalid, Unauthenticated, NotAdmin, NotFound, Unavailable,
    )
)]
pub async fn delete_webhook(
    State(api): State<Arc<DeliveryApi>>,
    _admin: AdminAuth,
    Path(EndpointPath { tenant, name }): Path<EndpointPath>,
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
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Most attempts to show: 1–1000 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

/// The endpoint's delivery log, newest first.
#[utoipa::path(
    get,
    path = "/api/admin/tenants/{tenant}/webhooks/{name}/deliveries",
    tag = "admin",
    operation_id = "webhookDeliveries",
    security(("adminKey" = []), ("adminApiKey" = [])),
    params(EndpointPath, LogQuery),
    responses(
        (status = 200, description = "The log.", body = DeliveryLog),
        Invalid, Unauthenticated, NotAdmin, NotFound, Unavailable,
    )
)]
pub async fn deliveries(
    State(api): State<Arc<DeliveryApi>>,
    _admin: AdminAuth,
    Path(EndpointPath { tenant, name }): Path<EndpointPath>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Json<DeliveryLog>, ApiError> {
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
    Ok(Json(DeliveryLog {
        tenant_id: tenant,
        endpoint: Some(name),
        deliveries: log,
    }))
}

/// The `{tenant}`, `{name}` and `{event}` of a redelivery.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RedeliverPath {
    /// The tenant id.
    #[param(min_length = 1, max_length = 128, pattern = r"^[!-z|~]+$")]
    pub tenant: String,
    /// The endpoint's name.
    #[param(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_.-]+$")]
    pub name: String,
    /// The event's id, still in the tenant's history.
    pub event: String,
}

/// Queue one event to the endpoint once more (its attempt log shows the outcome).
#[utoipa::path(
    post,
    path = "/api/admin/tenants/{tenant}/webhooks/{name}/deliveries/{event}/redeliver",
    tag = "admin",
    operation_id = "redeliver",
    security(("adminKey" = []), ("adminApiKey" = [])),
    params(RedeliverPath),
    responses(
        (status = 202, description = "Queued.", body = Queued),
        Invalid, Unauthenticated, NotAdmin, NotFound, Unavailable,
    )
)]
pub async fn redeliver(
    State(api): State<Arc<DeliveryApi>>,
    _admin: AdminAuth,
    Path(RedeliverPath {
        tenant,
        name,
        event,
    }): Path<RedeliverPath>,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    tenant_from_path(&tenant)?;
    endpoint_name(&name)?;
    let not_found = || ApiError::NotFound {
        code: "not_found",
        message: "no such endpoint, or no such event retained for this tenant".into(),
    };
    let event: EventId = event.parse().map_err(|_| not_found())?;
    if api.store.redeliver(&tenant, &name, event).await? {
        Ok((StatusCode::ACCEPTED, Json(Queued { queued: true })))
    } else {
        Err(not_found())
    }
}

/// Set the tenant's email settings: who gets which events.
#[utoipa::path(
    put,
    path = "/api/admin/tenants/{tenant}/email",
    tag = "admin",
    operation_id = "putEmail",
    security(("adminKey" = []), ("adminApiKey" = [])),
    params(TenantPath),
    request_body = EmailSchema,
    responses(
        (status = 201, description = "Created.", body = EmailSettings),
        (status = 200, description = "Replaced.", body = EmailSettings),
        Invalid, Unauthenticated, NotAdmin, TooLarge, Unavailable,
    )
)]
pub async fn put_email(
    State(api): State<Arc<DeliveryApi>>,
    _admin: AdminAuth,
    Path(TenantPath { tenant }): Path<TenantPath>,
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

/// The tenant's email settings.
#[utoipa::path(
    get,
    path = "/api/admin/tenants/{tenant}/email",
    tag = "admin",
    operation_id = "getEmail",
    security(("adminKey" = []), ("adminApiKey" = [])),
    params(TenantPath),
    responses(
        (status = 200, description = "The settings.", body = EmailSettings),
        Invalid, Unauthenticated, NotAdmin, NotFound, Unavailable,
    )
)]
pub async fn get_email(
    State(api): State<Arc<DeliveryApi>>,
    _admin: AdminAuth,
    Path(TenantPath { tenant }): Path<TenantPath>,
) -> Result<Json<EmailSettings>, ApiError> {
    tenant_from_path(&tenant)?;
    api.store
        .email(&tenant)
        .await?
        .map(Json)
        .ok_or_else(no_email)
}

/// Remove the tenant's email settings.
#[utoipa::path(
    delete,
    path = "/api/admin/tenants/{tenant}/email",
    tag = "admin",
    operation_id = "deleteEmail",
    security(("adminKey" = []), ("adminApiKey" = [])),
    params(TenantPath),
    responses(
        (status = 204, description = "Removed."),
        Invalid, Unauthenticated, NotAdmin, NotFound, Unavailable,
    )
)]
pub async fn delete_email(
    State(api): State<Arc<DeliveryApi>>,
    _admin: AdminAuth,
    Path(TenantPath { tenant }): Path<TenantPath>,
) -> Result<StatusCode, ApiError> {
    tenant_from_path(&tenant)?;
    if api.store.put_email(&tenant, None).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_email())
    }
}

/// The tenant's email log (messages and digests), newest first.
#[utoipa::path(
    get,
    path = "/api/admin/tenants/{tenant}/email/deliveries",
    tag = "admin",
    operation_id = "emailDeliveries",
    security(("adminKey" = []), ("adminApiKey" = [])),
    params(TenantPath, LogQuery),
    responses(
        (status = 200, description = "The log.", body = DeliveryLog),
        Invalid, Unauthenticated, NotAdmin, NotFound, Unavailable,
    )
)]
pub async fn email_deliveries(
    State(api): State<Arc<DeliveryApi>>,
    _admin: AdminAuth,
    Path(TenantPath { tenant }): Path<TenantPath>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Json<DeliveryLog>, ApiError> {
    tenant_from_path(&tenant)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = bounded_param("limit", query.limit.as_deref(), 50, LOG_LEN)?;
    if api.store.email(&tenant).await?.is_none() {
        return Err(no_email());
    }
    let log = api.store.attempts(&tenant, EMAIL_ENDPOINT, limit).await?;
    Ok(Json(DeliveryLog {
        tenant_id: tenant,
        endpoint: None,
        deliveries: log,
    }))
}
