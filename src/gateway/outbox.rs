//! One session's outgoing queue, shared by the hub (producer) and the session task (consumer):
//! bounded, allocation-free while empty, and closed with `slow consumer` when it overflows
//! (a clear close instead of silent drops).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::protocol::{CloseReason, EventId, Payload};

/// One session's outgoing queue, shared by the hub (producer) and the session task (consumer).
/// Starts without an allocation; bounded in messages and in bytes; overflowing it closes the
/// session.
pub struct Outbox {
    // std Mutex: held for a push or a pop, never across an await.
    state: Mutex<OutboxState>,
    notify: Notify,
    limits: QueueLimits,
}

/// How much one outbox may hold before its session counts as a slow consumer.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Messages (`SESSION_QUEUE_LEN`).
    pub len: usize,
    /// Bytes of their payloads (`SESSION_QUEUE_BYTES`).
    pub bytes: usize,
}

impl QueueLimits {
    /// At most `len` messages, however large.
    pub fn messages(len: usize) -> Self {
        Self {
            len,
            bytes: usize::MAX,
        }
    }
}

/// A queued message: an event with its id, or a control message (`None`).
pub type Item = (Option<EventId>, Payload);

#[derive(Default)]
struct OutboxState {
    queue: VecDeque<Item>,
    /// Payload bytes in `queue`.
    bytes: usize,
    close: Option<CloseReason>,
}

/// What a session finds in its outbox.
pub enum Next {
    /// A message to send, with its event id when it is an event.
    Event(Option<EventId>, Payload),
    /// Close the connection with this reason (queued events are dropped).
    Close(CloseReason),
    /// Nothing for now.
    Empty,
}

impl Outbox {
    /// An empty outbox within `limits`.
    pub fn new(limits: QueueLimits) -> Self {
        Self {
            state: Mutex::new(OutboxState::default()),
            notify: Notify::new(),
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        // A poisoned lock only means a panic elsewhere mid-push; the queue is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an event; on overflow marks the session a slow consumer instead. Returns false
    /// when the event was not queued.
    pub fn push(&self, id: Option<EventId>, payload: Payload) -> bool {
        let mut state = self.lock();
        if state.close.is_some() {
            return false;
        }
        let len = payload.as_str().len();
        if state.queue.len() >= self.limits.len
            || state.bytes.saturating_add(len) > self.limits.bytes
        {
            state.close = Some(CloseReason::SlowConsumer);
            state.queue = VecDeque::new();
            drop(state);
            self.notify.notify_one();
            return false;
        }
        state.bytes += len;
        state.queue.push_back((id, payload));
        drop(state);
        self.notify.notify_one();
        true
    }

    /// Asks the session to close with `reason` (the first reason wins).
    pub fn close(&self, reason: CloseReason) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(reason);
        }
        drop(state);
        self.notify.notify_one();
    }

    /// The next thing for the session to do. A close request takes precedence over queued events.
    pub fn next(&self) -> Next {
        let mut state = self.lock();
        if let Some(reason) = state.close {
            return Next::Close(reason);
        }
        match state.queue.pop_front() {
            Some((id, payload)) => {
                state.bytes -= payload.as_str().len();
                Next::Event(id, payload)
            }
            None => {
                // Give back the memory of a burst once it has drained.
                if state.queue.capacity() > 64 {
                    state.queue = VecDeque::new();
                }
                Next::Empty
            }
        }
    }

    /// The close the session was asked for, if any (queued events stay).
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.lock().close
    }

    /// Resolves when something was pushed or a close was requested since the last call.
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_overflow_becomes_a_slow_consumer_close() {
        let outbox = Outbox::new(QueueLimits::messages(2));
        assert!(outbox.push(None, "a".into()));
        assert!(outbox.push(None, "b".into()));
        assert!(!outbox.push(None, "c".into()));
        assert!(matches!(
            outbox.next(),
            Next::Close(CloseReason::SlowConsumer)
        ));
        assert!(!outbox.push(None, "d".into()));
    }

    #[test]
    fn outbox_keeps_order_and_first_close_reason() {
        let outbox = Outbox::new(QueueLimits::messages(8));
        outbox.push(None, "a".into());
        outbox.push(None, "b".into());
        assert!(matches!(outbox.next(), Next::Event(None, p) if p.as_str() == "a"));
        assert!(matches!(outbox.next(), Next::Event(None, p) if p.as_str() == "b"));
        assert!(matches!(outbox.next(), Next::Empty));
        outbox.close(CloseReason::GoingAway);
        outbox.close(CloseReason::SlowConsumer);
        assert!(matches!(outbox.next(), Next::Close(CloseReason::GoingAway)));
    }

    /// Invariant: the byte bound holds as well as the message bound; what a session takes out
    /// frees its bytes.
    #[test]
    fn the_byte_bound_closes_a_session_holding_too_much() {
        let outbox = Outbox::new(QueueLimits {
            len: 100,
            bytes: 10,
        });
        assert!(outbox.push(None, "12345".into()));
        assert!(outbox.push(None, "67890".into()));
        assert!(matches!(outbox.next(), Next::Event(None, _)));
        assert!(outbox.push(None, "abcde".into()), "taken bytes are freed");
        assert!(!outbox.push(None, "x".into()));
        assert!(matches!(
            outbox.next(),
            Next::Close(CloseReason::SlowConsumer)
        ));
    }
}
