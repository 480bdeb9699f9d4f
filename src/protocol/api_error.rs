//! The body of every HTTP refusal, from the API and from the connect routes alike.

use serde::Serialize;
use utoipa::ToSchema;

/// Every API error's body.
#[derive(Serialize, ToSchema)]
#[schema(as = ApiError)]
pub struct ApiErrorBody {
    /// What went wrong.
    pub error: ApiErrorDetail,
}

/// The error itself.
#[derive(Serialize, ToSchema)]
#[schema(as = ApiErrorDetail)]
pub struct ApiErrorDetail {
    /// Machine-readable: `invalid_field`, `unauthorized`, `forbidden`, `not_found`, …
    pub code: String,
    /// For people.
    pub message: String,
    /// The request field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}
