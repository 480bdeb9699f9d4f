//! The subscriber connection: the receive loop that hands each checked message to the sink, and
//! the keeper that restores every wanted subscription after a reconnect or a slot move, with
//! live events held back until the gap is filled from the history.

use std::time::Duration;

use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use super::keys::{events_channel, tenant_of_channel};
use super::topology::slot_layout;
use super::{RedisState, SharedSink};
use crate::protocol::{Payload, check_channel_payload, now_ms};

/// Forwards every pub/sub message to the sink until `stop`; a lag (messages dropped by fred's
/// buffer) is logged, counted and refilled from the history.
pub async fn receive(
    mut messages: broadcast::Receiver<fred::types::Message>,
    sink: SharedSink,
    state: std::sync::Arc<RedisState>,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            m = messages.recv() => m,
        };
        match message {
            Ok(message) if super::probe::is_probe_channel(&message.channel) => {
                if let Some(payload) = message.value.as_bytes() {
                    state.probe.received(&message.channel, payload);
                }
            }
            Ok(message) => {
                let Some(sink) = sink.upgrade() else { break };
                dispatch(message, sink.as_ref());
            }
            Err(RecvError::Lagged(n)) => {
                crate::metrics::pubsub_lagged(n);
                tracing::error!(
                    lost = n,
                    "pub/sub receive loop lagged; refilling from history"
                );
                if let Some(sink) = sink.upgrade() {
                    sink.gap_begins();
                    sink.gap_ends();
                }
            }
            Err(RecvError::Closed) => break,
        }
    }
}

/// Hands one pub/sub message to the sink after checking it: garbage is dropped, logged and
/// counted, never forwarded.
fn dispatch(message: fred::types::Message, sink: &dyn crate::engine::EventSink) {
    let channel: &str = &message.channel;
    let Some(tenant) = tenant_of_channel(channel) else {
        return;
    };
    let bytes: Bytes = match message.value {
        Value::String(s) => s.into_inner(),
        Value::Bytes(b) => b,
        other => {
            crate::metrics::payload_dropped();
            tracing::warn!(tenant, kind = ?other.kind(), "dropped non-string payload on tenant channel");
            return;
        }
    };
    if let Some(control) = super::control::decode(tenant, &bytes) {
        match control {
            Ok(control) => sink.control(tenant, control),
            Err(error) => {
                crate::metrics::payload_dropped();
                tracing::warn!(tenant, %error, "dropped control message on tenant channel");
            }
        }
        return;
    }
    let checked = match check_channel_payload(tenant, &bytes) {
        Ok(checked) => checked,
        Err(error) => {
            crate::metrics::payload_dropped();
            tracing::warn!(tenant, %error, "dropped payload on tenant channel");
            return;
        }
    };
    if let Some(published) = checked.published_ms {
        let now = now_ms() as f64;
        crate::metrics::delivery_latency(((now - published as f64) / 1000.0).max(0.0));
    }
    // This node's part of the publisher's trace, when both sides export.
    let receive_span = match &checked.traceparent {
        Some(parent) if crate::telemetry::exporting() => {
            let span = tracing::info_span!(
                "receive",
                otel.kind = "consumer",
                messaging.system = "redis",
                messaging.destination.name = channel,
                messaging.message.id = %checked.id,
                tenant
            );
            crate::telemetry::set_remote_parent(&span, parent);
            span
        }
        _ => tracing::Span::none(),
    };
    let id = Some(checked.id);
    drop(checked);
    let _entered = receive_span.entered();
    match Payload::try_from(bytes) {
        Ok(payload) => sink.deliver(tenant, id, payload),
        Err(_) => {
            crate::metrics::payload_dropped();
            tracing::warn!(tenant, "dropped non-UTF-8 payload on tenant channel");
        }
    }
}

/// The event streams the keeper watches, taken before the subscriber connects so the first
/// (re)connect is not missed.
pub struct Events {
    /// Connection errors.
    pub errors: broadcast::Receiver<(fred::error::Error, Option<fred::types::config::Server>)>,
    /// Reconnections.
    pub reconnects: broadcast::Receiver<fred::types::config::Server>,
    /// Cluster topology changes.
    pub changes: broadcast::Receiver<Vec<fred::types::ClusterStateChange>>,
}

/// Restores every wanted channel after a reconnect and, on a cluster, after a topology change
/// (a failover or a moved slot drops sharded subscriptions). Readiness is off from a connection
/// error until the restore has succeeded; live events are held from before the resubscribe
/// until the gap fill has run.
pub async fn keep_subscriptions(
    sub: SubscriberClient,
    state: std::sync::Arc<RedisState>,
    cluster: bool,
    sink: SharedSink,
    mut events: Events,
    stop: CancellationToken,
) {
    // fred reports every resync as a change; only a new slot layout needs a restore.
    let mut layout = slot_layout(&sub);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            e = events.errors.recv() => {
                let Ok((error, _)) = e else { continue };
                // Restore now rather than wait for a reconnect event: on a cluster, the error
                // of a replaced shard connection can arrive after the reconnect it caused, and
                // waiting would leave the node unready for good (the restore below retries
                // until the client is back).
                tracing::warn!(%error, "redis subscriber connection error; restoring subscriptions");
            }
            r = events.reconnects.recv() => if r.is_err() { continue },
            _ = state.resubscribe.notified() => {
                tracing::info!("restoring subscriptions after a failed probe");
            }
            c = events.changes.recv(), if cluster => {
                if c.is_err() || slot_layout(&sub) == layout {
                    continue;
                }
                tracing::info!("redis cluster slots moved; restoring subscriptions");
            }
        }
        state.set_subscriptions_ok(false);
        // Nothing arrives before the resubscribe below, so holding live events from here loses
        // none and lets the gap fill go first.
        let sink = sink.upgrade();
        if let Some(sink) = &sink {
            sink.gap_begins();
        }
        let restored = loop {
            match restore(&sub, cluster, &state).await {
                Ok(n) => break n,
                Err(error) => {
                    tracing::warn!(%error, "resubscribe failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
            }
        };
        layout = slot_layout(&sub);
        state.set_subscriptions_ok(true);
        if let Some(sink) = &sink {
            sink.gap_ends();
        }
        crate::metrics::redis_reconnected();
        tracing::info!(
            channels = restored,
            "redis subscriber (re)connected; subscriptions restored"
        );
    }
}

/// Subscribes to `channels` (not sharded) and returns once Redis has applied it. fred resolves
/// a `SUBSCRIBE` as soon as it is written (its answer arrives out of band), so a caller that
/// then reads the history or tells a client it is connected could do so before the
/// subscription exists, and an event published in between would reach neither. A `PING` on the
/// same connection is answered only after the `SUBSCRIBE` before it was applied.
pub async fn subscribe_applied(
    sub: &SubscriberClient,
    channels: Vec<String>,
) -> Result<(), fred::error::Error> {
    sub.subscribe(channels).await?;
    let _: fred::types::Value = sub.ping(None).await?;
    Ok(())
}

/// Subscribes every wanted tenant channel again; returns how many. Sharded channels go one per
/// call: a call may only name channels of one slot (CROSSSLOT), and fred routes each to the
/// master that owns its slot now.
async fn restore(
    sub: &SubscriberClient,
    cluster: bool,
    state: &RedisState,
) -> Result<usize, fred::error::Error> {
    let mut channels: Vec<String> = state.wanted().iter().map(|t| events_channel(t)).collect();
    channels.extend(state.probe.wanted());
    if cluster {
        for channel in &channels {
            sub.ssubscribe(channel.as_str()).await?;
        }
    } else if !channels.is_empty() {
        subscribe_applied(sub, channels.clone()).await?;
    }
    Ok(channels.len())
}
