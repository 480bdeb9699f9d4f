//! The notification store role in memory: each tenant's [`Inbox`] lives beside its history,
//! under the same lock, and changes reach this node's connections through the sink directly.

use std::sync::Weak;

use async_trait::async_trait;

use super::MemoryEngine;
use crate::engine::{Control, Delivered, EngineError, NotificationStore};
use crate::notifications::inbox::Inbox;
use crate::notifications::stats::TypeStats;
use crate::notifications::{Batch, Preferences, ReadChange, ReadState, UserSummary, Versioned};
use crate::protocol::{EventId, now_ms};

impl MemoryEngine {
    /// Runs `f` on the tenant's inbox, trimmed to the retention first.
    fn with_inbox<T>(
        &self,
        tenant: &str,
        f: impl FnOnce(&mut Inbox) -> T,
    ) -> Result<T, EngineError> {
        let mut tenants = self.lock_tenants()?;
        let log = tenants.entry(tenant.to_owned()).or_default();
        log.inbox.trim(now_ms(), self.history.notifications);
        Ok(f(&mut log.inbox))
    }

    fn tell(&self, tenant: &str, control: Control) {
        if let Some(sink) = self.sink.get().and_then(Weak::upgrade) {
            sink.control(tenant, control);
        }
    }
}

#[async_trait]
impl NotificationStore for MemoryEngine {
    async fn user_summary(&self, tenant: &str, user: &str) -> Result<UserSummary, EngineError> {
        self.with_inbox(tenant, |inbox| inbox.summary(user))
    }

    async fn notifications_before(
        &self,
        tenant: &str,
        user: &str,
        before: Option<EventId>,
        count: usize,
    ) -> Result<Batch, EngineError> {
        self.with_inbox(tenant, |inbox| inbox.page(user, before, count))
    }

    async fn change_read_state(
        &self,
        tenant: &str,
        user: &str,
        change: ReadChange,
    ) -> Result<Option<ReadState>, EngineError> {
        let now = now_ms();
        let state = self.with_inbox(tenant, |inbox| inbox.change(user, change, now))?;
        if let Some(state) = &state {
            // Under no lock: the sink only queues, and one node orders by call order anyway.
            self.tell(
                tenant,
                Control::NotificationState {
                    user: user.to_owned(),
                    state: state.clone(),
                },
            );
        }
        Ok(state)
    }

    async fn set_preferences(
        &self,
        tenant: &str,
        user: &str,
        preferences: &Preferences,
    ) -> Result<Versioned, EngineError> {
        let versioned = self.with_inbox(tenant, |inbox| {
            inbox.set_preferences(user, preferences.clone())
        })?;
        self.tell(
            tenant,
            Control::Preferences {
                user: user.to_owned(),
                preferences: versioned.clone(),
            },
        );
        Ok(versioned)
    }

    async fn record_deliveries(&self, delivered: &[Delivered]) -> Result<(), EngineError> {
        let mut tenants = self.lock_tenants()?;
        for d in delivered {
            let log = tenants.entry(d.tenant.clone()).or_default();
            log.inbox.delivered(d.day, d.event_type, d.count);
        }
        Ok(())
    }

    async fn notification_stats(
        &self,
        tenant: &str,
        first_day: u64,
    ) -> Result<Vec<TypeStats>, EngineError> {
        self.with_inbox(tenant, |inbox| inbox.stats(first_day))
    }
}
