//! The broker role on Redis: publish through `apply.lua`, (S)SUBSCRIBE per tenant, history
//! from the tenant's stream.

use async_trait::async_trait;
use fred::prelude::*;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::keys::{events_channel, history_key};
use super::{RedisEngine, SharedSink, unavailable};
use crate::engine::store::{self, LicenseStore};
use crate::engine::{
    Applied, Broker, Change, Control, EngineError, History, IdempotencyKey, Position, Published,
};
use crate::protocol::{EventDraft, EventId, Payload};

#[async_trait]
impl Broker for RedisEngine {
    async fn start(
        &self,
        sink: SharedSink,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<(), EngineError> {
        self.start_tasks(sink, shutdown, tracker).await
    }

    async fn publish(&self, draft: &EventDraft) -> Result<Published, EngineError> {
        let change = Change::publish(vec![draft.clone()]);
        store::single(self.apply(&draft.tenant, &change).await?)
    }

    async fn publish_idempotent(
        &self,
        draft: &EventDraft,
        key: &IdempotencyKey,
    ) -> Result<Applied, EngineError> {
        store::publish_idempotent(self, draft, key).await
    }

    async fn publish_control(&self, tenant: &str, control: &Control) -> Result<(), EngineError> {
        let message = super::control::encode(tenant, control);
        let channel = events_channel(tenant);
        let _: i64 = if self.cluster {
            self.client.spublish(channel, message).await
        } else {
            self.client.publish(channel, message).await
        }
        .map_err(unavailable)?;
        Ok(())
    }

    async fn subscribe(&self, tenant: &str) -> Result<(), EngineError> {
        let subscriber = self.subscriber()?;
        // Wanted first: a reconnect racing this call restores it too.
        self.state.want(tenant, true);
        let channel = events_channel(tenant);
        // Sharded subscriptions are answered in band; the others are confirmed by a round trip.
        let subscribed = if self.cluster {
            subscriber.ssubscribe(channel).await
        } else {
            super::subscriber::subscribe_applied(subscriber, vec![channel]).await
        };
        subscribed.map_err(|error| {
            self.state.want(tenant, false);
            unavailable(error)
        })
    }

    async fn unsubscribe(&self, tenant: &str) -> Result<(), EngineError> {
        let subscriber = self.subscriber()?;
        self.state.want(tenant, false);
        let channel = events_channel(tenant);
        if self.cluster {
            subscriber.sunsubscribe(channel).await
        } else {
            subscriber.unsubscribe(channel).await
        }
        .map_err(unavailable)
    }

    async fn newest_id(&self, tenant: &str) -> Result<Option<EventId>, EngineError> {
        let newest: Option<String> = self
            .scripts
            .newest_id
            .evalsha_with_reload(&self.client, vec![history_key(tenant)], Vec::<Value>::new())
            .await
            .map_err(unavailable)?;
        Ok(newest.and_then(|id| id.parse().ok()))
    }

    async fn history_page(
        &self,
        tenant: &str,
        after: Option<EventId>,
        position: Position,
        limit: usize,
    ) -> Result<History, EngineError> {
        let from = after.map_or_else(|| "-".to_owned(), |id| id.to_string());
        let mode = match position {
            Position::Exact => "exact",
            Position::ByOrder => "order",
        };
        let count = limit.min(self.history.size as usize) as i64;
        let args: Vec<Value> = vec![from.into(), count.into(), mode.into()];
        crate::metrics::history_read();
        let reply: Vec<String> = self
            .scripts
            .history
            .evalsha_with_reload(&self.client, vec![history_key(tenant)], args)
            .await
            .map_err(unavailable)?;
        parse_history(after, reply)
    }

    fn is_ready(&self) -> bool {
        self.ready()
    }
}

/// Reads `history.lua`'s reply.
fn parse_history(after: Option<EventId>, reply: Vec<String>) -> Result<History, EngineError> {
    let bad =
        |reply: &[String]| EngineError::Protocol(format!("history script returned {reply:?}"));
    match reply.split_first() {
        Some((status, _)) if status == "empty" => Ok(History::Empty),
        Some((status, rest)) if status == "miss" && rest.len() == 2 => {
            let first = rest[0].parse().map_err(|_| bad(&reply))?;
            let last = rest[1].parse().map_err(|_| bad(&reply))?;
            Ok(after.map_or(History::Empty, |a| History::miss(a, first, last)))
        }
        Some((status, rest)) if status == "ok" && rest.len() % 2 == 0 => {
            let mut events = Vec::with_capacity(rest.len() / 2);
            for pair in rest.chunks(2) {
                let id: EventId = pair[0].parse().map_err(|_| bad(&reply))?;
                events.push((id, Payload::from(pair[1].as_str())));
            }
            Ok(History::After(events))
        }
        _ => Err(bad(&reply)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn history_replies_are_read_strictly() {
        let after = Some(EventId { ms: 5, seq: 0 });
        assert!(matches!(
            parse_history(after, strings(&["ok", "6-0", "{}"])),
            Ok(History::After(e)) if e.len() == 1 && e[0].0 == EventId { ms: 6, seq: 0 }
        ));
        assert!(matches!(
            parse_history(after, strings(&["empty"])),
            Ok(History::Empty)
        ));
        assert!(matches!(
            parse_history(after, strings(&["miss", "7-0", "9-0"])),
            Ok(History::TooOld)
        ));
        assert!(parse_history(after, strings(&["ok", "6-0"])).is_err());
        assert!(parse_history(after, strings(&["ok", "x", "{}"])).is_err());
        assert!(parse_history(after, strings(&["what"])).is_err());
    }
}
