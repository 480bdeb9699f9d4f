//! OpenTelemetry export: one trace follows an event from its publisher (a CLI process) through
//! Redis to every gateway process that delivers it, received by a real OTLP/HTTP endpoint and
//! decoded from protobuf. Tokens never reach a trace; bad OTEL settings fail at start-up.

use std::collections::HashMap;
use std::time::Duration;

use harness::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use prost::Message as _;

/// One exported span, flattened with its process's resource.
#[derive(Debug, Clone)]
struct SpanRow {
    name: String,
    trace_id: String,
    span_id: String,
    parent_id: String,
    resource: HashMap<String, String>,
    attributes: HashMap<String, String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// Every span the receiver got so far.
fn spans(otlp: &OtlpReceiver) -> Vec<SpanRow> {
    let mut out = Vec::new();
    for (path, body) in otlp.requests() {
        assert_eq!(
            path, "/v1/traces",
            "exporters post traces to the standard path"
        );
        let request = ExportTraceServiceRequest::decode(&body[..]).expect("OTLP protobuf");
        for resource_spans in request.resource_spans {
            let resource: HashMap<String, String> = resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default()
                .iter()
                .map(|kv| (kv.key.clone(), text(&kv.value)))
                .collect();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    out.push(SpanRow {
                        name: span.name.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_id: hex(&span.parent_span_id),
                        resource: resource.clone(),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text(&kv.value)))
                            .collect(),
                    });
                }
            }
        }
    }
    out
}

fn traced(options: GatewayOptions, otlp: &OtlpReceiver) -> GatewayOptions {
    options
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_covers_publish_redis_and_delivery_on_every_node() {
    let redis = Redis::start();
    let otlp = OtlpReceiver::start();
    let a = Gateway::start(traced(GatewayOptions::redis(&redis), &otlp)).await;
    let b = Gateway::start(traced(GatewayOptions::redis(&redis), &otlp)).await;
    let token = tenant_token("acme");
    let (mut on_a, _) = WsClient::connected(&a.ws_url(), &token).await;
    let (mut on_b, _) = WsClient::connected(&b.ws_url(), &token).await;

    let endpoint = otlp.endpoint();
    let (status, stdout, stderr) = run_cli(
        &[
            "publish",
            "--tenant",
            "acme",
            "--type",
            "module_activated",
            "--data",
            r#"{"module":"payroll"}"#,
        ],
        &[
            ("REDIS_URL", &redis.url()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ],
    );
    assert!(status.success(), "publish failed: {stderr}");
    let id = stdout.trim();

    // The envelope carries the publisher's context, identically to every node's clients.
    let from_a = on_a.next_text().await;
    let from_b = on_b.next_text().await;
    assert_eq!(from_a, from_b, "every node forwards the same bytes");
    let event: serde_json::Value = serde_json::from_str(&from_a).unwrap();
    assert_eq!(event["id"], id);
    let traceparent = event["traceparent"]
        .as_str()
        .expect("traceparent in the envelope");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "W3C traceparent: {traceparent}");
    let (trace_id, publish_span) = (parts[1].to_owned(), parts[2].to_owned());

    // The publisher's spans arrive when the CLI flushes at exit; each node's within the batch
    // delay. Wait for the whole picture, then check its shape.
    let nodes = [a.node_id.clone(), b.node_id.clone()];
    let trace = eventually(WAIT, "publish, redis and both nodes' spans", || {
        let rows: Vec<SpanRow> = spans(&otlp)
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        let delivers = rows.iter().filter(|s| s.name == "deliver").count();
        let have = |n: &str| rows.iter().any(|s| s.name == n);
        let ready = have("publish") && have("redis EVALSHA") && delivers >= 2;
        std::future::ready(ready.then_some(rows))
    })
    .await;

    let publish = trace.iter().find(|s| s.name == "publish").unwrap();
    assert_eq!(
        publish.span_id, publish_span,
        "the envelope names the publish span"
    );
    assert_eq!(publish.parent_id, "", "a publish starts the trace");
    assert_eq!(publish.resource["license_gateway.role"], "publish");
    assert_eq!(publish.resource["service.name"], "license-gateway");
    assert!(!publish.resource["service.instance.id"].is_empty());
    assert_eq!(publish.attributes["tenant"], "acme");
    let redis_hop = trace.iter().find(|s| s.name == "redis EVALSHA").unwrap();
    assert_eq!(redis_hop.parent_id, publish.span_id);
    assert_eq!(redis_hop.attributes["db.system.name"], "redis");

    for node in &nodes {
        let receive = trace
            .iter()
            .find(|s| s.name == "receive" && &s.resource["service.instance.id"] == node)
            .unwrap_or_else(|| panic!("no receive span from {node}: {trace:#?}"));
        assert_eq!(
            receive.parent_id, publish.span_id,
            "node {node} continues the trace"
        );
        assert_eq!(receive.resource["license_gateway.role"], "serve");
        assert_eq!(receive.attributes["messaging.message.id"], id);
        assert_eq!(
            receive.attributes["messaging.destination.name"],
            "license:events:{acme}"
        );
        let deliver = trace
            .iter()
            .find(|s| s.name == "deliver" && s.parent_id == receive.span_id)
            .unwrap_or_else(|| panic!("no deliver span under {node}'s receive"));
        assert_eq!(deliver.attributes["recipients"], "1");
    }

    // Session spans end with their connection: tenant, node and connection id, never a token.
    on_a.close().await;
    on_b.close().await;
    let sessions = eventually(WAIT, "both session spans", || {
        let rows: Vec<SpanRow> = spans(&otlp)
            .into_iter()
            .filter(|s| s.name == "session")
            .collect();
        std::future::ready((rows.len() >= 2).then_some(rows))
    })
    .await;
    for session in &sessions {
        assert_eq!(session.attributes["tenant"], "acme");
        assert!(nodes.contains(&session.attributes["node"]));
        assert!(
            session.attributes["connection"].starts_with(&session.attributes["node"]),
            "{session:?}"
        );
    }
    // No token (its signature is enough to tell), secret or admin key in any exported span.
    let mut secrets: Vec<Vec<u8>> = secrets().into_iter().map(String::into_bytes).collect();
    secrets.push(token.rsplit('.').next().unwrap().as_bytes().to_vec());
    for (_, body) in otlp.requests() {
        for secret in &secrets {
            assert!(
                !body.windows(secret.len()).any(|w| w == secret.as_slice()),
                "a secret reached an exported span"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_engine_traces_publish_and_delivery_in_one_process() {
    let otlp = OtlpReceiver::start();
    let node = Gateway::start(traced(GatewayOptions::memory(), &otlp)).await;
    let (mut client, _) = WsClient::connected(&node.ws_url(), &tenant_token("acme")).await;
    let published = publish(
        node.port,
        "acme",
        "module_activated",
        serde_json::json!({"module": "x"}),
    )
    .await;
    let event = client.next_json().await;
    assert_eq!(event["id"], published["id"]);
    let trace_id = event["traceparent"]
        .as_str()
        .unwrap()
        .split('-')
        .nth(1)
        .unwrap()
        .to_owned();
    let trace = eventually(WAIT, "publish and deliver spans", || {
        let rows: Vec<SpanRow> = spans(&otlp)
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        let ok =
            rows.iter().any(|s| s.name == "deliver") && rows.iter().any(|s| s.name == "publish");
        std::future::ready(ok.then_some(rows))
    })
    .await;
    let publish_span = trace.iter().find(|s| s.name == "publish").unwrap();
    let deliver = trace.iter().find(|s| s.name == "deliver").unwrap();
    assert_eq!(deliver.parent_id, publish_span.span_id);
    assert_eq!(deliver.attributes["recipients"], "1");
    assert_eq!(publish_span.resource["service.instance.id"], node.node_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_otel_settings_nothing_is_exported_or_added() {
    let otlp = OtlpReceiver::start();
    // The receiver is reachable, but no OTEL variable points at it.
    let node = Gateway::start(GatewayOptions::memory()).await;
    let (mut client, _) = WsClient::connected(&node.ws_url(), &tenant_token("acme")).await;
    publish(
        node.port,
        "acme",
        "module_activated",
        serde_json::json!({"module": "x"}),
    )
    .await;
    let event = client.next_json().await;
    assert!(event.get("traceparent").is_none(), "{event}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(otlp.requests().is_empty());
}

#[test]
fn unsupported_otel_settings_fail_at_start_up_naming_the_variable() {
    for (key, value) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_TRACES_EXPORTER", "zipkin"),
    ] {
        let (status, _, stderr) = run_cli(
            &["serve"],
            &[
                ("JWT_SECRET", SECRET),
                ("PORT", &free_port().to_string()),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1"),
                (key, value),
            ],
        );
        assert_eq!(status.code(), Some(2), "{key}={value}: {stderr}");
        assert!(stderr.contains(key), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}
