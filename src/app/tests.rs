//! In-process tests of the HTTP API: the whole router over the embedded engine, one request at
//! a time with `tower::ServiceExt::oneshot` (axum's testing example). They pin status codes,
//! error shapes and the events each change publishes; the real-process suites cover the same
//! routes against Redis.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{AppState, app};
use crate::auth::{AdminKeys, Signer, Verifier};
use crate::config::AuthArgs;
use crate::engine::memory::MemoryEngine;
use crate::engine::{Engines, HistoryConfig};
use crate::gateway::Settings;
use crate::license::rules::Rules;

const SECRET: &str = "api-test-secret-0123456789abcdefgh";

fn auth_args() -> AuthArgs {
    AuthArgs::hs256(SECRET)
}

fn state() -> AppState {
    let settings = Settings::for_tests("api-test");
    let history = HistoryConfig {
        size: 100,
        ttl: Duration::from_secs(3600),
        ..HistoryConfig::default()
    };
    let engines = Engines::of("memory", MemoryEngine::new(history));
    let verifier = Verifier::from_args(&auth_args()).expect("verifier");
    let admin_keys = AdminKeys::parse(Some(ADMIN_KEY)).expect("admin key");
    let rules = Rules::new(vec![30, 7, 1], 80.0);
    let delivery = crate::config::DeliveryArgs {
        webhook_allow_private: false,
        delivery_retry_schedule: Default::default(),
        delivery_lease_secs: 30,
        smtp_url: None,
        smtp_from: None,
        email_max_per_hour: 20,
        email_window_secs: 3600,
    };
    AppState::new(
        settings, verifier, admin_keys, &engines, rules, None, &delivery,
    )
}

fn signer() -> Signer {
    Signer::from_args(&auth_args()).expect("signer")
}

const ADMIN_KEY: &str = "api-test-admin-key-0123456789abcdef";

fn admin() -> String {
    ADMIN_KEY.to_owned()
}

fn tenant(t: &str) -> String {
    signer().mint(t, None, 600)
}

/// One request through the router: status and JSON body (`Null` when not JSON).
async fn call(
    state: &AppState,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let response = app(state.clone())
        .oneshot(request.body(body).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn license(expires: &str) -> Value {
    json!({
        "tenantId": "acme", "plan": "pro", "expiresAt": expires,
        "modules": {"reports": {"enabled": true}}, "limits": {"users": 10}
    })
}

/// Invariant: a license PUT answers 201 the first time and publishes `license_updated
/// ["created"]`; the same document again answers 200 and publishes nothing; the tenant's view
/// reflects it; a DELETE publishes and a second DELETE is 404 `no_license`.
#[tokio::test]
async fn license_lifecycle_publishes_exactly_what_changed() {
    let state = state();
    let admin = admin();
    let uri = "/api/admin/tenants/acme/license";
    let doc = license("2099-01-01T00:00:00Z");
    let (status, body) = call(&state, "PUT", uri, Some(&admin), Some(doc.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["events"].as_array().map(Vec::len), Some(1));
    let (status, body) = call(&state, "PUT", uri, Some(&admin), Some(doc)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["events"], json!([]));
    let (status, view) = call(&state, "GET", "/api/license", Some(&tenant("acme")), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["status"], "active");
    assert_eq!(view["modules"]["reports"]["locked"], false);
    let (status, body) = call(&state, "DELETE", uri, Some(&admin), None).await;
    assert_eq!(
        (status, body["deleted"].clone()),
        (StatusCode::OK, json!(true))
    );
    let (status, body) = call(&state, "DELETE", uri, Some(&admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "no_license");
}

/// Invariant: usage crossing the warning threshold publishes one warning; staying above it
/// publishes nothing more.
#[tokio::test]
async fn usage_warnings_fire_once_per_crossing() {
    let state = state();
    let admin = admin();
    let lic = "/api/admin/tenants/acme/license";
    call(
        &state,
        "PUT",
        lic,
        Some(&admin),
        Some(license("2099-01-01T00:00:00Z")),
    )
    .await;
    let usage = "/api/admin/tenants/acme/usage";
    let (status, body) = call(
        &state,
        "PUT",
        usage,
        Some(&admin),
        Some(json!({"users": 9})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events"].as_array().map(Vec::len), Some(1));
    let (_, body) = call(
        &state,
        "PUT",
        usage,
        Some(&admin),
        Some(json!({"users": 9.5})),
    )
    .await;
    assert_eq!(body["events"], json!([]));
}

/// Invariant: admin routes take admin keys only — no credential or a wrong key 401, a valid
/// tenant token 403 whatever its claims (a `role: admin` claim included) — and tenant routes
/// take tenant tokens only.
#[tokio::test]
async fn routes_refuse_the_wrong_credentials() {
    let state = state();
    let stats = "/api/admin/stats";
    assert_eq!(
        call(&state, "GET", stats, None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let wrong_key = "api-test-admin-key-0123456789abcdeX";
    assert_eq!(
        call(&state, "GET", stats, Some(wrong_key), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let now = crate::protocol::now_ms() / 1000;
    let claims = json!({"tenantId": "acme", "role": "admin", "exp": now + 60});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).expect("key");
    let with_role =
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("token");
    let (status, body) = call(&state, "GET", stats, Some(&with_role), None).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::FORBIDDEN, json!("forbidden"))
    );
    let license = license("2099-01-01T00:00:00Z");
    let put = "/api/admin/tenants/acme/license";
    let (status, _) = call(&state, "PUT", put, Some(&with_role), Some(license.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        call(&state, "PUT", put, Some(&admin()), Some(license))
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        call(&state, "GET", "/api/license", Some(&admin()), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&state, "GET", "/api/license", Some("garbage"), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&state, "GET", "/api/license", Some(&with_role), None)
            .await
            .0,
        StatusCode::OK
    );
}

/// Invariant: bad input is refused with 400 naming the field, oversized bodies with 413, and
/// nothing is published; a valid publish answers 201 with the full envelope and its id.
#[tokio::test]
async fn publish_validates_and_answers_the_envelope() {
    let state = state();
    let admin = admin();
    let uri = "/api/admin/tenants/acme/events";
    let (status, body) = call(
        &state,
        "POST",
        uri,
        Some(&admin),
        Some(json!({"type": "nope"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "type");
    let (status, body) = call(
        &state,
        "POST",
        uri,
        Some(&admin),
        Some(json!({"type": "module_activated", "data": 3})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("data"))
    );
    let big = json!({"type": "module_activated", "data": {"x": "y".repeat(70_000)}});
    assert_eq!(
        call(&state, "POST", uri, Some(&admin), Some(big)).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let bad_tenant = "/api/admin/tenants/a%7Bb/events";
    let (status, body) = call(
        &state,
        "POST",
        bad_tenant,
        Some(&admin),
        Some(json!({"type": "module_activated"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("tenant"))
    );
    let event = json!({"type": "module_activated", "data": {"module": "reports"}});
    let (status, envelope) = call(&state, "POST", uri, Some(&admin), Some(event)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(envelope["tenantId"], "acme");
    assert_eq!(envelope["severity"], "info");
    assert!(envelope["id"].as_str().is_some_and(|id| id.contains('-')));
}

/// Invariant: readiness follows the node (200 with its id, 503 once draining) and stats list
/// this node live.
#[tokio::test]
async fn readiness_and_stats_follow_the_node() {
    let state = state();
    let (status, body) = call(&state, "GET", "/readyz", None, None).await;
    assert_eq!(
        (status, body["node"].clone()),
        (StatusCode::OK, json!("api-test"))
    );
    let (status, stats) = call(&state, "GET", "/api/admin/stats", Some(&admin()), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["nodes"][0]["id"], "api-test");
    assert_eq!(stats["totalConnections"], 0);
    state.node.start_draining();
    let (status, body) = call(&state, "GET", "/readyz", None, None).await;
    assert_eq!(
        (status, body["status"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("draining"))
    );
}

/// Regressions: a date whose UTC instant lies before 1970 used to be stored as an empty string
/// while the API answered 503 "nothing was changed"; a body without `type` named no field; a
/// tenant's usage metrics grew without bound as PUTs merged.
#[tokio::test]
async fn out_of_range_input_is_refused_naming_the_field_and_changes_nothing() {
    let state = state();
    let admin = admin();
    let put = "/api/admin/tenants/acme/license";
    for date in ["0000-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"] {
        let (status, body) = call(&state, "PUT", put, Some(&admin), Some(license(date))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{date}: {body}");
        assert_eq!(body["error"]["field"], "expiresAt");
    }
    let (status, _) = call(&state, "GET", "/api/license", Some(&tenant("acme")), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was stored");

    let events = "/api/admin/tenants/acme/events";
    let (status, body) = call(
        &state,
        "POST",
        events,
        Some(&admin),
        Some(json!({"data": {}})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("type"))
    );

    let usage = "/api/admin/tenants/acme/usage";
    let metrics = |from: usize, to: usize| -> Value {
        Value::Object((from..to).map(|i| (format!("m{i}"), json!(i))).collect())
    };
    assert_eq!(
        call(&state, "PUT", usage, Some(&admin), Some(metrics(0, 60)))
            .await
            .0,
        StatusCode::OK
    );
    let (status, body) = call(&state, "PUT", usage, Some(&admin), Some(metrics(50, 110))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "too_many_metrics");
    assert_eq!(
        call(&state, "PUT", usage, Some(&admin), Some(metrics(40, 100)))
            .await
            .0,
        StatusCode::OK
    );
}
