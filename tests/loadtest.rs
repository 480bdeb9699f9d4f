//! `license-gateway loadtest` against real gateways: small runs whose counts must come out
//! exactly (the performance figures themselves live in BENCHMARKS.md, never in assertions).

use harness::*;
use serde_json::Value;

/// Runs `loadtest` with `args` and the test secret; returns its JSON report.
fn loadtest(args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut all = vec!["loadtest"];
    all.extend_from_slice(args);
    all.push("--json");
    let mut env = env.to_vec();
    env.push(("JWT_SECRET", SECRET));
    env.push(("ADMIN_API_KEYS", ADMIN_KEY));
    let (status, stdout, stderr) = run_cli(&all, &env);
    assert!(status.success(), "loadtest failed: {stderr}");
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Every delivery owed arrived: `expected` of them, none lost, repeated, out of order or of
/// another tenant.
fn assert_exact(r: &Value, expected: u64) {
    let d = &r["delivery"];
    assert_eq!(d["expected"], expected, "{r}");
    assert_eq!(d["delivered"], expected, "{r}");
    for zero in ["lost", "duplicates", "reordered", "foreign"] {
        assert_eq!(d[zero], 0, "{zero}: {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_through_redis_counts_every_delivery() {
    let redis = Redis::start();
    let node = Gateway::start(GatewayOptions::redis(&redis)).await;
    let target = format!("127.0.0.1:{}", node.port);
    let pid = node.pid().to_string();
    let url = redis.url();
    let r = loadtest(
        &[
            "fanout",
            "--target",
            &target,
            "--connections",
            "30",
            "--tenants",
            "3",
            "--events",
            "90",
            "--rate",
            "300",
            "--server-pid",
            &pid,
        ],
        &[("REDIS_URL", &url)],
    );
    assert_eq!(r["connected"], 30);
    assert_eq!(r["connect_failures"], 0);
    let d = &r["delivery"];
    assert_eq!(d["via"], "redis");
    assert_eq!(d["published"], 90);
    // 30 events per tenant, each to that tenant's 10 connections.
    assert_exact(&r, 900);
    assert_eq!(d["publish_errors"], 0, "{r}");
    // Latency was measured per delivery: above zero, and no larger than the whole run could
    // make it (a publish time read from the wrong clock or unit would break either bound).
    let l = &d["latency_ms"];
    let (p50, max) = (l["p50"].as_f64().unwrap(), l["max"].as_f64().unwrap());
    assert!(p50 > 0.0 && max < 30_000.0, "latency: {l}");
    assert!(
        r["server_rss_kib"].as_u64().unwrap() > 0,
        "server sampled: {r}"
    );
    assert!(d["server_cpu_secs"].as_f64().is_some());
    // The node saw the same traffic.
    let stats = admin_stats(node.port).await;
    assert_eq!(
        stats["totalConnections"], 0,
        "all closed at the end: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_through_the_admin_api_on_the_embedded_engine() {
    let node = Gateway::start(GatewayOptions::memory()).await;
    let target = format!("127.0.0.1:{}", node.port);
    let r = loadtest(
        &[
            "fanout",
            "--target",
            &target,
            "--connections",
            "8",
            "--tenants",
            "4",
            "--events",
            "40",
            "--rate",
            "200",
            "--sources",
            "2",
        ],
        &[],
    );
    let d = &r["delivery"];
    assert_eq!(d["via"], "api");
    assert_eq!(d["published"], 40);
    assert_eq!(d["expected"], 80);
    assert_eq!(d["delivered"], 80);
    assert_eq!(d["lost"], 0);
    assert!(r["server_rss_kib"].is_null(), "no --server-pid, no sample");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_counts_refused_connections_honestly() {
    let node = Gateway::start(GatewayOptions::memory().env("MAX_CONNECTIONS", "5")).await;
    let target = format!("127.0.0.1:{}", node.port);
    let pid = node.pid().to_string();
    let r = loadtest(
        &[
            "idle",
            "--target",
            &target,
            "--connections",
            "12",
            "--tenants",
            "2",
            "--hold-secs",
            "0.2",
            "--server-pid",
            &pid,
            "--concurrency",
            "1",
        ],
        &[],
    );
    assert_eq!(r["connected"], 5);
    assert_eq!(r["connect_failures"], 7);
    let error = r["first_error"].as_str().unwrap();
    assert!(error.contains("1013"), "{error}");
    assert_eq!(r["dropped_connections"], 0);
    assert!(r["server_cpu_ms_per_connection"].as_f64().is_some());
}

#[test]
fn bad_sizes_exit_2() {
    let (status, _, stderr) = run_cli(
        &["loadtest", "idle", "--connections", "3", "--tenants", "9"],
        &[("JWT_SECRET", SECRET)],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--tenants"), "{stderr}");
    let (status, _, stderr) = run_cli(
        &[
            "loadtest",
            "idle",
            "--first-source",
            "255.255.255.250",
            "--sources",
            "8",
        ],
        &[("JWT_SECRET", SECRET)],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--first-source"), "{stderr}");
}

/// `loadtest stampede`: the node holding every connection is SIGKILLed mid-run; each client
/// resumes on a survivor after the last event it saw, and the counts still come out exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stampede_resumes_every_client_on_the_survivors_without_loss() {
    let redis = Redis::start();
    let mut victim = Gateway::start(GatewayOptions::redis(&redis)).await;
    let survivors = [
        Gateway::start(GatewayOptions::redis(&redis)).await,
        Gateway::start(GatewayOptions::redis(&redis)).await,
    ];
    let target = format!("127.0.0.1:{}", victim.port);
    let (a, b) = (
        format!("127.0.0.1:{}", survivors[0].port),
        format!("127.0.0.1:{}", survivors[1].port),
    );
    let pid = victim.pid().to_string();
    let url = redis.url();
    let r = loadtest(
        &[
            "stampede",
            "--target",
            &target,
            "--survivor",
            &a,
            "--survivor",
            &b,
            "--victim-pid",
            &pid,
            "--kill-after-secs",
            "1",
            "--connections",
            "200",
            "--tenants",
            "10",
            "--events",
            "300",
            "--rate",
            "100",
            "--drain-secs",
            "20",
        ],
        &[("REDIS_URL", &url)],
    );
    assert!(!victim.running(), "the victim was killed");
    assert_eq!(r["connected"], 200);
    let d = &r["delivery"];
    assert_eq!(d["published"], 300);
    // 30 events per tenant, each to that tenant's 20 connections: before, across and after
    // the resume.
    assert_exact(&r, 6000);
    assert_eq!(r["resume"]["resumed"], 200, "{r}");
    assert_eq!(r["dropped_connections"], 0, "{r}");
    assert!(r["resume"]["latency_ms"]["max"].as_f64().unwrap() > 0.0);
    // Both survivors took some of them.
    for node in &survivors {
        let served = metric(node.port, "license_gateway_connects_total").await;
        assert!(served > 0.0, "node {} took none", node.port);
    }
}

/// `loadtest soak` (a short one): every second a share of the clients closes and resumes after
/// its last event; the counts stay exact and the server is sampled every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_replaces_clients_and_still_counts_every_delivery() {
    let redis = Redis::start();
    let node = Gateway::start(GatewayOptions::redis(&redis)).await;
    let target = format!("127.0.0.1:{}", node.port);
    let pid = node.pid().to_string();
    let url = redis.url();
    let r = loadtest(
        &[
            "soak",
            "--target",
            &target,
            "--server-pid",
            &pid,
            "--connections",
            "100",
            "--tenants",
            "5",
            "--rate",
            "50",
            "--duration-secs",
            "5",
            "--replace-percent",
            "10",
            "--warmup-secs",
            "1",
            "--drain-secs",
            "10",
        ],
        &[("REDIS_URL", &url)],
    );
    assert_eq!(r["scenario"], "soak");
    let d = &r["delivery"];
    assert_eq!(d["published"], 250);
    // 50 events per tenant, each to its 20 clients, however often each was replaced.
    assert_exact(&r, 5000);
    let soak = &r["soak"];
    // 10 clients a second for about 5 s.
    let replaced = soak["replaced"].as_u64().unwrap();
    assert!((30..=60).contains(&replaced), "{soak}");
    // Those replaced in the last second may still be reconnecting when the run stops.
    let resumed = r["resume"]["resumed"].as_u64().unwrap();
    assert!(resumed <= replaced && resumed + 10 >= replaced, "{r}");
    let samples = soak["samples"].as_array().unwrap();
    assert!(samples.len() >= 4, "{soak}");
    assert!(samples.iter().all(|s| s["rss_kib"].as_u64().unwrap() > 0));
    assert!(soak["rss_drift_percent"].as_f64().is_some(), "{soak}");
    assert_eq!(r["dropped_connections"], 0, "{r}");
}
