//! Limits that hold under abuse, against real gateway processes.

use std::time::{Duration, Instant};

use harness::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the server has closed `stream` (EOF or reset) within `within`; any bytes it sends
/// first (a response) are read past.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// A slowloris of 300 sockets — silent, sending headers by halves, idling after a request — is
/// closed within the header timeout, while a normal client connects and gets its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_is_closed_within_the_header_timeout() {
    let node = Gateway::start(GatewayOptions::memory().env("HTTP_HEADER_TIMEOUT_SECS", "2")).await;
    let mut sockets = Vec::new();
    for i in 0..300 {
        let mut stream = TcpStream::connect(("127.0.0.1", node.port)).await.unwrap();
        match i % 3 {
            0 => {}
            1 => {
                stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n")
                    .await
                    .unwrap();
            }
            _ => {
                let request = b"GET /healthz HTTP/1.1\r\nHost: idle\r\n\r\n";
                stream.write_all(request).await.unwrap();
            }
        }
        sockets.push(stream);
    }
    let started = Instant::now();
    let (mut client, _) = WsClient::connected(&node.ws_url(), &tenant_token("acme")).await;
    let sent = publish(
        node.port,
        "acme",
        "module_activated",
        json!({"module": "m"}),
    )
    .await;
    assert_eq!(client.next_json().await["id"], sent["id"]);
    let mut open = 0;
    for stream in &mut sockets {
        let left = Duration::from_secs(4).saturating_sub(started.elapsed());
        if !closed_within(stream, left).await {
            open += 1;
        }
    }
    println!(
        "slowloris: {open} of 300 sockets still open after {:?}",
        started.elapsed()
    );
    assert_eq!(
        open, 0,
        "every slow or idle socket closed within the header timeout (+2 s)"
    );
    // The upgraded WebSocket is not subject to it: it still gets events.
    let sent = publish(
        node.port,
        "acme",
        "module_activated",
        json!({"module": "n"}),
    )
    .await;
    assert_eq!(client.next_json().await["id"], sent["id"]);
}

/// A client that sends faster than `CLIENT_MSG_RATE` (after a `CLIENT_MSG_BURST`) is closed with
/// 1008 `rate limited`; one within its rate is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_over_their_message_rate_are_closed() {
    let node = Gateway::start(
        GatewayOptions::memory()
            .env("CLIENT_MSG_RATE", "5")
            .env("CLIENT_MSG_BURST", "10"),
    )
    .await;
    let (mut flood, _) = WsClient::connected(&node.ws_url(), &tenant_token("acme")).await;
    let (mut polite, _) = WsClient::connected(&node.ws_url(), &tenant_token("acme")).await;
    for _ in 0..30 {
        flood.send_text(r#"{"type":"ping"}"#).await;
    }
    let mut pongs = 0;
    let close = loop {
        match flood.read(WAIT).await {
            Some(Read::Text(text)) if text.contains("pong") => pongs += 1,
            other => break other,
        }
    };
    assert!(
        matches!(close, Some(Read::Close(Some((1008, ref r)))) if r == "rate limited"),
        "{close:?}"
    );
    assert!(
        (10..=12).contains(&pongs),
        "the burst was answered: {pongs}"
    );
    for _ in 0..12 {
        polite.send_text(r#"{"type":"ping"}"#).await;
        assert!(polite.next_text().await.contains("pong"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Regression: refused upgrades that never answered their close frame held slots against
/// `MAX_CONNECTIONS` for up to 2 s and locked valid clients out. A refused connection never
/// counts now (and the node waits at most 1 s in all for its close handshake).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrades_never_count_toward_the_limit() {
    let node = Gateway::start(GatewayOptions::memory().env("MAX_CONNECTIONS", "3")).await;
    let url = node.ws_url();
    // Twenty bad tokens whose clients never read, so never answer the close.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(ws_connect(&url, Some("garbage"), Carrier::Subprotocol).await);
    }
    let mut valid = Vec::new();
    for _ in 0..3 {
        valid.push(WsClient::connected(&url, &tenant_token("acme")).await.0);
    }
    // The limit itself still holds for authenticated connections.
    let mut fourth = ws_connect(&url, Some(&tenant_token("acme")), Carrier::Subprotocol).await;
    fourth.expect_close(1013, "try again later").await;
    drop((valid, silent));
}

/// `MAX_CONNECTIONS_PER_IP` per client address: the peer's, or behind `TRUSTED_PROXIES` the
/// rightmost untrusted `X-Forwarded-For` hop (what a client prepends cannot change it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_caps_hold_directly_and_behind_a_trusted_proxy() {
    let direct = Gateway::start(GatewayOptions::memory().env("MAX_CONNECTIONS_PER_IP", "2")).await;
    let token = tenant_token("acme");
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(WsClient::connected(&direct.ws_url(), &token).await.0);
    }
    let mut third = ws_connect(&direct.ws_url(), Some(&token), Carrier::Subprotocol).await;
    third.expect_close(1013, "try again later").await;
    // Leaving frees the slot.
    held.pop();
    eventually(WAIT, "a freed slot", || async {
        let mut again = ws_connect(&direct.ws_url(), Some(&token), Carrier::Subprotocol).await;
        let connected =
            matches!(again.read(WAIT).await, Some(Read::Text(t)) if t.contains("connected"));
        connected.then_some(again)
    })
    .await;

    let proxied = Gateway::start(
        GatewayOptions::memory()
            .env("MAX_CONNECTIONS_PER_IP", "2")
            .env("TRUSTED_PROXIES", "127.0.0.0/8"),
    )
    .await;
    let connect_as = |forwarded: &'static str| {
        let url = proxied.ws_url();
        let token = token.clone();
        async move {
            let mut client = try_ws_connect(
                &url,
                Some(&token),
                Carrier::Subprotocol,
                &[("X-Forwarded-For", forwarded)],
            )
            .await
            .expect("upgrade");
            match client.read(WAIT).await {
                Some(Read::Text(t)) if t.contains("connected") => Ok(client),
                other => Err(other),
            }
        }
    };
    let mut kept = Vec::new();
    for _ in 0..2 {
        kept.push(connect_as("203.0.113.7").await.expect("under the cap"));
    }
    let over = connect_as("203.0.113.7").await.err().flatten();
    assert!(
        matches!(over, Some(Read::Close(Some((1013, _))))),
        "{over:?}"
    );
    let spoofed = connect_as("203.0.113.8, 203.0.113.7").await.err().flatten();
    assert!(
        matches!(spoofed, Some(Read::Close(Some((1013, _))))),
        "{spoofed:?}"
    );
    kept.push(
        connect_as("203.0.113.8")
            .await
            .expect("another client address"),
    );
}
