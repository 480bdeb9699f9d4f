//! Webhooks: a real receiver (`tests/webhook_receiver.py`) verifies every request with the
//! `standardwebhooks` package from PyPI. Deliveries are made by the worker (a `worker` process
//! on Redis, in-process on the embedded engine), retried with the same `webhook-id`, logged,
//! redelivered on request; internal addresses are refused at registration and at delivery;
//! workers killed mid-delivery lose nothing.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use fred::prelude::*;
use harness::*;
use serde_json::{Value, json};

both_engines!(
    events_reach_a_verifying_receiver_signed_once_and_logged,
    a_license_expiry_reaches_the_endpoint_within_2_s_of_its_deadline,
    failing_endpoints_are_retried_with_the_same_id_then_fail_or_are_disabled,
);

/// The Standard Webhooks specification's example secret.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Another one, as if being rotated out.
const OLD_SECRET: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// Fast retries and leases for the tests; the defaults stay those of the documentation.
const FAST: &[(&str, &str)] = &[
    ("WEBHOOK_ALLOW_PRIVATE", "true"),
    ("DELIVERY_RETRY_SCHEDULE", "0.3,0.3,0.3"),
    ("DELIVERY_LEASE_SECS", "11"),
];
const WORKER_ARGS: &[&str] = &[
    "--interval",
    "3600",
    "--webhook-allow-private",
    "true",
    "--delivery-retry-schedule",
    "0.3,0.3,0.3",
    "--delivery-lease-secs",
    "11",
];

async fn register(port: u16, tenant: &str, name: &str, body: Value) -> (u16, Value) {
    let path = format!("/api/admin/tenants/{tenant}/webhooks/{name}");
    admin_json(port, "PUT", &path, Some(body)).await
}

async fn log_of(port: u16, tenant: &str, name: &str) -> Vec<Value> {
    let path = format!("/api/admin/tenants/{tenant}/webhooks/{name}/deliveries?limit=1000");
    let (status, body) = admin_json(port, "GET", &path, None).await;
    assert_eq!(status, 200, "{body}");
    body["deliveries"].as_array().unwrap().clone()
}

/// Waits until the receiver holds `n` requests.
async fn received(rx: &WebhookReceiver, n: usize, within: Duration) -> Vec<Value> {
    eventually(within, "webhook requests", || async {
        let got = rx.received();
        (got.len() >= n).then_some(got)
    })
    .await
}

/// Every event a selection wants reaches the receiver once, signed (verified by the independent
/// implementation, also while a second secret is kept for rotation), within 2 s of its publish,
/// with `webhook-id` = `<tenant>:<event id>` and the envelope as body; the log shows each
/// attempt; a redelivery sends it again with the same id; secrets never come back.
async fn events_reach_a_verifying_receiver_signed_once_and_logged(backend: Backend) {
    let d = Deployment::start(backend, FAST).await;
    let _worker = d.worker(WORKER_ARGS);
    let port = d.port();
    let rx = WebhookReceiver::start(SECRET, &[]).await;
    let hook = json!({"url": rx.url(), "secret": [OLD_SECRET, SECRET], "minSeverity": "warning"});
    let (status, shown) = register(port, "acme", "ops", hook.clone()).await;
    assert_eq!(status, 201, "{shown}");
    assert_eq!(shown["secrets"], 2);
    assert_eq!(register(port, "acme", "ops", hook).await.0, 200, "replaced");
    let (_, list) = admin_json(port, "GET", "/api/admin/tenants/acme/webhooks", None).await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1);
    assert!(
        !list.to_string().contains("whsec_"),
        "secrets never shown: {list}"
    );

    let mut published = Vec::new();
    for (t, data) in [
        ("license_updated", json!({"changes": ["plan"]})),
        (
            "usage_limit_warning",
            json!({"metric": "users", "used": 85, "limit": 100, "percent": 85}),
        ),
        (
            "license_expired",
            json!({"expiredAt": "2026-12-01T00:00:00Z"}),
        ),
    ] {
        let at = Instant::now();
        let event = publish(port, "acme", t, data).await;
        published.push((event, at));
    }
    publish(
        port,
        "globex",
        "license_expired",
        json!({"expiredAt": "2026-12-01T00:00:00Z"}),
    )
    .await;
    let got = received(&rx, 2, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got_all = rx.received();
    assert_eq!(
        got_all.len(),
        2,
        "once each, info filtered, other tenant absent: {got_all:?}"
    );
    // Deliveries run concurrently: match them to events by id, not by arrival order.
    let by_id = |event: &Value| {
        let id = format!("acme:{}", event["id"].as_str().unwrap());
        got.iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not received"))
    };
    for (event, _) in &published[1..] {
        let request = &by_id(event);
        assert_eq!(request["verified"], true, "{request}");
        let body: Value = serde_json::from_str(request["body"].as_str().unwrap()).unwrap();
        assert_eq!(&body, event, "the envelope as published");
        assert_eq!(
            request["signature"].as_str().unwrap().split(' ').count(),
            2,
            "one per secret"
        );
    }
    // Within 2 s of each publish (the receiver stamps arrival in Unix seconds).
    for (event, _) in &published[1..] {
        let request = &by_id(event);
        let sent = time::OffsetDateTime::parse(
            event["timestamp"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let lag = request["at"].as_f64().unwrap() - sent.unix_timestamp_nanos() as f64 / 1e9;
        println!("webhook arrived {lag:.3} s after its publish");
        assert!(lag < 2.0, "arrived {lag:.3} s after publish");
    }
    let log = log_of(port, "acme", "ops").await;
    assert_eq!(log.len(), 2, "{log:?}");
    for entry in &log {
        assert_eq!(
            (&entry["status"], &entry["httpStatus"], &entry["attempt"]),
            (&json!("delivered"), &json!(200), &json!(1))
        );
    }

    // Redelivery: the same id again.
    let id = published[2].0["id"].as_str().unwrap();
    let path = format!("/api/admin/tenants/acme/webhooks/ops/deliveries/{id}/redeliver");
    assert_eq!(admin_json(port, "POST", &path, None).await.0, 202);
    let again = received(&rx, 3, Duration::from_secs(5)).await;
    assert_eq!(again[2]["id"], format!("acme:{id}"));
    assert_eq!(again[2]["verified"], true);
    let bad = "/api/admin/tenants/acme/webhooks/ops/deliveries/1-0/redeliver";
    assert_eq!(admin_json(port, "POST", bad, None).await.0, 404);

    assert_eq!(
        admin_json(port, "DELETE", "/api/admin/tenants/acme/webhooks/ops", None)
            .await
            .0,
        204
    );
    assert_eq!(
        admin_json(port, "DELETE", "/api/admin/tenants/acme/webhooks/ops", None)
            .await
            .0,
        404
    );
    let path = "/api/admin/tenants/acme/webhooks/ops/deliveries";
    assert_eq!(admin_json(port, "GET", path, None).await.0, 404);
}

/// An endpoint answering 500 twice gets the event on the third attempt with the same id, the
/// log showing each; one answering 410 is disabled after one attempt; one that never answers
/// 2xx is tried 1 + 3 times (the test schedule) and the delivery ends `failed`.
async fn failing_endpoints_are_retried_with_the_same_id_then_fail_or_are_disabled(
    backend: Backend,
) {
    let d = Deployment::start(backend, FAST).await;
    let _worker = d.worker(WORKER_ARGS);
    let port = d.port();
    let flaky = WebhookReceiver::start(SECRET, &["--fail-first", "2"]).await;
    let gone = WebhookReceiver::start(SECRET, &["--status", "410"]).await;
    let down = WebhookReceiver::start(SECRET, &["--fail-first", "100"]).await;
    let moved = WebhookReceiver::start(SECRET, &["--status", "302"]).await;
    for (name, rx) in [
        ("flaky", &flaky),
        ("gone", &gone),
        ("down", &down),
        ("moved", &moved),
    ] {
        let (status, body) = register(
            port,
            "acme",
            name,
            json!({"url": rx.url(), "secret": SECRET}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let event = publish(
        port,
        "acme",
        "license_expired",
        json!({"expiredAt": "2026-12-01T00:00:00Z"}),
    )
    .await;
    let id = format!("acme:{}", event["id"].as_str().unwrap());

    let got = received(&flaky, 3, Duration::from_secs(10)).await;
    let answers: Vec<&Value> = got.iter().map(|r| &r["answered"]).collect();
    assert_eq!(answers, [&json!(500), &json!(500), &json!(200)]);
    assert!(
        got.iter().all(|r| r["id"] == id && r["verified"] == true),
        "{got:?}"
    );
    let log = eventually(Duration::from_secs(5), "flaky log", || async {
        let log = log_of(port, "acme", "flaky").await;
        (log.len() == 3).then_some(log)
    })
    .await;
    let statuses: Vec<(&Value, &Value)> =
        log.iter().map(|e| (&e["status"], &e["attempt"])).collect();
    assert_eq!(
        statuses,
        [
            (&json!("delivered"), &json!(3)),
            (&json!("retrying"), &json!(2)),
            (&json!("retrying"), &json!(1))
        ]
    );
    assert!(log[1]["nextAttemptAt"].is_string() && log[1]["httpStatus"] == 500);

    let log = eventually(Duration::from_secs(10), "down fails", || async {
        let log = log_of(port, "acme", "down").await;
        (log.first().is_some_and(|e| e["status"] == "failed")).then_some(log)
    })
    .await;
    assert_eq!(log.len(), 4, "1 + 3 retries: {log:?}");
    assert_eq!(down.received().len(), 4);

    // A redirect is an answer, not a success, and is not followed.
    let log = eventually(Duration::from_secs(10), "moved fails", || async {
        let log = log_of(port, "acme", "moved").await;
        (log.first().is_some_and(|e| e["status"] == "failed")).then_some(log)
    })
    .await;
    assert_eq!(log[0]["httpStatus"], 302, "{log:?}");
    assert!(
        moved.received().iter().all(|r| r["path"] == "/hook"),
        "never followed to /redirected"
    );

    assert_eq!(gone.received().len(), 1);
    assert_eq!(log_of(port, "acme", "gone").await[0]["status"], "gone");
    let (_, list) = admin_json(port, "GET", "/api/admin/tenants/acme/webhooks", None).await;
    let disabled: HashMap<&str, &Value> = list["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["name"].as_str().unwrap(), &w["enabled"]))
        .collect();
    assert_eq!(disabled["gone"], &json!(false), "{list}");
    assert_eq!(disabled["flaky"], &json!(true));
    publish(
        port,
        "acme",
        "license_expired",
        json!({"expiredAt": "2026-12-02T00:00:00Z"}),
    )
    .await;
    received(&flaky, 4, Duration::from_secs(5)).await;
    assert_eq!(gone.received().len(), 1, "a disabled endpoint gets nothing");
}

/// Without `WEBHOOK_ALLOW_PRIVATE`, URLs to loopback, private and link-local addresses, names
/// resolving to loopback, and plain http:// are refused at registration (400 naming `url`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_addresses_are_refused_at_registration() {
    let d = Deployment::start(Backend::Memory, &[]).await;
    for url in [
        "https://127.0.0.1/hook",
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/hook",
        "https://localhost/hook",
        "http://93.184.216.34/hook",
    ] {
        let (status, body) =
            register(d.port(), "acme", "x", json!({"url": url, "secret": SECRET})).await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["error"]["field"], "url", "{url}: {body}");
    }
    for (body, field) in [
        (json!({"url": "https://example.com/h"}), "secret"),
        (
            json!({"url": "https://example.com/h", "secret": "whsec_c2hvcnQ="}),
            "secret",
        ),
        (
            json!({"url": "https://example.com/h", "secret": SECRET, "types": ["nope"]}),
            "types",
        ),
        (
            json!({"url": "https://example.com/h", "secret": SECRET, "retries": 3}),
            "retries",
        ),
    ] {
        let (status, answer) = register(d.port(), "acme", "x", body).await;
        assert_eq!(
            (status, answer["error"]["field"].as_str()),
            (400, Some(field)),
            "{answer}"
        );
    }
    let (status, _) = register(d.port(), "acme", "bad/name", json!({})).await;
    assert_eq!(status, 404, "not a route");
    let (status, _) = register(d.port(), "acme", "bad name", json!({})).await;
    assert_eq!(status, 400);
}

/// The delivery-time check: an endpoint stored straight into Redis (as if registered with the
/// flag, or before its name pointed inward) is not reached by a worker without the flag, by
/// address or by a name resolving to loopback; its log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_the_flag_refuses_internal_addresses_at_delivery() {
    let redis = Redis::start();
    let node = Gateway::start(GatewayOptions::redis(&redis)).await;
    let _worker = Gateway::worker(
        &redis,
        &["--interval", "3600", "--delivery-retry-schedule", "60"],
    );
    let rx = WebhookReceiver::start(SECRET, &[]).await;
    let r = redis.client().await;
    for (name, url) in [
        ("literal", rx.url().replace("http://", "https://")),
        ("private", "https://10.0.0.1/hook".to_owned()),
        (
            "metadata",
            "https://169.254.169.254/latest/meta-data/".to_owned(),
        ),
        ("plain", rx.url()),
        ("named", format!("https://localhost:{}/hook", rx.port)),
    ] {
        let stored = json!({"url": url, "secrets": [SECRET], "types": null, "minSeverity": "info", "enabled": true});
        let _: () = r
            .hset("license:webhooks:{acme}", (name, stored.to_string()))
            .await
            .unwrap();
    }
    publish(
        node.port,
        "acme",
        "license_expired",
        json!({"expiredAt": "2026-12-01T00:00:00Z"}),
    )
    .await;
    for name in ["literal", "private", "metadata", "plain", "named"] {
        let log = eventually(
            Duration::from_secs(10),
            "refused attempt logged",
            || async {
                let log = log_of(node.port, "acme", name).await;
                (!log.is_empty()).then_some(log)
            },
        )
        .await;
        assert_eq!(log[0]["status"], "retrying", "{name}: {log:?}");
        assert_eq!(log[0]["httpStatus"], Value::Null, "{name}");
        println!("{name}: {}", log[0]["error"]);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.received().is_empty(), "nothing reached the receiver");
}

/// Three workers share the deliveries of 120 events to a slow receiver; one is SIGKILLed while
/// its attempts are in flight. Every event arrives; the log holds each (event, attempt) once and
/// exactly one `delivered` per event; only the killed worker's in-flight attempts may reach the
/// receiver a second time (with the same webhook-id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_delivery_loses_nothing_and_no_attempt_runs_twice() {
    let redis = Redis::start();
    let node =
        Gateway::start(GatewayOptions::redis(&redis).env("WEBHOOK_ALLOW_PRIVATE", "true")).await;
    let rx = WebhookReceiver::start(SECRET, &["--delay-ms", "400"]).await;
    let (status, _) = register(
        node.port,
        "acme",
        "ops",
        json!({"url": rx.url(), "secret": SECRET}),
    )
    .await;
    assert_eq!(status, 201);
    let mut workers: Vec<Gateway> = (0..3)
        .map(|_| Gateway::worker(&redis, WORKER_ARGS))
        .collect();
    let mut ids = Vec::new();
    for n in 0..120 {
        let event = publish(
            node.port,
            "acme",
            "license_updated",
            json!({"changes": [format!("c{n}")]}),
        )
        .await;
        ids.push(format!("acme:{}", event["id"].as_str().unwrap()));
    }
    // Let every worker take its share, then kill one mid-flight.
    tokio::time::sleep(Duration::from_millis(600)).await;
    workers[1].kill();
    let expected: HashSet<String> = ids.iter().cloned().collect();
    eventually(Duration::from_secs(30), "every event received", || async {
        let got: HashSet<String> = rx
            .received()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        (got.is_superset(&expected)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = rx.received();
    assert!(got.iter().all(|r| r["verified"] == true));
    let duplicates = got.len() - expected.len();
    let log = log_of(node.port, "acme", "ops").await;
    let mut attempts = HashSet::new();
    let mut delivered: HashMap<String, usize> = HashMap::new();
    for entry in &log {
        let key = (
            entry["eventId"].as_str().unwrap().to_owned(),
            entry["attempt"].as_u64().unwrap(),
        );
        assert!(attempts.insert(key.clone()), "attempt {key:?} logged twice");
        if entry["status"] == "delivered" {
            *delivered.entry(key.0).or_default() += 1;
        }
    }
    assert_eq!(
        delivered.len(),
        120,
        "each event delivered: {}",
        delivered.len()
    );
    assert!(
        delivered.values().all(|n| *n == 1),
        "one delivered entry per event"
    );
    println!(
        "120 events, 3 workers, one killed: {} requests ({duplicates} repeated after the kill), {} log entries",
        got.len(),
        log.len()
    );
    assert!(
        duplicates <= 32,
        "only the killed worker's in-flight attempts repeat: {duplicates}"
    );
    for w in &mut workers {
        w.kill();
    }
}

/// A license that expires while nobody is connected: the validator publishes `license_expired`
/// at its deadline, and the endpoint has it within 2 s of that deadline.
async fn a_license_expiry_reaches_the_endpoint_within_2_s_of_its_deadline(backend: Backend) {
    let d = Deployment::start(backend, FAST).await;
    let _worker = d.worker(WORKER_ARGS);
    let port = d.port();
    let rx = WebhookReceiver::start(SECRET, &[]).await;
    let hook = json!({"url": rx.url(), "secret": SECRET, "minSeverity": "error"});
    assert_eq!(register(port, "acme", "pager", hook).await.0, 201);
    let expires = rfc3339_in(3);
    let doc = json!({"tenantId": "acme", "plan": "pro", "expiresAt": expires});
    let (status, body) =
        admin_json(port, "PUT", "/api/admin/tenants/acme/license", Some(doc)).await;
    assert_eq!(status, 201, "{body}");
    let got = received(&rx, 1, Duration::from_secs(10)).await;
    let event: Value = serde_json::from_str(got[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(event["type"], "license_expired", "only errors: {event}");
    let deadline =
        time::OffsetDateTime::parse(&expires, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp() as f64;
    let lag = got[0]["at"].as_f64().unwrap() - deadline;
    println!("license_expired reached the endpoint {lag:.3} s after the deadline");
    assert!((0.0..2.0).contains(&lag), "{lag:.3} s after the deadline");
}
