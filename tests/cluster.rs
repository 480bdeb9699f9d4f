//! Redis Cluster with sharded pub/sub, on a real 3-master/3-replica cluster: each tenant's
//! subscription lives on its slot's shard only, and a master SIGKILLed mid-stream loses no
//! event that reached the history (the conformance and license suites also run on a cluster).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::*;
use harness::*;
use serde_json::json;

fn channel(tenant: &str) -> String {
    format!("license:events:{{{tenant}}}")
}

/// `PUBSUB SHARDNUMSUB channel` on one node: how many clients hold the channel there.
fn shard_subscribers(cluster: &RedisCluster, port: u16, channel: &str) -> u64 {
    let out = cluster.cli(port, &["pubsub", "shardnumsub", channel]);
    out.lines()
        .nth(1)
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_is_subscribed_on_its_own_shard_only() {
    let cluster = RedisCluster::start();
    let a = Gateway::start(GatewayOptions::cluster(&cluster)).await;
    let b = Gateway::start(GatewayOptions::cluster(&cluster)).await;
    let tenants: Vec<String> = (0..50).map(|i| format!("s{i}")).collect();
    let mut clients = Vec::new();
    for t in &tenants {
        let token = tenant_token(t);
        clients.push((t.clone(), WsClient::connected(&a.ws_url(), &token).await.0));
        clients.push((t.clone(), WsClient::connected(&b.ws_url(), &token).await.0));
    }

    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    let mut per_master: BTreeMap<u16, usize> = BTreeMap::new();
    for t in &tenants {
        let owner = cluster.master_of(&channel(t));
        *per_master.entry(owner).or_default() += 1;
        for m in &masters {
            let n = shard_subscribers(&cluster, *m, &channel(t));
            let want = if *m == owner { 2 } else { 0 };
            assert_eq!(n, want, "tenant {t} on master {m} (owner {owner})");
        }
    }
    println!("tenants per master: {per_master:?}");
    assert_eq!(per_master.len(), 3, "50 tenants spread over every shard");

    // Fan-out and isolation across shards: one event per tenant, published on node a.
    for t in &tenants {
        publish(a.port, t, "module_activated", json!({"module": t})).await;
    }
    for (t, client) in &mut clients {
        let event = client.next_json().await;
        assert_eq!(event["tenantId"], t.as_str());
        assert_eq!(event["data"]["module"], t.as_str());
        client.expect_silence(Duration::from_millis(50)).await;
    }
    // Stats are cluster-wide on a cluster too.
    let stats = admin_stats(a.port).await;
    assert_eq!(stats["totalConnections"], 100, "{stats}");
    assert_eq!(stats["totalTenants"], 50, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_stream_loses_no_event_that_reached_the_history() {
    let mut cluster = RedisCluster::start();
    let node = Gateway::start(GatewayOptions::cluster(&cluster)).await;
    let tenants: Vec<String> = (0..6).map(|i| format!("f{i}")).collect();
    let victim = cluster.master_of(&channel(&tenants[0]));
    let mut clients = Vec::new();
    for t in &tenants {
        clients.push(
            WsClient::connected(&node.ws_url(), &tenant_token(t))
                .await
                .0,
        );
    }

    // A publisher streaming round robin through the API, and a readiness poller.
    let acked: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let failures: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
    let successes: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (acked, failures, successes, stop) = (
            acked.clone(),
            failures.clone(),
            successes.clone(),
            stop.clone(),
        );
        let (port, tenants) = (node.port, tenants.clone());
        tokio::spawn(async move {
            let body = json!({"type": "module_activated", "data": {"module": "m"}}).to_string();
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = i % tenants.len();
                let path = format!("/api/admin/tenants/{}/events", tenants[t]);
                let reply = http(port, "POST", &path, Some(&admin_key()), Some(&body)).await;
                match reply {
                    Ok((201, text)) => {
                        let id = serde_json::from_str::<serde_json::Value>(&text).unwrap()["id"]
                            .as_str()
                            .unwrap()
                            .to_owned();
                        acked.lock().unwrap().push((t, id));
                        successes.lock().unwrap().push((t, Instant::now()));
                    }
                    _ => failures.lock().unwrap().push((t, Instant::now())),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let readiness: Arc<Mutex<Vec<u16>>> = Arc::default();
    let poller = {
        let (readiness, stop, port) = (readiness.clone(), stop.clone(), node.port);
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((status, _)) = http(port, "GET", "/readyz", None, None).await {
                    readiness.lock().unwrap().push(status);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed_at = Instant::now();
    cluster.kill(victim);
    // Keep publishing until the victim's tenant has been published again for a while.
    let recovered = eventually(
        Duration::from_secs(30),
        "publishes to the failed shard resume",
        || {
            let s = successes.lock().unwrap();
            let found = s
                .iter()
                .find(|(t, at)| *t == 0 && *at > killed_at)
                .map(|(_, at)| *at);
            std::future::ready(found)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publisher.await.unwrap();
    poller.await.unwrap();

    let first_failure = failures.lock().unwrap().iter().map(|(_, at)| *at).min();
    let outage = recovered.duration_since(killed_at);
    println!(
        "master {victim} killed: publishes to its shard failed for {:.2} s (first failure {:.2} s after the kill); {} acknowledged, {} refused",
        outage.as_secs_f64(),
        first_failure.map_or(0.0, |f| f.duration_since(killed_at).as_secs_f64()),
        acked.lock().unwrap().len(),
        failures.lock().unwrap().len()
    );
    let statuses = readiness.lock().unwrap().clone();
    assert!(
        statuses.contains(&503),
        "readiness showed the outage: {statuses:?}"
    );
    node.wait_ready().await;

    // Every event in each tenant's history reached its client once, in order.
    let r = cluster.client().await;
    let mut delivered_not_kept = 0;
    for (i, (t, client)) in tenants.iter().zip(clients.iter_mut()).enumerate() {
        let received = client.drain(Duration::from_millis(800)).await;
        let mut ids = Vec::new();
        for m in &received {
            assert_ne!(m["type"], "resync_required", "tenant {t}: {m}");
            assert_eq!(m["tenantId"], t.as_str());
            ids.push(m["id"].as_str().unwrap().to_owned());
        }
        let keys: Vec<(u64, u64)> = ids.iter().map(|id| id_key(id)).collect();
        assert!(
            keys.windows(2).all(|w| w[0] < w[1]),
            "tenant {t}: ids strictly increasing, no duplicates"
        );
        let history: Vec<(String, std::collections::HashMap<String, String>)> = r
            .xrange(format!("license:history:{{{t}}}"), "-", "+", None)
            .await
            .unwrap();
        let kept: BTreeSet<String> = history.into_iter().map(|(id, _)| id).collect();
        let got: BTreeSet<String> = ids.iter().cloned().collect();
        let missing: Vec<&String> = kept.difference(&got).collect();
        assert!(missing.is_empty(), "tenant {t} missed {missing:?}");
        delivered_not_kept += got.difference(&kept).count();
        let acked_here = acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| *n == i)
            .count();
        assert!(acked_here > 0);
    }
    println!(
        "{delivered_not_kept} event(s) were delivered but lost from the history by the failover (asynchronous replication)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_slot_moves_keeps_its_events() {
    let cluster = RedisCluster::start();
    let node = Gateway::start(GatewayOptions::cluster(&cluster)).await;
    let tenant = "moving";
    let ch = channel(tenant);
    let (mut client, _) = WsClient::connected(&node.ws_url(), &tenant_token(tenant)).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let e = publish(node.port, tenant, "module_activated", json!({"module": i})).await;
        ids.push(e["id"].as_str().unwrap().to_owned());
    }
    let source = cluster.master_of(&ch);
    let target = *cluster.masters().iter().find(|m| **m != source).unwrap();
    assert_eq!(shard_subscribers(&cluster, source, &ch), 1);

    // Move the tenant's slot, keys and all, as `redis-cli --cluster reshard` does.
    let slot = cluster
        .cli(source, &["cluster", "keyslot", &ch])
        .trim()
        .to_owned();
    let id_of = |port: u16| cluster.cli(port, &["cluster", "myid"]).trim().to_owned();
    let (source_id, target_id) = (id_of(source), id_of(target));
    cluster.cli(
        target,
        &["cluster", "setslot", &slot, "importing", &source_id],
    );
    cluster.cli(
        source,
        &["cluster", "setslot", &slot, "migrating", &target_id],
    );
    let keys = cluster.cli(source, &["cluster", "getkeysinslot", &slot, "100"]);
    let keys: Vec<&str> = keys.split_whitespace().collect();
    assert!(
        keys.contains(&format!("license:history:{{{tenant}}}").as_str()),
        "the history is in the slot: {keys:?}"
    );
    let port = target.to_string();
    let mut migrate = vec!["migrate", "127.0.0.1", &port, "", "0", "5000", "keys"];
    migrate.extend(keys.iter().copied());
    let out = cluster.cli(source, &migrate);
    assert!(out.contains("OK"), "migrate: {out}");
    for m in [target, source] {
        cluster.cli(m, &["cluster", "setslot", &slot, "node", &target_id]);
    }
    for m in cluster.masters() {
        cluster.cli(m, &["cluster", "setslot", &slot, "node", &target_id]);
    }
    assert_eq!(cluster.master_of(&ch), target);

    // The node notices the new layout and subscribes on the slot's new master.
    let moved_at = Instant::now();
    eventually(
        Duration::from_secs(15),
        "subscription on the new master",
        || std::future::ready((shard_subscribers(&cluster, target, &ch) == 1).then_some(())),
    )
    .await;
    println!(
        "subscription followed the slot in {:.2} s",
        moved_at.elapsed().as_secs_f64()
    );
    for i in 3..6 {
        let e = publish(node.port, tenant, "module_activated", json!({"module": i})).await;
        ids.push(e["id"].as_str().unwrap().to_owned());
    }
    let got: Vec<String> = client
        .drain(Duration::from_millis(800))
        .await
        .iter()
        .map(|m| m["id"].as_str().unwrap_or("not an event").to_owned())
        .collect();
    assert_eq!(got, ids, "every event once, in order, across the move");
}

/// The subscription probe on one cluster shard: the first master is reached through a proxy that silences
/// its subscriber connections; the probe on that shard catches it, and a tenant whose slot
/// that master owns loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_shard_subscription_is_caught_by_the_probe() {
    let (cluster, proxy) = RedisCluster::start_with_proxy();
    let client = cluster.client().await;
    let slots = client
        .cached_cluster_state()
        .expect("slot layout")
        .slots()
        .to_vec();
    let proxied: Vec<(u16, u16)> = slots
        .iter()
        .filter(|r| r.primary.port == proxy.port)
        .map(|r| (r.start, r.end))
        .collect();
    assert!(
        !proxied.is_empty(),
        "the proxied node is not a master: {slots:?}"
    );
    let tenant = (0..)
        .map(|k| format!("t{k}"))
        .find(|t| {
            let slot = fred::util::redis_keyslot(channel(t).as_bytes());
            proxied.iter().any(|(s, e)| (*s..=*e).contains(&slot))
        })
        .expect("a tenant on the proxied shard");
    let _ = client.quit().await;
    let node = Gateway::start(GatewayOptions::cluster(&cluster).env("REDIS_PROBE_SECS", "1")).await;
    harness::proxy::silent_subscription_is_caught(&node, &proxy, &tenant).await;
}
