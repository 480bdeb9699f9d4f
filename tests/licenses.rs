//! Licenses, the license API and the validator, against real processes: every event type with
//! its exact data, usage crossings, deadlines within 2 s, strict documents, the status view —
//! on both engines — and exactly-once notices with concurrent and crashing `worker --once` runs
//! on Redis.

use std::time::{Duration, Instant};

use fred::prelude::*;
use harness::*;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

both_engines!(
    tenant_thresholds_replace_the_nodes,
    license_changes_publish_module_and_update_events,
    usage_sequence_warns_exceeds_and_rearms_once_each,
    expiry_thresholds_and_module_expiry_on_change,
    deadline_fires_within_two_seconds,
    invalid_documents_are_refused_and_nothing_is_stored,
    license_status_view,
);

on_cluster!(
    license_changes_publish_module_and_update_events,
    usage_sequence_warns_exceeds_and_rearms_once_each,
    deadline_fires_within_two_seconds,
);

const DAY: i64 = 86_400;

async fn put_license(port: u16, tenant: &str, doc: &Value) -> (u16, Value) {
    let path = format!("/api/admin/tenants/{tenant}/license");
    let (status, body) = http(
        port,
        "PUT",
        &path,
        Some(&admin_key()),
        Some(&doc.to_string()),
    )
    .await
    .unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn put_usage(port: u16, tenant: &str, usage: &Value) -> (u16, Value) {
    let path = format!("/api/admin/tenants/{tenant}/usage");
    let (status, body) = http(
        port,
        "PUT",
        &path,
        Some(&admin_key()),
        Some(&usage.to_string()),
    )
    .await
    .unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn get_license(port: u16, token: &str) -> (u16, Value) {
    let (status, body) = http(port, "GET", "/api/license", Some(token), None)
        .await
        .unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// (type, severity, data) of each event.
fn summary(events: &[Value]) -> Vec<(String, String, Value)> {
    events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_owned(),
                e["severity"].as_str().unwrap_or_default().to_owned(),
                e["data"].clone(),
            )
        })
        .collect()
}

fn ev(t: &str, severity: &str, data: Value) -> (String, String, Value) {
    (t.to_owned(), severity.to_owned(), data)
}

const QUIET: Duration = Duration::from_millis(700);

async fn license_changes_publish_module_and_update_events(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let (mut client, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    let expires = rfc3339_in(365 * DAY);
    let mut doc = json!({
        "tenantId": "acme", "plan": "pro", "expiresAt": expires,
        "modules": {"analytics": {"enabled": true}, "payroll": {"enabled": false}},
        "limits": {"users": 100}
    });
    let (status, body) = put_license(d.port(), "acme", &doc).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["events"].as_array().unwrap().len(), 1);
    let events = client.drain(QUIET).await;
    assert_eq!(
        summary(&events),
        vec![ev(
            "license_updated",
            "info",
            json!({"changes": ["created"]})
        )]
    );
    assert_eq!(events[0]["id"], body["events"][0]);

    // The same document again: nothing.
    let (status, body) = put_license(d.port(), "acme", &doc).await;
    assert_eq!((status, body["events"].clone()), (200, json!([])));
    client.expect_silence(QUIET).await;

    doc["modules"]["payroll"]["enabled"] = json!(true);
    doc["modules"]["analytics"]["enabled"] = json!(false);
    doc["plan"] = json!("enterprise");
    doc["limits"]["users"] = json!(200);
    doc["modules"]["reports"] = json!({"enabled": true, "expiresAt": rfc3339_in(200 * DAY)});
    assert_eq!(put_license(d.port(), "acme", &doc).await.0, 200);
    assert_eq!(
        summary(&client.drain(QUIET).await),
        vec![
            ev(
                "module_deactivated",
                "warning",
                json!({"module": "analytics", "reason": "disabled"})
            ),
            ev("module_activated", "info", json!({"module": "payroll"})),
            ev("module_activated", "info", json!({"module": "reports"})),
            ev(
                "license_updated",
                "info",
                json!({"changes": [
                "plan", "limits.users", "modules.analytics.enabled", "modules.payroll.enabled",
                "modules.reports.enabled", "modules.reports.expiresAt"]})
            ),
        ]
    );

    doc["expiresAt"] = json!(rfc3339_in(400 * DAY));
    put_license(d.port(), "acme", &doc).await;
    assert_eq!(
        summary(&client.drain(QUIET).await),
        vec![ev(
            "license_updated",
            "info",
            json!({"changes": ["expiresAt"]})
        )]
    );

    let path = "/api/admin/tenants/acme/license";
    let (status, _) = http(d.port(), "DELETE", path, Some(&admin_key()), None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        summary(&client.drain(QUIET).await),
        vec![ev(
            "license_updated",
            "info",
            json!({"changes": ["deleted"]})
        )]
    );
    assert_eq!(get_license(d.port(), &tenant_token("acme")).await.0, 404);
    let (status, body) = http(d.port(), "DELETE", path, Some(&admin_key()), None)
        .await
        .unwrap();
    assert_eq!(status, 404, "{body}");
    let (status, _) = http(d.port(), "DELETE", path, Some(&tenant_token("acme")), None)
        .await
        .unwrap();
    assert_eq!(status, 403);
}

async fn usage_sequence_warns_exceeds_and_rearms_once_each(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let doc = json!({"tenantId": "acme", "plan": "pro", "expiresAt": rfc3339_in(365 * DAY), "limits": {"users": 100}});
    put_license(d.port(), "acme", &doc).await;
    let (mut client, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    let mut seen = Vec::new();
    for used in [79, 81, 85, 101, 70, 82] {
        let (status, body) = put_usage(d.port(), "acme", &json!({"users": used})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["usage"]["users"], used);
        for e in client.drain(QUIET).await {
            seen.push((
                used,
                e["type"].as_str().unwrap().to_owned(),
                e["severity"].clone(),
                e["data"].clone(),
            ));
        }
    }
    assert_eq!(
        seen,
        vec![
            (
                81,
                "usage_limit_warning".into(),
                json!("warning"),
                json!({"metric": "users", "used": 81, "limit": 100, "percent": 81.0})
            ),
            (
                101,
                "usage_limit_exceeded".into(),
                json!("error"),
                json!({"metric": "users", "used": 101, "limit": 100, "percent": 101.0})
            ),
            (
                82,
                "usage_limit_warning".into(),
                json!("warning"),
                json!({"metric": "users", "used": 82, "limit": 100, "percent": 82.0})
            ),
        ]
    );
    // Usage merges: another metric leaves users as it was.
    let (_, body) = put_usage(d.port(), "acme", &json!({"storage_gb": 1.5})).await;
    assert_eq!(body["usage"], json!({"storage_gb": 1.5, "users": 82}));
    for bad in [
        json!({"users": -1}),
        json!({"users": "5"}),
        json!([1]),
        json!({}),
    ] {
        let (status, body) = put_usage(d.port(), "acme", &bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"]["field"].is_string(), "{body}");
    }
    client.expect_silence(QUIET).await;
}

async fn expiry_thresholds_and_module_expiry_on_change(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let (mut client, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    // Created five days before expiry: one notice, for the smallest crossed threshold (7).
    let expires = rfc3339_in(5 * DAY - 60);
    let module_expiry = rfc3339_in(-60);
    let doc = json!({"tenantId": "acme", "plan": "pro", "expiresAt": expires,
                     "modules": {"analytics": {"enabled": true, "expiresAt": module_expiry}}});
    assert_eq!(put_license(d.port(), "acme", &doc).await.0, 201);
    assert_eq!(
        summary(&client.drain(QUIET).await),
        vec![
            ev("license_updated", "info", json!({"changes": ["created"]})),
            ev(
                "license_expiring",
                "warning",
                json!({"expiresAt": expires, "daysLeft": 5, "threshold": 7})
            ),
            ev(
                "module_deactivated",
                "warning",
                json!({"module": "analytics", "reason": "expired"})
            ),
            ev(
                "license_expired",
                "error",
                json!({"expiredAt": module_expiry, "module": "analytics"})
            ),
        ]
    );
    // Renewed: a new expiry date, 20 days ahead, owes its 30-day notice.
    let renewed = rfc3339_in(20 * DAY - 60);
    let doc = json!({"tenantId": "acme", "plan": "pro", "expiresAt": renewed});
    put_license(d.port(), "acme", &doc).await;
    let events = summary(&client.drain(QUIET).await);
    assert_eq!(
        events[0].0, "module_deactivated",
        "module removed while enabled"
    );
    assert_eq!(events[1].0, "license_updated");
    assert_eq!(
        events[2],
        ev(
            "license_expiring",
            "warning",
            json!({"expiresAt": renewed, "daysLeft": 20, "threshold": 30})
        )
    );
    assert_eq!(events.len(), 3);
}

async fn deadline_fires_within_two_seconds(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    // On Redis the looping worker publishes deadlines; the embedded engine does it in-process.
    let _worker = d.worker(&["--interval", "60"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut client, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    let expires = rfc3339_in(3);
    let module_expires = rfc3339_in(4);
    let doc = json!({"tenantId": "acme", "plan": "pro", "expiresAt": expires,
                     "modules": {"analytics": {"enabled": true, "expiresAt": module_expires}}});
    assert_eq!(put_license(d.port(), "acme", &doc).await.0, 201);
    let mut arrivals: Vec<(Value, OffsetDateTime)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while arrivals
        .iter()
        .filter(|(e, _)| e["type"] == "license_expired")
        .count()
        < 2
        && Instant::now() < deadline
    {
        if let Some(Read::Text(t)) = client.read(Duration::from_secs(1)).await {
            arrivals.push((serde_json::from_str(&t).unwrap(), OffsetDateTime::now_utc()));
        }
    }
    let types: Vec<&str> = arrivals
        .iter()
        .map(|(e, _)| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "license_updated",
            "license_expiring",
            "license_expiring",
            "license_expired",
            "module_deactivated",
            "license_expired"
        ],
        "{arrivals:?}"
    );
    for (event, arrived) in arrivals
        .iter()
        .filter(|(e, _)| e["type"] == "license_expired")
    {
        let due = event["data"]["expiredAt"].as_str().unwrap();
        let due = OffsetDateTime::parse(due, &Rfc3339).unwrap();
        let delay = *arrived - due;
        println!(
            "{backend:?}: {} {} arrived {:.3} s after its deadline",
            event["type"],
            event["data"],
            delay.as_seconds_f64()
        );
        assert!(delay >= time::Duration::ZERO, "not before the deadline");
        assert!(
            delay <= time::Duration::seconds(2),
            "within 2 s of the deadline, took {delay}"
        );
    }
    client.expect_silence(Duration::from_millis(1500)).await;
}

async fn invalid_documents_are_refused_and_nothing_is_stored(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let (mut client, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    let e = rfc3339_in(DAY * 100);
    let cases: Vec<(Value, &str)> = vec![
        (json!("just a string"), "body"),
        (json!({"plan": "pro", "expiresAt": e}), "tenantId"),
        (
            json!({"tenantId": "globex", "plan": "pro", "expiresAt": e}),
            "tenantId",
        ),
        (
            json!({"tenantId": "acme", "plan": ["pro"], "expiresAt": e}),
            "plan",
        ),
        (
            json!({"tenantId": "acme", "plan": "pro", "expiresAt": "next tuesday"}),
            "expiresAt",
        ),
        (
            json!({"tenantId": "acme", "plan": "pro", "expiresAt": "2027-13-01T00:00:00Z"}),
            "expiresAt",
        ),
        (
            json!({"tenantId": "acme", "plan": "pro", "expiresAt": e, "owner": "bob"}),
            "owner",
        ),
        (
            json!({"tenantId": "acme", "plan": "pro", "expiresAt": e, "limits": {"users": -5}}),
            "limits.users",
        ),
        (
            json!({"tenantId": "acme", "plan": "pro", "expiresAt": e, "limits": {"users": "many"}}),
            "limits.users",
        ),
        (
            json!({"tenantId": "acme", "plan": "pro", "expiresAt": e, "modules": {"a": {"enabled": 1}}}),
            "modules.a.enabled",
        ),
        (
            json!({"tenantId": "acme", "plan": "pro", "expiresAt": e, "modules": {"a": {"enabled": true, "expiresAt": "soon"}}}),
            "modules.a.expiresAt",
        ),
        (
            json!({"tenantId": "acme", "plan": "pro", "expiresAt": e, "modules": {"a": {"enabled": true, "price": 3}}}),
            "modules.a.price",
        ),
        (
            json!({"tenantId": "acme", "plan": "pro", "expiresAt": e, "notifications": {"expiryWarningDays": [0]}}),
            "notifications.expiryWarningDays",
        ),
        (
            json!({"tenantId": "acme", "plan": "pro", "expiresAt": e, "notifications": {"expiryWarningDays": [1,2,3,4,5,6,7,8,9,10,11]}}),
            "notifications.expiryWarningDays",
        ),
        (
            json!({"tenantId": "acme", "plan": "pro", "expiresAt": e, "notifications": {"usageWarningPercent": 101}}),
            "notifications.usageWarningPercent",
        ),
        (
            json!({"tenantId": "acme", "plan": "pro", "expiresAt": e, "notifications": {"emailTo": "x"}}),
            "notifications.emailTo",
        ),
    ];
    for (doc, field) in &cases {
        let (status, body) = put_license(d.port(), "acme", doc).await;
        assert_eq!(status, 400, "{doc}: {body}");
        assert_eq!(body["error"]["field"], *field, "{doc}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.len() > 5),
            "{body}"
        );
    }
    let (status, body) = http(
        d.port(),
        "PUT",
        "/api/admin/tenants/acme/license",
        Some(&admin_key()),
        Some("{not json"),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{body}");
    let huge = json!({"tenantId": "acme", "plan": "x".repeat(70 * 1024), "expiresAt": e});
    assert_eq!(put_license(d.port(), "acme", &huge).await.0, 413);
    assert_eq!(
        get_license(d.port(), &tenant_token("acme")).await.0,
        404,
        "nothing stored"
    );
    client.expect_silence(QUIET).await;

    // A stored document survives an invalid replacement untouched.
    let good = json!({"tenantId": "acme", "plan": "pro", "expiresAt": e});
    assert_eq!(put_license(d.port(), "acme", &good).await.0, 201);
    client.drain(QUIET).await;
    assert_eq!(put_license(d.port(), "acme", &cases[7].0).await.0, 400);
    assert_eq!(
        get_license(d.port(), &tenant_token("acme")).await.1["license"],
        good
    );
    client.expect_silence(QUIET).await;
}

async fn license_status_view(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let token = tenant_token("acme");
    let (status, body) = get_license(d.port(), &token).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("no_license"))
    );
    // An admin key is no tenant token.
    assert_eq!(get_license(d.port(), &admin_key()).await.0, 401);
    assert_eq!(
        http(d.port(), "GET", "/api/license", None, None)
            .await
            .unwrap()
            .0,
        401
    );

    let active = json!({"tenantId": "acme", "plan": "pro", "expiresAt": rfc3339_in(100 * DAY),
        "modules": {"analytics": {"enabled": true, "expiresAt": rfc3339_in(50 * DAY)}, "payroll": {"enabled": false},
                    "old": {"enabled": true, "expiresAt": rfc3339_in(-DAY)}},
        "limits": {"users": 100, "storage_gb": 50}});
    put_license(d.port(), "acme", &active).await;
    put_usage(d.port(), "acme", &json!({"users": 85, "storage_gb": 60})).await;
    let (status, view) = get_license(d.port(), &token).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["tenantId"], "acme");
    assert_eq!(view["status"], "active");
    assert_eq!(view["daysLeft"], 100);
    assert_eq!(view["license"], active);
    assert_eq!(view["usage"], json!({"users": 85, "storage_gb": 60}));
    assert_eq!(
        view["modules"]["analytics"],
        json!({"enabled": true, "locked": false, "reason": null, "expiresAt": active["modules"]["analytics"]["expiresAt"]})
    );
    assert_eq!(
        view["modules"]["payroll"],
        json!({"enabled": false, "locked": true, "reason": "disabled"})
    );
    assert_eq!(view["modules"]["old"]["reason"], "expired");
    assert_eq!(
        view["limits"]["users"],
        json!({"used": 85, "limit": 100, "percent": 85.0, "state": "warning"})
    );
    assert_eq!(
        view["limits"]["storage_gb"],
        json!({"used": 60, "limit": 50, "percent": 120.0, "state": "exceeded"})
    );

    let expiring =
        json!({"tenantId": "acme", "plan": "pro", "expiresAt": rfc3339_in(12 * DAY - 60)});
    put_license(d.port(), "acme", &expiring).await;
    let view = get_license(d.port(), &token).await.1;
    assert_eq!(
        (view["status"].clone(), view["daysLeft"].clone()),
        (json!("expiring"), json!(12))
    );

    let expired = json!({"tenantId": "acme", "plan": "pro", "expiresAt": rfc3339_in(-60),
        "modules": {"analytics": {"enabled": true}, "payroll": {"enabled": false}}});
    put_license(d.port(), "acme", &expired).await;
    let view = get_license(d.port(), &token).await.1;
    assert_eq!(
        (view["status"].clone(), view["daysLeft"].clone()),
        (json!("expired"), json!(0))
    );
    for module in ["analytics", "payroll"] {
        assert_eq!(view["modules"][module]["locked"], true);
        assert_eq!(view["modules"][module]["reason"], "license_expired");
    }
    // Another tenant sees only its own (none).
    assert_eq!(get_license(d.port(), &tenant_token("globex")).await.0, 404);
}

/// A tenant's own thresholds (`notifications` in its document) replace the node's: 59 days
/// before expiry it owes its 60-day notice (the node's largest is 30), and 85 % usage is below
/// its 90 % warning line (the node's is 80 %).
async fn tenant_thresholds_replace_the_nodes(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let (mut client, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    let expires = rfc3339_in(59 * DAY - 60);
    let doc = json!({"tenantId": "acme", "plan": "pro", "expiresAt": expires,
                     "limits": {"users": 100},
                     "notifications": {"expiryWarningDays": [60, 14], "usageWarningPercent": 90}});
    assert_eq!(put_license(d.port(), "acme", &doc).await.0, 201);
    assert_eq!(
        summary(&client.drain(QUIET).await),
        vec![
            ev("license_updated", "info", json!({"changes": ["created"]})),
            ev(
                "license_expiring",
                "warning",
                json!({"expiresAt": expires, "daysLeft": 59, "threshold": 60})
            ),
        ]
    );
    put_usage(d.port(), "acme", &json!({"users": 85})).await;
    assert!(
        client.drain(QUIET).await.is_empty(),
        "85 % is under the tenant's 90 %"
    );
    put_usage(d.port(), "acme", &json!({"users": 91})).await;
    let events = summary(&client.drain(QUIET).await);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "usage_limit_warning");
}

// --- exactly once with concurrent and crashing workers (Redis) --------------------------------

/// Writes a document that owes five notices right now (license expired, a module expired, one
/// limit exceeded, one in warning) straight into Redis, as another tool might.
async fn seed_owing_tenant(r: &Client, tenant: &str, past: &str) {
    let doc = json!({"tenantId": tenant, "plan": "pro", "expiresAt": past,
        "modules": {"analytics": {"enabled": true, "expiresAt": past}},
        "limits": {"users": 100, "storage_gb": 100}});
    let _: () = r
        .set(
            format!("license:doc:{{{tenant}}}"),
            doc.to_string(),
            None,
            None,
            false,
        )
        .await
        .unwrap();
    let _: () = r
        .hset(
            format!("license:usage:{{{tenant}}}"),
            [("users", "150"), ("storage_gb", "85")],
        )
        .await
        .unwrap();
}

async fn history_types(r: &Client, tenant: &str) -> Vec<String> {
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = r
        .xrange(format!("license:history:{{{tenant}}}"), "-", "+", None)
        .await
        .unwrap();
    let mut types: Vec<String> = entries
        .iter()
        .map(|(_, f)| {
            let e: Value = serde_json::from_str(&f["event"]).unwrap();
            match e["data"]["module"].as_str() {
                Some(m) => format!("{}({m})", e["type"].as_str().unwrap()),
                None => e["type"].as_str().unwrap().to_owned(),
            }
        })
        .collect();
    types.sort();
    types
}

fn owed() -> Vec<String> {
    let mut v: Vec<String> = [
        "license_expired",
        "license_expired(analytics)",
        "module_deactivated(analytics)",
        "usage_limit_exceeded",
        "usage_limit_warning",
    ]
    .map(String::from)
    .to_vec();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_concurrent_worker_runs_publish_each_notice_once() {
    let redis = Redis::start();
    five_concurrent_workers(&redis.url(), &redis.client().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_concurrent_worker_runs_on_a_cluster_publish_each_notice_once() {
    let cluster = RedisCluster::start();
    five_concurrent_workers(&cluster.url(), &cluster.client().await).await;
}

/// Five `worker --once` at the same time over 40 owing tenants: each notice once.
async fn five_concurrent_workers(url: &str, r: &Client) {
    let past = rfc3339_in(-3600);
    let tenants: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
    for t in &tenants {
        seed_owing_tenant(r, t, &past).await;
    }
    five_workers_at_once(url);
    for t in &tenants {
        assert_eq!(history_types(r, t).await, owed(), "tenant {t}");
    }
    // A later run owes nothing.
    let (status, _, _) = run_cli(&["worker", "--once"], &[("REDIS_URL", url)]);
    assert!(status.success());
    for t in &tenants {
        assert_eq!(history_types(r, t).await.len(), 5, "tenant {t}");
    }
}

/// Runs five `worker --once` at the same time; each must succeed.
fn five_workers_at_once(url: &str) {
    let workers: Vec<_> = (0..5)
        .map(|_| {
            let url = url.to_owned();
            std::thread::spawn(move || run_cli(&["worker", "--once"], &[("REDIS_URL", &url)]))
        })
        .collect();
    for w in workers {
        let (status, _, stderr) = w.join().unwrap();
        assert!(status.success(), "worker --once failed: {stderr}");
    }
}

/// Tenants with `expiryWarningDays: [60, 14]` get exactly those notices, once each, from five
/// concurrent workers: at 59 days the 60-day one, and after a change of expiry to 13 days
/// ahead the 14-day one (the node's own thresholds would have said nothing, then 30).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_concurrent_workers_honour_tenant_thresholds_once() {
    let redis = Redis::start();
    let r = redis.client().await;
    let tenants: Vec<String> = (0..20).map(|i| format!("th{i}")).collect();
    let store = |expires: String| {
        let r = r.clone();
        let tenants = tenants.clone();
        async move {
            for t in &tenants {
                let doc = json!({"tenantId": t, "plan": "pro", "expiresAt": expires,
                                 "notifications": {"expiryWarningDays": [60, 14]}});
                let _: () = r
                    .set(
                        format!("license:doc:{{{t}}}"),
                        doc.to_string(),
                        None,
                        None,
                        false,
                    )
                    .await
                    .unwrap();
            }
        }
    };
    let thresholds = |r: Client, t: String| async move {
        let entries: Vec<(String, std::collections::HashMap<String, String>)> = r
            .xrange(format!("license:history:{{{t}}}"), "-", "+", None)
            .await
            .unwrap();
        entries
            .iter()
            .map(|(_, f)| serde_json::from_str::<Value>(&f["event"]).unwrap())
            .map(|e| {
                (
                    e["type"].as_str().unwrap().to_owned(),
                    e["data"]["threshold"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    store(rfc3339_in(59 * DAY - 60)).await;
    five_workers_at_once(&redis.url());
    for t in &tenants {
        let expected = vec![("license_expiring".to_owned(), json!(60))];
        assert_eq!(
            thresholds(r.clone(), t.clone()).await,
            expected,
            "tenant {t}"
        );
    }
    store(rfc3339_in(13 * DAY - 60)).await;
    five_workers_at_once(&redis.url());
    five_workers_at_once(&redis.url());
    for t in &tenants {
        let expected = vec![
            ("license_expiring".to_owned(), json!(60)),
            ("license_expiring".to_owned(), json!(14)),
        ];
        assert_eq!(
            thresholds(r.clone(), t.clone()).await,
            expected,
            "tenant {t}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_pass_then_rerun_skips_nothing_and_repeats_nothing() {
    let redis = Redis::start();
    let r = redis.client().await;
    let past = rfc3339_in(-3600);
    let tenants: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
    for t in &tenants {
        seed_owing_tenant(&r, t, &past).await;
    }
    let base: i64 = r.dbsize().await.unwrap();
    let mut worker = Gateway::spawn_args(&["worker", "--once"], GatewayOptions::redis(&redis));
    // Kill it once it has visibly started publishing (new history and notice keys appear).
    loop {
        let size: i64 = r.dbsize().await.unwrap();
        if size >= base + 40 {
            break;
        }
        assert!(
            worker.running(),
            "worker finished before it could be killed:\n{}",
            worker.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    worker.kill();
    let mut done = 0;
    for t in &tenants {
        let types = history_types(&r, t).await;
        if !types.is_empty() {
            done += 1;
        }
        // No duplicate so far either.
        let mut dedup = types.clone();
        dedup.dedup();
        assert_eq!(dedup, types, "tenant {t}");
    }
    println!("killed after {done} of {} tenants", tenants.len());
    assert!(
        done > 0 && done < tenants.len(),
        "the kill landed mid-pass ({done} done)"
    );

    let (status, _, stderr) = run_cli(&["worker", "--once"], &[("REDIS_URL", &redis.url())]);
    assert!(status.success(), "{stderr}");
    for t in &tenants {
        assert_eq!(history_types(&r, t).await, owed(), "tenant {t}");
    }
}

#[test]
fn worker_configuration_errors() {
    let (status, _, stderr) = run_cli(&["worker", "--once"], &[]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("REDIS_URL"), "{stderr}");
    for (var, value) in [
        ("EXPIRY_WARNING_DAYS", "30,x"),
        ("USAGE_WARNING_PERCENT", "0"),
        ("USAGE_WARNING_PERCENT", "abc"),
    ] {
        let (status, _, stderr) = run_cli(
            &["worker", "--once"],
            &[("REDIS_URL", "redis://127.0.0.1:1"), (var, value)],
        );
        assert_eq!(status.code(), Some(2), "{var}={value}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(var), "{stderr}");
    }
}
