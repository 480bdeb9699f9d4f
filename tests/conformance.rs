//! The conformance suite: every test here runs against both engines — the embedded memory
//! engine and the Redis engine on a real `redis-server` (plain, and TLS only) — through a real
//! gateway process.

use std::time::Duration;

use futures_util::SinkExt;
use harness::*;
use serde_json::{Value, json};

// Each on the embedded engine, on Redis, and on Redis over TLS only (rediss://, a test CA).
every_engine!(
    seed_server_initializes,
    seed_rejects_connection_without_token,
    seed_accepts_valid_token_on_every_carrier,
    seed_ping_pong,
    seed_broadcasts_license_expiration,
    seed_broadcasts_usage_limit_warning,
    seed_tracks_connection_stats,
    seed_multiple_clients_of_one_tenant,
    bad_tokens_close_with_1008_and_exact_reason,
    tenant_isolation_three_by_three,
    malformed_client_messages_get_errors_and_the_connection_stays,
    oversized_frame_closes_with_1009_and_service_continues,
    in_band_refresh_extends_the_connection,
    refresh_for_another_tenant_closes_with_1008,
    token_expiry_closes_a_live_connection,
    heartbeat_keeps_readers_and_drops_silent_peers,
    disallowed_origin_is_refused_at_upgrade,
    connection_limit_closes_with_1013,
    publish_api_checks_tokens_and_bodies,
    event_ids_increase_strictly_per_tenant,
    slow_consumer_is_closed_and_others_keep_up,
    sigterm_closes_sessions_with_1001_and_exits,
    resume_replays_after_last_event_id_or_asks_for_resync,
);

// The ones that depend on the engine, again on a 3-master/3-replica Redis Cluster.
on_cluster!(
    seed_broadcasts_license_expiration,
    seed_multiple_clients_of_one_tenant,
    seed_tracks_connection_stats,
    tenant_isolation_three_by_three,
    event_ids_increase_strictly_per_tenant,
    resume_replays_after_last_event_id_or_asks_for_resync,
);

// --- the seed's eight tests -------------------------------------------------------------------

async fn seed_server_initializes(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    assert_eq!(
        http(d.port(), "GET", "/healthz", None, None).await.unwrap(),
        (200, "ok".into())
    );
    let (status, body) = http(d.port(), "GET", "/readyz", None, None).await.unwrap();
    assert_eq!(status, 200, "{body}");
}

async fn seed_rejects_connection_without_token(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let mut client = ws_connect(&d.ws_url(), None, Carrier::Query).await;
    client.expect_close(1008, "missing token").await;
}

async fn seed_accepts_valid_token_on_every_carrier(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let token = tenant_token("acme");
    for carrier in [Carrier::Query, Carrier::Subprotocol, Carrier::Header] {
        let mut client = ws_connect(&d.ws_url(), Some(&token), carrier).await;
        let hello = client.next_json().await;
        assert_eq!(hello["type"], "connected", "{carrier:?}");
        assert_eq!(hello["tenantId"], "acme");
        assert_eq!(hello["node"], d.gateway.node_id);
        assert!(
            hello["connectionId"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        );
        if let Carrier::Subprotocol = carrier {
            assert_eq!(client.protocol.as_deref(), Some("license.v1"));
        }
    }
}

async fn seed_ping_pong(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let (mut client, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    client.send_text(r#"{"type":"ping"}"#).await;
    let pong = client.next_json().await;
    assert_eq!(pong["type"], "pong");
    let ts = pong["timestamp"].as_u64().expect("timestamp");
    assert!(
        ts.abs_diff(now_secs() * 1000) < 60_000,
        "timestamp {ts} is unix ms"
    );
}

async fn seed_broadcasts_license_expiration(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let (mut client, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    let sent = publish(
        d.port(),
        "acme",
        "license_expired",
        json!({"expiredAt": "2026-11-29T00:00:00Z"}),
    )
    .await;
    let got = client.next_json().await;
    assert_eq!(got, sent);
    assert_eq!(got["type"], "license_expired");
    assert_eq!(got["severity"], "error");
    assert_eq!(got["tenantId"], "acme");
    assert_eq!(got["data"]["expiredAt"], "2026-11-29T00:00:00Z");
    assert!(got["id"].as_str().unwrap().contains('-'));
    assert!(got["timestamp"].as_str().unwrap().ends_with('Z'));
}

async fn seed_broadcasts_usage_limit_warning(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let (mut client, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    let data = json!({"metric": "users", "used": 85, "limit": 100, "percent": 85});
    publish(d.port(), "acme", "usage_limit_warning", data.clone()).await;
    let got = client.next_json().await;
    assert_eq!(got["type"], "usage_limit_warning");
    assert_eq!(got["severity"], "warning");
    assert_eq!(got["data"], data);
}

async fn seed_tracks_connection_stats(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let (a1, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    let (_a2, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    let (_g1, _) = WsClient::connected(&d.ws_url(), &tenant_token("globex")).await;
    let s = admin_stats(d.port()).await;
    assert_eq!(s["totalConnections"], 3, "{s}");
    assert_eq!(s["totalTenants"], 2, "{s}");
    assert_eq!(s["tenantConnections"], json!({"acme": 2, "globex": 1}));
    assert_eq!(s["nodes"][0]["id"], d.gateway.node_id);
    assert_eq!(s["nodes"][0]["connections"], 3);
    a1.close().await;
    eventually(WAIT, "stats drop to 2 connections", || async {
        let s = admin_stats(d.port()).await;
        (s["totalConnections"] == 2 && s["tenantConnections"] == json!({"acme": 1, "globex": 1}))
            .then_some(())
    })
    .await;
}

async fn seed_multiple_clients_of_one_tenant(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(
            WsClient::connected(&d.ws_url(), &tenant_token("acme"))
                .await
                .0,
        );
    }
    let sent = publish(
        d.port(),
        "acme",
        "module_activated",
        json!({"module": "analytics"}),
    )
    .await;
    for client in &mut clients {
        assert_eq!(client.next_json().await, sent);
    }
}

// --- authentication ---------------------------------------------------------------------------

async fn bad_tokens_close_with_1008_and_exact_reason(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let exp = now_secs() + 3600;
    let header_none = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = b64url(
        json!({"tenantId": "acme", "exp": exp})
            .to_string()
            .as_bytes(),
    );
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "missing token"),
        ("empty", Some(String::new()), "missing token"),
        ("garbage", Some("not-a-jwt".into()), "invalid token"),
        (
            "bad signature",
            Some(sign_with(
                jsonwebtoken::Algorithm::HS256,
                b"another-secret",
                &json!({"tenantId": "acme", "exp": exp}),
            )),
            "invalid token",
        ),
        (
            "expired",
            Some(sign_claims(
                &json!({"tenantId": "acme", "exp": now_secs() - 120}),
            )),
            "token expired",
        ),
        (
            "alg none",
            Some(format!("{header_none}.{claims}.")),
            "invalid token",
        ),
        (
            "wrong algorithm",
            Some(sign_with(
                jsonwebtoken::Algorithm::HS384,
                harness::SECRET.as_bytes(),
                &json!({"tenantId": "acme", "exp": exp}),
            )),
            "invalid token",
        ),
        (
            "missing tenant claim",
            Some(sign_claims(&json!({"exp": exp}))),
            "invalid token",
        ),
        (
            "tenant not a string",
            Some(sign_claims(&json!({"tenantId": 7, "exp": exp}))),
            "invalid token",
        ),
        (
            "missing exp",
            Some(sign_claims(&json!({"tenantId": "acme"}))),
            "invalid token",
        ),
    ];
    for (name, token, reason) in cases {
        for carrier in [Carrier::Query, Carrier::Subprotocol, Carrier::Header] {
            if token.as_deref() == Some("") && !matches!(carrier, Carrier::Query) {
                continue; // an empty header value is not a token carrier
            }
            let mut client = ws_connect(&d.ws_url(), token.as_deref(), carrier).await;
            match client.read(WAIT).await {
                Some(Read::Close(Some((code, text)))) => {
                    assert_eq!(
                        (code, text.as_str()),
                        (1008, reason),
                        "{name} via {carrier:?}"
                    )
                }
                other => panic!("{name} via {carrier:?}: expected close 1008, got {other:?}"),
            }
        }
    }
    assert!(
        !d.gateway.log().contains(&tenant_token("acme")[..40]),
        "tokens must not be logged"
    );
}

async fn in_band_refresh_extends_the_connection(backend: Backend) {
    let d = Deployment::start(backend, &[("JWT_LEEWAY_SECS", "0")]).await;
    let short = sign_claims(&json!({"tenantId": "acme", "exp": now_secs() + 3}));
    let (mut client, _) = WsClient::connected(&d.ws_url(), &short).await;
    let fresh_exp = now_secs() + 3600;
    let fresh = sign_claims(&json!({"tenantId": "acme", "exp": fresh_exp}));
    client
        .send_text(&json!({"type": "auth", "token": fresh}).to_string())
        .await;
    let ok = client.next_json().await;
    assert_eq!(
        ok,
        json!({"type": "auth_ok", "expiresAt": fresh_exp * 1000})
    );
    // Past the old expiry the connection is still open and served.
    client.expect_silence(Duration::from_secs(4)).await;
    client.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(client.next_json().await["type"], "pong");
}

async fn refresh_for_another_tenant_closes_with_1008(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let (mut client, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    client
        .send_text(&json!({"type": "auth", "token": tenant_token("globex")}).to_string())
        .await;
    client.expect_close(1008, "invalid token").await;
    let (mut client, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    client
        .send_text(r#"{"type":"auth","token":"garbage"}"#)
        .await;
    client.expect_close(1008, "invalid token").await;
    let (mut client, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    let expired = sign_claims(&json!({"tenantId": "acme", "exp": now_secs() - 120}));
    client
        .send_text(&json!({"type": "auth", "token": expired}).to_string())
        .await;
    client.expect_close(1008, "token expired").await;
}

async fn token_expiry_closes_a_live_connection(backend: Backend) {
    let d = Deployment::start(backend, &[("JWT_LEEWAY_SECS", "0")]).await;
    let short = sign_claims(&json!({"tenantId": "acme", "exp": now_secs() + 2}));
    let (mut client, _) = WsClient::connected(&d.ws_url(), &short).await;
    client.expect_close(1008, "token expired").await;
}

// --- protocol ---------------------------------------------------------------------------------

async fn tenant_isolation_three_by_three(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let tenants = ["t-a", "t-b", "t-c"];
    let mut clients = Vec::new();
    for tenant in tenants {
        for _ in 0..3 {
            clients.push((
                tenant,
                WsClient::connected(&d.ws_url(), &tenant_token(tenant))
                    .await
                    .0,
            ));
        }
    }
    let mut sent = std::collections::HashMap::new();
    for tenant in tenants {
        let envelope = publish(
            d.port(),
            tenant,
            "license_updated",
            json!({"changes": ["plan"], "who": tenant}),
        )
        .await;
        sent.insert(tenant, envelope);
    }
    for (tenant, client) in &mut clients {
        let got = client.next_json().await;
        assert_eq!(&got, &sent[tenant], "client of {tenant}");
    }
    for (_, client) in &mut clients {
        client.expect_silence(Duration::from_millis(300)).await;
    }
}

async fn malformed_client_messages_get_errors_and_the_connection_stays(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let (mut client, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    for bad in [
        "garbage",
        "{}",
        r#"{"type":"subscribe"}"#,
        r#"{"type":"auth"}"#,
        r#"{"type":"auth","token":5}"#,
        "[1,2]",
        "\"\"",
    ] {
        client.send_text(bad).await;
        let error = client.next_json().await;
        assert_eq!(error["type"], "error", "for {bad}");
        assert_eq!(error["code"], "bad_request", "for {bad}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    client
        .ws
        .send(tokio_tungstenite::tungstenite::Message::binary(vec![
            1, 2, 3,
        ]))
        .await
        .unwrap();
    assert_eq!(client.next_json().await["code"], "bad_request");
    let sent = publish(
        d.port(),
        "acme",
        "module_activated",
        json!({"module": "payroll"}),
    )
    .await;
    assert_eq!(client.next_json().await, sent);
}

async fn oversized_frame_closes_with_1009_and_service_continues(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let (mut observer, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    let (mut client, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    client
        .send_text(&format!(
            r#"{{"type":"ping","pad":"{}"}}"#,
            "x".repeat(64 * 1024)
        ))
        .await;
    client.expect_close(1009, "message too big").await;
    // Just under the limit is served (extra fields are ignored).
    let (mut client, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    client
        .send_text(&format!(
            r#"{{"type":"ping","pad":"{}"}}"#,
            "x".repeat(4000)
        ))
        .await;
    assert_eq!(client.next_json().await["type"], "pong");
    let sent = publish(
        d.port(),
        "acme",
        "license_updated",
        json!({"changes": ["plan"]}),
    )
    .await;
    assert_eq!(observer.next_json().await, sent);
    assert_eq!(client.next_json().await, sent);
}

async fn heartbeat_keeps_readers_and_drops_silent_peers(backend: Backend) {
    let d = Deployment::start(backend, &[("PING_INTERVAL_SECS", "1")]).await;
    let (mut reader, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    let (mut silent, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    // The reader answers pings as it reads (tungstenite replies automatically).
    reader.expect_silence(Duration::from_millis(3500)).await;
    // The silent peer read nothing for 3.5 s: more than two intervals without a pong.
    match silent.read(WAIT).await {
        Some(Read::Ended) | Some(Read::Close(_)) => {}
        other => panic!("silent peer should have been dropped, got {other:?}"),
    }
    reader.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(reader.next_json().await["type"], "pong");
}

async fn disallowed_origin_is_refused_at_upgrade(backend: Backend) {
    let d = Deployment::start(
        backend,
        &[(
            "ALLOWED_ORIGINS",
            "https://app.example.com, https://admin.example.com",
        )],
    )
    .await;
    let token = tenant_token("acme");
    let refused = try_ws_connect(
        &d.ws_url(),
        Some(&token),
        Carrier::Subprotocol,
        &[("Origin", "https://evil.example.com")],
    )
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected HTTP 403, got {:?}", other.map(|_| "upgrade")),
    }
    let mut ok = try_ws_connect(
        &d.ws_url(),
        Some(&token),
        Carrier::Subprotocol,
        &[("Origin", "https://admin.example.com")],
    )
    .await
    .expect("allowed origin");
    assert_eq!(ok.next_json().await["type"], "connected");
    let mut no_origin = ws_connect(&d.ws_url(), Some(&token), Carrier::Header).await;
    assert_eq!(no_origin.next_json().await["type"], "connected");
}

async fn connection_limit_closes_with_1013(backend: Backend) {
    let d = Deployment::start(backend, &[("MAX_CONNECTIONS", "2")]).await;
    let token = tenant_token("acme");
    let (first, _) = WsClient::connected(&d.ws_url(), &token).await;
    let (_second, _) = WsClient::connected(&d.ws_url(), &token).await;
    let mut third = ws_connect(&d.ws_url(), Some(&token), Carrier::Subprotocol).await;
    third.expect_close(1013, "try again later").await;
    first.close().await;
    let mut again = eventually(WAIT, "a slot frees up", || async {
        let mut c = ws_connect(&d.ws_url(), Some(&token), Carrier::Subprotocol).await;
        match c.read(WAIT).await {
            Some(Read::Text(t)) if t.contains("connected") => Some(c),
            _ => None,
        }
    })
    .await;
    again.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(again.next_json().await["type"], "pong");
}

// --- publish API ------------------------------------------------------------------------------

async fn publish_api_checks_tokens_and_bodies(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let port = d.port();
    let path = "/api/admin/tenants/acme/events";
    let body = r#"{"type":"module_activated","data":{"module":"x"}}"#;
    let error =
        |text: &str| -> Value { serde_json::from_str::<Value>(text).unwrap()["error"].clone() };

    let (status, text) = http(port, "POST", path, None, Some(body)).await.unwrap();
    assert_eq!(status, 401);
    assert_eq!(error(&text)["code"], "unauthorized");
    let (status, _) = http(port, "POST", path, Some("garbage"), Some(body))
        .await
        .unwrap();
    assert_eq!(status, 401);
    // A JWT is never an admin credential: an expired one is simply not a key (401), a valid
    // one is the wrong kind of credential (403), whatever its claims.
    let expired_admin = sign_claims(&json!({"role": "admin", "exp": now_secs() - 120}));
    let (status, text) = http(port, "POST", path, Some(&expired_admin), Some(body))
        .await
        .unwrap();
    assert_eq!(
        (status, error(&text)["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let with_role =
        sign_claims(&json!({"tenantId": "acme", "role": "admin", "exp": now_secs() + 60}));
    for token in [tenant_token("acme"), with_role] {
        let (status, text) = http(port, "POST", path, Some(&token), Some(body))
            .await
            .unwrap();
        assert_eq!(status, 403);
        assert_eq!(error(&text)["code"], "forbidden");
    }

    let admin = admin_key();
    let cases = [
        (r#"{"type":"nope"}"#, "unknown_event_type", Some("type")),
        (r#"{"data":{}}"#, "missing_field", Some("type")),
        ("not json", "invalid_body", None),
        (
            r#"{"type":"module_activated","data":[1]}"#,
            "invalid_data",
            Some("data"),
        ),
        (
            r#"{"type":"module_activated","extra":1}"#,
            "invalid_body",
            None,
        ),
    ];
    for (bad, code, field) in cases {
        let (status, text) = http(port, "POST", path, Some(&admin), Some(bad))
            .await
            .unwrap();
        assert_eq!(status, 400, "{bad}: {text}");
        let e = error(&text);
        assert_eq!(e["code"], code, "{bad}");
        assert_eq!(e["field"].as_str(), field, "{bad}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let huge = format!(
        r#"{{"type":"module_activated","data":{{"pad":"{}"}}}}"#,
        "x".repeat(70 * 1024)
    );
    let (status, text) = http(port, "POST", path, Some(&admin), Some(&huge))
        .await
        .unwrap();
    assert_eq!(status, 413, "{text}");
    assert_eq!(error(&text)["code"], "payload_too_large");
    let (status, text) = http(
        port,
        "POST",
        "/api/admin/tenants/%7Bbad%7D/events",
        Some(&admin),
        Some(body),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{text}");
    assert_eq!(error(&text)["field"], "tenant");

    // A severity in the body is not the publisher's to choose.
    let (status, text) = http(
        port,
        "POST",
        path,
        Some(&admin),
        Some(r#"{"type":"license_expired","severity":"info"}"#),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{text}");
    let (status, raw) = http(
        port,
        "POST",
        path,
        Some(&admin),
        Some(r#"{"type":"license_expired"}"#),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{raw}");
    let envelope: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(envelope["severity"], "error");
    assert_eq!(envelope["data"], json!({}));
    // The envelope keeps the documented field order.
    let positions: Vec<usize> = [
        "\"id\"",
        "\"type\"",
        "\"tenantId\"",
        "\"severity\"",
        "\"timestamp\"",
        "\"data\"",
    ]
    .iter()
    .map(|k| {
        raw.find(k)
            .unwrap_or_else(|| panic!("{k} missing in {raw}"))
    })
    .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "field order in {raw}"
    );
}

async fn event_ids_increase_strictly_per_tenant(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let (mut client, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        let e = publish(
            d.port(),
            "acme",
            "license_updated",
            json!({"changes": ["plan"], "i": i}),
        )
        .await;
        ids.push(e["id"].as_str().unwrap().to_owned());
    }
    let parse = |id: &str| -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap();
        (ms.parse().unwrap(), seq.parse().unwrap())
    };
    for pair in ids.windows(2) {
        assert!(
            parse(&pair[0]) < parse(&pair[1]),
            "{} then {}",
            pair[0],
            pair[1]
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let got = client.next_json().await;
        assert_eq!(got["id"], id.as_str());
        assert_eq!(got["data"]["i"], i);
    }
}

// --- slow consumers and shutdown --------------------------------------------------------------

async fn slow_consumer_is_closed_and_others_keep_up(backend: Backend) {
    // A long ping interval: the stalled socket write must not time out before the client reads.
    let d = Deployment::start(
        backend,
        &[("SESSION_QUEUE_LEN", "8"), ("PING_INTERVAL_SECS", "60")],
    )
    .await;
    let token = tenant_token("acme");
    let (mut healthy, _) = WsClient::connected(&d.ws_url(), &token).await;
    // The slow client connects over a socket with a tiny receive buffer and then stops reading.
    let mut slow = stalled_client(d.port(), &d.ws_url(), &token).await;
    use futures_util::StreamExt;
    let first = slow.next().await;
    assert!(
        matches!(first, Some(Ok(tokio_tungstenite::tungstenite::Message::Text(ref t))) if t.contains("connected"))
    );

    // 300 × 20 KB = 6 MB: more than the kernel buffers on both ends of the slow socket hold,
    // so the server's writes to it stall and its queue of 8 overflows.
    let pad = "x".repeat(20_000);
    let total = 300;
    let healthy_reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..total {
            let e = healthy.next_json().await;
            seen.push(e["data"]["i"].as_u64().unwrap());
        }
        seen
    });
    for i in 0..total {
        publish(
            d.port(),
            "acme",
            "license_updated",
            json!({"changes": ["plan"], "i": i, "pad": pad}),
        )
        .await;
    }
    let seen = healthy_reader.await.unwrap();
    assert_eq!(
        seen,
        (0..total as u64).collect::<Vec<_>>(),
        "the healthy client got every event in order"
    );

    // Now the slow client reads: some events, then the 1013 close.
    let close = final_close(&mut slow, Duration::from_secs(20)).await;
    assert_eq!(close, Some((1013, "slow consumer".to_owned())));
}

async fn sigterm_closes_sessions_with_1001_and_exits(backend: Backend) {
    let mut d = Deployment::start(backend, &[]).await;
    let mut clients = Vec::new();
    for tenant in ["acme", "acme", "globex"] {
        clients.push(
            WsClient::connected(&d.ws_url(), &tenant_token(tenant))
                .await
                .0,
        );
    }
    let port = d.port();
    let status = d.gateway.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");
    for client in &mut clients {
        client.expect_close(1001, "going away").await;
    }
    assert!(
        http(port, "GET", "/healthz", None, None).await.is_err(),
        "no longer listening"
    );
}

// --- resume ---------------------------------------------------------------------------------

/// Connects with `lastEventId` via the query (`query`) or the `last.<id>` subprotocol entry.
async fn resume_from(url: &str, token: &str, last: &str, query: bool) -> WsClient {
    let (url, extra) = if query {
        (format!("{url}?lastEventId={last}"), None)
    } else {
        (
            url.to_owned(),
            Some(format!("license.v1, bearer.{token}, last.{last}")),
        )
    };
    let headers: Vec<(&'static str, &str)> = extra
        .as_deref()
        .map(|p| vec![("Sec-WebSocket-Protocol", p)])
        .unwrap_or_default();
    let carrier = if query {
        Carrier::Header
    } else {
        Carrier::Query
    };
    let token_arg = if query { Some(token) } else { None };
    let mut client = try_ws_connect(&url, token_arg, carrier, &headers)
        .await
        .expect("upgrade");
    assert_eq!(client.next_json().await["type"], "connected");
    client
}

async fn resume_replays_after_last_event_id_or_asks_for_resync(backend: Backend) {
    let d = Deployment::start(backend, &[("HISTORY_SIZE", "10")]).await;
    let token = tenant_token("acme");
    let publish_n = |n: usize, from: usize| {
        let port = d.port();
        async move {
            let mut ids = Vec::new();
            for i in from..from + n {
                let e = publish(
                    port,
                    "acme",
                    "license_updated",
                    json!({"changes": ["plan"], "i": i}),
                )
                .await;
                ids.push(e["id"].as_str().unwrap().to_owned());
            }
            ids
        }
    };

    // Empty history.
    let mut client = resume_from(&d.ws_url(), &token, "1-0", false).await;
    let resync = client.next_json().await;
    assert_eq!(
        resync,
        json!({"type": "resync_required", "reason": "history is empty"})
    );

    let first = publish_n(5, 0).await;
    // A fresh connection is told where its stream starts, so it can resume before any event.
    // On Redis the node learns of an event over pub/sub, which may land just after the API's
    // 201: the stream then starts before it, and it follows live. Either way nothing is missed.
    let (mut fresh, hello) = WsClient::connected(&d.ws_url(), &token).await;
    let start = hello["lastEventId"]
        .as_str()
        .expect("lastEventId in connected");
    let at = first
        .iter()
        .position(|id| id == start)
        .unwrap_or_else(|| panic!("lastEventId {start} is none of {first:?}"));
    for id in &first[at + 1..] {
        assert_eq!(fresh.next_json().await["id"], id.as_str(), "follows live");
    }
    for query in [false, true] {
        let mut client = resume_from(&d.ws_url(), &token, &first[1], query).await;
        for id in &first[2..] {
            assert_eq!(
                client.next_json().await["id"],
                id.as_str(),
                "replayed in order (query: {query})"
            );
        }
        client.expect_silence(Duration::from_millis(200)).await;
    }
    // Replay then live: nothing twice across the switch, nothing missed.
    let mut client = resume_from(&d.ws_url(), &token, &first[0], false).await;
    let live = publish_n(3, 5).await;
    let expected: Vec<&String> = first[1..].iter().chain(&live).collect();
    for id in expected {
        assert_eq!(client.next_json().await["id"], id.as_str());
    }
    client.expect_silence(Duration::from_millis(300)).await;

    // Resume from the newest: nothing replayed, live follows.
    let mut client = resume_from(&d.ws_url(), &token, live.last().unwrap(), false).await;
    client.expect_silence(Duration::from_millis(200)).await;
    let next = publish_n(1, 8).await;
    assert_eq!(client.next_json().await["id"], next[0].as_str());

    // Far beyond HISTORY_SIZE (Redis trims whole stream nodes, so publish plenty): the first id
    // is gone.
    let batch = publish_n(250, 9).await;
    // An id between two retained events (different milliseconds) that is not itself an event.
    let between = batch[240..]
        .windows(2)
        .map(|w| (id_key(&w[0]), id_key(&w[1])))
        .find(|(a, b)| b.0 > a.0)
        .map(|(a, _)| format!("{}-{}", a.0, a.1 + 1))
        .expect("two retained events in different milliseconds");
    // (Each case publishes one more event, so the case that needs the window goes first.)
    let cases = [
        (between, "lastEventId is not in the history"),
        (
            first[0].clone(),
            "lastEventId is older than the oldest retained event",
        ),
        (
            "99999999999999-0".to_owned(),
            "lastEventId is newer than the newest event",
        ),
        ("not-an-id".to_owned(), "lastEventId is malformed"),
    ];
    for (last, reason) in cases {
        let mut client = resume_from(&d.ws_url(), &token, &last, false).await;
        assert_eq!(
            client.next_json().await,
            json!({"type": "resync_required", "reason": reason}),
            "{last}"
        );
        let live = publish_n(1, 1000).await;
        // Live events follow a resync. Events published before this client connected that
        // were still on their way to the node may come first (they follow the node's position
        // at the join); anything else is wrong.
        loop {
            let got = client.next_json().await;
            let id = got["id"].as_str().expect("an event after the resync");
            if id == live[0] {
                break;
            }
            assert!(
                id_key(id) < id_key(&live[0]),
                "{last}: only earlier in-flight events may precede the live one, got {got}"
            );
        }
    }
}

/// The upgrade done by hand on a bare socket: the `101` answer (accept key, subprotocol), then
/// framing the gateway must refuse (RFC 6455 §5): an unmasked frame closes with 1002, a text
/// frame that is not UTF-8 with 1007, each with a close frame; a valid client is served after.
#[tokio::test]
async fn framing_violations_close_with_1002_or_1007() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = Deployment::start(Backend::Memory, &[]).await;
    let token = tenant_token("acme");
    // (the bytes sent after the upgrade, the close code expected)
    let cases: [(Vec<u8>, u16); 2] = [
        (b"\x81\x02hi".to_vec(), 1002),
        // "\xff\xfe" masked with a zero mask.
        (b"\x81\x82\x00\x00\x00\x00\xff\xfe".to_vec(), 1007),
    ];
    for (bytes, code) in cases {
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", d.port()))
            .await
            .unwrap();
        let request = format!(
            "GET /ws/license HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: license.v1, bearer.{token}\r\n\r\n"
        );
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        // The answer and `connected`.
        while !String::from_utf8_lossy(&seen).contains("\"connected\"") {
            let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut chunk))
                .await
                .expect("an answer within 5 s")
                .unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&seen);
        assert!(
            text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{text}"
        );
        // RFC 6455 §1.3's example key and its accept value.
        assert!(
            text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Sec-WebSocket-Protocol: license.v1\r\n"),
            "{text}"
        );
        socket.write_all(&bytes).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut rest)).await;
        // The close frame is the last thing on the wire: 0x88, a length, the code.
        let at = rest
            .windows(2)
            .rposition(|w| w[0] == 0x88 && usize::from(w[1]) + 2 <= rest.len())
            .unwrap_or_else(|| panic!("no close frame in {rest:02x?}"));
        assert_eq!(u16::from_be_bytes([rest[at + 2], rest[at + 3]]), code);
    }
    let (mut client, _) = WsClient::connected(&d.ws_url(), &token).await;
    client.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(client.next_json().await["type"], "pong");
}
