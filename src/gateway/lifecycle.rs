//! The node's life: its background tasks (broker loops, registry refresh, gap fills) and the
//! drain at shutdown (readiness off, sessions closed gradually, registry entry withdrawn).

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Node;
use crate::engine::{Delivered, EngineError, EventSink, NodeStats};
use crate::protocol::CloseReason;

/// How often a node refreshes its registry entry.
const REGISTRY_INTERVAL: Duration = Duration::from_secs(5);
/// How often a node adds its delivery counts to the notification stats.
const DELIVERY_STATS_INTERVAL: Duration = Duration::from_secs(5);
/// How long membership changes are batched before a registry refresh.
const REGISTRY_BATCH: Duration = Duration::from_millis(200);

/// Starts the broker (events flow into the hub) and the node's background tasks.
pub async fn start(node: &Arc<Node>) -> Result<(), EngineError> {
    let sink: Weak<dyn EventSink> = {
        let hub: Arc<dyn EventSink> = node.hub.clone();
        Arc::downgrade(&hub)
    };
    node.broker
        .start(sink, node.background_stop.clone(), &node.background)
        .await?;
    node.background.spawn(refresh_registry(node.clone()));
    if node.settings.max_connections_per_tenant > 0 {
        node.background.spawn(refresh_seats(node.clone()));
    }
    if let Some(jwks) = node.verifier.jwks() {
        node.background
            .spawn(jwks.run(node.background_stop.clone()));
    }
    node.background
        .spawn(node.hub.clone().fill_gaps(node.background_stop.clone()));
    node.background.spawn(report_deliveries(node.clone()));
    Ok(())
}

/// Adds the connections this node's events reached to the notification stats every few
/// seconds (one write per tenant and type, never one per delivery), and once more at stop.
async fn report_deliveries(node: Arc<Node>) {
    let mut tick = tokio::time::interval(DELIVERY_STATS_INTERVAL);
    loop {
        let stopping = tokio::select! {
            _ = node.background_stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        let day = crate::notifications::stats::day_of(crate::protocol::now_ms());
        let delivered: Vec<Delivered> = node
            .hub
            .take_delivered()
            .into_iter()
            .filter(|(_, _, count)| *count > 0)
            .map(|(tenant, event_type, count)| Delivered {
                tenant: tenant.to_string(),
                event_type,
                day,
                count,
            })
            .collect();
        if !delivered.is_empty() {
            // Lost when Redis is away: stats are best effort, deliveries are not affected.
            let report = node.notifications.record_deliveries(&delivered);
            match tokio::time::timeout(Duration::from_secs(2), report).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "delivery stats not recorded"),
                Err(_) => tracing::debug!("delivery stats timed out"),
            }
        }
        if stopping {
            break;
        }
    }
}

/// Refreshes this node's registry entry every few seconds, and shortly after sessions join or
/// leave (batched), until the background tasks stop.
async fn refresh_registry(node: Arc<Node>) {
    let mut tick = tokio::time::interval(REGISTRY_INTERVAL);
    loop {
        tokio::select! {
            _ = node.background_stop.cancelled() => break,
            _ = tick.tick() => {}
            _ = node.hub.changed() => {
                // Let a burst of connects settle into one refresh.
                tokio::time::sleep(REGISTRY_BATCH).await;
            }
        }
        if let Err(error) = node.registry.report_node(&node.stats()).await {
            tracing::debug!(%error, "node registry refresh failed");
        }
    }
}

/// Keeps this node's seats (`MAX_CONNECTIONS_PER_TENANT`) alive and true every few seconds:
/// on a timer only, since it writes one entry per tenant held.
async fn refresh_seats(node: Arc<Node>) {
    let mut tick = tokio::time::interval(REGISTRY_INTERVAL);
    loop {
        tokio::select! {
            _ = node.background_stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let held = node.held_seats();
        if held.is_empty() {
            continue;
        }
        if let Err(error) = node
            .registry
            .refresh_seats(&node.settings.node_id, &held)
            .await
        {
            tracing::debug!(%error, "seat refresh failed");
        }
    }
}

/// Drains the node's sessions: readiness off; `stop_accepting` after the drain delay, while
/// the balancer notices; then every session closed with 1001, spread over the drain window,
/// so clients reconnect elsewhere gradually instead of all at once.
pub async fn drain(node: &Node, stop_accepting: impl FnOnce()) {
    let (delay, window) = (node.settings.drain_delay, node.settings.drain_window);
    tracing::info!(?delay, ?window, "draining: readiness off");
    node.start_draining();
    tokio::time::sleep(delay).await;
    stop_accepting();
    node.hub
        .close_gradually(CloseReason::GoingAway, window)
        .await;
    node.sessions.close();
    let timeout = node.settings.shutdown_timeout;
    if tokio::time::timeout(timeout, node.sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!(?timeout, "sessions did not all close in time");
    }
}

/// Withdraws the registry entry at once (rather than after its expiry) and stops the
/// background tasks.
pub async fn stop(node: &Node) {
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        node.registry.report_node(&NodeStats {
            connections: 0,
            tenants: 0,
            tenant_connections: Default::default(),
            ..node.stats()
        }),
    )
    .await;
    node.background_stop.cancel();
    node.background.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), node.background.wait()).await;
}
