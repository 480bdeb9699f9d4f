//! License routes: the tenant's view (`GET /api/license`) and the admin changes that publish
//! the events they imply (`PUT`/`DELETE …/license`, `PUT …/usage`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::admin::{TenantPath, tenant_from_path};
use super::error::ApiError;
use super::openapi::{Invalid, NotAdmin, NotFound, TooLarge, Unauthenticated, Unavailable};
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

/// The tenant's view (`GET /api/license`), computed from the stored document and usage.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LicenseView {
    /// The tenant.
    pub tenant_id: String,
    /// The stored document.
    pub license: License,
    /// Usage by metric.
    #[schema(value_type = BTreeMap<String, f64>)]
    pub usage: BTreeMap<String, serde_json::Number>,
    /// `expiring` within the largest expiry warning threshold.
    pub status: LicenseStatus,
    /// Whole days left, rounded up; 0 once expired.
    #[schema(minimum = 0)]
    pub days_left: i64,
    /// Each module of the document, locked or not.
    pub modules: BTreeMap<String, ModuleView>,
    /// Each limit of the document against its usage.
    pub limits: BTreeMap<String, LimitView>,
}

/// The license as a whole.
// Described, not built: `rules::status` writes the view (its unit tests read it as JSON).
#[allow(dead_code)]
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LicenseStatus {
    /// Not expiring soon.
    Active,
    /// Within a warning threshold of its expiry.
    Expiring,
    /// Past its expiry: every module is locked.
    Expired,
}

/// A module in [`LicenseView`].
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleView {
    /// As the document says.
    pub enabled: bool,
    /// Whether the tenant may not use it now.
    pub locked: bool,
    /// Why it is locked.
    pub reason: Option<LockReason>,
    /// Its own expiry, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

/// Why a module is locked.
#[allow(dead_code)]
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LockReason {
    /// The whole license expired.
    LicenseExpired,
    /// The module is disabled.
    Disabled,
    /// The module's own expiry passed.
    Expired,
}

/// A limit in [`LicenseView`].
#[derive(Serialize, ToSchema)]
pub struct LimitView {
    /// Current usage.
    pub used: f64,
    /// The limit.
    pub limit: f64,
    /// `used / limit × 100`, one decimal.
    pub percent: f64,
    /// Against the warning percentage.
    pub state: LimitState,
}

/// A limit's state.
#[allow(dead_code)]
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitState {
    /// Below the warning percentage.
    Ok,
    /// At or over the warning percentage.
    Warning,
    /// Over the limit.
    Exceeded,
}

/// The answer to `PUT …/license`: the view, and the events the change published.
#[derive(Serialize, ToSchema)]
pub struct LicenseChange {
    /// The view after the change.
    #[serde(flatten)]
    pub view: LicenseView,
    /// Ids of the events published (none when nothing changed).
    pub events: Vec<String>,
}

/// The answer to `DELETE …/license`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LicenseDeleted {
    /// The tenant.
    pub tenant_id: String,
    /// Always true.
    pub deleted: bool,
    /// Ids of the events published (`license_updated` with `["deleted"]`).
    pub events: Vec<String>,
}

/// The answer to `PUT …/usage`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageChange {
    /// The tenant.
    pub tenant_id: String,
    /// Every stored metric after the merge (`null` if it could not be read back).
    #[schema(value_type = Option<BTreeMap<String, f64>>)]
    pub usage: Option<crate::license::document::Usage>,
    /// Ids of the threshold events published.
    pub events: Vec<String>,
}

/// `PUT …/usage` body: metric (1–64 letters, digits, `_`, `-`, `.`) → non-negative number,
/// merged into the stored usage; 1–100 metrics.
#[derive(Serialize, ToSchema)]
#[schema(as = UsageRequest, example = json!({"users": 85, "storage_gb": 12.5}))]
pub struct UsageSchema(BTreeMap<String, f64>);

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

/// The tenant's license, usage and computed status.
#[utoipa::path(
    get,
    path = "/api/license",
    tag = "tenant",
    operation_id = "getLicense",
    security(("tenantToken" = [])),
    responses(
        (status = 200, description = "The tenant's view.", body = LicenseView),
        Unauthenticated, NotFound, Unavailable,
    )
)]
pub async fn get_license(
    State(validator): State<Arc<Validator>>,
    auth: TenantAuth,
) -> Result<Json<Value>, ApiError> {
    view(&validator, &auth.tenant)
        .await?
        .map(Json)
        .ok_or_else(|| no_license(&auth.tenant))
}

/// Store the tenant's license document and publish the events its change implies.
///
/// Documents are strict: unknown fields, wrong types, unparsable dates, negative limits or a
/// `tenantId` other than the path's are refused. A PUT identical to the stored document
/// publishes nothing.
#[utoipa::path(
    put,
    path = "/api/admin/tenants/{tenant}/license",
    tag = "admin",
    operation_id = "putLicense",
    security(("adminKey" = []), ("adminApiKey" = [])),
    params(TenantPath),
    request_body = License,
    responses(
        (status = 201, description = "Created.", body = LicenseChange),
        (status = 200, description = "Replaced (or unchanged).", body = LicenseChange),
        Invalid, Unauthenticated, NotAdmin, TooLarge, Unavailable,
    )
)]
pub async fn put_license(
    State(validator): State<Arc<Validator>>,
    _admin: AdminAuth,
    Path(TenantPath { tenant }): Path<TenantPath>,
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

/// Remove the tenant's license (publishes `license_updated` with `["deleted"]`).
#[utoipa::path(
    delete,
    path = "/api/admin/tenants/{tenant}/license",
    tag = "admin",
    operation_id = "deleteLicense",
    security(("adminKey" = []), ("adminApiKey" = [])),
    params(TenantPath),
    responses(
        (status = 200, description = "Deleted.", body = LicenseDeleted),
        Invalid, Unauthenticated, NotAdmin, NotFound, Unavailable,
    )
)]
pub async fn delete_license(
    State(validator): State<Arc<Validator>>,
    _admin: AdminAuth,
    Path(TenantPath { tenant }): Path<TenantPath>,
) -> Result<Json<LicenseDeleted>, ApiError> {
    tenant_from_path(&tenant)?;
    match validator.put_license(&tenant, None).await? {
        Some(PutOutcome::Updated(published)) | Some(PutOutcome::Created(published)) => {
            tracing::info!(%tenant, "license deleted");
            Ok(Json(LicenseDeleted {
                events: ids(&published),
                tenant_id: tenant,
                deleted: true,
            }))
        }
        Some(PutOutcome::Unchanged) | None => Err(no_license(&tenant)),
    }
}

/// Merge usage counters into the stored ones and publish the threshold events they cross.
#[utoipa::path(
    put,
    path = "/api/admin/tenants/{tenant}/usage",
    tag = "admin",
    operation_id = "putUsage",
    security(("adminKey" = []), ("adminApiKey" = [])),
    params(TenantPath),
    request_body = UsageSchema,
    responses(
        (status = 200, description = "Merged.", body = UsageChange),
        Invalid, Unauthenticated, NotAdmin, TooLarge, Unavailable,
    )
)]
pub async fn put_usage(
    State(validator): State<Arc<Validator>>,
    _admin: AdminAuth,
    Path(TenantPath { tenant }): Path<TenantPath>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<UsageChange>, ApiError> {
    tenant_from_path(&tenant)?;
    let usage = parse_usage(&json_body(body)?)?;
    let published = validator.put_usage(&tenant, &usage).await?;
    // The usage is stored: a failed read now must not turn that into an error.
    let stored = match validator.store().load(&tenant).await {
        Ok(record) => Some(stored_usage(&record.usage)),
        Err(error) => {
            tracing::warn!(%tenant, %error, "usage stored but not read back");
            None
        }
    };
    Ok(Json(UsageChange {
        tenant_id: tenant,
        usage: stored,
        events: ids(&published),
    }))
}
