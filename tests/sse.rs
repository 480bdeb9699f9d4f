//! The SSE transport (`GET /sse/license`) through a real gateway process, on the embedded
//! engine and on Redis: the same session as the WebSocket — `connected`, events with `id:`,
//! isolation, resume from `Last-Event-ID` or `lastEventId`, filters, token expiry, heartbeats,
//! limits, slow consumers, drain, notification state, metrics by transport — with refusals as
//! HTTP statuses. The delivery suite runs its failure scenarios over SSE as well
//! (tests/delivery.rs).

use std::time::Duration;

use harness::*;
use serde_json::{Value, json};

both_engines!(
    a_stream_has_proxy_headers_connected_and_events_with_ids,
    refusals_are_http_statuses_and_a_ticket_opens_one_stream,
    tenant_isolation_three_by_three_over_sse,
    resume_from_last_event_id_header_or_query_or_resync,
    filters_apply_to_a_stream,
    token_expiry_ends_the_stream_with_a_close_message,
    heartbeats_are_comment_lines,
    connection_limit_is_a_503,
    a_stalled_stream_is_closed_and_others_keep_up,
    sigterm_ends_streams_with_going_away,
    notification_state_reaches_a_stream,
);

async fn ids_of(port: u16, tenant: &str, n: usize) -> Vec<Value> {
    let mut sent = Vec::new();
    for i in 0..n {
        sent.push(
            publish(
                port,
                tenant,
                "license_updated",
                json!({"changes": ["plan"], "i": i}),
            )
            .await,
        );
    }
    sent
}

async fn a_stream_has_proxy_headers_connected_and_events_with_ids(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let (mut client, hello) = SseClient::connected(d.port(), &tenant_token("acme")).await;
    assert_eq!(
        client.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(client.header("cache-control"), Some("no-cache"));
    assert_eq!(client.header("x-accel-buffering"), Some("no"));
    assert_eq!(client.header("content-encoding"), None, "never compressed");
    assert_eq!(hello["tenantId"], "acme");
    assert!(client.with_id.is_empty(), "connected carries no id:");

    // A WebSocket client of the same tenant sees the same events.
    let (mut ws, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    let sent = ids_of(d.port(), "acme", 3).await;
    for e in &sent {
        assert_eq!(&client.next_json().await, e);
        assert_eq!(&ws.next_json().await, e);
    }
    let ids: Vec<String> = client.with_id.iter().map(|(id, _)| id.clone()).collect();
    let want: Vec<String> = sent
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, want, "each event's id: is its envelope id");
    assert_eq!(
        metric_series(d.port(), "license_gateway_connections{transport=\"sse\"}").await,
        1.0
    );
    assert_eq!(
        metric_series(
            d.port(),
            "license_gateway_connections{transport=\"websocket\"}"
        )
        .await,
        1.0
    );
}

async fn ticket(port: u16, token: &str) -> String {
    let (status, text) = http(port, "POST", "/api/connect-ticket", Some(token), Some(""))
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    let t = serde_json::from_str::<Value>(&text).unwrap()["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    remember(&t);
    t
}

/// Status and the headers a refusal carries.
async fn refused(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let client = SseClient::open(port, path, headers).await.unwrap();
    let seen = json!({
        "www": client.header("www-authenticate"),
        "retry": client.header("retry-after"),
    });
    (client.status, seen)
}

async fn refusals_are_http_statuses_and_a_ticket_opens_one_stream(backend: Backend) {
    let d = Deployment::start(backend, &[("ALLOWED_ORIGINS", "https://app.example.com")]).await;
    let port = d.port();
    let expired = sign_claims(&json!({"tenantId": "acme", "exp": now_secs() - 600}));
    let bad = format!("Bearer {}", "not.a.jwt");
    let old = format!("Bearer {expired}");
    let jwt = tenant_token("acme");
    for (path, headers, why) in [
        ("/sse/license", vec![], "no credentials"),
        (
            "/sse/license",
            vec![("Authorization", bad.as_str())],
            "bad token",
        ),
        (
            "/sse/license",
            vec![("Authorization", old.as_str())],
            "expired token",
        ),
        ("/sse/license?ticket=nope", vec![], "unknown ticket"),
    ] {
        let (status, seen) = refused(port, path, &headers).await;
        assert_eq!(status, 401, "{why}");
        assert_eq!(seen["www"], "Bearer error=\"invalid_token\"", "{why}");
    }
    // No JWT in URLs on this transport: `?token=` is not a carrier.
    let (status, _) = refused(port, &format!("/sse/license?token={jwt}"), &[]).await;
    assert_eq!(status, 401);
    let auth = format!("Bearer {jwt}");
    let (status, _) = refused(
        port,
        "/sse/license?minSeverity=loud",
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(status, 400, "a filter that cannot be read");
    let (status, _) = refused(
        port,
        "/sse/license",
        &[
            ("Authorization", &auth),
            ("Origin", "https://evil.example.com"),
        ],
    )
    .await;
    assert_eq!(status, 403, "origin not allowed");

    // A ticket opens one stream, carrying its token's tenant; a second use is refused.
    let t = ticket(port, &user_token("acme", "alice")).await;
    let path = format!("/sse/license?ticket={t}");
    let mut client = SseClient::open(port, &path, &[]).await.unwrap();
    assert_eq!(client.status, 200);
    let hello = client.next_json().await;
    assert_eq!(
        (&hello["type"], &hello["tenantId"]),
        (&json!("connected"), &json!("acme"))
    );
    assert_eq!(hello["unreadCount"], 0, "the ticket carries the user");
    let (status, _) = refused(port, &path, &[]).await;
    assert_eq!(status, 401, "single use");

    // A ticket expires with its token (here 2 s), or after 30 s.
    let short = sign_claims(&json!({"tenantId": "acme", "exp": now_secs() + 2}));
    let t = ticket(port, &short).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (status, _) = refused(port, &format!("/sse/license?ticket={t}"), &[]).await;
    assert_eq!(status, 401, "expired ticket");
    let refusals = metric_series(
        port,
        "license_gateway_closes_total{code=\"1008\",reason=\"invalid_token\",transport=\"sse\"}",
    )
    .await;
    assert!(refusals >= 4.0, "refusals counted by transport: {refusals}");
}

async fn tenant_isolation_three_by_three_over_sse(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let tenants = ["t-a", "t-b", "t-c"];
    let mut clients = Vec::new();
    for tenant in tenants {
        for _ in 0..3 {
            clients.push((
                tenant,
                SseClient::connected(d.port(), &tenant_token(tenant))
                    .await
                    .0,
            ));
        }
    }
    let mut sent = std::collections::HashMap::new();
    for tenant in tenants {
        let e = publish(
            d.port(),
            tenant,
            "license_updated",
            json!({"changes": ["plan"], "who": tenant}),
        )
        .await;
        sent.insert(tenant, e);
    }
    for (tenant, client) in &mut clients {
        assert_eq!(
            &client.next_json().await,
            &sent[tenant],
            "client of {tenant}"
        );
    }
    for (_, client) in &mut clients {
        client.expect_silence(Duration::from_millis(300)).await;
    }
}

async fn resume_from_last_event_id_header_or_query_or_resync(backend: Backend) {
    let d = Deployment::start(backend, &[("HISTORY_SIZE", "10")]).await;
    let token = tenant_token("acme");
    let auth = format!("Bearer {token}");
    let sent = ids_of(d.port(), "acme", 5).await;
    let id = |i: usize| sent[i]["id"].as_str().unwrap().to_owned();
    // The header (what EventSource sends when it reconnects) and the query.
    let header_id = id(1);
    let mut by_header = SseClient::open(
        d.port(),
        "/sse/license",
        &[("Authorization", &auth), ("Last-Event-ID", &header_id)],
    )
    .await
    .unwrap();
    let by_query = format!("/sse/license?lastEventId={}", id(3));
    let (mut by_query, _) = SseClient::connected_at(d.port(), &by_query, &token).await;
    assert_eq!(by_header.next_json().await["type"], "connected");
    for e in &sent[2..] {
        assert_eq!(&by_header.next_json().await, e);
    }
    assert_eq!(&by_query.next_json().await, &sent[4]);
    by_header.expect_silence(Duration::from_millis(300)).await;
    by_query.expect_silence(Duration::from_millis(300)).await;

    // Trimmed away (Redis trims whole stream nodes, so publish plenty), or not an id:
    // resync_required, without an id: line.
    ids_of(d.port(), "acme", 250).await;
    for (last, reason) in [
        (id(0), "lastEventId is older than the oldest retained event"),
        ("garbage".to_owned(), "lastEventId is malformed"),
    ] {
        let path = format!("/sse/license?lastEventId={last}");
        let (mut c, _) = SseClient::connected_at(d.port(), &path, &token).await;
        let m = c.next_json().await;
        assert_eq!(
            (&m["type"], &m["reason"]),
            (&json!("resync_required"), &json!(reason))
        );
        assert!(c.with_id.is_empty());
    }
}

async fn filters_apply_to_a_stream(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let path = "/sse/license?types=module_deactivated";
    let (mut filtered, _) = SseClient::connected_at(d.port(), path, &tenant_token("acme")).await;
    publish(
        d.port(),
        "acme",
        "license_updated",
        json!({"changes": ["plan"]}),
    )
    .await;
    let wanted = publish(
        d.port(),
        "acme",
        "module_deactivated",
        json!({"module": "crm"}),
    )
    .await;
    assert_eq!(filtered.next_json().await, wanted);
    filtered.expect_silence(Duration::from_millis(300)).await;
}

async fn token_expiry_ends_the_stream_with_a_close_message(backend: Backend) {
    let d = Deployment::start(backend, &[("JWT_LEEWAY_SECS", "0")]).await;
    let short = sign_claims(&json!({"tenantId": "acme", "exp": now_secs() + 2}));
    let (mut client, _) = SseClient::connected(d.port(), &short).await;
    client.expect_close(1008, "token expired").await;
}

async fn heartbeats_are_comment_lines(backend: Backend) {
    let d = Deployment::start(backend, &[("PING_INTERVAL_SECS", "1")]).await;
    let (mut client, _) = SseClient::connected(d.port(), &tenant_token("acme")).await;
    // A stream's client never answers: it is not dropped as silent after two intervals.
    client.expect_silence(Duration::from_millis(3500)).await;
    assert!(client.comments >= 3, "{} heartbeats", client.comments);
    let e = publish(
        d.port(),
        "acme",
        "license_updated",
        json!({"changes": ["plan"]}),
    )
    .await;
    assert_eq!(client.next_json().await, e);
}

async fn connection_limit_is_a_503(backend: Backend) {
    let d = Deployment::start(backend, &[("MAX_CONNECTIONS", "1")]).await;
    let token = tenant_token("acme");
    let (first, _) = SseClient::connected(d.port(), &token).await;
    let auth = format!("Bearer {token}");
    let (status, seen) = refused(d.port(), "/sse/license", &[("Authorization", &auth)]).await;
    assert_eq!(status, 503);
    assert_eq!(seen["retry"], "2");
    drop(first);
    eventually(WAIT, "the slot frees up", || async {
        let c = SseClient::open(d.port(), "/sse/license", &[("Authorization", &auth)])
            .await
            .ok()?;
        (c.status == 200).then_some(())
    })
    .await;
}

async fn a_stalled_stream_is_closed_and_others_keep_up(backend: Backend) {
    let d = Deployment::start(
        backend,
        &[("SESSION_QUEUE_LEN", "8"), ("PING_INTERVAL_SECS", "60")],
    )
    .await;
    let token = tenant_token("acme");
    let (mut healthy, _) = SseClient::connected(d.port(), &token).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket
        .connect(([127, 0, 0, 1], d.port()).into())
        .await
        .unwrap();
    let auth = format!("Bearer {token}");
    let mut slow = SseClient::open_on(
        stream,
        d.port(),
        "/sse/license",
        &[("Authorization", &auth)],
    )
    .await
    .unwrap();
    assert_eq!(slow.next_json().await["type"], "connected");

    let pad = "x".repeat(20_000);
    let total = 300;
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..total {
            seen.push(healthy.next_json().await["data"]["i"].as_u64().unwrap());
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
    assert_eq!(reader.await.unwrap(), (0..total as u64).collect::<Vec<_>>());
    // The stalled stream ends (its close message cannot get through a full socket).
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match slow.read(WAIT).await {
                Some(Read::Ended | Read::Close(_)) => return true,
                Some(Read::Text(_)) => {}
                None => return false,
            }
        }
    })
    .await;
    assert_eq!(ended, Ok(true), "the stalled stream ended");
    let key =
        "license_gateway_closes_total{code=\"1013\",reason=\"slow_consumer\",transport=\"sse\"}";
    assert_eq!(metric_series(d.port(), key).await, 1.0);
}

async fn sigterm_ends_streams_with_going_away(backend: Backend) {
    let mut d = Deployment::start(backend, &[]).await;
    let mut clients = Vec::new();
    for tenant in ["acme", "acme", "globex"] {
        clients.push(
            SseClient::connected(d.port(), &tenant_token(tenant))
                .await
                .0,
        );
    }
    let status = d.gateway.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");
    for client in &mut clients {
        client.expect_close(1001, "going away").await;
    }
}

async fn notification_state_reaches_a_stream(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let token = user_token("acme", "alice");
    let (mut client, hello) = SseClient::connected(d.port(), &token).await;
    assert_eq!(hello["unreadCount"], 0);
    let e = publish(
        d.port(),
        "acme",
        "license_updated",
        json!({"changes": ["plan"]}),
    )
    .await;
    assert_eq!(client.next_json().await, e);
    let id = e["id"].as_str().unwrap();
    let path = format!("/api/notifications/{id}/read");
    let (status, body) = http(d.port(), "POST", &path, Some(&token), Some(""))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let state = client.next_json().await;
    assert_eq!(state["type"], "notification_state");
    assert_eq!(state["unreadCount"], 0);
    assert_eq!(state["changed"], json!([{"id": id, "read": true}]));
    assert_eq!(client.with_id.len(), 1, "notification_state carries no id:");
}
