//! `/metrics` after known traffic: the counters move by exactly the right amounts.

use std::collections::HashMap;
use std::time::Duration;

use fred::prelude::*;
use harness::*;
use serde_json::json;

/// Scrapes `/metrics` into `name{labels}` → value.
async fn scrape(port: u16) -> HashMap<String, f64> {
    let (status, text) = http(port, "GET", "/metrics", None, None).await.unwrap();
    assert_eq!(status, 200);
    parse(&text)
}

/// Prometheus text into `name{labels}` → value.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_the_right_amounts() {
    let redis = Redis::start();
    let node = Gateway::start(GatewayOptions::redis(&redis)).await;
    let before = scrape(node.port).await;

    let (mut a1, _) = WsClient::connected(&node.ws_url(), &tenant_token("acme")).await;
    let (mut a2, _) = WsClient::connected(&node.ws_url(), &tenant_token("acme")).await;
    let (g1, _) = WsClient::connected(&node.ws_url(), &tenant_token("globex")).await;
    let mut bad = ws_connect(&node.ws_url(), Some("garbage"), Carrier::Query).await;
    bad.expect_close(1008, "invalid token").await;
    let mut none = ws_connect(&node.ws_url(), None, Carrier::Query).await;
    none.expect_close(1008, "missing token").await;
    for _ in 0..2 {
        publish(
            node.port,
            "acme",
            "usage_limit_warning",
            json!({"metric": "users"}),
        )
        .await;
    }
    publish(
        node.port,
        "globex",
        "module_activated",
        json!({"module": "x"}),
    )
    .await;
    for _ in 0..2 {
        a1.next_json().await;
        a2.next_json().await;
    }
    let mut big = WsClient::connected(&node.ws_url(), &tenant_token("acme"))
        .await
        .0;
    big.send_text(&"x".repeat(10_000)).await;
    big.expect_close(1009, "message too big").await;
    g1.close().await;

    let after = eventually(WAIT, "metrics settle", || async {
        let m = scrape(node.port).await;
        let settled = get(&m, "license_gateway_connections{transport=\"websocket\"}") == 2.0
            && get(&m, "license_gateway_tenants_subscribed") == 1.0;
        settled.then_some(m)
    })
    .await;
    let delta = |key: &str| get(&after, key) - get(&before, key);
    assert_eq!(
        delta("license_gateway_connects_total{transport=\"websocket\"}"),
        4.0,
        "a1, a2, g1, big"
    );
    assert_eq!(
        get(
            &after,
            "license_gateway_connections{transport=\"websocket\"}"
        ),
        2.0,
        "a1 and a2 still open"
    );
    assert_eq!(
        get(&after, "license_gateway_tenants_subscribed"),
        1.0,
        "acme; globex released"
    );
    assert_eq!(
        delta("license_gateway_auth_failures_total{reason=\"invalid_token\"}"),
        1.0
    );
    assert_eq!(
        delta("license_gateway_auth_failures_total{reason=\"missing_token\"}"),
        1.0
    );
    assert_eq!(
        delta(
            "license_gateway_closes_total{code=\"1008\",reason=\"invalid_token\",transport=\"websocket\"}"
        ),
        1.0
    );
    assert_eq!(
        delta(
            "license_gateway_closes_total{code=\"1009\",reason=\"message_too_big\",transport=\"websocket\"}"
        ),
        1.0
    );
    assert_eq!(
        delta(
            "license_gateway_closes_total{code=\"client\",reason=\"client\",transport=\"websocket\"}"
        ),
        1.0,
        "g1"
    );
    assert_eq!(
        delta("license_gateway_events_published_total{type=\"usage_limit_warning\"}"),
        2.0
    );
    assert_eq!(
        delta("license_gateway_events_published_total{type=\"module_activated\"}"),
        1.0
    );
    assert_eq!(delta("license_gateway_events_received_total"), 3.0);
    assert_eq!(
        delta("license_gateway_deliveries_total"),
        5.0,
        "2 × 2 acme + 1 globex"
    );
    assert_eq!(delta("license_gateway_delivery_latency_seconds_count"), 3.0);
    assert!(get(&after, "license_gateway_delivery_latency_seconds_sum") < 3.0);

    // Redis restarts: a reconnect, and the connections stay.
    let mut redis = redis;
    redis.restart();
    node.wait_ready().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restarted = scrape(node.port).await;
    assert!(get(&restarted, "license_gateway_redis_reconnects_total") >= 1.0);
    assert_eq!(
        get(
            &restarted,
            "license_gateway_connections{transport=\"websocket\"}"
        ),
        2.0
    );
    let text = http(node.port, "GET", "/metrics", None, None)
        .await
        .unwrap()
        .1;
    assert!(
        !text.contains("acme") && !text.contains("globex"),
        "no tenant ids in labels"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_worker_serves_its_own_metrics() {
    let redis = Redis::start();
    let node = Gateway::start(GatewayOptions::redis(&redis)).await;
    let license = json!({
        "tenantId": "acme", "plan": "pro", "expiresAt": rfc3339_in(90 * 86_400),
        "modules": {}, "limits": {"users": 10}
    });
    let (status, body) = http(
        node.port,
        "PUT",
        "/api/admin/tenants/acme/license",
        Some(&admin_key()),
        Some(&license.to_string()),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{body}");
    // Usage written behind the API's back: only the worker's pass can notice it.
    let client = redis.client().await;
    let _: () = client
        .hset("license:usage:{acme}", ("users", "9"))
        .await
        .unwrap();

    let metrics_port = free_port();
    let worker = Gateway::spawn_args(
        &["worker"],
        GatewayOptions::redis(&redis)
            .env("WORKER_INTERVAL_SECS", "1")
            .env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
    );
    let m = eventually(WAIT, "two worker passes", || async {
        let m = http(metrics_port, "GET", "/metrics", None, None)
            .await
            .ok()?;
        let m = parse(&m.1);
        (get(&m, "license_gateway_worker_passes_total") >= 2.0).then_some(m)
    })
    .await;
    assert_eq!(
        get(
            &m,
            "license_gateway_notices_total{type=\"usage_limit_warning\"}"
        ),
        1.0,
        "one notice however many passes: {}",
        worker.log_tail()
    );
    assert!(get(&m, "license_gateway_worker_pass_duration_seconds_count") >= 2.0);
    let (status, _) = http(metrics_port, "GET", "/healthz", None, None)
        .await
        .unwrap();
    assert_eq!(status, 200);
}

/// The embedded engine's in-process validator passes every `WORKER_INTERVAL_SECS` (it used to
/// ignore the setting and pass once a minute, so this saw one pass).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_validator_honours_the_worker_interval() {
    let node = Gateway::start(GatewayOptions::memory().env("WORKER_INTERVAL_SECS", "1")).await;
    eventually(WAIT, "three in-process validator passes", || async {
        let m = scrape(node.port).await;
        (get(&m, "license_gateway_worker_passes_total") >= 3.0).then_some(())
    })
    .await;
}
