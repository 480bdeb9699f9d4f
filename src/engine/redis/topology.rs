//! Redis Cluster topology: the slot layout the subscriber routes by, re-read on a timer because
//! a slot moved by resharding drops its sharded subscriptions without any error the client
//! would notice.

use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use tokio_util::sync::CancellationToken;

/// How often the slot layout is re-read.
const REFRESH: Duration = Duration::from_secs(2);

/// The cluster's slot ranges and their masters as the subscriber routes them (empty when not a
/// cluster).
pub fn slot_layout(sub: &SubscriberClient) -> Vec<(u16, u16, String)> {
    sub.cached_cluster_state()
        .map(|routing| {
            routing
                .slots()
                .iter()
                .map(|r| (r.start, r.end, r.primary.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Re-reads the slot layout every [`REFRESH`] until `stop`; the subscription keeper restores
/// subscriptions when the layout it sees has changed.
pub async fn follow_slot_moves(sub: SubscriberClient, stop: CancellationToken) {
    let mut tick = tokio::time::interval(REFRESH);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(error) = sub.sync_cluster().await {
            tracing::debug!(%error, "cluster slot refresh failed");
        }
    }
}
