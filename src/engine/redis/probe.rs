//! The subscription probe (docs/OPERATIONS.md): a subscriber connection can stay open while delivering
//! nothing (after a failover, or behind a middlebox that drops one direction), with publishes
//! succeeding and every health check green. Every probe period the node publishes a probe on a
//! channel of its own — one per master on a cluster, so each shard's subscription is checked —
//! and must receive it back through its subscriber. When a channel has not answered the last
//! two probes (detected within three periods of the failure), readiness turns off, the failure
//! is counted, and the keeper resubscribes every channel and fills every tenant's gap from the
//! history; a PING on the silent connection lets the subscriber's unresponsive limit
//! ([`UNRESPONSIVE_AFTER`]) close a connection that answers nothing, and the keeper restores
//! again on the new one. Readiness returns with the first probe received
//! back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::{Options, Server};
use tokio_util::sync::CancellationToken;

use super::RedisState;

/// Probes a channel may leave unanswered before its subscription counts as dead.
const UNANSWERED_LIMIT: u64 = 2;

/// How long a command on the subscriber connection may go unanswered before fred closes that
/// connection and reconnects (the resubscribe after a detected failure is such a command).
pub const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(3);

/// Prefix of every probe channel; the hash tag picks the cluster slot.
const PREFIX: &str = "license:probe:{";

/// The channel carrying probes with hash tag `tag`.
fn channel(tag: &str) -> String {
    format!("{PREFIX}{tag}}}")
}

/// Whether `channel` is a probe channel (never a tenant's).
pub fn is_probe_channel(channel: &str) -> bool {
    channel.starts_with(PREFIX)
}

/// What the probe has sent and seen, per probe channel; shared with the receive loop.
#[derive(Default)]
pub struct ProbeState {
    /// Channel → (last probe number sent, last probe number received back). std Mutex, held
    /// for a map update, never across an await.
    channels: std::sync::Mutex<BTreeMap<String, (u64, u64)>>,
    /// The last probe sent before the latest detected failure: only later probes count.
    recover_after: AtomicU64,
}

impl ProbeState {
    fn channels(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (u64, u64)>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The probe channels to keep subscribed (restored with the tenant channels).
    pub fn wanted(&self) -> Vec<String> {
        self.channels().keys().cloned().collect()
    }

    /// A probe came back on `channel` (called by the receive loop).
    pub fn received(&self, channel: &str, payload: &[u8]) {
        let Some(number) = std::str::from_utf8(payload)
            .ok()
            .and_then(|p| p.parse::<u64>().ok())
        else {
            return;
        };
        if let Some((_, seen)) = self.channels().get_mut(channel) {
            *seen = (*seen).max(number);
        }
    }
}

/// This node's probe channels, each with the server it lives on: one per master on a cluster
/// (a tag whose slot that master owns), one otherwise.
fn probe_channels(
    node: &str,
    sub: &SubscriberClient,
    cluster: bool,
) -> BTreeMap<String, Option<Server>> {
    if !cluster {
        return BTreeMap::from([(channel(node), None)]);
    }
    let Some(routing) = sub.cached_cluster_state() else {
        return BTreeMap::new();
    };
    let ranges = routing.slots();
    let masters: BTreeSet<&Server> = ranges.iter().map(|r| &r.primary).collect();
    masters
        .into_iter()
        .filter_map(|master| {
            // About three tries per master on a three-master cluster.
            (0..100_000u32).find_map(|k| {
                let name = channel(&format!("{node}.{k}"));
                let slot = fred::util::redis_keyslot(name.as_bytes());
                ranges
                    .iter()
                    .any(|r| &r.primary == master && (r.start..=r.end).contains(&slot))
                    .then(|| (name, Some(master.clone())))
            })
        })
        .collect()
}

/// Sends a PING on the subscriber connection to each server (the one connection when `None`):
/// a connection that answers nothing is then closed by the unresponsive limit and made anew.
async fn ping_subscribers(sub: &SubscriberClient, servers: Vec<Option<Server>>) {
    let pings = servers.into_iter().map(|server| async move {
        let options = Options {
            cluster_node: server,
            ..Default::default()
        };
        let routed = sub.with_options(&options);
        // Bounded: the unresponsive limit acts on its own.
        let _ = tokio::time::timeout(UNRESPONSIVE_AFTER * 2, routed.ping::<Value>(None)).await;
    });
    futures_util::future::join_all(pings).await;
}

/// Publishes a probe on every probe channel each `period` and checks the answers, until `stop`.
pub async fn run(
    node: String,
    client: Client,
    sub: SubscriberClient,
    state: Arc<RedisState>,
    cluster: bool,
    period: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut number = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if !sub.is_connected() {
            continue; // a visible outage: the keeper handles it
        }
        let wanted = probe_channels(&node, &sub, cluster);
        if !follow_channels(&sub, &state, &wanted, cluster).await {
            continue;
        }
        let silent = check(&state);
        if !silent.is_empty() {
            crate::metrics::redis_probe_failed();
            tracing::error!(
                channels = ?silent,
                "redis subscription delivers nothing while connected; resubscribing"
            );
            state.probe_failing.store(true, Ordering::Relaxed);
            state.set_subscriptions_ok(false);
            // The new connection is judged by the probes sent after this one.
            state.probe.recover_after.store(number, Ordering::Relaxed);
            // The keeper resubscribes and fills the gaps (a subscription the server dropped);
            // the PING finds a connection that answers nothing (a silenced one).
            state.resubscribe.notify_one();
            let servers = silent
                .iter()
                .map(|c| wanted.get(c).cloned().flatten())
                .collect();
            ping_subscribers(&sub, servers).await;
            continue;
        }
        number += 1;
        for channel in wanted.keys() {
            let sent: Result<i64, _> = if cluster {
                client.spublish(channel.as_str(), number).await
            } else {
                client.publish(channel.as_str(), number).await
            };
            if sent.is_ok()
                && let Some((last, _)) = state.probe.channels().get_mut(channel)
            {
                *last = number;
            }
        }
    }
}

/// Subscribes new probe channels and drops stale ones (a cluster's masters changed); false
/// when a subscribe failed (tried again next period).
async fn follow_channels(
    sub: &SubscriberClient,
    state: &RedisState,
    wanted: &BTreeMap<String, Option<Server>>,
    cluster: bool,
) -> bool {
    let current: BTreeSet<String> = state.probe.wanted().into_iter().collect();
    let wanted: BTreeSet<String> = wanted.keys().cloned().collect();
    for stale in current.difference(&wanted) {
        state.probe.channels().remove(stale);
        let _ = if cluster {
            sub.sunsubscribe(stale.as_str()).await
        } else {
            sub.unsubscribe(stale.as_str()).await
        };
    }
    for new in wanted.difference(&current) {
        let subscribed = if cluster {
            sub.ssubscribe(new.as_str()).await
        } else {
            super::subscriber::subscribe_applied(sub, vec![new.clone()]).await
        };
        if let Err(error) = subscribed {
            tracing::debug!(%error, "probe subscribe failed");
            return false;
        }
        // Counted from the next probe on.
        state.probe.channels().insert(new.clone(), (0, 0));
    }
    true
}

/// The channels whose last [`UNANSWERED_LIMIT`] probes did not come back; turns readiness
/// back on when every channel answered.
fn check(state: &RedisState) -> Vec<String> {
    let after = state.probe.recover_after.load(Ordering::Relaxed);
    let channels = state.probe.channels();
    let silent: Vec<String> = channels
        .iter()
        .filter(|(_, (sent, seen))| sent.saturating_sub(after.max(*seen)) >= UNANSWERED_LIMIT)
        .map(|(channel, _)| channel.clone())
        .collect();
    let answered = channels
        .values()
        .all(|(sent, seen)| sent == seen && *seen > after);
    drop(channels);
    if answered && state.probe_failing.swap(false, Ordering::Relaxed) {
        tracing::info!("redis subscription probe answered again");
    }
    silent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_count_as_answered_only_when_they_come_back() {
        let state = RedisState::default();
        state.probe.channels().insert(channel("n"), (3, 1));
        assert_eq!(check(&state), vec![channel("n")]);
        state.probe.received(&channel("n"), b"2");
        assert!(check(&state).is_empty());
        // After a detected failure only later probes count, and only their answers make the
        // node ready again.
        state.probe_failing.store(true, Ordering::Relaxed);
        state.probe.recover_after.store(3, Ordering::Relaxed);
        state.probe.received(&channel("n"), b"3");
        check(&state);
        assert!(state.probe_failing.load(Ordering::Relaxed));
        state.probe.channels().insert(channel("n"), (4, 3));
        check(&state);
        assert!(state.probe_failing.load(Ordering::Relaxed));
        state.probe.received(&channel("n"), b"4");
        check(&state);
        assert!(!state.probe_failing.load(Ordering::Relaxed));
        // Garbage and unknown channels change nothing.
        state.probe.received(&channel("n"), b"x");
        state.probe.received(&channel("other"), b"9");
        assert_eq!(state.probe.channels()[&channel("n")], (4, 4));
        assert_eq!(state.probe.channels().len(), 1);
        assert!(is_probe_channel(&channel("n")));
        assert!(!is_probe_channel("license:events:{acme}"));
    }
}
