//! Credentials as an attacker would try them, against real gateway processes: admin keys apart
//! from client tokens, key rotation, the token policy at connect and at refresh, and no secret
//! in `--help`.

use std::time::Duration;

use harness::*;
use serde_json::{Value, json};

/// Every admin route, with a body it accepts.
fn admin_routes() -> Vec<(&'static str, &'static str, Option<Value>)> {
    let license =
        json!({"tenantId": "globex", "plan": "pro", "expiresAt": rfc3339_in(86_400 * 90)});
    vec![
        (
            "POST",
            "/api/admin/tenants/globex/events",
            Some(json!({"type": "license_expired"})),
        ),
        ("PUT", "/api/admin/tenants/globex/license", Some(license)),
        (
            "PUT",
            "/api/admin/tenants/globex/usage",
            Some(json!({"users": 1})),
        ),
        ("DELETE", "/api/admin/tenants/globex/license", None),
        ("GET", "/api/admin/stats", None),
        (
            "POST",
            "/api/admin/tenants/globex/disconnect",
            Some(json!({})),
        ),
    ]
}

async fn call(port: u16, method: &str, path: &str, credential: &str, body: Option<&Value>) -> u16 {
    let body = body.map(Value::to_string);
    http(port, method, path, Some(credential), body.as_deref())
        .await
        .expect("request")
        .0
}

/// A tenant token, even one claiming `role: admin`, gets 403 on every admin route and changes
/// nothing; the admin key works as a bearer and as `X-API-Key`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_token_never_grants_admin_rights() {
    let node = Gateway::start(GatewayOptions::memory()).await;
    let now = now_secs();
    let forged = sign_claims(&json!({"tenantId": "acme", "role": "admin", "exp": now + 600}));
    for (method, path, body) in admin_routes() {
        for token in [&forged, &tenant_token("globex")] {
            let status = call(node.port, method, path, token, body.as_ref()).await;
            assert_eq!(status, 403, "{method} {path}");
        }
    }
    let (status, _) = http(
        node.port,
        "GET",
        "/api/license",
        Some(&tenant_token("globex")),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 404, "nothing was stored for globex");
    let (_, _, license) = &admin_routes()[1];
    let status = call(
        node.port,
        "PUT",
        "/api/admin/tenants/globex/license",
        ADMIN_KEY,
        license.as_ref(),
    )
    .await;
    assert_eq!(status, 201);
    let status = harness::http::client()
        .get(node.http_url("/api/admin/stats"))
        .header("X-API-Key", ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

/// Several keys are valid at once; after a restart without the old key, it gets 401. Without
/// any key configured, admin routes answer 401 to everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_keys_rotate_without_downtime() {
    let old = ADMIN_KEY;
    let new = "rotated-admin-key-0123456789-abcdefghij";
    let both = GatewayOptions::memory().env("ADMIN_API_KEYS", format!("{old},{new}"));
    let mut node = Gateway::start(both).await;
    for key in [old, new] {
        assert_eq!(
            call(node.port, "GET", "/api/admin/stats", key, None).await,
            200
        );
    }
    node.terminate(Duration::from_secs(10)).await;
    let rotated = Gateway::start(GatewayOptions::memory().env("ADMIN_API_KEYS", new)).await;
    assert_eq!(
        call(rotated.port, "GET", "/api/admin/stats", new, None).await,
        200
    );
    assert_eq!(
        call(rotated.port, "GET", "/api/admin/stats", old, None).await,
        401
    );
    let keyless = Gateway::start(GatewayOptions::memory().without("ADMIN_API_KEYS")).await;
    for key in [old, new] {
        assert_eq!(
            call(keyless.port, "GET", "/api/admin/stats", key, None).await,
            401
        );
    }
}

/// The token policy, at connect and at in-band refresh: no `exp`, or `exp` beyond
/// `JWT_MAX_TTL_SECS`, is refused with 1008 `invalid token`; the previous HMAC secret is still
/// accepted during a rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_policy_holds_at_connect_and_at_refresh() {
    let previous = "previous-secret-0123456789-abcdefghijkl";
    let node = Gateway::start(
        GatewayOptions::memory()
            .env("JWT_MAX_TTL_SECS", "3600")
            .env("JWT_SECRET_PREVIOUS", previous),
    )
    .await;
    let url = node.ws_url();
    let now = now_secs();
    let refused = [
        sign_claims(&json!({"tenantId": "acme"})),
        sign_claims(&json!({"tenantId": "acme", "exp": now + 3700})),
        sign_claims(&json!({"tenantId": "acme", "exp": 32_503_680_000u64})),
    ];
    for token in &refused {
        let mut client = ws_connect(&url, Some(token), Carrier::Subprotocol).await;
        client.expect_close(1008, "invalid token").await;
    }
    let old_secret = sign_with(
        jsonwebtoken::Algorithm::HS256,
        previous.as_bytes(),
        &json!({"tenantId": "acme", "exp": now + 600}),
    );
    let (mut client, _) = WsClient::connected(&url, &old_secret).await;
    client
        .send_text(&json!({"type": "auth", "token": tenant_token("acme")}).to_string())
        .await;
    assert_eq!(client.next_json().await["type"], "auth_ok");
    client
        .send_text(&json!({"type": "auth", "token": refused[1]}).to_string())
        .await;
    client.expect_close(1008, "invalid token").await;
}

/// `--help` shows no secret value, whatever the environment holds.
#[test]
fn help_shows_no_secret() {
    let secrets = [
        ("JWT_SECRET", SECRET),
        (
            "JWT_SECRET_PREVIOUS",
            "previous-secret-0123456789-abcdefghijkl",
        ),
        ("ADMIN_API_KEYS", ADMIN_KEY),
        ("REDIS_URL", "redis://user:S3cretPw0rd@127.0.0.1:6379"),
    ];
    for args in [
        vec!["serve", "--help"],
        vec!["worker", "--help"],
        vec!["publish", "--help"],
        vec!["token", "--help"],
        vec!["loadtest", "fanout", "--help"],
    ] {
        let (status, stdout, stderr) = run_cli(&args, &secrets);
        assert!(status.success(), "{args:?}: {stderr}");
        for (var, value) in &secrets {
            // For the URL, its password is the secret.
            let needle = if *var == "REDIS_URL" {
                "S3cretPw0rd"
            } else {
                value
            };
            assert!(!stdout.contains(needle), "{args:?} shows {var}: {stdout}");
        }
    }
}

/// Revocation through one node closes that user's connections on all three nodes behind one
/// Redis within a second, with 1008 `revoked`, and nobody else's: the others still get events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_every_node_within_a_second() {
    let redis = Redis::start();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Gateway::start(GatewayOptions::redis(&redis)).await);
    }
    let exp = now_secs() + 600;
    let token = |tenant: &str, user: &str| {
        sign_claims(&json!({"tenantId": tenant, "sub": user, "exp": exp}))
    };
    let (mut revoked, mut kept) = (Vec::new(), Vec::new());
    for node in &nodes {
        let url = node.ws_url();
        revoked.push(WsClient::connected(&url, &token("acme", "u1")).await.0);
        kept.push((
            "acme",
            WsClient::connected(&url, &token("acme", "u2")).await.0,
        ));
        kept.push((
            "globex",
            WsClient::connected(&url, &token("globex", "u1")).await.0,
        ));
    }
    let started = std::time::Instant::now();
    let (status, body) = http(
        nodes[0].port,
        "POST",
        "/api/admin/tenants/acme/disconnect",
        Some(ADMIN_KEY),
        Some(r#"{"userId":"u1"}"#),
    )
    .await
    .unwrap();
    assert_eq!((status, body.as_str()), (202, r#"{"requested":true}"#));
    for client in &mut revoked {
        match client.read(Duration::from_secs(1)).await {
            Some(Read::Close(Some((1008, reason)))) => assert_eq!(reason, "revoked"),
            other => panic!("expected 1008 revoked within 1 s of the request, got {other:?}"),
        }
    }
    println!(
        "three nodes' connections of u1 revoked within {:?}",
        started.elapsed()
    );
    for tenant in ["acme", "globex"] {
        publish(
            nodes[1].port,
            tenant,
            "module_activated",
            json!({"module": "m"}),
        )
        .await;
    }
    for (tenant, client) in &mut kept {
        let event = client.next_json().await;
        assert_eq!(
            (event["type"].as_str(), event["tenantId"].as_str()),
            (Some("module_activated"), Some(*tenant))
        );
    }
    // Bad requests change nothing.
    for body in [r#"{"user":"u2"}"#, r#"{"userId":""}"#, "[1]"] {
        let path = "/api/admin/tenants/acme/disconnect";
        let (status, _) = http(nodes[2].port, "POST", path, Some(ADMIN_KEY), Some(body))
            .await
            .unwrap();
        assert_eq!(status, 400, "{body}");
    }
    for (_, client) in &mut kept {
        client.expect_silence(Duration::from_millis(300)).await;
    }
}

/// `serve --demo` listens on loopback unless HOST says otherwise, and its page sends a
/// Content-Security-Policy without inline scripts and a Referrer-Policy that keeps the token in
/// its URL from leaking to other sites.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_is_local_and_its_page_locked_down() {
    let demo = Gateway::spawn_args(
        &["serve", "--demo"],
        GatewayOptions::memory()
            .without("HOST")
            .without("JWT_SECRET")
            .without("ADMIN_API_KEYS"),
    );
    demo.wait_ready().await;
    let listening = eventually(WAIT, "the listen log line", || async {
        demo.log()
            .lines()
            .find(|l| l.contains("gateway listening"))
            .map(str::to_owned)
    })
    .await;
    let expected = format!("\"addr\":\"127.0.0.1:{}\"", demo.port);
    assert!(listening.contains(&expected), "{listening}");
    let page = harness::http::client()
        .get(demo.http_url("/"))
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        page.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let csp = header("content-security-policy");
    // Scripts from the origin only: no 'unsafe-inline', no other source.
    assert!(csp.contains("script-src 'self';"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(header("referrer-policy"), "no-referrer");
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/demo.js"></script>"#));
    assert!(
        !html.contains("<script type=\"module\">"),
        "no inline script"
    );
}
