//! Tokens from an identity provider that publishes rotating keys as JWKS: a real local
//! endpoint the test controls, rotating keys mid-run, going down, answering slowly or with
//! garbage, against a real gateway process.

use std::time::{Duration, Instant};

use harness::*;
use serde_json::json;

fn claims(tenant: &str) -> serde_json::Value {
    json!({"tenantId": tenant, "exp": now_secs() + 600})
}

/// Connects with `token`; `Ok` after `connected`, `Err` with the close code otherwise.
async fn connect(url: &str, token: &str) -> Result<WsClient, Option<(u16, String)>> {
    let mut client = ws_connect(url, Some(token), Carrier::Subprotocol).await;
    match client.read(WAIT).await {
        Some(Read::Text(text)) if text.contains("\"connected\"") => Ok(client),
        Some(Read::Close(close)) => Err(close),
        other => panic!("unexpected answer: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_without_a_restart_and_outages_refuse_nobody_known() {
    let dir = TempDir::new("lgw-jwks");
    let k1 = SigningKey::generate(&dir.0, "ec", "k1");
    let k2 = SigningKey::generate(&dir.0, "rsa", "k2");
    let idp = JwksServer::start(JwksMode::Down);
    let node = Gateway::spawn(
        GatewayOptions::memory()
            .without("JWT_SECRET")
            .env("JWT_JWKS_URL", idp.url())
            .env("JWT_JWKS_REFRESH_SECS", "2"),
    );

    // Not ready until a first key set is loaded.
    let readiness = eventually(WAIT, "readyz answers", || async {
        http(node.port, "GET", "/readyz", None, None).await.ok()
    })
    .await;
    assert_eq!(readiness.0, 503, "{}", readiness.1);
    assert!(readiness.1.contains("keys_unavailable"), "{}", readiness.1);
    idp.set_keys(&[&k1]);
    idp.set_mode(JwksMode::Serve);
    node.wait_ready().await;
    let url = node.ws_url();

    // A token of the published key connects; one of an unpublished key does not, and a token
    // without a kid never does.
    let mut open_k1 = connect(&url, &k1.sign(&claims("acme")))
        .await
        .expect("k1 connects");
    let refused = connect(&url, &k2.sign(&claims("acme"))).await.err();
    assert_eq!(refused, Some(Some((1008, "invalid token".to_owned()))));
    let no_kid = sign_claims(&claims("acme"));
    assert!(connect(&url, &no_kid).await.is_err());

    // Rotation: the provider adds k2; its tokens are accepted without a restart.
    idp.set_keys(&[&k1, &k2]);
    let mut open_k2 = eventually(WAIT, "a k2 token accepted", || async {
        connect(&url, &k2.sign(&claims("acme"))).await.ok()
    })
    .await;

    // Then k1 is removed: new k1 tokens are refused at connect and at refresh, while the
    // connection opened with k1 keeps its token until its exp and gets events.
    idp.set_keys(&[&k2]);
    eventually(WAIT, "k1 refused after its removal", || async {
        connect(&url, &k1.sign(&claims("acme"))).await.err()
    })
    .await;
    publish(
        node.port,
        "acme",
        "module_activated",
        json!({"module": "m"}),
    )
    .await;
    assert_eq!(open_k1.next_json().await["type"], "module_activated");
    assert_eq!(open_k2.next_json().await["type"], "module_activated");
    open_k1
        .send_text(&json!({"type": "auth", "token": k1.sign(&claims("acme"))}).to_string())
        .await;
    open_k1.expect_close(1008, "invalid token").await;
    open_k2
        .send_text(&json!({"type": "auth", "token": k2.sign(&claims("acme"))}).to_string())
        .await;
    assert_eq!(open_k2.next_json().await["type"], "auth_ok");

    // The endpoint down, slow or answering garbage: known keys keep working, and connects do
    // not wait for the endpoint (it answers slowly in 10 s; an unknown kid waits at most one
    // bounded fetch).
    for mode in [JwksMode::Down, JwksMode::Garbage, JwksMode::Slow] {
        idp.set_mode(mode);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let started = Instant::now();
        let client = connect(&url, &k2.sign(&claims("acme"))).await;
        assert!(client.is_ok(), "{mode:?}: a known key still connects");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{mode:?}: {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        assert!(
            connect(&url, &k1.sign(&claims("acme"))).await.is_err(),
            "{mode:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{mode:?}: {:?}",
            started.elapsed()
        );
        let (status, _) = http(node.port, "GET", "/readyz", None, None).await.unwrap();
        assert_eq!(
            status, 200,
            "{mode:?}: the last key set keeps the node ready"
        );
    }
}
