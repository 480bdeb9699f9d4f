//! Several gateway nodes on one real Redis: cross-node delivery, the CLI publish path,
//! subscription lifecycle, garbage on tenant channels, Redis outages, the node registry, and
//! start-up configuration errors.

use std::time::Duration;

use fred::prelude::*;
use harness::*;
use serde_json::{Value, json};

/// The `event` field of the history entry with id `id`.
async fn history_entry(client: &Client, tenant: &str, id: &str) -> String {
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = client
        .xrange(format!("license:history:{{{tenant}}}"), id, id, None)
        .await
        .expect("XRANGE");
    assert_eq!(entries.len(), 1, "history entry {id}");
    entries[0].1.get("event").cloned().expect("event field")
}

async fn numsub(client: &Client, tenant: &str) -> i64 {
    let channel = format!("license:events:{{{tenant}}}");
    let reply: Vec<Value> = client
        .pubsub_numsub::<Vec<fred::types::Value>, _>(channel)
        .await
        .expect("PUBSUB NUMSUB")
        .into_iter()
        .map(|v| match v {
            fred::types::Value::Integer(n) => json!(n),
            other => json!(other.as_string()),
        })
        .collect();
    reply[1].as_i64().expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cross_nodes_byte_identical_to_history() {
    let redis = Redis::start();
    let a = Gateway::start(GatewayOptions::redis(&redis)).await;
    let b = Gateway::start(GatewayOptions::redis(&redis)).await;
    let (mut client, hello) = WsClient::connected(&a.ws_url(), &tenant_token("acme")).await;
    assert_eq!(hello["node"], a.node_id);
    let r = redis.client().await;

    // Through node B's API.
    let sent = publish(
        b.port,
        "acme",
        "usage_limit_exceeded",
        json!({"metric": "users", "used": 101, "limit": 100, "percent": 101.0}),
    )
    .await;
    let text = client.next_text().await;
    let id = sent["id"].as_str().unwrap();
    assert_eq!(
        text,
        history_entry(&r, "acme", id).await,
        "delivered bytes equal the history entry"
    );
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), sent);

    // Through the CLI.
    let (status, stdout, stderr) = run_cli(
        &[
            "publish",
            "--tenant",
            "acme",
            "--type",
            "module_deactivated",
            "--data",
            r#"{"module":"payroll","reason":"disabled"}"#,
        ],
        &[("REDIS_URL", &redis.url())],
    );
    assert!(status.success(), "publish failed: {stderr}");
    let cli_id = stdout.trim();
    let text = client.next_text().await;
    assert_eq!(text, history_entry(&r, "acme", cli_id).await);
    let got: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(got["id"], cli_id);
    assert_eq!(got["severity"], "warning");
    assert_eq!(
        got["data"],
        json!({"module": "payroll", "reason": "disabled"})
    );
}

/// `connected` promises that anything published after it reaches the client, so the node's
/// subscription must already be applied in Redis when it is sent, not merely written (fred
/// resolves a `SUBSCRIBE` on write). CI caught the difference once in the test below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_means_the_subscription_is_applied_in_redis() {
    let redis = Redis::start();
    let node = Gateway::start(GatewayOptions::redis(&redis)).await;
    let r = redis.client().await;
    // Busy threads beside the node: the race shows under contention (on an idle machine the
    // SUBSCRIBE usually lands first; with these, 2–13 of 100 did not before the fix).
    let spinning = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let spinners: Vec<_> = (0..3)
        .map(|_| {
            let spinning = spinning.clone();
            std::thread::spawn(move || {
                while spinning.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let mut late = 0;
    for i in 0..100 {
        let tenant = format!("fresh-{i}");
        let (client, _) = WsClient::connected(&node.ws_url(), &tenant_token(&tenant)).await;
        if numsub(&r, &tenant).await != 1 {
            late += 1;
        }
        client.close().await;
    }
    spinning.store(false, std::sync::atomic::Ordering::Relaxed);
    for spinner in spinners {
        spinner.join().unwrap();
    }
    assert_eq!(late, 0, "connected before the subscription was applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_follows_local_connections() {
    let redis = Redis::start();
    let a = Gateway::start(GatewayOptions::redis(&redis)).await;
    let b = Gateway::start(GatewayOptions::redis(&redis)).await;
    let r = redis.client().await;
    assert_eq!(numsub(&r, "acme").await, 0);

    let (c1, _) = WsClient::connected(&a.ws_url(), &tenant_token("acme")).await;
    let (c2, _) = WsClient::connected(&a.ws_url(), &tenant_token("acme")).await;
    assert_eq!(
        numsub(&r, "acme").await,
        1,
        "one subscription per node, not per connection"
    );
    let (c3, _) = WsClient::connected(&b.ws_url(), &tenant_token("acme")).await;
    assert_eq!(numsub(&r, "acme").await, 2);

    c1.close().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        numsub(&r, "acme").await,
        2,
        "node A still has a connection of acme"
    );
    c2.close().await;
    eventually(WAIT, "node A unsubscribes", || async {
        (numsub(&r, "acme").await == 1).then_some(())
    })
    .await;
    c3.close().await;
    eventually(WAIT, "node B unsubscribes", || async {
        (numsub(&r, "acme").await == 0).then_some(())
    })
    .await;

    // A tenant that comes back is subscribed again and served.
    let (mut again, _) = WsClient::connected(&a.ws_url(), &tenant_token("acme")).await;
    assert_eq!(numsub(&r, "acme").await, 1);
    let sent = publish(b.port, "acme", "module_activated", json!({"module": "x"})).await;
    assert_eq!(again.next_json().await, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_tenant_channel_is_dropped_and_delivery_continues() {
    let redis = Redis::start();
    let a = Gateway::start(GatewayOptions::redis(&redis)).await;
    let (mut client, _) = WsClient::connected(&a.ws_url(), &tenant_token("acme")).await;
    let r = redis.client().await;
    let channel = "license:events:{acme}";
    let garbage: Vec<fred::types::Value> = vec![
        "garbage".into(),
        "[]".into(),
        "{\"type\":\"x\"}".into(),
        "{\"type\":\"x\",\"tenantId\":\"globex\"}".into(),
        "{\"type\":5,\"tenantId\":\"acme\"}".into(),
        "{\"type\":\"x\",\"tenantId\":\"acme\"".into(),
        fred::types::Value::Bytes(bytes::Bytes::from_static(b"\xff\xfe{\"type\":\"x\"}")),
        "".into(),
        // Another publisher's own messages on our channel (#14): not engine envelopes, so never
        // forwarded to browsers — no id, an unknown type, a malformed id.
        r#"{"type":"custom_notice","tenantId":"acme","data":{"n":1}}"#.into(),
        r#"{"type":"license_updated","tenantId":"acme","data":{}}"#.into(),
        r#"{"id":"1-0","type":"custom_notice","tenantId":"acme"}"#.into(),
        r#"{"id":"one","type":"license_updated","tenantId":"acme"}"#.into(),
    ];
    let dropped = garbage.len();
    for payload in garbage {
        let _: i64 = r.publish(channel, payload).await.unwrap();
    }
    let sent = publish(
        a.port,
        "acme",
        "license_updated",
        json!({"changes": ["plan"]}),
    )
    .await;
    assert_eq!(client.next_json().await, sent);
    client.expect_silence(Duration::from_millis(300)).await;
    let log = a.log();
    assert_eq!(
        log.matches("dropped").count(),
        dropped,
        "each garbage payload is logged once:\n{log}"
    );
    assert!(!log.contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_publish_exit_codes() {
    let redis = Redis::start();
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let (status, stdout, stderr) = run_cli(
        &["publish", "--tenant", "acme", "--type", "license_expired"],
        &env,
    );
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stdout.trim().split_once('-').is_some(),
        "prints the id: {stdout:?}"
    );

    let dead = format!("redis://127.0.0.1:{}", free_port());
    let no_redis: [(&str, &str); 0] = [];
    let dead_redis = [("REDIS_URL", dead.as_str())];
    // (type, --data, environment, exit code, text the one-line error must contain)
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        &'a [(&'a str, &'a str)],
        i32,
        &'a str,
    );
    let cases: [Case; 6] = [
        ("nope", None, &env, 2, "unknown event type"),
        ("license_expired", Some("{bad"), &env, 2, "not valid JSON"),
        ("license_expired", Some("[1]"), &env, 2, "JSON object"),
        ("license_expired", None, &no_redis, 2, "REDIS_URL"),
        ("license_expired", None, &dead_redis, 1, "unavailable"),
        (
            "license_expired",
            None,
            &[("REDIS_URL", "http://x")],
            2,
            "REDIS_URL",
        ),
    ];
    for (event_type, data, env, code, text) in cases {
        let mut args = vec!["publish", "--tenant", "acme", "--type", event_type];
        if let Some(data) = data {
            args.extend(["--data", data]);
        }
        let (status, stdout, stderr) = run_cli(&args, env);
        assert_eq!(status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: nothing on stdout");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{args:?}: one line: {stderr:?}"
        );
        assert!(
            stderr.contains(text),
            "{args:?}: {stderr:?} should mention {text:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_connections_and_fails_publishes_cleanly() {
    let mut redis = Redis::start();
    let a = Gateway::start(GatewayOptions::redis(&redis)).await;
    let mut clients = Vec::new();
    for tenant in ["acme", "globex"] {
        clients.push(
            WsClient::connected(&a.ws_url(), &tenant_token(tenant))
                .await
                .0,
        );
    }
    redis.stop();
    eventually(WAIT, "readyz turns 503", || async {
        matches!(
            http(a.port, "GET", "/readyz", None, None).await,
            Ok((503, _))
        )
        .then_some(())
    })
    .await;
    let body = r#"{"type":"license_expired"}"#;
    let (status, text) = http(
        a.port,
        "POST",
        "/api/admin/tenants/acme/events",
        Some(&admin_key()),
        Some(body),
    )
    .await
    .unwrap();
    assert_eq!(status, 503, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["error"]["code"],
        "unavailable"
    );
    for client in &mut clients {
        client.send_text(r#"{"type":"ping"}"#).await;
        assert_eq!(
            client.next_json().await["type"],
            "pong",
            "connections stay open while Redis is away"
        );
    }

    redis.restart();
    a.wait_ready().await;
    let sent = publish(
        a.port,
        "acme",
        "license_updated",
        json!({"changes": ["plan"]}),
    )
    .await;
    assert_eq!(clients[0].next_json().await, sent);
    let sent = publish(
        a.port,
        "globex",
        "license_updated",
        json!({"changes": ["plan"]}),
    )
    .await;
    assert_eq!(clients[1].next_json().await, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_span_all_nodes_and_dead_nodes_drop_out() {
    let redis = Redis::start();
    let a = Gateway::start(GatewayOptions::redis(&redis)).await;
    let mut b = Gateway::start(GatewayOptions::redis(&redis)).await;
    let _a1 = WsClient::connected(&a.ws_url(), &tenant_token("acme")).await;
    let _a2 = WsClient::connected(&a.ws_url(), &tenant_token("acme")).await;
    let _b1 = WsClient::connected(&b.ws_url(), &tenant_token("acme")).await;
    let _b2 = WsClient::connected(&b.ws_url(), &tenant_token("globex")).await;
    let expected = json!({"acme": 3, "globex": 1});
    for port in [a.port, b.port] {
        let s = eventually(WAIT, "stats cover both nodes", || async {
            let s = admin_stats(port).await;
            (s["totalConnections"] == 4 && s["tenantConnections"] == expected).then_some(s)
        })
        .await;
        assert_eq!(s["totalTenants"], 2);
        let nodes = s["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 2);
        for node in nodes {
            for key in ["id", "connections", "tenants", "startedAt", "lastSeen"] {
                assert!(!node[key].is_null(), "{key} in {node}");
            }
        }
    }
    // A crashed node (no chance to deregister) drops out within 30 s.
    b.kill();
    let started = std::time::Instant::now();
    eventually(Duration::from_secs(40), "dead node drops out", || async {
        let s = admin_stats(a.port).await;
        (s["nodes"].as_array().unwrap().len() == 1 && s["totalConnections"] == 2).then_some(())
    })
    .await;
    assert!(
        started.elapsed() <= Duration::from_secs(36),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_leaves_the_registry_at_once() {
    let redis = Redis::start();
    let a = Gateway::start(GatewayOptions::redis(&redis)).await;
    let mut b = Gateway::start(GatewayOptions::redis(&redis)).await;
    let _b1 = WsClient::connected(&b.ws_url(), &tenant_token("acme")).await;
    eventually(WAIT, "b registered", || async {
        (admin_stats(a.port).await["totalConnections"] == 1).then_some(())
    })
    .await;
    assert!(b.terminate(Duration::from_secs(15)).await.success());
    let s = admin_stats(a.port).await;
    assert_eq!(s["totalConnections"], 0, "{s}");
}

#[test]
fn configuration_errors_are_one_line_naming_the_variable() {
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("JWT_SECRET", SECRET), ("PORT", "abc")], "PORT"),
        (
            vec![("JWT_SECRET", SECRET), ("MAX_FRAME_BYTES", "-1")],
            "MAX_FRAME_BYTES",
        ),
        (
            vec![("JWT_SECRET", SECRET), ("PING_INTERVAL_SECS", "0")],
            "PING_INTERVAL_SECS",
        ),
        (
            vec![("JWT_SECRET", SECRET), ("LOG_FORMAT", "xml")],
            "LOG_FORMAT",
        ),
        (
            vec![("JWT_SECRET", SECRET), ("REDIS_URL", "http://x")],
            "REDIS_URL",
        ),
        (
            vec![("JWT_SECRET", SECRET), ("ALLOWED_ORIGINS", " , ")],
            "ALLOWED_ORIGINS",
        ),
        (
            vec![("JWT_PUBLIC_KEY", "/nonexistent.pem")],
            "JWT_PUBLIC_KEY",
        ),
        (vec![], "JWT_SECRET"),
        // Credential policy: weak or out-of-range settings stop start-up.
        (
            vec![("JWT_SECRET", "31-bytes-is-one-byte-too-short")],
            "JWT_SECRET",
        ),
        (
            vec![("JWT_SECRET", SECRET), ("JWT_SECRET_PREVIOUS", "short")],
            "JWT_SECRET_PREVIOUS",
        ),
        (
            vec![("JWT_SECRET", SECRET), ("JWT_LEEWAY_SECS", "301")],
            "JWT_LEEWAY_SECS",
        ),
        (
            vec![("JWT_SECRET", SECRET), ("JWT_MAX_TTL_SECS", "0")],
            "JWT_MAX_TTL_SECS",
        ),
        (
            vec![
                ("JWT_SECRET", SECRET),
                ("ADMIN_API_KEYS", "too-short-to-be-a-key"),
            ],
            "ADMIN_API_KEYS",
        ),
        (
            vec![("JWT_JWKS_URL", "file:///etc/jwks.json")],
            "JWT_JWKS_URL",
        ),
    ];
    for (env, var) in cases {
        let (status, _, stderr) = run_cli(&["serve"], &env);
        assert_eq!(status.code(), Some(2), "{var}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{var}: one line: {stderr:?}"
        );
        assert!(stderr.contains(var), "{var} named in {stderr:?}");
    }
    let (status, stdout, stderr) =
        run_cli(&["token", "--tenant", "acme"], &[("JWT_SECRET", SECRET)]);
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stdout.trim().split('.').count(),
        3,
        "a JWT alone on stdout: {stdout:?}"
    );
    assert_eq!(stdout.lines().count(), 1);
    let (status, _, stderr) = run_cli(&["token", "--tenant", "acme"], &[]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("JWT_SECRET"));
}

/// Generates a key pair with openssl; returns (private PEM, public PEM path).
fn keypair(dir: &std::path::Path, kind: &str) -> (Vec<u8>, std::path::PathBuf) {
    let private = dir.join(format!("{kind}.key"));
    let public = dir.join(format!("{kind}.pub"));
    let gen_args: Vec<&str> = match kind {
        "rsa" => vec![
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        _ => vec![
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
    };
    let ok = std::process::Command::new("openssl")
        .args(&gen_args)
        .arg("-out")
        .arg(&private)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl")
        .success();
    assert!(ok);
    let ok = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    (std::fs::read(&private).unwrap(), public)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_key_tokens_rs256_and_es256_with_issuer_and_audience() {
    let dir = TempDir::new("lgw-keys");
    for (kind, alg) in [
        ("rsa", jsonwebtoken::Algorithm::RS256),
        ("ec", jsonwebtoken::Algorithm::ES256),
    ] {
        let (private, public) = keypair(&dir.0, kind);
        let key = match kind {
            "rsa" => jsonwebtoken::EncodingKey::from_rsa_pem(&private).unwrap(),
            _ => jsonwebtoken::EncodingKey::from_ec_pem(&private).unwrap(),
        };
        let options = GatewayOptions::memory()
            .env("JWT_SECRET", "")
            .env("JWT_PUBLIC_KEY", public.to_string_lossy())
            .env("JWT_ISSUER", "https://auth.example.com")
            .env("JWT_AUDIENCE", "license-gateway")
            .env("JWT_TENANT_CLAIM", "org");
        let gateway = Gateway::start(options).await;
        let sign = |claims: Value| {
            jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, &key).unwrap()
        };
        let exp = now_secs() + 600;
        let good = sign(
            json!({"org": "acme", "exp": exp, "iss": "https://auth.example.com", "aud": "license-gateway"}),
        );
        let (_client, hello) = WsClient::connected(&gateway.ws_url(), &good).await;
        assert_eq!(hello["tenantId"], "acme", "{kind}");
        let bad = [
            sign(
                json!({"org": "acme", "exp": exp, "iss": "https://evil.example.com", "aud": "license-gateway"}),
            ),
            sign(
                json!({"org": "acme", "exp": exp, "iss": "https://auth.example.com", "aud": "other"}),
            ),
            sign(json!({"org": "acme", "exp": exp, "aud": "license-gateway"})),
            sign(
                json!({"tenantId": "acme", "exp": exp, "iss": "https://auth.example.com", "aud": "license-gateway"}),
            ),
            // An HS256 token signed with the public key as the secret (the classic confusion attack).
            sign_with(
                jsonwebtoken::Algorithm::HS256,
                &std::fs::read(&public).unwrap(),
                &json!({"org": "acme", "exp": exp, "iss": "https://auth.example.com", "aud": "license-gateway"}),
            ),
        ];
        for (i, token) in bad.iter().enumerate() {
            let mut client = ws_connect(&gateway.ws_url(), Some(token), Carrier::Subprotocol).await;
            client.expect_close(1008, "invalid token").await;
            let _ = i;
        }
    }
}

/// Regression: a node started while Redis was down answered nothing, not even `/healthz`, until
/// Redis came back (so a liveness probe restarted it in a loop). Now it is alive from its first
/// second, not ready until Redis answers, then serves normally; the worker's `/healthz` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_alive_from_its_first_second_whatever_redis_does() {
    let mut redis = Redis::start();
    redis.stop();
    let node = Gateway::spawn(GatewayOptions::redis(&redis));
    let metrics_port = free_port();
    let _worker = Gateway::worker_on(
        GatewayOptions::redis(&redis).env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
        &["--interval", "60"],
    );
    let (status, _) = eventually(WAIT, "healthz while Redis is down", || async {
        http(node.port, "GET", "/healthz", None, None).await.ok()
    })
    .await;
    assert_eq!(status, 200);
    let (status, body) = http(node.port, "GET", "/readyz", None, None).await.unwrap();
    assert_eq!((status, body.contains("starting")), (503, true), "{body}");
    let (status, _) = eventually(WAIT, "the worker's healthz while Redis is down", || async {
        http(metrics_port, "GET", "/healthz", None, None).await.ok()
    })
    .await;
    assert_eq!(status, 200);
    redis.restart();
    node.wait_ready().await;
    let (mut client, _) = WsClient::connected(&node.ws_url(), &tenant_token("acme")).await;
    let sent = publish(
        node.port,
        "acme",
        "module_activated",
        json!({"module": "m"}),
    )
    .await;
    assert_eq!(client.next_json().await["id"], sent["id"]);
}

/// The subscription probe on a single Redis catches a subscriber connection that Redis's
/// replies no longer reach (see `harness::proxy`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_subscription_is_caught_by_the_probe_and_loses_nothing() {
    let redis = Redis::start();
    let proxy = SilencingProxy::start(redis.port);
    let options = GatewayOptions {
        redis_url: Some(format!("redis://127.0.0.1:{}", proxy.port)),
        ..GatewayOptions::memory()
    };
    let node = Gateway::start(options.env("REDIS_PROBE_SECS", "1")).await;
    harness::proxy::silent_subscription_is_caught(&node, &proxy, "acme").await;
}

/// The ACLs docs/OPERATIONS.md recommends: the gateway works as a user confined to `license:*`,
/// and another application's user cannot publish on a tenant channel at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acls_confine_the_gateway_and_keep_other_clients_off_its_channels() {
    let redis = Redis::start();
    let acl = |args: &[&str]| {
        harness::redis::redis_cli(redis.port, args)
            .trim()
            .to_owned()
    };
    // The two commands of docs/OPERATIONS.md ("Security"), with test passwords.
    let gateway_user = "ACL SETUSER license-gateway on >gateway-test-password resetchannels ~license:* &license:* +@all -@admin -@dangerous +info +client +cluster|slots +cluster|shards";
    let other_user = "ACL SETUSER other-app on >other-test-password resetchannels ~app:* &app:* +@all -@dangerous";
    for command in [gateway_user, other_user] {
        let args: Vec<&str> = command.split(' ').collect();
        assert_eq!(acl(&args), "OK", "{command}");
    }
    let options = GatewayOptions {
        redis_url: Some(format!(
            "redis://license-gateway:gateway-test-password@127.0.0.1:{}",
            redis.port
        )),
        ..GatewayOptions::memory()
    };
    let node = Gateway::start(options).await;
    let (mut client, _) = WsClient::connected(&node.ws_url(), &tenant_token("acme")).await;
    let sent = publish(
        node.port,
        "acme",
        "license_updated",
        json!({"changes": ["plan"]}),
    )
    .await;
    assert_eq!(client.next_json().await, sent);
    let denied = acl(&[
        "--user",
        "other-app",
        "--pass",
        "other-test-password",
        "publish",
        "license:events:{acme}",
        r#"{"id":"9999999999999-0","type":"license_expired","tenantId":"acme"}"#,
    ]);
    assert!(denied.contains("NOPERM"), "{denied}");
    client.expect_silence(Duration::from_millis(300)).await;
}

/// #20: resumes of a tenant on a node share its window of recent events. On a node already
/// serving the tenant, resumes read no history at all; on a node that was not, the first resume
/// reads it once and the rest are served from the window; every client gets exactly the events
/// it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_on_a_node_share_one_history_read() {
    let redis = Redis::start();
    let busy = Gateway::start(GatewayOptions::redis(&redis)).await;
    let token = tenant_token("acme");
    let (holder, _) =
        WsClient::connected(&format!("{}?token={token}", busy.ws_url()), &token).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let e = publish(busy.port, "acme", "license_updated", json!({ "n": n })).await;
        ids.push(e["id"].as_str().unwrap().to_owned());
    }
    let missed: Vec<String> = ids[2..].to_vec();
    let resume_all = |node: &Gateway, count: usize| {
        let url = format!("{}?token={token}&lastEventId={}", node.ws_url(), ids[1]);
        let token = token.clone();
        async move {
            let clients = (0..count).map(|_| {
                let (url, token) = (url.clone(), token.clone());
                async move {
                    let (mut c, _) = WsClient::connected(&url, &token).await;
                    let got: Vec<String> = c
                        .drain(Duration::from_millis(300))
                        .await
                        .iter()
                        .map(|e| e["id"].as_str().unwrap_or("?").to_owned())
                        .collect();
                    c.close().await;
                    got
                }
            });
            futures_util::future::join_all(clients).await
        }
    };
    let reads = |port| metric(port, "license_gateway_history_reads_total");

    // The node holding the tenant's subscription since before the events: no read at all.
    for got in resume_all(&busy, 20).await {
        assert_eq!(got, missed);
    }
    assert_eq!(reads(busy.port).await, 0.0);
    assert_eq!(
        metric(busy.port, "license_gateway_history_window_resumes_total").await,
        20.0
    );

    // A node new to the tenant (its subscription, kept by a client that does not resume,
    // starts after the events): the first resume reads, the window serves the others.
    let fresh = Gateway::start(GatewayOptions::redis(&redis)).await;
    let (fresh_holder, _) =
        WsClient::connected(&format!("{}?token={token}", fresh.ws_url()), &token).await;
    for got in resume_all(&fresh, 1).await {
        assert_eq!(got, missed);
    }
    assert_eq!(reads(fresh.port).await, 1.0);
    for got in resume_all(&fresh, 19).await {
        assert_eq!(got, missed);
    }
    assert_eq!(
        reads(fresh.port).await,
        1.0,
        "the others were served from the window"
    );
    drop((holder, fresh_holder));
}
