//! One tenant's notifications and read state, in memory (the embedded engine). The Redis engine
//! keeps the same rules in `notifications.lua`; the conformance suite holds both to them.
//!
//! A user's read state is a **marker plus exceptions**: everything at or before the marker is
//! read except the ids in `unread`, everything after it is unread except the ids in `read`.
//! Reading the oldest unread notifications moves the marker forward and empties `read`, so a
//! user who keeps up costs one id; exceptions are bounded by the retained notifications.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound::{Excluded, Unbounded};

use super::stats::{self, DayStats, TypeStats};
use super::{Batch, ReadChange, ReadState, Retention, UserSummary, Versioned};
use crate::notifications::{EventMeta, Preferences};
use crate::protocol::{EventId, EventType, Payload};

struct Item {
    payload: Payload,
    event_type: EventType,
}

#[derive(Default)]
struct UserState {
    marker: Option<EventId>,
    /// Read ids after the marker.
    read: BTreeSet<EventId>,
    /// Unread ids at or before the marker.
    unread: BTreeSet<EventId>,
}

/// A tenant's notifications, read state, preferences and stats.
#[derive(Default)]
pub struct Inbox {
    items: BTreeMap<EventId, Item>,
    users: HashMap<String, UserState>,
    prefs: HashMap<String, Versioned>,
    versions: u64,
    stats: BTreeMap<(u64, EventType), DayStats>,
}

impl Inbox {
    /// Keeps a published event as a notification. Users whose preferences filter it out get it
    /// as read.
    pub fn record(&mut self, id: EventId, payload: &Payload, now_ms: u64, retention: Retention) {
        let Some(meta) = EventMeta::read(payload) else {
            return;
        };
        let (event_type, module) = (meta.event_type(), meta.module().map(Box::from));
        self.stats
            .entry((stats::day_of(id.ms), event_type))
            .or_default()
            .published += 1;
        let muted: Vec<String> = self
            .prefs
            .iter()
            .filter(|(_, p)| !p.preferences.allows_event(event_type, module.as_deref()))
            .map(|(user, _)| user.clone())
            .collect();
        self.items.insert(
            id,
            Item {
                payload: payload.clone(),
                event_type,
            },
        );
        for user in muted {
            self.set_read(&user, id, true);
        }
        self.trim(now_ms, retention);
    }

    /// Drops notifications past the retention age or count, and the stats of days past it.
    pub fn trim(&mut self, now_ms: u64, retention: Retention) {
        let horizon = now_ms.saturating_sub(retention.age.as_millis() as u64);
        loop {
            let len = self.items.len();
            let Some(entry) = self.items.first_entry() else {
                break;
            };
            if entry.key().ms < horizon || len > retention.max as usize {
                entry.remove();
            } else {
                break;
            }
        }
        let first_day = stats::day_of(horizon);
        self.stats.retain(|(day, _), _| *day >= first_day);
    }

    /// The envelope of a retained notification.
    pub fn payload(&self, id: EventId) -> Option<Payload> {
        self.items.get(&id).map(|i| i.payload.clone())
    }

    /// Whether `id` is a retained notification.
    pub fn contains(&self, id: EventId) -> bool {
        self.items.contains_key(&id)
    }

    fn is_read(state: Option<&UserState>, id: EventId) -> bool {
        let Some(state) = state else {
            return false;
        };
        if state.marker.is_some_and(|m| id <= m) {
            !state.unread.contains(&id)
        } else {
            state.read.contains(&id)
        }
    }

    /// The user's unread count.
    pub fn unread(&self, user: &str) -> u64 {
        let state = self.users.get(user);
        let after = match state.and_then(|s| s.marker) {
            Some(m) => self.items.range((Excluded(m), Unbounded)).count(),
            None => self.items.len(),
        };
        let Some(state) = state else {
            return after as u64;
        };
        let read = state.read.iter().filter(|id| self.contains(**id)).count();
        let unread = state.unread.iter().filter(|id| self.contains(**id)).count();
        (after - read + unread) as u64
    }

    /// What a connection of `user` needs at connect.
    pub fn summary(&self, user: &str) -> UserSummary {
        UserSummary {
            unread: self.unread(user),
            preferences: self.prefs.get(user).cloned(),
        }
    }

    /// Up to `count` notifications before `before` (all when `None`), newest first.
    pub fn page(&self, user: &str, before: Option<EventId>, count: usize) -> Batch {
        let state = self.users.get(user);
        let range = match before {
            Some(b) => self.items.range(..b),
            None => self.items.range(..),
        };
        let mut items = Vec::new();
        let mut more = false;
        for (id, item) in range.rev() {
            if items.len() == count {
                more = true;
                break;
            }
            items.push((*id, item.payload.clone(), Self::is_read(state, *id)));
        }
        Batch {
            items,
            more,
            unread: self.unread(user),
        }
    }

    /// Applies a change of `user`'s read state; `None` when it names no retained notification.
    pub fn change(&mut self, user: &str, change: ReadChange, now_ms: u64) -> Option<ReadState> {
        let mut state = ReadState {
            unread: 0,
            changed: Vec::new(),
            read_up_to: None,
        };
        match change {
            ReadChange::Read(id) | ReadChange::Unread(id) => {
                let read = matches!(change, ReadChange::Read(_));
                let event_type = self.items.get(&id)?.event_type;
                self.set_read(user, id, read);
                if read {
                    let day = self
                        .stats
                        .entry((stats::day_of(id.ms), event_type))
                        .or_default();
                    day.read(user, now_ms.saturating_sub(id.ms) / 1000);
                }
                state.changed.push((id, read));
            }
            ReadChange::ReadAll(up_to) => {
                let up_to = match up_to {
                    Some(id) if !self.contains(id) => return None,
                    Some(id) => id,
                    None => match self.items.last_key_value() {
                        Some((id, _)) => *id,
                        None => return Some(state),
                    },
                };
                self.read_all(user, up_to, now_ms);
                state.read_up_to = Some(up_to);
            }
        }
        state.unread = self.unread(user);
        Some(state)
    }

    fn read_all(&mut self, user: &str, up_to: EventId, now_ms: u64) {
        // Stats for what this read, the newest first, a bounded number of them.
        let newly: Vec<(EventId, EventType)> = {
            let state = self.users.get(user);
            self.items
                .range(..=up_to)
                .rev()
                .filter(|(id, _)| !Self::is_read(state, **id))
                .take(stats::READ_ALL_SAMPLES)
                .map(|(id, item)| (*id, item.event_type))
                .collect()
        };
        for (id, event_type) in newly {
            let day = self
                .stats
                .entry((stats::day_of(id.ms), event_type))
                .or_default();
            day.read(user, now_ms.saturating_sub(id.ms) / 1000);
        }
        let state = self.users.entry(user.to_owned()).or_default();
        if state.marker.is_none_or(|m| m < up_to) {
            state.marker = Some(up_to);
            state.read.retain(|id| *id > up_to);
            state.unread.clear();
        } else {
            state.unread.retain(|id| *id > up_to);
        }
        self.compact(user);
    }

    fn set_read(&mut self, user: &str, id: EventId, read: bool) {
        let state = self.users.entry(user.to_owned()).or_default();
        if state.marker.is_some_and(|m| id <= m) {
            if read {
                state.unread.remove(&id);
            } else {
                state.unread.insert(id);
            }
        } else if read {
            state.read.insert(id);
        } else {
            state.read.remove(&id);
        }
        self.compact(user);
    }

    /// Moves the marker over read ids that follow it and forgets exceptions of notifications
    /// no longer retained.
    fn compact(&mut self, user: &str) {
        let Some(state) = self.users.get_mut(user) else {
            return;
        };
        let items = &self.items;
        state.read.retain(|id| items.contains_key(id));
        state.unread.retain(|id| items.contains_key(id));
        loop {
            let next = match state.marker {
                Some(m) => items.range((Excluded(m), Unbounded)).next(),
                None => items.iter().next(),
            };
            match next {
                Some((id, _)) if state.read.remove(id) => state.marker = Some(*id),
                _ => break,
            }
        }
    }

    /// Stores `user`'s preferences; returns them with their new version.
    pub fn set_preferences(&mut self, user: &str, preferences: Preferences) -> Versioned {
        self.versions += 1;
        let versioned = Versioned {
            version: self.versions,
            preferences,
        };
        self.prefs.insert(user.to_owned(), versioned.clone());
        versioned
    }

    /// Counts connections reached by events of `event_type` on `day`.
    pub fn delivered(&mut self, day: u64, event_type: EventType, count: u64) {
        self.stats.entry((day, event_type)).or_default().delivered += count;
    }

    /// Per-type figures of the days from `first_day` on.
    pub fn stats(&self, first_day: u64) -> Vec<TypeStats> {
        stats::summarize(
            self.stats
                .range((first_day, EventType::ALL[0])..)
                .filter(|((day, _), _)| *day >= first_day)
                .map(|((_, t), s)| (*t, s)),
        )
    }

    /// Exception ids kept for a user.
    #[cfg(test)]
    fn exceptions(&self, user: &str) -> usize {
        self.users
            .get(user)
            .map_or(0, |s| s.read.len() + s.unread.len())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const RETAIN: Retention = Retention {
        max: 100,
        age: Duration::from_secs(3600),
    };

    fn event(t: &str) -> Payload {
        Payload::from(format!(
            r#"{{"id":"1-0","type":"{t}","tenantId":"a","data":{{}}}}"#
        ))
    }

    fn id(ms: u64) -> EventId {
        EventId { ms, seq: 0 }
    }

    fn inbox(n: u64) -> Inbox {
        let mut inbox = Inbox::default();
        for ms in 1..=n {
            inbox.record(id(ms), &event("license_updated"), n, RETAIN);
        }
        inbox
    }

    #[test]
    fn read_state_is_a_marker_plus_exceptions() {
        let mut inbox = inbox(5);
        assert_eq!(inbox.unread("u"), 5);
        let s = inbox.change("u", ReadChange::Read(id(3)), 5).unwrap();
        assert_eq!((s.unread, s.changed), (4, vec![(id(3), true)]));
        assert_eq!(inbox.unread("v"), 5, "other users untouched");
        inbox.change("u", ReadChange::Read(id(1)), 5).unwrap();
        inbox.change("u", ReadChange::Read(id(2)), 5).unwrap();
        // 1, 2, 3 read: the marker moved over them, no exception left.
        assert_eq!(inbox.exceptions("u"), 0);
        assert_eq!(inbox.unread("u"), 2);
        let s = inbox.change("u", ReadChange::Unread(id(2)), 5).unwrap();
        assert_eq!(s.unread, 3);
        let s = inbox
            .change("u", ReadChange::ReadAll(Some(id(4))), 5)
            .unwrap();
        assert_eq!((s.unread, s.read_up_to), (1, Some(id(4))));
        let page = inbox.page("u", None, 10);
        let flags: Vec<bool> = page.items.iter().map(|(_, _, r)| *r).collect();
        assert_eq!(flags, [false, true, true, true, true]);
        assert_eq!(inbox.change("u", ReadChange::Read(id(99)), 5), None);
        assert_eq!(
            inbox.change("u", ReadChange::ReadAll(Some(id(99))), 5),
            None
        );
        let s = inbox.change("u", ReadChange::ReadAll(None), 5).unwrap();
        assert_eq!((s.unread, s.read_up_to), (0, Some(id(5))));
    }

    #[test]
    fn pages_run_newest_first_and_say_when_more_remain() {
        let inbox = inbox(5);
        let page = inbox.page("u", None, 2);
        let ids: Vec<_> = page.items.iter().map(|(id, _, _)| id.ms).collect();
        assert_eq!((ids, page.more), (vec![5, 4], true));
        let page = inbox.page("u", Some(id(3)), 5);
        assert_eq!((page.items.len(), page.more), (2, false));
    }

    #[test]
    fn muted_notifications_arrive_read_and_retention_trims() {
        let mut inbox = inbox(2);
        let prefs = Preferences::parse(br#"{"mutedTypes":["module_activated"]}"#).unwrap();
        assert_eq!(inbox.set_preferences("u", prefs).version, 1);
        inbox.record(id(3), &event("module_activated"), 3, RETAIN);
        inbox.record(id(4), &event("license_expired"), 4, RETAIN);
        assert_eq!(inbox.unread("u"), 3, "the muted one is read");
        assert_eq!(inbox.unread("v"), 4);
        for ms in 5..=150 {
            inbox.record(id(ms), &event("module_activated"), ms, RETAIN);
        }
        assert_eq!(inbox.items.len(), 100, "capped");
        assert!(inbox.exceptions("u") <= 100, "bounded by what is retained");
        let hour = 3_600_000;
        inbox.trim(150 + hour, RETAIN);
        assert_eq!(inbox.items.len(), 1, "older than an hour: gone");
        assert_eq!(inbox.unread("u"), 0);
    }
}
