//! Ordering and recovery of one tenant's event stream on this node, read top-down:
//!
//! 1. Live events from the broker are delivered in id order; one not newer than the last
//!    delivered is a duplicate (it came both live and from a gap fill) and is dropped.
//! 2. When the broker may have missed events (reconnect, lag) the stream is *held*: live events
//!    queue up instead of being delivered.
//! 3. A gap fill reads the history after the stream's position and delivers it, then the held
//!    events (duplicates dropped by rule 1). When the history cannot cover the gap, every
//!    session is told `resync_required` instead of pretending nothing was lost.
//!
//! Pure and synchronous: the hub calls it under its shard lock and does the I/O itself, so each
//! rule is tested here without a broker.

use std::collections::HashMap;
use std::sync::Arc;

use super::outbox::{Item, Outbox};
use super::window::{Window, WindowLimits};
use crate::engine::History;
use crate::notifications::{EventMeta, Versioned};
use crate::protocol::{EventId, EventType, Payload, ResyncReason};

/// Live events held per tenant while a gap is filled, at most this many (then: resync).
pub const PENDING_CAP: usize = 100_000;

/// One local session of a tenant: its outbox, and the user its token named (revocation).
pub struct Member {
    /// The session's queue.
    pub outbox: Arc<Outbox>,
    /// `JWT_USER_CLAIM` of the session's token.
    pub user: Option<Box<str>>,
    /// What the connection asked to receive, when it narrowed it.
    pub filter: Option<Arc<crate::notifications::EventFilter>>,
    /// The user's preferences and their version, once the user saved some.
    pub prefs: Option<Arc<Versioned>>,
}

impl Member {
    /// Whether an event with this meta reaches the member (its user's preferences, then its
    /// connection's filter).
    fn wants(&self, meta: Option<&EventMeta<'_>>) -> bool {
        self.prefs
            .as_ref()
            .is_none_or(|p| p.preferences.allows(meta))
            && self.filter.as_ref().is_none_or(|f| f.allows(meta))
    }
}

/// A tenant's local sessions by number.
pub type Sessions = HashMap<u64, Member>;

/// One tenant's stream position and gap state.
#[derive(Default)]
pub struct TenantStream {
    /// Newest event id handed to the tenant's sessions: where a gap fill resumes, and at or
    /// below which events are duplicates.
    last_id: Option<EventId>,
    /// The history's newest id when the subscription started: where a gap fill resumes while
    /// nothing has been delivered yet. Never a duplicate line: an event published before it
    /// may still be on its way over pub/sub.
    baseline: Option<EventId>,
    /// While a gap is being filled: live events held back.
    pending: Option<Vec<Item>>,
    /// More than [`PENDING_CAP`] events arrived while held: some were not kept.
    overflow: bool,
    /// Connections reached per event type since the last [`TenantStream::take_delivered`].
    delivered: Vec<(EventType, u64)>,
    /// The recent events delivered, for resumes on this node without a history read.
    pub window: Window,
}

impl TenantStream {
    /// A stream whose recent-event window stays within `limits`.
    pub fn new(limits: WindowLimits) -> Self {
        Self {
            window: Window::new(limits),
            ..Self::default()
        }
    }
}

/// What a gap fill did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillOutcome {
    /// Every missed event was delivered (this many from the history).
    Filled(usize),
    /// Events may be lost: sessions were told to resync.
    Resync,
}

impl TenantStream {
    /// Where a new session's stream starts, and where a gap fill resumes: the newest event id
    /// delivered, or the history's newest when the subscription started.
    pub fn position(&self) -> Option<EventId> {
        self.last_id.or(self.baseline)
    }

    /// Records the history's newest id when the subscription came into place.
    pub fn set_baseline(&mut self, baseline: Option<EventId>) {
        self.baseline = baseline;
        // Every event after the baseline arrives live from now on. But the newest-id reply and
        // a live event travel on different connections: an event published just after the
        // read can be delivered before the baseline is set, and the window (not started then)
        // did not keep it. So the window starts after whatever was delivered, or it would
        // claim an event it never held.
        self.window.start_at(self.last_id.max(baseline));
    }

    /// Rule 1 and 2: a live event, delivered in order, or held while a gap is open.
    pub fn on_live(&mut self, sessions: &Sessions, id: Option<EventId>, payload: Payload) {
        if let Some(pending) = &mut self.pending {
            if pending.len() < PENDING_CAP {
                pending.push((id, payload));
            } else {
                self.overflow = true;
            }
            return;
        }
        self.deliver_in_order(sessions, id, &payload);
    }

    /// Rule 2: live delivery may have missed events; hold live events until [`Self::fill`].
    pub fn hold(&mut self) {
        self.pending.get_or_insert_with(Vec::new);
        self.window.stop();
    }

    /// Whether a gap is open.
    pub fn is_held(&self) -> bool {
        self.pending.is_some()
    }

    /// Rule 3: closes the gap with `history`, the events after `from` (the position read
    /// before the history was), then releases the held events.
    pub fn fill(
        &mut self,
        sessions: &Sessions,
        from: Option<EventId>,
        history: History,
    ) -> FillOutcome {
        let (lost, filled) = match history {
            History::After(events) => {
                let filled = events.len();
                self.last_id = self.last_id.max(from);
                for (id, payload) in events {
                    self.deliver_in_order(sessions, Some(id), &payload);
                }
                (self.overflow, filled)
            }
            // Nothing was ever published and nothing is owed.
            History::Empty if from.is_none() => (self.overflow, 0),
            History::Empty | History::TooOld | History::TooNew | History::Unknown => (true, 0),
        };
        if lost {
            // Events may be missing and cannot be recovered: say so instead of pretending.
            fan_out(sessions, None, &ResyncReason::EventsMissed.message());
            self.last_id = None;
        }
        for (id, payload) in self.pending.take().unwrap_or_default() {
            self.deliver_in_order(sessions, id, &payload);
        }
        self.overflow = false;
        if lost {
            FillOutcome::Resync
        } else {
            FillOutcome::Filled(filled)
        }
    }

    /// Delivers an event unless it is not newer than the last one (a duplicate from a gap fill).
    fn deliver_in_order(&mut self, sessions: &Sessions, id: Option<EventId>, payload: &Payload) {
        if let Some(id) = id {
            if self.last_id.is_some_and(|last| id <= last) {
                return;
            }
            self.last_id = Some(id);
            self.window.push(id, payload, std::time::Instant::now());
        }
        let (delivered, event_type) = fan_out(sessions, id, payload);
        crate::metrics::event_fanned_out(delivered);
        if let Some(t) = event_type {
            match self.delivered.iter_mut().find(|(known, _)| *known == t) {
                Some((_, n)) => *n += delivered,
                None => self.delivered.push((t, delivered)),
            }
        }
    }

    /// Connections reached per event type since the last call (for the notification stats).
    pub fn take_delivered(&mut self) -> Vec<(EventType, u64)> {
        std::mem::take(&mut self.delivered)
    }
}

/// Hands one message to every session of a tenant that wants it; returns how many took it and,
/// for an event, its type.
pub fn fan_out(
    sessions: &Sessions,
    id: Option<EventId>,
    payload: &Payload,
) -> (u64, Option<EventType>) {
    // One span per event and node, never per recipient; none at all unless traces export.
    let span = if crate::telemetry::exporting() {
        tracing::info_span!("deliver", recipients = tracing::field::Empty)
    } else {
        tracing::Span::none()
    };
    let _entered = span.enter();
    let mut delivered = 0;
    // Read once per event (never for a resync notice, which has no id): a cheap parse next
    // to the fan-out, and each filter check is then a comparison.
    let meta = id.and_then(|_| EventMeta::read(payload));
    let mut filtered = 0;
    for member in sessions.values() {
        if meta.is_some() && !member.wants(meta.as_ref()) {
            filtered += 1;
            continue;
        }
        // A clone of the payload is a reference count: every recipient shares one buffer.
        if member.outbox.push(id, payload.clone()) {
            delivered += 1;
        }
    }
    span.record("recipients", delivered);
    if filtered > 0 {
        crate::metrics::events_filtered(filtered);
    }
    (delivered, meta.map(|m| m.event_type()))
}

/// The reason a client is told when its resume position cannot be honoured, `None` when it can.
pub fn resync_reason(history: &History) -> Option<ResyncReason> {
    match history {
        History::After(_) => None,
        History::Empty => Some(ResyncReason::HistoryEmpty),
        History::TooOld => Some(ResyncReason::TooOld),
        History::TooNew => Some(ResyncReason::TooNew),
        History::Unknown => Some(ResyncReason::NotInHistory),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::outbox::Next;

    fn id(ms: u64) -> EventId {
        EventId { ms, seq: 0 }
    }

    fn event(ms: u64) -> (EventId, Payload) {
        (id(ms), Payload::from(format!("e{ms}")))
    }

    /// One session's outbox, and the sessions map holding it.
    fn one_session() -> (Arc<Outbox>, Sessions) {
        let outbox = Arc::new(Outbox::new(crate::gateway::outbox::QueueLimits::messages(
            1000,
        )));
        let member = Member {
            outbox: outbox.clone(),
            user: None,
            filter: None,
            prefs: None,
        };
        (outbox, Sessions::from([(1, member)]))
    }

    /// Everything queued, as text.
    fn drained(outbox: &Outbox) -> Vec<String> {
        let mut out = Vec::new();
        while let Next::Event(_, payload) = outbox.next() {
            out.push(payload.as_str().to_owned());
        }
        out
    }

    fn live(stream: &mut TenantStream, sessions: &Sessions, ms: u64) {
        let (id, payload) = event(ms);
        stream.on_live(sessions, Some(id), payload);
    }

    /// Invariant (rule 1): an event not newer than the last delivered is a duplicate and is
    /// dropped; control messages (no id) always pass.
    #[test]
    fn live_events_are_delivered_once_in_id_order() {
        let (outbox, sessions) = one_session();
        let mut stream = TenantStream::default();
        live(&mut stream, &sessions, 1);
        live(&mut stream, &sessions, 2);
        live(&mut stream, &sessions, 2);
        live(&mut stream, &sessions, 1);
        stream.on_live(&sessions, None, Payload::from("control"));
        live(&mut stream, &sessions, 3);
        assert_eq!(drained(&outbox), ["e1", "e2", "control", "e3"]);
        assert_eq!(stream.position(), Some(id(3)));
    }

    /// Invariant (rule 2 and 3): while held, live events wait; the fill delivers the history
    /// after the position first, then the held events, each event exactly once and in order.
    #[test]
    fn a_gap_is_filled_from_history_before_held_events_without_duplicates() {
        let (outbox, sessions) = one_session();
        let mut stream = TenantStream::default();
        live(&mut stream, &sessions, 1);
        stream.hold();
        assert!(stream.is_held());
        // 2 and 3 were lost; 4 and 5 arrive live while the gap is open.
        live(&mut stream, &sessions, 4);
        live(&mut stream, &sessions, 5);
        assert_eq!(
            drained(&outbox),
            ["e1"],
            "held events must wait for the fill"
        );
        let from = stream.position();
        let history = History::After(vec![event(2), event(3), event(4)]);
        assert_eq!(
            stream.fill(&sessions, from, history),
            FillOutcome::Filled(3)
        );
        assert_eq!(drained(&outbox), ["e2", "e3", "e4", "e5"]);
        assert!(!stream.is_held());
    }

    /// Invariant: the baseline (history's newest id at subscribe) is where a fill resumes
    /// while nothing was delivered, but never a duplicate line — an event at or below it that
    /// arrives live is still delivered.
    #[test]
    fn the_baseline_is_a_fill_start_not_a_dedup_line() {
        let (outbox, sessions) = one_session();
        let mut stream = TenantStream::default();
        stream.set_baseline(Some(id(5)));
        assert_eq!(stream.position(), Some(id(5)));
        live(&mut stream, &sessions, 5);
        assert_eq!(drained(&outbox), ["e5"]);
    }

    /// Invariant: an event delivered live before the subscription's baseline was recorded (the
    /// newest-id reply overtaken by the event's publication) is not claimed by the window, so
    /// a resume from just before it reads the history instead of skipping it. Found by the
    /// stampede test: five clients of a tenant lost the event published at the kill.
    #[test]
    fn the_window_starts_after_events_delivered_before_the_baseline() {
        let (_outbox, sessions) = one_session();
        let mut stream = TenantStream::new(crate::gateway::window::WindowLimits::default());
        live(&mut stream, &sessions, 11);
        stream.set_baseline(Some(id(10)));
        assert_eq!(stream.window.after(id(10), std::time::Instant::now()), None);
        live(&mut stream, &sessions, 12);
        let served = stream.window.after(id(11), std::time::Instant::now());
        assert_eq!(served.map(|e| e.len()), Some(1), "12 is held from 11 on");
    }

    /// Invariant: when the history cannot cover the gap (trimmed, lost), every session is told
    /// to resync, and the held events still follow.
    #[test]
    fn an_unfillable_gap_tells_sessions_to_resync() {
        for history in [History::TooOld, History::Unknown, History::Empty] {
            let (outbox, sessions) = one_session();
            let mut stream = TenantStream::default();
            live(&mut stream, &sessions, 1);
            stream.hold();
            live(&mut stream, &sessions, 9);
            let from = stream.position();
            assert_eq!(stream.fill(&sessions, from, history), FillOutcome::Resync);
            let resync = ResyncReason::EventsMissed.message();
            assert_eq!(drained(&outbox), ["e1", resync.as_str(), "e9"]);
        }
    }

    /// Invariant: a tenant that never had an event owes nothing when its history is empty.
    #[test]
    fn an_empty_history_with_no_position_owes_nothing() {
        let (outbox, sessions) = one_session();
        let mut stream = TenantStream::default();
        stream.hold();
        live(&mut stream, &sessions, 1);
        assert_eq!(
            stream.fill(&sessions, None, History::Empty),
            FillOutcome::Filled(0)
        );
        assert_eq!(drained(&outbox), ["e1"]);
    }

    /// Invariant: more held events than [`PENDING_CAP`] means some were not kept, so the fill
    /// ends in a resync even when the history reads fine.
    #[test]
    fn too_many_held_events_end_in_a_resync() {
        let sessions = Sessions::new();
        let mut stream = TenantStream::default();
        stream.hold();
        for ms in 1..=(PENDING_CAP as u64 + 1) {
            live(&mut stream, &sessions, ms);
        }
        let outcome = stream.fill(&sessions, None, History::After(Vec::new()));
        assert_eq!(outcome, FillOutcome::Resync);
    }
}
