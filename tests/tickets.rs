//! Connection tickets (SPEC §10, the first part of #18): a tenant token buys a single-use
//! ticket valid 30 s on any node, accepted as `?ticket=` on the WebSocket, so a JWT never goes
//! in a URL; a used or unknown ticket is refused like a bad token, and tickets never reach the
//! logs (the harness checks every process's log for every remembered secret).

use fred::prelude::*;
use harness::*;
use serde_json::Value;

both_engines!(a_ticket_opens_one_connection_and_is_refused_after);

async fn ticket(port: u16, bearer: Option<&str>) -> (u16, Value) {
    let (status, text) = http(port, "POST", "/api/connect-ticket", bearer, Some(""))
        .await
        .unwrap();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if let Some(t) = body["ticket"].as_str() {
        // A ticket in any log fails the test, like a token.
        remember(t);
    }
    (status, body)
}

async fn a_ticket_opens_one_connection_and_is_refused_after(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let (status, body) = ticket(d.port(), Some(&user_token("acme", "alice"))).await;
    assert_eq!(status, 200, "{body}");
    let t = body["ticket"].as_str().unwrap().to_owned();
    let now = now_secs() * 1000;
    let expires = body["expiresAt"].as_u64().unwrap();
    assert!(
        expires > now && expires <= now + 31_000,
        "valid 30 s: {body}"
    );

    let url = format!("{}?ticket={t}", d.ws_url());
    let mut client = ws_connect(&url, None, Carrier::Subprotocol).await;
    let hello = client.next_json().await;
    assert_eq!(
        (&hello["type"], &hello["tenantId"]),
        (&"connected".into(), &"acme".into())
    );
    assert_eq!(hello["unreadCount"], 0, "the ticket carries the user");

    // Single use; an unknown ticket is no better.
    for url in [url.clone(), format!("{}?ticket=nope", d.ws_url())] {
        let mut again = ws_connect(&url, None, Carrier::Subprotocol).await;
        again.expect_close(1008, "invalid token").await;
    }
    // Only a tenant token buys one.
    assert_eq!(ticket(d.port(), None).await.0, 401);
    assert_eq!(ticket(d.port(), Some(&admin_key())).await.0, 401);
    assert_eq!(ticket(d.port(), Some("not.a.jwt")).await.0, 401);
}

/// Issued by one node, used on another; stored in Redis under its digest only, expiring 30 s
/// after issue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_from_one_node_opens_a_connection_on_another() {
    let redis = Redis::start();
    let a = Gateway::start(GatewayOptions::redis(&redis)).await;
    let b = Gateway::start(GatewayOptions::redis(&redis)).await;
    let (status, body) = ticket(a.port, Some(&tenant_token("acme"))).await;
    assert_eq!(status, 200);
    let t = body["ticket"].as_str().unwrap();
    let keys = || -> Vec<String> {
        harness::redis::redis_cli(redis.port, &["--scan", "--pattern", "license:ticket:*"])
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let stored = keys();
    assert_eq!(stored.len(), 1);
    assert!(
        !stored[0].contains(t),
        "stored by digest, not the ticket itself"
    );
    let r = redis.client().await;
    let ttl: i64 = r.pttl(&stored[0]).await.unwrap();
    assert!(
        ttl > 25_000 && ttl <= 30_000,
        "expires 30 s after issue: {ttl} ms"
    );

    let url = format!("{}?ticket={t}", b.ws_url());
    let mut client = ws_connect(&url, None, Carrier::Subprotocol).await;
    let hello = client.next_json().await;
    assert_eq!(hello["type"], "connected");
    assert_eq!(hello["node"], format!("node-{}", b.port));
    assert!(keys().is_empty(), "taken on use");
}
