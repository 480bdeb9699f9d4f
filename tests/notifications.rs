//! The notification center: stored notifications, per-user read state kept in sync on every
//! connection, preferences applied at fan-out, per-connection filters, retention, stats (the
//! tenant thresholds are in `licenses.rs`, the browser's bell in `browser.rs`).

use std::time::Duration;

use harness::*;
use serde_json::{Value, json};

every_engine!(
    connection_filters_narrow_live_events_and_resume,
    read_state_is_per_user_and_listed_newest_first,
    bad_notification_requests_are_refused_by_field,
    preferences_mute_live_and_keep_muted_ones_read,
    retention_and_the_per_tenant_cap_drop_the_oldest,
);
// The scripts' stats keys are derived inside Lua: on a cluster they must share the tenant's slot.
on_cluster!(
    read_state_is_per_user_and_listed_newest_first,
    preferences_mute_live_and_keep_muted_ones_read,
);

const QUIET: Duration = Duration::from_millis(500);

/// `(type, data.module)` of each event a client received.
fn kinds(events: &[Value]) -> Vec<(String, Option<String>)> {
    events
        .iter()
        .map(|e| {
            let module = e["data"]["module"].as_str().map(str::to_owned);
            (e["type"].as_str().unwrap().to_owned(), module)
        })
        .collect()
}

fn kind(t: &str, module: Option<&str>) -> (String, Option<String>) {
    (t.to_owned(), module.map(str::to_owned))
}

/// `types`, `minSeverity` and `modules` on `/ws/license` narrow what a connection receives,
/// strictly (an `error` event outside the filter is not sent on it), live and on resume; bad
/// values refuse the upgrade with 400.
async fn connection_filters_narrow_live_events_and_resume(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let token = tenant_token("acme");
    let url = d.ws_url();
    let (mut all, _) = WsClient::connected(&url, &token).await;
    let narrow_url = format!("{url}?types=license_expired,module_deactivated&modules=reports");
    let (mut narrow, _) = WsClient::connected(&narrow_url, &token).await;
    let (mut severe, _) = WsClient::connected(&format!("{url}?minSeverity=warning"), &token).await;
    let (mut activations, _) =
        WsClient::connected(&format!("{url}?types=module_activated"), &token).await;

    let first = publish(
        d.port(),
        "acme",
        "license_updated",
        json!({"changes": ["plan"]}),
    )
    .await;
    for (t, data) in [
        (
            "module_deactivated",
            json!({"module": "payroll", "reason": "disabled"}),
        ),
        (
            "module_deactivated",
            json!({"module": "reports", "reason": "disabled"}),
        ),
        (
            "license_expired",
            json!({"expiredAt": "2026-12-01T00:00:00Z"}),
        ),
        (
            "usage_limit_warning",
            json!({"metric": "users", "used": 85, "limit": 100, "percent": 85}),
        ),
    ] {
        publish(d.port(), "acme", t, data).await;
    }
    assert_eq!(all.drain(QUIET).await.len(), 5);
    assert_eq!(
        kinds(&narrow.drain(QUIET).await),
        vec![
            kind("module_deactivated", Some("reports")),
            kind("license_expired", None),
        ]
    );
    assert_eq!(
        kinds(&severe.drain(QUIET).await),
        vec![
            kind("module_deactivated", Some("payroll")),
            kind("module_deactivated", Some("reports")),
            kind("license_expired", None),
            kind("usage_limit_warning", None),
        ]
    );
    // Strict: even the error event stays off a connection that asked for other types.
    activations.expect_silence(QUIET).await;

    // A resume replays only what the filter lets through.
    let id = first["id"].as_str().unwrap();
    let resume_url = format!("{url}?types=license_expired&lastEventId={id}");
    let (mut resumed, _) = WsClient::connected(&resume_url, &token).await;
    assert_eq!(
        kinds(&resumed.drain(QUIET).await),
        vec![kind("license_expired", None)]
    );

    for bad in ["types=nope", "minSeverity=fatal", "types=license_expired,"] {
        let refused = try_ws_connect(
            &format!("{url}?{bad}"),
            Some(&token),
            Carrier::Subprotocol,
            &[],
        )
        .await;
        match (bad, refused) {
            // A trailing comma is only an empty entry: accepted.
            ("types=license_expired,", Ok(_)) => {}
            (_, Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                assert_eq!(response.status(), 400, "{bad}");
            }
            (bad, other) => panic!("{bad}: {:?}", other.map(|_| "upgraded")),
        }
    }
}

/// `GET /api/notifications` as `token`'s user; panics unless 200.
async fn list(port: u16, token: &str, query: &str) -> Value {
    let (status, body) = http(
        port,
        "GET",
        &format!("/api/notifications{query}"),
        Some(token),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A POST as `token`'s user: status and JSON body.
async fn post(port: u16, token: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = http(port, "POST", path, Some(token), Some(body))
        .await
        .unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn ids(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Publishes `n` `license_updated` events to `tenant`; returns their ids, oldest first.
async fn publish_n(port: u16, tenant: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        let e = publish(
            port,
            tenant,
            "license_updated",
            json!({"changes": [format!("c{i}")]}),
        )
        .await;
        out.push(e["id"].as_str().unwrap().to_owned());
    }
    out
}

/// Every event is a notification; each user has their own read state (read, unread, read-all
/// up to an id or all), shown in the list, the counts and `connected.unreadCount`; pages run
/// newest first and `nextBefore` continues them; another tenant's ids are 404.
async fn read_state_is_per_user_and_listed_newest_first(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let port = d.port();
    let (a, b) = (user_token("acme", "alice"), user_token("acme", "bob"));
    let ids_published = publish_n(port, "acme", 5).await;
    let newest_first: Vec<String> = ids_published.iter().rev().cloned().collect();

    let all = list(port, &a, "").await;
    assert_eq!(ids(&all), newest_first);
    assert_eq!(all["unreadCount"], 5);
    assert_eq!(all["nextBefore"], Value::Null);
    assert!(
        all["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["read"] == false)
    );
    assert_eq!(
        all["items"][0]["type"], "license_updated",
        "the envelope itself"
    );

    // Pages of two: 5, 4 | 3, 2 | 1.
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let page = list(port, &a, &query).await;
        seen.extend(ids(&page));
        match page["nextBefore"].as_str() {
            Some(next) => query = format!("?limit=2&before={next}"),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);

    let [n1, n2, n3, n4, n5] = <[String; 5]>::try_from(ids_published.clone()).unwrap();
    let (status, body) = post(port, &a, &format!("/api/notifications/{n3}/read"), "").await;
    assert_eq!((status, &body["unreadCount"]), (200, &json!(4)));
    assert_eq!(
        list(port, &b, "").await["unreadCount"],
        5,
        "bob is untouched"
    );
    let unread_only = list(port, &a, "?unread=true").await;
    assert_eq!(
        ids(&unread_only),
        vec![n5.clone(), n4.clone(), n2.clone(), n1.clone()]
    );
    post(port, &a, &format!("/api/notifications/{n1}/read"), "").await;
    post(port, &a, &format!("/api/notifications/{n2}/read"), "").await;
    let (_, body) = post(port, &a, &format!("/api/notifications/{n2}/unread"), "").await;
    assert_eq!(body["unreadCount"], 3);
    let (_, body) = post(
        port,
        &a,
        "/api/notifications/read-all",
        &json!({"upTo": n4}).to_string(),
    )
    .await;
    assert_eq!(body["unreadCount"], 1, "only n5 is left");
    let flags: Vec<bool> = list(port, &a, "").await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["read"].as_bool().unwrap())
        .collect();
    assert_eq!(flags, [false, true, true, true, true]);

    // connected carries the count for a token with a user, not for one without.
    let (_, hello) = WsClient::connected(&d.ws_url(), &a).await;
    assert_eq!(hello["unreadCount"], 1);
    let (_, hello) = WsClient::connected(&d.ws_url(), &b).await;
    assert_eq!(hello["unreadCount"], 5);
    let (_, hello) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    assert_eq!(hello.get("unreadCount"), None);

    let (_, body) = post(port, &a, "/api/notifications/read-all", "{}").await;
    assert_eq!(body["unreadCount"], 0);
    let (_, body) = post(port, &b, "/api/notifications/read-all", "").await;
    assert_eq!(body["unreadCount"], 0);

    // Another tenant's notification is not found, nor is a malformed or unknown id.
    let other = publish(port, "globex", "license_updated", json!({"changes": ["x"]})).await;
    let other = other["id"].as_str().unwrap();
    for id in [other, "nope", "1-0", "99999999999999-0"] {
        let (status, body) = post(port, &a, &format!("/api/notifications/{id}/read"), "").await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (404, &json!("not_found")),
            "{id}"
        );
    }
    let (status, _) = post(
        port,
        &a,
        "/api/notifications/read-all",
        &json!({"upTo": other}).to_string(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        list(port, &user_token("globex", "alice"), "").await["unreadCount"],
        1
    );

    // Stats: five published, one read by both users at least.
    let (status, stats) = http(
        port,
        "GET",
        "/api/admin/tenants/acme/notifications/stats?days=7",
        Some(&admin_key()),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{stats}");
    let stats: Value = serde_json::from_str(&stats).unwrap();
    let updated = &stats["types"]["license_updated"];
    assert_eq!(updated["published"], 5, "{stats}");
    assert_eq!(updated["readBy"], 2, "{stats}");
    assert!(updated["medianSecondsToRead"].as_f64().is_some(), "{stats}");
    assert_eq!(stats["types"]["license_expired"]["published"], 0);
    // Counted without tenant or user labels: 3 reads, 1 unread, 3 read-alls (refusals are not).
    assert_eq!(
        metric(port, "license_gateway_notification_reads_total").await,
        7.0
    );
}

/// Tokens without a user, bad query values, bad preference bodies and other credentials are
/// refused with the status and field they deserve.
async fn bad_notification_requests_are_refused_by_field(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let port = d.port();
    let a = user_token("acme", "alice");
    let (status, body) = http(
        port,
        "GET",
        "/api/notifications",
        Some(&tenant_token("acme")),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("no_user"), "{body}");
    let (status, _) = http(port, "GET", "/api/notifications", None, None)
        .await
        .unwrap();
    assert_eq!(status, 401);
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=x", "limit"),
        ("before=yesterday", "before"),
        ("unread=maybe", "unread"),
        ("types=nope", "types"),
        ("minSeverity=fatal", "minSeverity"),
    ] {
        let (status, body) = http(
            port,
            "GET",
            &format!("/api/notifications?{query}"),
            Some(&a),
            None,
        )
        .await
        .unwrap();
        assert_eq!(status, 400, "{query}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["field"], field, "{query}");
    }
    let prefs = "/api/notifications/preferences";
    let (status, body) = http(port, "GET", prefs, Some(&a), None).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"mutedTypes": [], "minSeverity": "info", "modules": null})
    );
    for (body, field) in [
        (r#"{"mutedTypes":["nope"]}"#, "mutedTypes"),
        (r#"{"minSeverity":"loud"}"#, "minSeverity"),
        (r#"{"modules":"reports"}"#, "modules"),
        (r#"{"volume":11}"#, "volume"),
        ("[", "body"),
    ] {
        let (status, text) = http(port, "PUT", prefs, Some(&a), Some(body))
            .await
            .unwrap();
        assert_eq!(status, 400, "{body}: {text}");
        let text: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(text["error"]["field"], field, "{body}");
    }
    let big = format!(r#"{{"modules":[{}]}}"#, vec!["\"m\""; 30_000].join(","));
    let (status, _) = http(port, "PUT", prefs, Some(&a), Some(&big))
        .await
        .unwrap();
    assert_eq!(status, 413, "bodies are limited");
    for body in ["{\"upTo\":7}", "{\"all\":true}", "[]"] {
        let (status, _) = post(port, &a, "/api/notifications/read-all", body).await;
        assert_eq!(status, 400, "{body}");
    }
    // Stats are for admin keys only, over at most 366 days.
    let stats = "/api/admin/tenants/acme/notifications/stats";
    let (status, _) = http(port, "GET", stats, Some(&a), None).await.unwrap();
    assert_eq!(status, 403);
    for days in ["0", "367", "x"] {
        let path = format!("{stats}?days={days}");
        let (status, _) = http(port, "GET", &path, Some(&admin_key()), None)
            .await
            .unwrap();
        assert_eq!(status, 400, "days={days}");
    }
}

/// A PUT of preferences applies at once to the user's open connections (muted types and low
/// severities stop; errors still arrive; other users are untouched); what they mute from then
/// on is stored as read for that user; resume replays honour them.
async fn preferences_mute_live_and_keep_muted_ones_read(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let port = d.port();
    let (a, b) = (user_token("acme", "alice"), user_token("acme", "bob"));
    let before = publish(
        port,
        "acme",
        "module_activated",
        json!({"module": "reports"}),
    )
    .await;
    let (mut alice, _) = WsClient::connected(&d.ws_url(), &a).await;
    let (mut bob, _) = WsClient::connected(&d.ws_url(), &b).await;
    let body = json!({"mutedTypes": ["module_activated"], "minSeverity": "warning"}).to_string();
    let (status, text) = http(
        port,
        "PUT",
        "/api/notifications/preferences",
        Some(&a),
        Some(&body),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
    let (_, stored) = http(
        port,
        "GET",
        "/api/notifications/preferences",
        Some(&a),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&stored).unwrap(),
        json!({"mutedTypes": ["module_activated"], "minSeverity": "warning", "modules": null})
    );
    for (t, data) in [
        ("module_activated", json!({"module": "payroll"})),
        ("license_updated", json!({"changes": ["plan"]})),
        (
            "license_expired",
            json!({"expiredAt": "2026-12-01T00:00:00Z"}),
        ),
        (
            "usage_limit_warning",
            json!({"metric": "users", "used": 85, "limit": 100, "percent": 85}),
        ),
    ] {
        publish(port, "acme", t, data).await;
    }
    let got: Vec<String> = alice
        .drain(QUIET)
        .await
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, ["license_expired", "usage_limit_warning"]);
    assert_eq!(
        bob.drain(QUIET).await.len(),
        4,
        "bob's preferences are his own"
    );
    // The two muted after the PUT arrive read; the one before it stays unread.
    assert_eq!(list(port, &a, "").await["unreadCount"], 3);
    assert_eq!(list(port, &b, "").await["unreadCount"], 5);
    // A resume replays only what the preferences let through.
    let resume = format!(
        "{}?lastEventId={}",
        d.ws_url(),
        before["id"].as_str().unwrap()
    );
    let (mut resumed, hello) = WsClient::connected(&resume, &a).await;
    assert_eq!(hello["unreadCount"], 3);
    let replayed: Vec<String> = resumed
        .drain(QUIET)
        .await
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(replayed, ["license_expired", "usage_limit_warning"]);
    // Two events were kept from alice's one connection.
    assert_eq!(
        metric(port, "license_gateway_events_filtered_total").await,
        2.0
    );
    // Back to the defaults: everything arrives again.
    http(
        port,
        "PUT",
        "/api/notifications/preferences",
        Some(&a),
        Some("{}"),
    )
    .await
    .unwrap();
    publish(
        port,
        "acme",
        "module_activated",
        json!({"module": "reports"}),
    )
    .await;
    assert_eq!(alice.drain(QUIET).await.len(), 1);

    // Connections reached, as each node reports them every few seconds: license_expired went
    // live to alice and bob; module_activated to bob (payroll), then to all three (reports).
    let path = "/api/admin/tenants/acme/notifications/stats";
    eventually(
        Duration::from_secs(15),
        "delivery counts reported",
        || async {
            let (_, body) = http(port, "GET", path, Some(&admin_key()), None)
                .await
                .ok()?;
            let stats: Value = serde_json::from_str(&body).ok()?;
            let delivered = |t: &str| stats["types"][t]["delivered"].as_u64();
            (delivered("license_expired") == Some(2) && delivered("module_activated") == Some(4))
                .then_some(())
        },
    )
    .await;
}

/// `NOTIFICATION_MAX` keeps the newest; `NOTIFICATION_RETENTION_DAYS` drops the old, in the
/// list and the counts.
async fn retention_and_the_per_tenant_cap_drop_the_oldest(backend: Backend) {
    // 0.00004 days: 3.5 s.
    let d = Deployment::start(
        backend,
        &[
            ("NOTIFICATION_MAX", "4"),
            ("NOTIFICATION_RETENTION_DAYS", "0.00004"),
        ],
    )
    .await;
    let port = d.port();
    let a = user_token("acme", "alice");
    let published = publish_n(port, "acme", 6).await;
    let listed = list(port, &a, "").await;
    let newest: Vec<String> = published.iter().rev().take(4).cloned().collect();
    assert_eq!(ids(&listed), newest);
    assert_eq!(listed["unreadCount"], 4);
    let (status, _) = post(
        port,
        &a,
        &format!("/api/notifications/{}/read", published[0]),
        "",
    )
    .await;
    assert_eq!(status, 404, "dropped by the cap");
    tokio::time::sleep(Duration::from_millis(3600)).await;
    let listed = list(port, &a, "").await;
    assert_eq!(ids(&listed), Vec::<String>::new());
    assert_eq!(listed["unreadCount"], 0);
}
