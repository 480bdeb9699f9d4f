//! A tenant's recent events as this node delivered them, so that resumes are served from
//! memory instead of each reading the history from the engine. In a reconnect stampede every
//! client of a dead node resumes at once, mostly from the same last event: the first resume of
//! a tenant on a node reads the history once and seeds the window, the others read the window.
//!
//! The window holds exactly the events with ids in `(from, last]` that the tenant's stream
//! delivered, in order, or is off (`from` unset). It starts at the subscription's baseline (every
//! later event arrives live), is extended backwards by a history page that reaches it, turns off
//! when the stream holds for a gap (events may be missing), and is bounded in events, bytes and
//! age. Pure and synchronous: the hub calls it under its shard lock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::protocol::{EventId, Payload};

/// Events a window keeps at most.
pub const WINDOW_EVENTS: usize = 100;
/// Payload bytes a window keeps at most.
pub const WINDOW_BYTES: usize = 32 * 1024;
/// Events older than this (since they were delivered or read) leave the window.
pub const WINDOW_AGE: Duration = Duration::from_secs(60);

/// Before every event id (no stream assigns `0-0`): the start of a window that has seen every
/// event of its tenant. Never a resume position the window answers for.
const BEGINNING: EventId = EventId { ms: 0, seq: 0 };

/// A window's bounds. Within the history's own (`HISTORY_SIZE`, `HISTORY_TTL_SECS`): a
/// resume the history would refuse as too old is refused alike, whichever node serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLimits {
    /// Events kept at most.
    pub events: usize,
    /// Age at most.
    pub age: Duration,
}

impl WindowLimits {
    /// The bounds under a history of `size` entries kept `ttl`: the event a resume names must
    /// itself be retained, so the window holds fewer than `size` after it.
    pub fn under_history(size: u32, ttl: Duration) -> Self {
        Self {
            events: WINDOW_EVENTS.min((size as usize).saturating_sub(1)),
            age: WINDOW_AGE.min(ttl / 2),
        }
    }
}

impl Default for WindowLimits {
    fn default() -> Self {
        Self {
            events: WINDOW_EVENTS,
            age: WINDOW_AGE,
        }
    }
}

/// One tenant's recent events (see the module docs).
#[derive(Default)]
pub struct Window {
    limits: WindowLimits,
    /// The window is complete after this id; `None`: off.
    from: Option<EventId>,
    events: VecDeque<(EventId, Payload, Instant)>,
    bytes: usize,
}

impl Window {
    /// An off window within `limits`.
    pub fn new(limits: WindowLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Starts a complete, empty window after `baseline` (the history's newest id when the
    /// subscription came into place; `None`: the history was empty, so the window is complete
    /// from the first event on).
    pub fn start_at(&mut self, baseline: Option<EventId>) {
        self.clear();
        self.from = Some(baseline.unwrap_or(BEGINNING));
    }

    /// Turns the window off: events may have been missed.
    pub fn stop(&mut self) {
        self.clear();
        self.from = None;
    }

    fn clear(&mut self) {
        self.events = VecDeque::new();
        self.bytes = 0;
    }

    /// The newest id the window covers.
    fn last(&self) -> Option<EventId> {
        self.events.back().map(|(id, _, _)| *id).or(self.from)
    }

    /// Appends an event the stream delivered (in id order).
    pub fn push(&mut self, id: EventId, payload: &Payload, now: Instant) {
        if self.from.is_none() || self.last().is_some_and(|last| id <= last) {
            return;
        }
        self.bytes += payload.as_str().len();
        self.events.push_back((id, payload.clone(), now));
        self.trim(now);
    }

    /// The events after `after`, when the window covers them: `after` is its start or one of
    /// its events. `None` sends the caller to the history, which also knows why an id cannot
    /// be resumed from.
    pub fn after(&mut self, after: EventId, now: Instant) -> Option<Vec<(EventId, Payload)>> {
        self.trim(now);
        let from = self.from?;
        if after < from || after == BEGINNING {
            return None;
        }
        let start = if after == from {
            0
        } else {
            let i = self
                .events
                .binary_search_by(|(id, _, _)| id.cmp(&after))
                .ok()?;
            i + 1
        };
        Some(
            self.events
                .iter()
                .skip(start)
                .map(|(id, payload, _)| (*id, payload.clone()))
                .collect(),
        )
    }

    /// Takes in a history page read for a resume: every event after `after` up to the page's
    /// end (`complete`: the page was not cut at its size, so it reaches the newest event at the
    /// time of the read). `position` is the stream's position now. The window grows back to
    /// `after` when the page reaches it (or, while off, reaches the position), so the window
    /// stays gap-free; otherwise nothing changes.
    pub fn remember(
        &mut self,
        after: EventId,
        page: &[(EventId, Payload)],
        complete: bool,
        position: Option<EventId>,
        now: Instant,
    ) {
        if !complete {
            return;
        }
        let reach = page.last().map_or(after, |(id, _)| *id);
        match self.from {
            Some(from) if after < from && reach >= from => {
                // Prepend what the window lacks, newest first.
                for (id, payload) in page.iter().rev().filter(|(id, _)| *id <= from) {
                    self.bytes += payload.as_str().len();
                    self.events.push_front((*id, payload.clone(), now));
                }
                self.from = Some(after);
            }
            None if position.is_none_or(|p| reach >= p) => {
                self.clear();
                self.from = Some(after);
                for (id, payload) in page {
                    self.bytes += payload.as_str().len();
                    self.events.push_back((*id, payload.clone(), now));
                }
            }
            _ => return,
        }
        self.trim(now);
    }

    /// Drops the oldest events past the bounds; the window then starts after the last dropped.
    pub fn trim(&mut self, now: Instant) {
        while let Some((id, payload, at)) = self.events.front() {
            let over = self.events.len() > self.limits.events
                || self.bytes > WINDOW_BYTES
                || now.duration_since(*at) > self.limits.age;
            if !over {
                break;
            }
            self.bytes -= payload.as_str().len();
            self.from = Some(*id);
            self.events.pop_front();
        }
        if self.events.capacity() > 2 * WINDOW_EVENTS.max(self.events.len()) {
            self.events.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> EventId {
        EventId { ms, seq: 0 }
    }

    fn page(ids: &[u64]) -> Vec<(EventId, Payload)> {
        ids.iter()
            .map(|ms| (id(*ms), Payload::from(format!("e{ms}"))))
            .collect()
    }

    fn ids(events: Option<Vec<(EventId, Payload)>>) -> Option<Vec<u64>> {
        events.map(|e| e.iter().map(|(id, _)| id.ms).collect())
    }

    /// Invariant: from the baseline on, the window answers every resume at or after its start
    /// with exactly the delivered events after it, and sends others to the history.
    #[test]
    fn a_window_serves_resumes_from_its_start_on() {
        let now = Instant::now();
        let mut w = Window::default();
        assert_eq!(ids(w.after(id(5), now)), None, "off until started");
        // Started on an empty history: complete from the first event, but `0-0` is no event.
        w.start_at(None);
        w.push(id(1), &Payload::from("x"), now);
        assert_eq!(ids(w.after(id(1), now)), Some(vec![]));
        assert_eq!(ids(w.after(BEGINNING, now)), None);
        w.start_at(Some(id(5)));
        for ms in [6, 7, 8] {
            w.push(id(ms), &Payload::from("x"), now);
        }
        assert_eq!(ids(w.after(id(5), now)), Some(vec![6, 7, 8]));
        assert_eq!(ids(w.after(id(7), now)), Some(vec![8]));
        assert_eq!(ids(w.after(id(8), now)), Some(vec![]));
        assert_eq!(ids(w.after(id(4), now)), None, "before the window");
        assert_eq!(
            ids(w.after(id(9), now)),
            None,
            "newer than anything: history says why"
        );
        w.push(id(7), &Payload::from("dup"), now);
        assert_eq!(
            ids(w.after(id(5), now)),
            Some(vec![6, 7, 8]),
            "no duplicate"
        );
        w.stop();
        assert_eq!(ids(w.after(id(7), now)), None, "off after a gap");
    }

    /// Invariant: a history page extends the window backwards only when it reaches the window
    /// (or, while off, the stream's position), so the window never has a hole.
    #[test]
    fn pages_extend_the_window_only_without_a_hole() {
        let now = Instant::now();
        let mut w = Window::default();
        w.start_at(Some(id(10)));
        w.push(id(11), &Payload::from("x"), now);
        // A page after 4 that stops at 8 does not reach 10: 9 could be missing.
        w.remember(id(4), &page(&[6, 8]), true, Some(id(11)), now);
        assert_eq!(ids(w.after(id(4), now)), None);
        // A cut page (more pages follow) is not known to reach anything.
        w.remember(id(4), &page(&[6, 8, 10, 11]), false, Some(id(11)), now);
        assert_eq!(ids(w.after(id(4), now)), None);
        w.remember(id(4), &page(&[6, 8, 10, 11]), true, Some(id(11)), now);
        assert_eq!(ids(w.after(id(4), now)), Some(vec![6, 8, 10, 11]));
        assert_eq!(ids(w.after(id(8), now)), Some(vec![10, 11]));

        // Off (after a gap): a page seeds it when it reaches the stream's position.
        w.stop();
        w.remember(id(8), &page(&[10]), true, Some(id(11)), now);
        assert_eq!(ids(w.after(id(8), now)), None, "short of the position");
        w.remember(id(8), &page(&[10, 11]), true, Some(id(11)), now);
        assert_eq!(ids(w.after(id(8), now)), Some(vec![10, 11]));
        w.push(id(12), &Payload::from("x"), now);
        assert_eq!(ids(w.after(id(10), now)), Some(vec![11, 12]));
    }

    /// Invariant: the window stays within its bounds in events, bytes and age, and then starts
    /// after the last event it dropped.
    #[test]
    fn the_window_stays_within_the_history() {
        let limits = WindowLimits::under_history(5, Duration::from_secs(3600));
        assert_eq!(limits.events, 4);
        let now = Instant::now();
        let mut w = Window::new(limits);
        w.start_at(Some(id(0)));
        for ms in 1..=10 {
            w.push(id(ms), &Payload::from("x"), now);
        }
        // The history keeps 6..=10 at least: a resume from 6 is within both, from 5 neither.
        assert_eq!(ids(w.after(id(6), now)), Some(vec![7, 8, 9, 10]));
        assert_eq!(ids(w.after(id(5), now)), None);
        assert_eq!(
            WindowLimits::under_history(1, Duration::from_secs(1)).events,
            0
        );
    }

    #[test]
    fn the_window_is_bounded() {
        let now = Instant::now();
        let mut w = Window::default();
        w.start_at(Some(id(0)));
        for ms in 1..=(WINDOW_EVENTS as u64 + 10) {
            w.push(id(ms), &Payload::from("x"), now);
        }
        assert_eq!(w.events.len(), WINDOW_EVENTS);
        assert_eq!(ids(w.after(id(5), now)), None, "dropped");
        assert_eq!(
            ids(w.after(id(10), now)).map(|v| v.len()),
            Some(WINDOW_EVENTS)
        );

        let big = Payload::from("y".repeat(WINDOW_BYTES / 2 + 1));
        w.push(id(1000), &big, now);
        w.push(id(1001), &big, now);
        assert!(w.bytes <= WINDOW_BYTES, "{} bytes", w.bytes);
        assert_eq!(ids(w.after(id(1000), now)), Some(vec![1001]));

        let later = now + WINDOW_AGE + Duration::from_secs(1);
        assert_eq!(
            ids(w.after(id(1001), later)),
            Some(vec![]),
            "its start moved up"
        );
        assert_eq!(ids(w.after(id(1000), later)), None);
        assert_eq!(w.bytes, 0);
    }
}
