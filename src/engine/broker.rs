//! The broker role: durable publish, per-tenant subscription and history for resume.

use std::sync::Weak;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::EngineError;
use super::store::{Applied, IdempotencyKey};
use crate::notifications::{ReadState, Versioned};
use crate::protocol::{EventDraft, EventId, Payload};

/// An event as the engine stored it: the id it assigned and the exact envelope bytes, shared
/// (reference-counted) by every recipient.
#[derive(Debug, Clone)]
pub struct Published {
    /// The event id (`<ms>-<seq>`), equal to its history entry's id.
    pub id: EventId,
    /// The envelope JSON.
    pub payload: Payload,
}

/// A message between nodes about a tenant's connections: not an event, never in the history,
/// never sent to clients. It travels on the tenant's channel, so it reaches exactly the nodes
/// that hold connections of that tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Close the tenant's connections (of one user, when given) with 1008 `revoked`.
    Disconnect {
        /// The user whose connections go; `None`: all of the tenant's.
        user: Option<String>,
    },
    /// A user's read state changed: their connections get `notification_state`.
    NotificationState {
        /// The user.
        user: String,
        /// The state after the change.
        state: ReadState,
    },
    /// A user's preferences changed: their connections filter by them from now on.
    Preferences {
        /// The user.
        user: String,
        /// The new preferences (a node keeps the highest version it saw).
        preferences: Versioned,
    },
}

/// Where a broker delivers events of the tenants this node is subscribed to.
pub trait EventSink: Send + Sync {
    /// One event of `tenant`, in the tenant's publish order. Must not block: called from the
    /// engine's receive loop.
    fn deliver(&self, tenant: &str, id: Option<EventId>, payload: Payload);

    /// A control message about the tenant's connections. Must not block.
    fn control(&self, tenant: &str, control: Control);

    /// Live delivery may have missed events (connection lost, receive loop lagged): hold live
    /// events back until [`EventSink::gap_ends`]. Called before subscriptions are restored.
    fn gap_begins(&self) {}

    /// Subscriptions are back: fill each tenant's gap from the history, then release the held
    /// events. Must not block.
    fn gap_ends(&self) {}
}

/// The events of a tenant's history after a given id (resume, gap filling).
#[derive(Debug, Clone)]
pub enum History {
    /// The id is in the history; these events follow it, in order (possibly none).
    After(Vec<(EventId, Payload)>),
    /// The history is empty (never written, expired, or lost with its store).
    Empty,
    /// The id is older than the oldest retained event: events may have been trimmed.
    TooOld,
    /// The id is newer than the newest event.
    TooNew,
    /// The id lies within the history but is not one of its events (or the history was lost
    /// and rewritten since).
    Unknown,
}

impl History {
    /// Classifies a missed id against the first and last retained ids.
    pub fn miss(after: EventId, first: EventId, last: EventId) -> History {
        if after < first {
            History::TooOld
        } else if after > last {
            History::TooNew
        } else {
            History::Unknown
        }
    }
}

/// How [`Broker::history_after`] treats an id that is not itself in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// A client's `lastEventId`: it must name a retained event, else the client resyncs.
    Exact,
    /// A node's own gap: every event after the id by id order, provided the history reaches
    /// back that far. A failover may lose the newest entries a node had already delivered
    /// (replication is asynchronous); what follows them is still owed.
    ByOrder,
}

/// Durable publish, per-tenant subscription and history.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Starts background work (receive loop, health checks); events of subscribed tenants go
    /// to `sink` until `shutdown` fires. Tasks are spawned on `tracker`.
    async fn start(
        &self,
        sink: Weak<dyn EventSink>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<(), EngineError>;

    /// Appends the event to the tenant's history and publishes it on the tenant's channel, as
    /// one atomic step; returns the assigned id and the envelope.
    async fn publish(&self, draft: &EventDraft) -> Result<Published, EngineError>;

    /// [`Broker::publish`] unless `key` was used before for this tenant within its ttl: then
    /// nothing is published, and the outcome is [`Applied::Replayed`] with the earlier event
    /// (the same request) or [`Applied::KeyReused`] (another one). The key is recorded in the
    /// same atomic step as the event.
    async fn publish_idempotent(
        &self,
        draft: &EventDraft,
        key: &IdempotencyKey,
    ) -> Result<Applied, EngineError>;

    /// Sends a control message to every node subscribed to `tenant` (this one included), once,
    /// without touching the history.
    async fn publish_control(&self, tenant: &str, control: &Control) -> Result<(), EngineError>;

    /// Starts receiving `tenant`'s events on this node. Returns once the subscription is in
    /// place: an event published after that reaches the sink.
    async fn subscribe(&self, tenant: &str) -> Result<(), EngineError>;

    /// Stops receiving `tenant`'s events on this node.
    async fn unsubscribe(&self, tenant: &str) -> Result<(), EngineError>;

    /// The id of the newest event in the tenant's history, if any.
    async fn newest_id(&self, tenant: &str) -> Result<Option<EventId>, EngineError>;

    /// The tenant's events after `after` (all retained events when `None`), at most `limit`
    /// of them; `position` says whether `after` must itself be retained.
    async fn history_page(
        &self,
        tenant: &str,
        after: Option<EventId>,
        position: Position,
        limit: usize,
    ) -> Result<History, EngineError>;

    /// Every retained event after `after` (see [`Broker::history_page`]).
    async fn history_after(
        &self,
        tenant: &str,
        after: Option<EventId>,
        position: Position,
    ) -> Result<History, EngineError> {
        self.history_page(tenant, after, position, usize::MAX).await
    }

    /// Connected, and every subscription this node wants is in place.
    fn is_ready(&self) -> bool;
}
