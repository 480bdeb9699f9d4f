//! The notification center: every event is also a notification of its tenant, kept for a
//! retention period, with read state and preferences per user (`JWT_USER_CLAIM`). Pure types
//! and rules here; the engines store them (the engine's `NotificationStore` role), the gateway
//! applies filters and preferences at fan-out, the API serves them.
//!
//! - [`filter`]: per-connection filters (`types`, `minSeverity`, `modules` at connect).
//! - [`preferences`]: a user's preferences, validated field by field, applied to every
//!   connection of the user.
//! - [`inbox`]: one tenant's notifications and read state in memory (the embedded engine; the
//!   Redis engine keeps the same rules in `notifications.lua`).
//! - [`stats`]: per-type delivery and engagement figures.

pub mod filter;
pub mod inbox;
pub mod preferences;
pub mod stats;

use std::time::Duration;

pub use filter::{EventFilter, EventMeta};
pub use preferences::Preferences;

use crate::protocol::EventId;

/// Notification retention (`NOTIFICATION_MAX`, `NOTIFICATION_RETENTION_DAYS`).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Notifications kept per tenant at most (the oldest go first).
    pub max: u32,
    /// Notifications older than this are dropped.
    pub age: Duration,
}

impl Default for Retention {
    /// 10,000 per tenant, 90 days.
    fn default() -> Self {
        Self {
            max: 10_000,
            age: Duration::from_secs(90 * 86_400),
        }
    }
}

/// A change of one user's read state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadChange {
    /// One notification read.
    Read(EventId),
    /// One notification unread.
    Unread(EventId),
    /// Every notification read, up to and including this one (`None`: the newest).
    ReadAll(Option<EventId>),
}

/// A user's read state after a change: what `notification_state` tells the user's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadState {
    /// Unread notifications of the user now.
    pub unread: u64,
    /// The notifications that changed (read or unread), for one-notification changes.
    pub changed: Vec<(EventId, bool)>,
    /// After a read-all: everything up to this id is read.
    pub read_up_to: Option<EventId>,
}

impl ReadState {
    /// The `notification_state` message telling the user's connections.
    pub fn message(&self) -> String {
        use crate::protocol::{ReadFlag, ServerMessage};
        ServerMessage::NotificationState {
            unread_count: self.unread,
            changed: (!self.changed.is_empty()).then(|| {
                self.changed
                    .iter()
                    .map(|(id, read)| ReadFlag {
                        id: id.to_string(),
                        read: *read,
                    })
                    .collect()
            }),
            read_up_to: self.read_up_to.map(|id| id.to_string()),
        }
        .to_json()
    }
}

/// What a connection needs of its user at connect: the unread count and the preferences.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserSummary {
    /// Unread notifications.
    pub unread: u64,
    /// Stored preferences and their version (`None`: the defaults, version 0).
    pub preferences: Option<Versioned>,
}

/// Preferences with the version the engine gave them: nodes apply a newer version over an
/// older one whatever order the two arrive in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// Increases with each PUT of the user.
    pub version: u64,
    /// The preferences.
    pub preferences: Preferences,
}

/// Notifications older than a position, newest first, with the user's read flag: one page of
/// the engine's listing, which the API filters and pages over.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// `(id, envelope, read)`, newest first.
    pub items: Vec<(EventId, crate::protocol::Payload, bool)>,
    /// Older notifications remain after the last item.
    pub more: bool,
    /// The user's unread count.
    pub unread: u64,
}
