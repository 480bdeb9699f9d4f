//! Prometheus metrics: every name in one place, recorded through the `metrics` facade and
//! rendered at `GET /metrics`. Names and labels follow Prometheus conventions (`_total` counters,
//! base units); tenant ids are never labels (unbounded cardinality).

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::protocol::{CloseReason, EventType};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once; later calls return the same handle.
pub fn install() -> Option<&'static PrometheusHandle> {
    if HANDLE.get().is_none() {
        let latency = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let passes = [0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("license_gateway_delivery_latency_seconds".into()),
                &latency,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("license_gateway_worker_pass_duration_seconds".into()),
                    &passes,
                )
            });
        match builder.and_then(|b| b.install_recorder()) {
            Ok(handle) => {
                let _ = HANDLE.set(handle);
                preregister();
            }
            Err(error) => tracing::warn!(%error, "metrics recorder not installed"),
        }
    }
    HANDLE.get()
}

/// Registers, at zero, the series dashboards and alerts query, so they exist from the first
/// scrape: `increase()` over a series that appears with its first increment misses that
/// increment, and a panel over a series that never appeared shows "no data" instead of 0.
fn preregister() {
    for name in [
        "license_gateway_connect_tickets_total",
        "license_gateway_deliveries_total",
        "license_gateway_dropped_payloads_total",
        "license_gateway_events_filtered_total",
        "license_gateway_events_received_total",
        "license_gateway_history_reads_total",
        "license_gateway_history_window_resumes_total",
        "license_gateway_notification_states_sent_total",
        "license_gateway_pubsub_lagged_messages_total",
        "license_gateway_redis_probe_failures_total",
        "license_gateway_redis_reconnects_total",
        "license_gateway_worker_passes_total",
        "license_gateway_worker_pass_failures_total",
        "license_gateway_worker_tenant_failures_total",
    ] {
        counter!(name).absolute(0);
    }
    gauge!("license_gateway_tenants_subscribed").increment(0.0);
    for transport in ["websocket", "sse"] {
        counter!("license_gateway_connects_total", "transport" => transport).absolute(0);
        gauge!("license_gateway_connections", "transport" => transport).increment(0.0);
        let slow = CloseReason::SlowConsumer;
        counter!("license_gateway_closes_total", "code" => slow.code().to_string(),
                 "reason" => slow.label(), "transport" => transport)
        .absolute(0);
    }
    for outcome in ["filled", "resync"] {
        counter!("license_gateway_gap_fills_total", "outcome" => outcome).absolute(0);
    }
    for outcome in ["replayed", "resync"] {
        counter!("license_gateway_history_replays_total", "outcome" => outcome).absolute(0);
    }
    for channel in ["webhook", "email"] {
        for outcome in ["delivered", "failed"] {
            counter!("license_gateway_outbound_deliveries_total", "channel" => channel,
                     "outcome" => outcome)
            .absolute(0);
        }
    }
}

/// The node's readiness as `/readyz` reports it, and whether its engine (Redis connection and
/// subscriptions) is in place; set when `/metrics` is scraped.
pub fn readiness(ready: bool, engine_ready: bool) {
    gauge!("license_gateway_ready").set(if ready { 1.0 } else { 0.0 });
    gauge!("license_gateway_engine_ready").set(if engine_ready { 1.0 } else { 0.0 });
}

/// A validator pass failed as a whole (the engine could not list the tenants).
pub fn worker_pass_failed() {
    counter!("license_gateway_worker_pass_failures_total").increment(1);
}

/// Tenants whose check failed within a pass.
pub fn worker_tenants_failed(n: u64) {
    counter!("license_gateway_worker_tenant_failures_total").increment(n);
}

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets every few seconds until `shutdown`.
/// The exporter keeps every sample until upkeep runs; without this loop a node nobody scrapes
/// (or scrapes rarely) would hold one sample per delivered event, growing without bound (the
/// soak benchmark found it: ~8 KiB a second at 500 events a second).
pub async fn upkeep(shutdown: tokio_util::sync::CancellationToken) {
    let Some(handle) = HANDLE.get() else {
        return;
    };
    let mut every = tokio::time::interval(UPKEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => handle.run_upkeep(),
        }
    }
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    match HANDLE.get() {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => String::new(),
    }
}

/// A session became `connected` on `transport` (`websocket` or `sse`).
pub fn session_opened(transport: &'static str) {
    counter!("license_gateway_connects_total", "transport" => transport).increment(1);
    gauge!("license_gateway_connections", "transport" => transport).increment(1.0);
}

/// A `connected` session on `transport` ended.
pub fn session_ended(transport: &'static str) {
    gauge!("license_gateway_connections", "transport" => transport).decrement(1.0);
}

/// A connection on `transport` was closed: by the server with `reason`, or by the client
/// (`None`). An SSE request refused before its stream starts counts with the close it stands
/// for.
pub fn closed(transport: &'static str, reason: Option<CloseReason>) {
    let (code, label) = match reason {
        Some(r) => (r.code().to_string(), r.label()),
        None => ("client".to_owned(), "client"),
    };
    counter!("license_gateway_closes_total", "code" => code, "reason" => label, "transport" => transport)
        .increment(1);
}

/// A token was refused (at connect or refresh).
pub fn auth_failed(reason: &'static str) {
    counter!("license_gateway_auth_failures_total", "reason" => reason).increment(1);
}

/// The node subscribed (+1) or unsubscribed (-1) a tenant channel.
pub fn tenants_subscribed(delta: f64) {
    gauge!("license_gateway_tenants_subscribed").increment(delta);
}

/// This process published an event (API, CLI, worker or embedded validator).
pub fn event_published(event_type: EventType) {
    counter!("license_gateway_events_published_total", "type" => event_type.as_str()).increment(1);
}

/// The node received an event for its sessions and handed it to `recipients` of them.
pub fn event_fanned_out(recipients: u64) {
    counter!("license_gateway_events_received_total").increment(1);
    counter!("license_gateway_deliveries_total").increment(recipients);
}

/// Seconds from an event's publish timestamp to its arrival at this node.
pub fn delivery_latency(seconds: f64) {
    histogram!("license_gateway_delivery_latency_seconds").record(seconds);
}

/// A payload on a tenant channel was dropped as malformed.
pub fn payload_dropped() {
    counter!("license_gateway_dropped_payloads_total").increment(1);
}

/// The pub/sub receive loop lagged and lost `n` messages (refilled from history).
pub fn pubsub_lagged(n: u64) {
    counter!("license_gateway_pubsub_lagged_messages_total").increment(n);
}

/// The Redis subscriber reconnected.
pub fn redis_reconnected() {
    counter!("license_gateway_redis_reconnects_total").increment(1);
}

/// The subscription probe found a subscription delivering nothing while connected.
pub fn redis_probe_failed() {
    counter!("license_gateway_redis_probe_failures_total").increment(1);
}

/// A resume request was served from history (`replayed`) or answered `resync_required`.
pub fn history_replay(outcome: &'static str) {
    counter!("license_gateway_history_replays_total", "outcome" => outcome).increment(1);
}

/// One read of a tenant's history from the engine (a page of a resume, a gap fill).
pub fn history_read() {
    counter!("license_gateway_history_reads_total").increment(1);
}

/// A resume was served from the node's recent-event window, without a history read.
pub fn history_window_resume() {
    counter!("license_gateway_history_window_resumes_total").increment(1);
}

/// A delivery gap was filled from history (`filled`) or could not be (`resync`).
pub fn gap_fill(outcome: &'static str) {
    counter!("license_gateway_gap_fills_total", "outcome" => outcome).increment(1);
}

/// A validator pass over all tenants finished.
pub fn worker_pass(seconds: f64) {
    counter!("license_gateway_worker_passes_total").increment(1);
    histogram!("license_gateway_worker_pass_duration_seconds").record(seconds);
}

/// The validator published a notice.
pub fn notice(event_type: EventType) {
    counter!("license_gateway_notices_total", "type" => event_type.as_str()).increment(1);
}

/// A `notification_state` message went to one connection.
pub fn notification_state_sent() {
    counter!("license_gateway_notification_states_sent_total").increment(1);
}

/// Events not sent to `n` connections of a tenant because of preferences or filters.
pub fn events_filtered(n: u64) {
    counter!("license_gateway_events_filtered_total").increment(n);
}

/// A user changed read state (`read`, `unread`, `read_all`) through the API.
pub fn notification_read(action: &'static str) {
    counter!("license_gateway_notification_reads_total", "action" => action).increment(1);
}

/// A user replaced their notification preferences.
pub fn notification_preferences_set() {
    counter!("license_gateway_notification_preferences_updates_total").increment(1);
}

/// A notification list was served.
pub fn notification_listed() {
    counter!("license_gateway_notification_lists_total").increment(1);
}

/// An out-of-band delivery attempt ended (`channel`: webhook, email; `outcome`: delivered,
/// retrying, failed, gone, dropped).
pub fn delivery_attempt(channel: &'static str, outcome: &'static str) {
    counter!("license_gateway_outbound_deliveries_total", "channel" => channel, "outcome" => outcome)
        .increment(1);
}

/// A connection ticket was issued.
pub fn ticket_issued() {
    counter!("license_gateway_connect_tickets_total").increment(1);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn upkeep_runs_until_shutdown_and_then_ends() {
        assert!(super::install().is_some());
        let stop = CancellationToken::new();
        let task = tokio::spawn(super::upkeep(stop.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !task.is_finished(),
            "upkeep must keep running while the node does"
        );
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("upkeep ends at shutdown")
            .expect("upkeep does not panic");
    }
}
