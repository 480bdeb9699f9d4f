//! The OpenAPI 3.1 document served at `/openapi.json`. Its paths come from the same
//! `#[utoipa::path]` annotations the routes are registered from (`utoipa_axum::routes!`), so a
//! route cannot exist undocumented or be documented at a path it is not served on.

use axum::Extension;
use axum::http::header;
use axum::response::IntoResponse;
use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as Document, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

pub use crate::protocol::api_error::{ApiErrorBody, ApiErrorDetail};
use crate::protocol::{EventType, Severity};

/// Security scheme of the admin key as `Authorization: Bearer <key>`.
pub const ADMIN_BEARER: &str = "adminKey";
/// Security scheme of the admin key as `X-API-Key: <key>`.
pub const ADMIN_HEADER: &str = "adminApiKey";
/// Security scheme of a tenant JWT as `Authorization: Bearer <token>`.
pub const TENANT_TOKEN: &str = "tenantToken";

/// The document's fixed part: info, tags, security schemes, the error schema. The paths are
/// added by the routers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "license-gateway",
        description = "Real-time license events for SaaS tenants: the admin API a license \
                       service calls, the tenant API a browser calls, and the two streaming \
                       routes (WebSocket and Server-Sent Events). Every error answers \
                       `{\"error\":{\"code\",\"message\",\"field\"}}`.",
        license(name = "MIT OR Apache-2.0")
    ),
    modifiers(&SecuritySchemes),
    components(schemas(ApiErrorBody, ApiErrorDetail)),
    tags(
        (name = "admin", description = "Admin key: licenses, usage, events, stats, webhooks, email."),
        (name = "tenant", description = "Tenant token: the license view, tickets, notifications."),
        (name = "stream", description = "The live event stream over WebSocket or SSE."),
        (name = "operations", description = "Probes, metrics and this document.")
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            ADMIN_BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An admin key from ADMIN_API_KEYS."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            ADMIN_HEADER,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "An admin key from ADMIN_API_KEYS.",
            ))),
        );
        components.add_security_scheme(
            TENANT_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A tenant token (HS256 with JWT_SECRET, or RS256/ES256 from \
                         JWT_JWKS_URL) naming the tenant and, for notifications, the user.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The rendered document, handed to its route as a request extension.
#[derive(Clone)]
pub struct Rendered(bytes::Bytes);

impl Rendered {
    /// Renders `document` once; every request shares the bytes.
    pub fn new(document: &Document) -> Self {
        Self(bytes::Bytes::from(Self::text(document)))
    }

    /// The document as pretty JSON.
    pub fn text(document: &Document) -> String {
        // A document of strings, maps and numbers always serializes.
        document
            .to_pretty_json()
            .unwrap_or_else(|_| "{}".to_owned())
    }
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapiDocument",
    responses((status = 200, description = "The OpenAPI 3.1 document.", content_type = "application/json"))
)]
pub async fn openapi_json(Extension(Rendered(body)): Extension<Rendered>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// One documented refusal: its status and when it is given, answered with the error body.
macro_rules! refusal {
    ($(#[$doc:meta])* $name:ident, $status:literal, $description:literal) => {
        $(#[$doc])*
        pub struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                refusal($status, $description)
            }
        }
    };
}

fn refusal(status: &str, description: &str) -> BTreeMap<String, RefOr<Response>> {
    let content = Content::new(Some(Ref::from_schema_name("ApiError")));
    let response = ResponseBuilder::new()
        .description(description)
        .content("application/json", content)
        .build();
    BTreeMap::from([(status.to_owned(), RefOr::T(response))])
}

refusal!(
    /// 400.
    Invalid,
    "400",
    "The request is malformed: `field` names the culprit."
);
refusal!(
    /// 401.
    Unauthenticated,
    "401",
    "No credential, or one that is not valid (unknown key, bad signature, expired, revoked)."
);
refusal!(
    /// 403 on admin routes.
    NotAdmin,
    "403",
    "A valid tenant token on an admin route: client tokens never grant admin rights."
);
refusal!(
    /// 403 on per-user routes.
    NoUser,
    "403",
    "A valid tenant token that names no user (`no_user`), on a per-user route."
);
refusal!(
    /// 404.
    NotFound,
    "404",
    "No such resource for this tenant."
);
refusal!(
    /// 413.
    TooLarge,
    "413",
    "The body is over 64 KiB."
);
refusal!(
    /// 422.
    Conflict,
    "422",
    "Well-formed, but in conflict with an earlier request (an Idempotency-Key reused for a \
     different event)."
);
refusal!(
    /// 503.
    Unavailable,
    "503",
    "The event store is unavailable: nothing was changed, retry later."
);

/// An event as published and delivered (the envelope of docs/PROTOCOL.md).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Event)]
pub struct EventEnvelope {
    /// Per-tenant id, `<ms>-<seq>`, increasing; what `lastEventId` names.
    #[schema(pattern = r"^[0-9]+-[0-9]+$", example = "1764417600000-0")]
    pub id: String,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The tenant.
    pub tenant_id: String,
    /// Follows from the type.
    pub severity: Severity,
    /// Publish time, RFC 3339 with milliseconds.
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// Type-specific fields (docs/PROTOCOL.md, event types).
    #[schema(value_type = Object)]
    pub data: serde_json::Map<String, serde_json::Value>,
    /// W3C trace context of the publish, while traces are exported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// A notification: an event with the user's read flag.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// The event.
    #[serde(flatten)]
    pub event: EventEnvelope,
    /// Whether this user has read it.
    pub read: bool,
}
