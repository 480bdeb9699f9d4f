//! License routes: the tenant's view (`GET /api/license`) and the admin changes that publish
//! the events they imply (`PUT`/`DELETE …/license`, `PUT …/usage`).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::admin::tenant_from_path;
use super::error::ApiError;
use crate::auth::{AdminAuth, TenantAuth};
use crate::engine::Published;
use crate::license::document::{FieldError, License, parse_usage};
use crate::license::rules;
use crate::worker::{PutOutcome, Validator, ValidatorError, parse_usage as stored_usage};

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::field("invalid_field", e.field, e.message)
    }
}

impl From<ValidatorError> for ApiError {
    fn from(e: ValidatorError) -> Self {
        match e {
            ValidatorError::Engine(e) => ApiError::Unavailable(e),
            ValidatorError::TooManyMetrics(max) => ApiError::field(
                "too_many_metrics",
                "body",
                format!("at most {max} usage metrics per tenant"),
            ),
            other => ApiError::Unavailable(crate::engine::EngineError::Protocol(other.to_string())),
        }
    }
}

fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let body = body.map_err(ApiError::from_body)?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::field("invalid_json", "body", format!("invalid JSON: {e}")))
}

fn ids(published: &[Published]) -> Vec<String> {
    published.iter().map(|p| p.id.to_string()).collect()
}

/// The tenant's license, usage and computed status, or `None` without a license.
async fn view(validator: &Validator, tenant: &str) -> Result<Option<Value>, ApiError> {
    let record = validator.store().load(tenant).await?;
    let Some(doc) = record.doc else {
        return Ok(None);
    };
    let license = License::from_stored(&doc).map_err(|e| {
        ApiError::Unavailable(crate::engine::EngineError::Protocol(format!(
            "stored license unreadable: {e}"
        )))
    })?;
    let usage = stored_usage(&record.usage);
    let now = time::OffsetDateTime::now_utc();
    Ok(Some(rules::status(
        &license,
        &usage,
        now,
        &validator.rules().for_license(&license),
    )))
}

fn no_license(tenant: &str) -> ApiError {
    ApiError::NotFound {
        code: "no_license",
        message: format!("tenant {tenant:?} has no license"),
    }
}

/// `GET /api/license` (tenant token).
pub async fn get_license(
    State(validator): State<Arc<Validator>>,
    auth: TenantAuth,
) -> Result<Json<Value>, ApiError> {
    view(&validator, &auth.tenant)
        .await?
        .map(Json)
        .ok_or_else(|| no_license(&auth.tenant))
}

/// `PUT /api/admin/tenants/{tenant}/license`: 201 when created, 200 otherwise; the body is the
/// tenant's view plus the ids of the events published.
pub async fn put_license(
    State(validator): State<Arc<Validator>>,
    _admin: AdminAuth,
    Path(tenant): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    tenant_from_path(&tenant)?;
    let license = License::parse(&tenant, &json_body(body)?)?;
    let outcome = validator.put_license(&tenant, Some(&license)).await?;
    let (status, published) = match outcome {
        Some(PutOutcome::Created(p)) => (StatusCode::CREATED, p),
        Some(PutOutcome::Updated(p)) => (StatusCode::OK, p),
        Some(PutOutcome::Unchanged) | None => (StatusCode::OK, Vec::new()),
    };
    tracing::info!(%tenant, events = published.len(), "license stored");
    let mut body = view(&validator, &tenant)
        .await?
        .unwrap_or_else(|| json!({}));
    body["events"] = json!(ids(&published));
    Ok((status, Json(body)).into_response())
}

/// `DELETE /api/admin/tenants/{tenant}/license`.
pub async fn delete_license(
    State(validator): State<Arc<Validator>>,
    _admin: AdminAuth,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    tenant_from_path(&tenant)?;
    match validator.put_license(&tenant, None).await? {
        Some(PutOutcome::Updated(published)) | Some(PutOutcome::Created(published)) => {
            tracing::info!(%tenant, "license deleted");
            Ok(Json(
                json!({"tenantId": tenant, "deleted": true, "events": ids(&published)}),
            ))
        }
        Some(PutOutcome::Unchanged) | None => Err(no_license(&tenant)),
    }
}

/// `PUT /api/admin/tenants/{tenant}/usage`: merges counters, publishes threshold notices.
pub async fn put_usage(
    State(validator): State<Arc<Validator>>,
    _admin: AdminAuth,
    Path(tenant): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    tenant_from_path(&tenant)?;
    let usage = parse_usage(&json_body(body)?)?;
    let published = validator.put_usage(&tenant, &usage).await?;
    // The usage is stored: a failed read now must not turn that into an error.
    let stored = match validator.store().load(&tenant).await {
        Ok(record) => json!(stored_usage(&record.usage)),
        Err(error) => {
            tracing::warn!(%tenant, %error, "usage stored but not read back");
            Value::Null
        }
    };
    Ok(Json(
        json!({"tenantId": tenant, "usage": stored, "events": ids(&published)}),
    ))
}
