//! The notification store role: every published event is also a notification of its tenant
//! (stored by [`super::LicenseStore::apply`] in the same atomic step); this role reads them and
//! keeps each user's read state, preferences and the tenant's stats. Changes of read state and
//! preferences reach the user's connections on every node as [`super::Control`] messages on the
//! tenant's channel, published in the same atomic step as the change, so they arrive in the
//! order they were made.

use async_trait::async_trait;

use super::EngineError;
use crate::notifications::stats::TypeStats;
use crate::notifications::{Batch, Preferences, ReadChange, ReadState, UserSummary, Versioned};
use crate::protocol::{EventId, EventType};

/// Connections reached by one tenant's events of one type, as a node counted them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The tenant.
    pub tenant: String,
    /// The event type.
    pub event_type: EventType,
    /// Day of delivery (days since the Unix epoch).
    pub day: u64,
    /// Connections reached.
    pub count: u64,
}

/// Notifications, read state, preferences and stats.
#[async_trait]
pub trait NotificationStore: Send + Sync + 'static {
    /// The user's unread count and preferences (for `connected` and the fan-out filter).
    async fn user_summary(&self, tenant: &str, user: &str) -> Result<UserSummary, EngineError>;

    /// Up to `count` notifications older than `before` (the newest when `None`), newest first,
    /// with the user's read flags and unread count.
    async fn notifications_before(
        &self,
        tenant: &str,
        user: &str,
        before: Option<EventId>,
        count: usize,
    ) -> Result<Batch, EngineError>;

    /// Changes the user's read state and tells the user's connections; `None` when the change
    /// names an id that is not a retained notification of the tenant.
    async fn change_read_state(
        &self,
        tenant: &str,
        user: &str,
        change: ReadChange,
    ) -> Result<Option<ReadState>, EngineError>;

    /// Stores the user's preferences (replacing them) and applies them to the user's
    /// connections on every node.
    async fn set_preferences(
        &self,
        tenant: &str,
        user: &str,
        preferences: &Preferences,
    ) -> Result<Versioned, EngineError>;

    /// Adds connection counts to the tenants' stats.
    async fn record_deliveries(&self, delivered: &[Delivered]) -> Result<(), EngineError>;

    /// Per-type figures of the days from `first_day` (days since the Unix epoch) on.
    async fn notification_stats(
        &self,
        tenant: &str,
        first_day: u64,
    ) -> Result<Vec<TypeStats>, EngineError>;
}
