//! What operators import: the alert rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`, Debian's prometheus package), and every metric the Grafana dashboard
//! and the alert rules query is present in the `/metrics` of a live deployment (a node and a
//! worker on Redis) after ordinary traffic.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::*;
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(root().join("deploy/prometheus"))
        .output()
        .expect("promtool must be installed (the README's test command installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS: 9 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// The metric names in a PromQL expression (ours only).
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("license_gateway_") {
        let start = i + at;
        let end = start
            + bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_lowercase() || **b == b'_')
                .count();
        into.insert(expr[start..end].to_owned());
        i = end;
    }
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(root().join("deploy/grafana/license-gateway.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

#[test]
fn the_dashboard_is_well_formed() {
    let d = dashboard();
    assert_eq!(d["uid"], "license-gateway");
    let panels = d["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut graphs = 0;
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "unique ids");
        if p["type"] == "row" {
            continue;
        }
        graphs += 1;
        let title = p["title"].as_str().unwrap();
        assert!(
            p["description"].as_str().is_some_and(|s| s.len() > 20),
            "{title}: says what it shows"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        assert!(!p["targets"].as_array().unwrap().is_empty(), "{title}");
    }
    assert!(graphs >= 15, "{graphs} panels");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_query_is_in_a_live_metrics() {
    let mut wanted = BTreeSet::new();
    for panel in dashboard()["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            metric_names(target["expr"].as_str().unwrap(), &mut wanted);
        }
    }
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap();
    for line in rules.lines() {
        metric_names(line, &mut wanted);
    }
    for must in [
        "license_gateway_connections",
        "license_gateway_closes_total",
        "license_gateway_deliveries_total",
        "license_gateway_delivery_latency_seconds_bucket",
        "license_gateway_redis_reconnects_total",
        "license_gateway_redis_probe_failures_total",
        "license_gateway_gap_fills_total",
        "license_gateway_worker_passes_total",
        "license_gateway_outbound_deliveries_total",
        "license_gateway_ready",
    ] {
        assert!(
            wanted.contains(must),
            "the dashboard or the alerts query {must}"
        );
    }

    // Ordinary traffic on a node and a looping worker sharing a Redis: a WebSocket and an SSE
    // client, a refused token, published events, a license whose usage crosses its limit.
    let redis = Redis::start();
    let node = Gateway::start(GatewayOptions::redis(&redis)).await;
    let metrics_port = free_port();
    let _worker = Gateway::spawn_args(
        &["worker"],
        GatewayOptions::redis(&redis)
            .env("WORKER_INTERVAL_SECS", "1")
            .env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
    );
    let token = tenant_token("acme");
    let (mut ws, _) = WsClient::connected(&node.ws_url(), &token).await;
    let (mut sse, _) = SseClient::connected(node.port, &token).await;
    let mut bad = ws_connect(&node.ws_url(), Some("not.a.jwt"), Carrier::Subprotocol).await;
    bad.expect_close(1008, "invalid token").await;
    let license = json!({"tenantId": "acme", "plan": "pro", "expiresAt": rfc3339_in(30 * 86_400),
                         "limits": {"users": 100}});
    let path = "/api/admin/tenants/acme/license";
    let (status, body) = admin_json(node.port, "PUT", path, Some(license)).await;
    assert!(status == 200 || status == 201, "{body}");
    let usage = Some(json!({"users": 120}));
    let (status, body) = admin_json(node.port, "PUT", "/api/admin/tenants/acme/usage", usage).await;
    assert_eq!(status, 200, "{body}");
    let sent = publish(
        node.port,
        "acme",
        "license_updated",
        json!({"changes": ["plan"]}),
    )
    .await;
    for _ in 0..3 {
        let e = ws.next_json().await;
        let s = sse.next_json().await;
        assert_eq!(e, s);
        if e == sent {
            break;
        }
    }

    let (status, text) = http(node.port, "GET", "/metrics", None, None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    // The worker's own endpoint, once it has done a pass.
    let worker_text = eventually(WAIT, "a worker pass", || async {
        let (_, m) = http(metrics_port, "GET", "/metrics", None, None)
            .await
            .ok()?;
        m.contains("license_gateway_worker_pass_duration_seconds_bucket")
            .then_some(m)
    })
    .await;
    let present: BTreeSet<&str> = text
        .lines()
        .chain(worker_text.lines())
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|m| !present.contains(m.as_str()))
        .collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
    assert!(
        text.lines().any(|l| l == "license_gateway_ready 1"),
        "the node reports itself ready"
    );
}
