//! Idempotent publishing (`Idempotency-Key`, `publish --idempotency-key`): one event per key and
//! tenant on every engine, however often and wherever the request is retried. (The chaos run in
//! `delivery.rs` retries every publish with its key through node kills and Redis restarts.)

use std::collections::BTreeSet;
use std::time::Duration;

use harness::*;
use serde_json::{Value, json};

every_engine!(
    a_key_publishes_once_and_replays_the_original,
    key_reuse_bad_keys_and_expiry
);
on_cluster!(a_key_publishes_once_and_replays_the_original);

fn envelope(text: &str) -> Value {
    serde_json::from_str(text).expect("envelope JSON")
}

async fn a_key_publishes_once_and_replays_the_original(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let (mut client, _) = WsClient::connected(&d.ws_url(), &tenant_token("acme")).await;
    let body = json!({"type": "license_expired", "data": {"reason": "renewal failed", "n": 1}});
    let first = publish_with_key(d.port(), "acme", "order-42", &body.to_string())
        .await
        .unwrap();
    assert_eq!(
        (first.status, first.replayed),
        (201, false),
        "{}",
        first.body
    );
    // Retries answer the original envelope, whatever the order of the data's keys.
    let reordered = r#"{"data": {"n": 1, "reason": "renewal failed"}, "type": "license_expired"}"#;
    for body in [body.to_string(), reordered.to_owned()] {
        let again = publish_with_key(d.port(), "acme", "order-42", &body)
            .await
            .unwrap();
        assert_eq!(
            (again.status, again.replayed),
            (200, true),
            "{}",
            again.body
        );
        assert_eq!(envelope(&again.body), envelope(&first.body));
    }
    // Keys are per tenant.
    let other = publish_with_key(d.port(), "globex", "order-42", &body.to_string())
        .await
        .unwrap();
    assert_eq!(other.status, 201);
    // The client got the event once.
    assert_eq!(client.next_json().await, envelope(&first.body));
    client.expect_silence(Duration::from_millis(300)).await;
}

async fn key_reuse_bad_keys_and_expiry(backend: Backend) {
    let d = Deployment::start(backend, &[("IDEMPOTENCY_TTL_SECS", "1")]).await;
    let body = json!({"type": "license_updated", "data": {"changes": ["plan"]}}).to_string();
    let first = publish_with_key(d.port(), "acme", "k", &body)
        .await
        .unwrap();
    assert_eq!(first.status, 201);
    // The same key for another event: 422, nothing published.
    let other = json!({"type": "license_updated", "data": {"changes": ["modules"]}}).to_string();
    let reused = publish_with_key(d.port(), "acme", "k", &other)
        .await
        .unwrap();
    assert_eq!(reused.status, 422, "{}", reused.body);
    assert_eq!(
        envelope(&reused.body)["error"]["code"],
        "idempotency_key_reused"
    );
    // Keys that are empty, too long, or not printable ASCII: 400 naming the header.
    for bad in [String::new(), "x".repeat(129), "tab\there".to_owned()] {
        let refused = publish_with_key(d.port(), "acme", &bad, &body)
            .await
            .unwrap();
        assert_eq!(refused.status, 400, "{bad:?}: {}", refused.body);
        let error = &envelope(&refused.body)["error"];
        assert_eq!(error["field"], "Idempotency-Key", "{error}");
    }
    let longest = publish_with_key(d.port(), "acme", &"x".repeat(128), &body)
        .await
        .unwrap();
    assert_eq!(longest.status, 201);
    // Once the key has expired, it publishes anew.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let renewed = publish_with_key(d.port(), "acme", "k", &other)
        .await
        .unwrap();
    assert_eq!(
        (renewed.status, renewed.replayed),
        (201, false),
        "{}",
        renewed.body
    );
    assert_ne!(envelope(&renewed.body)["id"], envelope(&first.body)["id"]);
}

/// Two nodes behind nginx, one Redis: the same key sent 20 times at once through the balancer
/// (so to both nodes) makes one event and one history entry, and every answer carries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_on_two_nodes_make_one_event() {
    let redis = Redis::start();
    let a = Gateway::start(GatewayOptions::redis(&redis)).await;
    let b = Gateway::start(GatewayOptions::redis(&redis)).await;
    let nginx = Nginx::start(&[a.port, b.port]).await;
    let (mut client, _) = WsClient::connected(&a.ws_url(), &tenant_token("acme")).await;
    let mut ids = Vec::new();
    for round in 0..5 {
        let key = format!("burst-{round}");
        let body =
            json!({"type": "module_activated", "data": {"module": "reports", "round": round}})
                .to_string();
        let sends = (0..20).map(|_| publish_with_key(nginx.port, "acme", &key, &body));
        let answers: Vec<KeyedPublish> = futures_util::future::join_all(sends)
            .await
            .into_iter()
            .map(|r| r.expect("publish through nginx"))
            .collect();
        let created = answers.iter().filter(|a| a.status == 201).count();
        let replayed = answers
            .iter()
            .filter(|a| a.status == 200 && a.replayed)
            .count();
        assert_eq!((created, replayed), (1, 19), "{answers:?}");
        let envelopes: BTreeSet<String> = answers.iter().map(|a| a.body.clone()).collect();
        assert_eq!(envelopes.len(), 1, "every answer carries the same envelope");
        ids.push(envelope(&answers[0].body)["id"].clone());
    }
    let r = redis.client().await;
    let history: Vec<(String, std::collections::HashMap<String, String>)> =
        fred::prelude::StreamsInterface::xrange(&r, "license:history:{acme}", "-", "+", None)
            .await
            .unwrap();
    assert_eq!(history.len(), 5, "one history entry per key");
    for id in &ids {
        assert_eq!(client.next_json().await["id"], *id);
    }
    client.expect_silence(Duration::from_millis(300)).await;
    // Both nodes served some of them.
    for node in [&a, &b] {
        assert!(node.log().contains("idempotent publish replayed"));
    }
}

/// `publish --idempotency-key`: a retry prints the first id and publishes nothing; the same key
/// with other data exits 2; a bad key exits 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_publish_takes_a_key() {
    let redis = Redis::start();
    let run = |key: &str, data: &str| {
        run_cli(
            &[
                "publish",
                "--tenant",
                "acme",
                "--type",
                "license_updated",
                "--data",
                data,
                "--idempotency-key",
                key,
            ],
            &[("REDIS_URL", &redis.url())],
        )
    };
    let (first, id, _) = run("cli-1", r#"{"changes":["plan"]}"#);
    assert!(first.success());
    let (again, same, _) = run("cli-1", r#"{"changes":["plan"]}"#);
    assert!(again.success());
    assert_eq!(same, id);
    let (reused, _, stderr) = run("cli-1", r#"{"changes":["limits"]}"#);
    assert_eq!(reused.code(), Some(2), "{stderr}");
    assert!(stderr.contains("idempotency-key"), "{stderr}");
    let (bad, _, stderr) = run(&"k".repeat(200), "{}");
    assert_eq!(bad.code(), Some(2), "{stderr}");
    let r = redis.client().await;
    let entries: u64 = fred::prelude::StreamsInterface::xlen(&r, "license:history:{acme}")
        .await
        .unwrap();
    assert_eq!(entries, 1);
}

/// A node SIGKILLed while its publish is in flight: Redis, frozen, runs the node's command after
/// the node is gone, so the event exists but nobody was told. The retry with the same key on
/// another node answers that event (200, replayed), and clients get it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_node_died_mid_request_is_retried_on_another_node() {
    let redis = Redis::start();
    let mut a = Gateway::start(GatewayOptions::redis(&redis)).await;
    let b = Gateway::start(GatewayOptions::redis(&redis)).await;
    let (mut client, _) = WsClient::connected(&b.ws_url(), &tenant_token("acme")).await;
    // One publish first, so the script is loaded and the node's EVALSHA needs no second trip.
    let warm = publish(
        a.port,
        "acme",
        "license_updated",
        json!({"changes": ["plan"]}),
    )
    .await;
    assert_eq!(client.next_json().await, warm);

    let body = json!({"type": "license_expired", "data": {"reason": "x"}}).to_string();
    redis.freeze(true);
    let in_flight = {
        let body = body.clone();
        let port = a.port;
        tokio::spawn(async move { publish_with_key(port, "acme", "crash-1", &body).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill();
    assert!(
        in_flight.await.unwrap().is_err(),
        "the publisher heard nothing"
    );
    redis.freeze(false);

    let retried = eventually(WAIT, "the retry accepted on node b", || async {
        let answer = publish_with_key(b.port, "acme", "crash-1", &body)
            .await
            .ok()?;
        (answer.status == 200 || answer.status == 201).then_some(answer)
    })
    .await;
    assert_eq!(
        (retried.status, retried.replayed),
        (200, true),
        "the first attempt had published: {}",
        retried.body
    );
    assert_eq!(client.next_json().await, envelope(&retried.body));
    client.expect_silence(Duration::from_millis(500)).await;
    let r = redis.client().await;
    let entries: u64 = fred::prelude::StreamsInterface::xlen(&r, "license:history:{acme}")
        .await
        .unwrap();
    assert_eq!(entries, 2, "the warm-up and the one keyed event");
}
