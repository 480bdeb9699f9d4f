//! The notification center across nodes: three gateways behind nginx (round robin, no
//! stickiness) on one Redis. A user's read state and preferences, changed through any node,
//! reach that user's tabs on every node within a second, and no one else's.

use std::time::{Duration, Instant};

use harness::*;
use serde_json::{Value, json};

const QUIET: Duration = Duration::from_millis(500);
/// What the contract promises for a change to reach every tab.
const SYNC: Duration = Duration::from_secs(1);

/// Waits for the next `notification_state` on `tab` (skipping events), within `SYNC`.
async fn state_within(tab: &mut WsClient, started: Instant) -> Value {
    loop {
        let left = SYNC.saturating_sub(started.elapsed());
        match tab.read(left).await {
            Some(Read::Text(t)) => {
                let msg: Value = serde_json::from_str(&t).unwrap();
                if msg["type"] == "notification_state" {
                    return msg;
                }
            }
            other => panic!("no notification_state within {SYNC:?}: {other:?}"),
        }
    }
}

async fn call(port: u16, method: &str, path: &str, token: &str, body: Option<&str>) -> Value {
    let (status, text) = http(port, method, path, Some(token), body).await.unwrap();
    assert_eq!(status, 200, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_state_and_preferences_reach_every_tab_of_the_user_on_every_node() {
    let redis = Redis::start();
    let a = Gateway::start(GatewayOptions::redis(&redis)).await;
    let b = Gateway::start(GatewayOptions::redis(&redis)).await;
    let c = Gateway::start(GatewayOptions::redis(&redis)).await;
    let nginx = Nginx::start(&[a.port, b.port, c.port]).await;
    let (alice, bob) = (user_token("acme", "alice"), user_token("acme", "bob"));

    // Round robin: alice's three tabs land on three nodes, bob's two on two.
    let mut alice_tabs = Vec::new();
    let mut nodes = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let (tab, hello) = WsClient::connected(&nginx.ws_url(), &alice).await;
        nodes.insert(hello["node"].as_str().unwrap().to_owned());
        alice_tabs.push(tab);
    }
    assert_eq!(nodes.len(), 3, "alice's tabs are on every node: {nodes:?}");
    let mut bob_tabs = Vec::new();
    for _ in 0..2 {
        bob_tabs.push(WsClient::connected(&nginx.ws_url(), &bob).await.0);
    }

    let mut ids = Vec::new();
    for i in 0..3 {
        let e = publish(
            a.port,
            "acme",
            "license_updated",
            json!({"changes": [format!("c{i}")]}),
        )
        .await;
        ids.push(e["id"].as_str().unwrap().to_owned());
    }
    for tab in alice_tabs.iter_mut().chain(bob_tabs.iter_mut()) {
        assert_eq!(tab.drain(QUIET).await.len(), 3);
    }

    // Alice reads one, through whichever node nginx picks: all her tabs hear it within 1 s.
    let started = Instant::now();
    let reply = call(
        nginx.port,
        "POST",
        &format!("/api/notifications/{}/read", ids[1]),
        &alice,
        None,
    )
    .await;
    assert_eq!(reply["unreadCount"], 2);
    let mut slowest = Duration::ZERO;
    for tab in &mut alice_tabs {
        let state = state_within(tab, started).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(state["unreadCount"], 2);
        assert_eq!(state["changed"], json!([{"id": ids[1], "read": true}]));
        assert_eq!(state.get("id"), None, "not an event");
    }
    println!("read state reached alice's 3 tabs on 3 nodes in {slowest:?}");
    for tab in &mut bob_tabs {
        tab.expect_silence(QUIET).await;
    }
    assert_eq!(
        call(c.port, "GET", "/api/notifications", &bob, None).await["unreadCount"],
        3
    );

    // Read-all through node c, then one unread again through node b.
    let started = Instant::now();
    let reply = call(
        c.port,
        "POST",
        "/api/notifications/read-all",
        &alice,
        Some("{}"),
    )
    .await;
    assert_eq!(reply["unreadCount"], 0);
    for tab in &mut alice_tabs {
        let state = state_within(tab, started).await;
        assert_eq!(
            (&state["unreadCount"], &state["readUpTo"]),
            (&json!(0), &json!(ids[2]))
        );
    }
    let started = Instant::now();
    call(
        b.port,
        "POST",
        &format!("/api/notifications/{}/unread", ids[0]),
        &alice,
        None,
    )
    .await;
    for tab in &mut alice_tabs {
        let state = state_within(tab, started).await;
        assert_eq!(state["changed"], json!([{"id": ids[0], "read": false}]));
        assert_eq!(state["unreadCount"], 1);
    }
    for tab in &mut bob_tabs {
        tab.expect_silence(QUIET).await;
    }

    // A tab that reconnects and resumes after missing two events: its count is exact.
    alice_tabs.pop().unwrap().close().await;
    for i in 3..5 {
        publish(
            b.port,
            "acme",
            "license_updated",
            json!({"changes": [format!("c{i}")]}),
        )
        .await;
    }
    let resume = format!("{}?lastEventId={}", nginx.ws_url(), ids[2]);
    let (mut back, hello) = WsClient::connected(&resume, &alice).await;
    assert_eq!(hello["unreadCount"], 3, "one marked unread and two new");
    assert_eq!(back.drain(QUIET).await.len(), 2);
    assert_eq!(
        call(a.port, "GET", "/api/notifications", &alice, None).await["unreadCount"],
        3
    );
    alice_tabs.push(back);
    for tab in alice_tabs.iter_mut().chain(bob_tabs.iter_mut()) {
        tab.drain(QUIET).await;
    }

    // Preferences PUT through one node: the very next events already follow them on every
    // node (the change travels the tenant's channel ahead of them); errors still arrive.
    let prefs = json!({"mutedTypes": ["license_updated"]}).to_string();
    call(
        b.port,
        "PUT",
        "/api/notifications/preferences",
        &alice,
        Some(&prefs),
    )
    .await;
    publish(
        c.port,
        "acme",
        "license_updated",
        json!({"changes": ["plan"]}),
    )
    .await;
    publish(
        c.port,
        "acme",
        "license_expired",
        json!({"expiredAt": "2026-12-01T00:00:00Z"}),
    )
    .await;
    for tab in &mut alice_tabs {
        assert_eq!(types(&tab.drain(QUIET).await), ["license_expired"]);
    }
    for tab in &mut bob_tabs {
        assert_eq!(
            types(&tab.drain(QUIET).await),
            ["license_updated", "license_expired"]
        );
    }
    // The muted one arrived read: alice has 3 + the error unread; bob 6 + 2.
    assert_eq!(
        call(a.port, "GET", "/api/notifications", &alice, None).await["unreadCount"],
        4
    );
    assert_eq!(
        call(a.port, "GET", "/api/notifications", &bob, None).await["unreadCount"],
        7
    );
}
