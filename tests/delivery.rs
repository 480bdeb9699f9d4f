//! Delivery guarantees against real Redis, real gateway processes and a real nginx: resume on
//! another node under load, Redis restarts, a node killed behind a round-robin balancer, slow
//! consumers, graceful drain, and a chaos run mixing these faults. The first five run over both
//! transports (WebSocket and SSE).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use harness::*;
use serde_json::json;

both_transports!(
    resume_on_the_other_node_while_200_events_per_second_flow,
    redis_restart_under_50_clients_loses_nothing,
    node_killed_behind_round_robin_nginx_loses_nothing,
    a_client_that_never_reads_is_closed_while_a_healthy_one_gets_10000_events,
    drain_turns_readiness_off_first_and_spreads_closes,
);

/// Publishes through the API of the first node in `ports` that accepts (201); returns the id,
/// or `None` when no node accepted (the event was not published).
async fn publish_somewhere(ports: &[u16], tenant: &str, i: usize) -> Option<String> {
    let body =
        json!({"type": "license_updated", "data": {"changes": ["plan"], "i": i}}).to_string();
    let path = format!("/api/admin/tenants/{tenant}/events");
    for port in ports {
        if let Ok((201, text)) = http(*port, "POST", &path, Some(&admin_key()), Some(&body)).await {
            let envelope: serde_json::Value = serde_json::from_str(&text).ok()?;
            return envelope["id"].as_str().map(str::to_owned);
        }
    }
    None
}

/// Publishes event `i` with idempotency key `key`, retrying on the nodes in turn until one
/// accepts it (201) or answers that it already did (200, a replay: the first attempt's node
/// published it and died, or timed out, before answering). Returns the id and whether it was a
/// replay.
async fn publish_retrying(ports: &[u16], tenant: &str, i: usize, key: &str) -> (String, bool) {
    let body =
        json!({"type": "license_updated", "data": {"changes": ["plan"], "i": i}}).to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    for attempt in 0.. {
        let port = ports[(i + attempt) % ports.len()];
        if let Ok(answer) = publish_with_key(port, tenant, key, &body).await
            && (answer.status == 201 || answer.status == 200)
        {
            let envelope: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
            let id = envelope["id"].as_str().unwrap().to_owned();
            return (id, answer.replayed);
        }
        assert!(Instant::now() < deadline, "publish {key} never accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!()
}

/// Publishes at about `rate` per second for `duration`; returns the accepted ids in order.
async fn publish_for(ports: Vec<u16>, tenant: &str, rate: u32, duration: Duration) -> Vec<String> {
    let mut ids = Vec::new();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut i = 0;
    while start.elapsed() < duration {
        tick.tick().await;
        if let Some(id) = publish_somewhere(&ports, tenant, i).await {
            ids.push(id);
        }
        i += 1;
    }
    ids
}

/// Every follower holds exactly `published`, in order; prints delivered / lost / duplicated.
fn check_exactly_once(label: &str, published: &[String], followers: &[Followed]) {
    let expected: HashSet<&String> = published.iter().collect();
    let (mut delivered, mut lost, mut duplicated, mut reordered) = (0, 0, 0, 0);
    for (n, f) in followers.iter().enumerate() {
        let unique: HashSet<&String> = f.ids.iter().collect();
        delivered += f.ids.len();
        duplicated += f.ids.len() - unique.len();
        let missing: Vec<&&String> = expected.difference(&unique).collect();
        for id in &missing {
            let pos = published.iter().position(|p| p == **id).unwrap_or(0);
            let got_before = f.ids.iter().position(|x| id_key(x) > id_key(id));
            println!(
                "{label}: client {n} lost {id} (#{pos} published; next received at {got_before:?}; {} connections, nodes {:?})",
                f.connections, f.nodes
            );
        }
        lost += missing.len();
        reordered += f
            .ids
            .windows(2)
            .filter(|w| id_key(&w[0]) >= id_key(&w[1]))
            .count();
    }
    let resyncs: usize = followers.iter().map(|f| f.resyncs).sum();
    let reconnects: usize = followers
        .iter()
        .map(|f| f.connections.saturating_sub(1))
        .sum();
    println!(
        "{label}: published {} to {} clients: delivered {delivered}, lost {lost}, duplicated {duplicated}, \
         out of order {reordered}, resyncs {resyncs}, reconnects {reconnects}",
        published.len(),
        followers.len()
    );
    assert_eq!((lost, duplicated, reordered), (0, 0, 0), "{label}");
    for f in followers {
        assert_eq!(f.ids, published, "{label}: a client's sequence");
    }
}

async fn resume_on_the_other_node_while_200_events_per_second_flow(transport: Transport) {
    let redis = Redis::start();
    let a = Gateway::start(GatewayOptions::redis(&redis)).await;
    let b = Gateway::start(GatewayOptions::redis(&redis)).await;
    let target = Target::new();
    let follower = tokio::spawn(follow_over(
        transport,
        vec![a.ws_url(), b.ws_url()],
        tenant_token("acme"),
        target.clone(),
        Duration::from_secs(40),
        Some(Duration::from_millis(700)),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let published = publish_for(vec![b.port, a.port], "acme", 200, Duration::from_secs(4)).await;
    target.set(published.last());
    let seen = follower.await.unwrap();
    assert!(published.len() > 400, "published {}", published.len());
    assert!(
        seen.connections >= 4,
        "reconnected {} times",
        seen.connections
    );
    assert_eq!(seen.nodes.len(), 2, "served by both nodes");
    assert_eq!(seen.resyncs, 0);
    check_exactly_once("resume across nodes", &published, &[seen]);
}

async fn redis_restart_under_50_clients_loses_nothing(transport: Transport) {
    let mut redis = Redis::start_with_aof();
    let node = Gateway::start(GatewayOptions::redis(&redis)).await;
    let targets: Vec<Target> = (0..5).map(|_| Target::new()).collect();
    let followers: Vec<_> = (0..50)
        .map(|i| {
            tokio::spawn(follow_over(
                transport,
                vec![node.ws_url()],
                tenant_token(&format!("t{}", i % 5)),
                targets[i % 5].clone(),
                Duration::from_secs(60),
                None,
            ))
        })
        .collect();
    // Joined is not yet subscribed: the stats count a session while its tenant's subscription
    // is still being made, and an event published then reaches none of the tenant's clients.
    eventually(WAIT, "50 clients connected", || async {
        let joined = admin_stats(node.port).await["totalConnections"] == 50;
        let subscribed = metric(node.port, "license_gateway_tenants_subscribed").await == 5.0;
        (joined && subscribed).then_some(())
    })
    .await;
    // Readiness observed throughout.
    let watching = Arc::new(AtomicBool::new(true));
    let port = node.port;
    let statuses = tokio::spawn({
        let watching = watching.clone();
        async move {
            let mut seen = Vec::new();
            while watching.load(Ordering::Relaxed) {
                if let Ok((status, _)) = http(port, "GET", "/readyz", None, None).await
                    && seen.last() != Some(&status)
                {
                    seen.push(status);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        }
    });

    let mut published: Vec<Vec<String>> = vec![Vec::new(); 5];
    for i in 0..20 {
        let t = i % 5;
        published[t].push(
            publish_somewhere(&[node.port], &format!("t{t}"), i)
                .await
                .unwrap(),
        );
    }
    redis.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.restart();
    // Straight after the restart, before the node has resubscribed: these reach the history
    // only, and the node must fill them in from there.
    for i in 20..30 {
        let t = i % 5;
        let (status, stdout, stderr) = run_cli(
            &[
                "publish",
                "--tenant",
                &format!("t{t}"),
                "--type",
                "license_updated",
                "--data",
                r#"{"changes":["plan"]}"#,
            ],
            &[("REDIS_URL", &redis.url())],
        );
        assert!(status.success(), "{stderr}");
        published[t].push(stdout.trim().to_owned());
    }
    node.wait_ready().await;
    for i in 30..50 {
        let t = i % 5;
        published[t].push(
            publish_somewhere(&[node.port], &format!("t{t}"), i)
                .await
                .unwrap(),
        );
    }
    for (target, ids) in targets.iter().zip(&published) {
        target.set(ids.last());
    }
    let mut results = Vec::new();
    for f in followers {
        results.push(f.await.unwrap());
    }
    watching.store(false, Ordering::Relaxed);
    let statuses = statuses.await.unwrap();
    assert_eq!(
        statuses,
        vec![200, 503, 200],
        "readiness through the restart"
    );
    for f in &results {
        assert_eq!(
            f.connections, 1,
            "connections stay open through the restart"
        );
        assert_eq!(f.resyncs, 0);
    }
    for (t, ids) in published.iter().enumerate() {
        let of_tenant: Vec<Followed> = results.iter().skip(t).step_by(5).cloned().collect();
        check_exactly_once(&format!("redis restart, tenant t{t}"), ids, &of_tenant);
    }
    assert!(
        node.log().contains("filled a delivery gap from history"),
        "the gap was filled from history"
    );
}

async fn node_killed_behind_round_robin_nginx_loses_nothing(transport: Transport) {
    let redis = Redis::start();
    let a = Gateway::start(GatewayOptions::redis(&redis)).await;
    let b = Gateway::start(GatewayOptions::redis(&redis)).await;
    let mut c = Gateway::start(GatewayOptions::redis(&redis)).await;
    let nginx = Nginx::start(&[a.port, b.port, c.port]).await;
    let target = Target::new();
    let followers: Vec<_> = (0..60)
        .map(|_| {
            tokio::spawn(follow_over(
                transport,
                vec![nginx.ws_url()],
                tenant_token("acme"),
                target.clone(),
                Duration::from_secs(60),
                None,
            ))
        })
        .collect();
    let per_node = eventually(WAIT, "60 clients connected", || async {
        let s = admin_stats(a.port).await;
        (s["totalConnections"] == 60).then_some(s["nodes"].clone())
    })
    .await;
    let busy = per_node
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["connections"].as_u64() > Some(0))
        .count();
    assert!(busy >= 2, "round robin spread the clients: {per_node}");

    let publisher = tokio::spawn(publish_for(
        vec![a.port, b.port],
        "acme",
        100,
        Duration::from_secs(4),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.kill();
    let published = publisher.await.unwrap();
    target.set(published.last());
    let mut results = Vec::new();
    for f in followers {
        results.push(f.await.unwrap());
    }
    let moved = results.iter().filter(|f| f.connections > 1).count();
    println!("{moved} clients reconnected after the node was killed");
    assert!(moved > 0, "some clients were on the killed node");
    check_exactly_once("node killed behind nginx", &published, &results);
}

async fn a_client_that_never_reads_is_closed_while_a_healthy_one_gets_10000_events(
    transport: Transport,
) {
    let redis = Redis::start();
    // A long ping interval: the write stalled on the silent client must not be given up before
    // the publishing ends and the client reads, however slowly a loaded machine publishes.
    let node = Gateway::start(GatewayOptions::redis(&redis).env("PING_INTERVAL_SECS", "60")).await;
    let token = tenant_token("acme");
    let target = Target::new();
    let healthy = tokio::spawn(follow_over(
        transport,
        vec![node.ws_url()],
        token.clone(),
        target.clone(),
        Duration::from_secs(120),
        None,
    ));
    // The stalled client reads nothing until the end.
    let mut stalled = harness::client::stalled(transport, &node.ws_url(), &token).await;
    eventually(WAIT, "both connected", || async {
        (admin_stats(node.port).await["totalConnections"] == 2).then_some(())
    })
    .await;

    let pad = "x".repeat(900);
    let published = Arc::new(std::sync::Mutex::new(Vec::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = (0..4)
        .map(|_| {
            let (published, next, pad, port) =
                (published.clone(), next.clone(), pad.clone(), node.port);
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= 10_000 {
                        break;
                    }
                    let e = publish(
                        port,
                        "acme",
                        "license_updated",
                        json!({"changes": ["plan"], "i": i, "pad": pad}),
                    )
                    .await;
                    published
                        .lock()
                        .unwrap()
                        .push(e["id"].as_str().unwrap().to_owned());
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let mut published = published.lock().unwrap().clone();
    published.sort_by_key(|id| id_key(id));
    target.set(published.last());
    let seen = healthy.await.unwrap();
    check_exactly_once("10,000 events beside a stalled client", &published, &[seen]);

    // Now it reads: what was queued, then the close (over SSE a full socket may leave no room
    // for the close message: the stream just ends, and the metric says why).
    let close = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stalled.read(WAIT).await {
                Some(Read::Text(_)) => {}
                Some(Read::Close(close)) => return close,
                Some(Read::Ended) | None => return None,
            }
        }
    })
    .await
    .expect("the stalled client was closed in time");
    match transport {
        Transport::WebSocket => assert_eq!(close, Some((1013, "slow consumer".to_owned()))),
        Transport::Sse => {
            assert!(close.is_none() || close == Some((1013, "slow consumer".to_owned())))
        }
    }
    let label = match transport {
        Transport::WebSocket => "websocket",
        Transport::Sse => "sse",
    };
    let key = format!(
        "license_gateway_closes_total{{code=\"1013\",reason=\"slow_consumer\",transport=\"{label}\"}}"
    );
    assert_eq!(metric_series(node.port, &key).await, 1.0, "{key}");
}

async fn drain_turns_readiness_off_first_and_spreads_closes(transport: Transport) {
    let redis = Redis::start();
    let options = GatewayOptions::redis(&redis)
        .env("DRAIN_DELAY_SECS", "2")
        .env("DRAIN_WINDOW_SECS", "2");
    let mut node = Gateway::start(options).await;
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(
            AnyClient::connected(transport, &node.ws_url(), &tenant_token("acme"))
                .await
                .0,
        );
    }
    let started = Instant::now();
    node.sigterm();
    node.wait_unready(Duration::from_millis(800), "readiness off at once")
        .await;
    // During the delay the node still serves its sessions and its API...
    let sent = publish(
        node.port,
        "acme",
        "license_updated",
        json!({"changes": ["plan"]}),
    )
    .await;
    // ...but sends new connections elsewhere at once.
    match transport {
        Transport::WebSocket => {
            let mut late = ws_connect(
                &node.ws_url(),
                Some(&tenant_token("acme")),
                Carrier::Subprotocol,
            )
            .await;
            late.expect_close(1001, "going away").await;
        }
        Transport::Sse => {
            let auth = format!("Bearer {}", tenant_token("acme"));
            let late = SseClient::open(node.port, "/sse/license", &[("Authorization", &auth)])
                .await
                .unwrap();
            assert_eq!(late.status, 503, "a draining node refuses new streams");
        }
    }

    // Each client on its own task, so every close is timed when it arrives.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let sent = sent.clone();
            tokio::spawn(async move {
                assert_eq!(client.next_json().await, sent);
                client.expect_close(1001, "going away").await;
                started.elapsed()
            })
        })
        .collect();
    let mut closed_at = Vec::new();
    for reader in readers {
        closed_at.push(reader.await.unwrap());
    }
    closed_at.sort();
    let (first, last) = (closed_at[0], closed_at[closed_at.len() - 1]);
    println!("closes from {first:?} to {last:?} after SIGTERM");
    assert!(
        first >= Duration::from_millis(1900),
        "no close before the drain delay: {first:?}"
    );
    assert!(
        last - first >= Duration::from_millis(1200),
        "closes spread over the window: {first:?}..{last:?}"
    );
    assert!(node.terminate(Duration::from_secs(15)).await.success());
}

/// Faults for a bounded time — node crashes and restarts, Redis restarts (AOF), voluntary
/// reconnects — while events flow, each publish retried with its idempotency key until a node
/// accepts it; every event must reach every client exactly once, and none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_run_delivers_every_accepted_event_exactly_once() {
    let mut redis = Redis::start_with_aof();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let start_node = |port: u16, redis: &Redis| {
        let options = GatewayOptions {
            port: Some(port),
            ..GatewayOptions::redis(redis)
        };
        Gateway::spawn(options)
    };
    let mut nodes: Vec<Gateway> = ports.iter().map(|p| start_node(*p, &redis)).collect();
    for n in &nodes {
        n.wait_ready().await;
    }
    let nginx = Nginx::start(&ports).await;
    let target = Target::new();
    let followers: Vec<_> = (0..30)
        .map(|i| {
            let hop = (i % 3 == 0).then_some(Duration::from_millis(1500));
            tokio::spawn(follow_hopping(
                vec![nginx.ws_url()],
                tenant_token("acme"),
                target.clone(),
                Duration::from_secs(120),
                hop,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Every publish carries an idempotency key and is retried until some node accepts it.
    let publisher = {
        let ports = ports.clone();
        tokio::spawn(async move {
            let (mut ids, mut replays) = (Vec::new(), 0);
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut i = 0;
            while start.elapsed() < Duration::from_secs(16) {
                tick.tick().await;
                let (id, replayed) =
                    publish_retrying(&ports, "acme", i, &format!("chaos-{i}")).await;
                ids.push(id);
                replays += usize::from(replayed);
                i += 1;
            }
            (ids, replays)
        })
    };
    let faults = [
        "kill node 1",
        "restart redis",
        "kill node 2",
        "kill node 0",
        "restart redis",
        "kill node 1",
    ];
    for fault in faults {
        tokio::time::sleep(Duration::from_millis(1800)).await;
        println!("chaos: {fault}");
        match fault {
            "restart redis" => {
                redis.stop();
                tokio::time::sleep(Duration::from_millis(700)).await;
                redis.restart();
            }
            _ => {
                let i: usize = fault.rsplit(' ').next().unwrap().parse().unwrap();
                nodes[i].kill();
                tokio::time::sleep(Duration::from_millis(400)).await;
                nodes[i] = start_node(ports[i], &redis);
            }
        }
    }
    let (published, replays) = publisher.await.unwrap();
    target.set(published.last());
    let mut results = Vec::new();
    for f in followers {
        results.push(f.await.unwrap());
    }
    assert!(published.len() > 300, "published {}", published.len());
    println!(
        "chaos: {} keyed publishes, {replays} answered by a replay after a failed attempt",
        published.len()
    );
    // With keys and retries every event is acknowledged, so delivery must be exactly once.
    check_exactly_once("chaos", &published, &results);
}

/// A Sentinel failover under 50 clients (`redis-sentinel://`): the primary is SIGKILLed while
/// events are published, the sentinels promote the replica, the node follows it, and every
/// acknowledged event reaches every client once, in order, as across a Redis restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_under_50_clients_loses_nothing() {
    let mut sentinel = RedisSentinel::start();
    let options = GatewayOptions {
        redis_url: Some(sentinel.url()),
        ..GatewayOptions::memory()
    };
    let node = Gateway::start(options).await;
    let targets: Vec<Target> = (0..5).map(|_| Target::new()).collect();
    let followers: Vec<_> = (0..50)
        .map(|i| {
            tokio::spawn(follow(
                vec![node.ws_url()],
                tenant_token(&format!("s{}", i % 5)),
                targets[i % 5].clone(),
                Duration::from_secs(90),
            ))
        })
        .collect();
    // Joined is not yet subscribed: the stats count a session while its tenant's subscription
    // is still being made, and an event published then reaches none of the tenant's clients.
    eventually(WAIT, "50 clients connected", || async {
        let joined = admin_stats(node.port).await["totalConnections"] == 50;
        let subscribed = metric(node.port, "license_gateway_tenants_subscribed").await == 5.0;
        (joined && subscribed).then_some(())
    })
    .await;

    let mut published: Vec<Vec<String>> = vec![Vec::new(); 5];
    let mut refused = 0;
    let mut killed = None;
    let started = Instant::now();
    let mut i = 0;
    // Publish for 2 s, kill the primary, keep publishing until 3 s after the promotion.
    let mut promoted_at = None;
    loop {
        let t = i % 5;
        match publish_somewhere(&[node.port], &format!("s{t}"), i).await {
            Some(id) => published[t].push(id),
            None => refused += 1,
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
        if killed.is_none() && started.elapsed() > Duration::from_secs(2) {
            killed = Some((sentinel.kill_primary(), Instant::now()));
        }
        if let Some((old, at)) = killed {
            if promoted_at.is_none() {
                let reply = sentinel.primary();
                if reply != old {
                    promoted_at = Some(at.elapsed());
                }
            }
            if promoted_at.is_some_and(|p| at.elapsed() > p + Duration::from_secs(3)) {
                break;
            }
            assert!(at.elapsed() < Duration::from_secs(60), "no promotion");
        }
    }
    let (old, _) = killed.expect("killed");
    let new = sentinel.wait_promoted(old, WAIT);
    node.wait_ready().await;
    for (target, ids) in targets.iter().zip(&published) {
        target.set(ids.last());
    }
    let mut results = Vec::new();
    for f in followers {
        results.push(f.await.unwrap());
    }
    println!(
        "sentinel failover {old} → {new}: promoted {:?} after the kill; {} publishes \
         acknowledged, {refused} refused meanwhile",
        promoted_at.unwrap_or_default(),
        published.iter().map(Vec::len).sum::<usize>()
    );
    for (t, ids) in published.iter().enumerate() {
        assert!(!ids.is_empty());
        let of_tenant: Vec<Followed> = results.iter().skip(t).step_by(5).cloned().collect();
        check_exactly_once(&format!("sentinel failover, tenant s{t}"), ids, &of_tenant);
    }
}
