//! HTTP to the processes under test (gateways, chromedriver), through reqwest.

use serde_json::Value;

use crate::WAIT;
use crate::tokens::admin_key;

/// The one client of every test. Building a client loads the system's root certificates
/// (tens of milliseconds), so it is built once. Without a connection pool: a test's runtime
/// ends with the test, and no pooled connection may outlive it.
pub fn client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(WAIT)
            .pool_max_idle_per_host(0)
            .build()
            .expect("HTTP client")
    })
}

/// One request: returns status and body text. A refused connection or a timeout is an error.
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, String), reqwest::Error> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let mut request = client()
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/json");
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.body(body.to_owned());
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// Publishes through the admin API; panics unless 201. Returns the envelope.
pub async fn publish(port: u16, tenant: &str, event_type: &str, data: Value) -> Value {
    let body = serde_json::json!({ "type": event_type, "data": data }).to_string();
    let path = format!("/api/admin/tenants/{tenant}/events");
    let (status, text) = http(port, "POST", &path, Some(&admin_key()), Some(&body))
        .await
        .expect("publish request");
    assert_eq!(status, 201, "publish failed: {text}");
    serde_json::from_str(&text).expect("envelope JSON")
}

/// `GET /api/admin/stats` with an admin token; panics unless 200.
pub async fn admin_stats(port: u16) -> Value {
    let (status, body) = http(port, "GET", "/api/admin/stats", Some(&admin_key()), None)
        .await
        .expect("stats request");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("stats JSON")
}

/// A request with the admin key and an optional JSON body: status and JSON answer (null when
/// the answer is not JSON).
pub async fn admin_json(port: u16, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    let (status, text) = http(port, method, path, Some(&admin_key()), body.as_deref())
        .await
        .expect("admin request");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The value of one exact series (name with its labels, as `/metrics` prints it); 0 when absent.
pub async fn metric_series(port: u16, series: &str) -> f64 {
    let (_, text) = http(port, "GET", "/metrics", None, None)
        .await
        .expect("/metrics request");
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// The sum of every sample of metric `name` on `/metrics` (0 when absent).
pub async fn metric(port: u16, name: &str) -> f64 {
    let (status, text) = http(port, "GET", "/metrics", None, None)
        .await
        .expect("/metrics request");
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What a publish with an `Idempotency-Key` got back.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyedPublish {
    pub status: u16,
    /// `Idempotent-Replayed: true` was sent.
    pub replayed: bool,
    pub body: String,
}

/// `POST /api/admin/tenants/{tenant}/events` with `Idempotency-Key: key` and a raw body.
pub async fn publish_with_key(
    port: u16,
    tenant: &str,
    key: &str,
    body: &str,
) -> Result<KeyedPublish, reqwest::Error> {
    let response = client()
        .post(format!(
            "http://127.0.0.1:{port}/api/admin/tenants/{tenant}/events"
        ))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .bearer_auth(admin_key())
        .body(body.to_owned())
        .send()
        .await?;
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    Ok(KeyedPublish {
        status,
        replayed,
        body: response.text().await?,
    })
}
