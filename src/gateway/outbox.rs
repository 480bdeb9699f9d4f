//! A session's outgoing side, shared by the hub (the fan-out) and the session task: the bounded
//! queue, and the socket both write to. While nothing waits before it, the fan-out writes an
//! event straight to the socket under the outbox lock (a non-blocking write, never an await):
//! no task is woken and nothing is queued. Only when the socket is full, or the session has not
//! finished its greeting and replay, does an event wait in the queue for the session task.
//! Overflowing the queue closes the session with `slow consumer` (a clear close instead of
//! silent drops).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

use super::wire::{Out, Wire, Written};
use crate::protocol::{CloseReason, EventId, Payload};

/// One session's outgoing queue and socket. Starts without an allocation; bounded in messages
/// and in bytes; overflowing it closes the session.
pub struct Outbox {
    // std Mutex: held for a push, a pop or a non-blocking write, never across an await.
    state: Mutex<OutboxState>,
    notify: Notify,
    limits: QueueLimits,
    /// The socket, once the session attached it.
    wire: OnceLock<Wire>,
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

/// A message held back for later delivery: an event with its id, or a control message (`None`).
pub type Item = (Option<EventId>, Payload);

#[derive(Default)]
struct OutboxState {
    queue: VecDeque<Out>,
    /// Payload bytes in `queue`.
    bytes: usize,
    close: Option<CloseReason>,
    /// The response head (101 or the SSE head), written with the first frame.
    head: Option<Box<[u8]>>,
    /// The part of a frame the socket has not taken yet; it goes before anything else.
    rest: Vec<u8>,
    /// Whether the greeting and replay are done: until then the fan-out only queues.
    live: bool,
    /// A write failed: the connection is gone.
    broken: bool,
    /// Newest event id written (or known to the client): events not newer are not sent again.
    last_sent: Option<EventId>,
}

impl OutboxState {
    /// Whether an event with `id` was already sent (replayed, then also delivered live).
    fn already_sent(&self, out: &Out) -> bool {
        matches!(out, Out::Message(Some(id), _) if self.last_sent.is_some_and(|last| *id <= last))
    }

    /// Writes `out` now if nothing waits before it; false when it could not go (queue it).
    fn write_now(&mut self, wire: &Wire, out: &Out) -> bool {
        if !self.rest.is_empty() {
            return false;
        }
        match wire.write(self.head.as_deref(), out) {
            Ok(Written::All) => {}
            Ok(Written::Part(rest)) => self.rest = rest,
            Ok(Written::Nothing) => return false,
            Err(_) => self.broken = true,
        }
        self.head = None;
        if let Out::Message(Some(id), _) = out {
            self.last_sent = Some(*id);
        }
        true
    }
}

/// Whether everything waiting went out.
enum Flushed {
    Done,
    Blocked,
    Broken,
}

/// What a session finds in its outbox (tests look inside a queue).
#[cfg(test)]
pub enum Next {
    /// A message, with its event id when it is an event.
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
            wire: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        // A poisoned lock only means a panic elsewhere mid-push; the queue is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives the outbox its socket, and the response head to write with the first frame.
    pub fn attach(&self, wire: Wire, head: Option<Box<[u8]>>) {
        self.lock().head = head;
        let _ = self.wire.set(wire);
    }

    /// Queues `out`, or on overflow marks the session a slow consumer; false when not queued.
    fn enqueue(&self, state: &mut OutboxState, out: Out) -> bool {
        let len = out.queued_bytes();
        if state.queue.len() >= self.limits.len
            || state.bytes.saturating_add(len) > self.limits.bytes
        {
            state.close = Some(CloseReason::SlowConsumer);
            state.queue = VecDeque::new();
            return false;
        }
        state.bytes += len;
        state.queue.push_back(out);
        true
    }

    /// Delivers an event (or a server message) from the fan-out: written to the socket at once
    /// when nothing waits before it, queued for the session task otherwise; on overflow the
    /// session becomes a slow consumer. Returns false when it was not taken.
    pub fn push(&self, id: Option<EventId>, payload: Payload) -> bool {
        let out = Out::Message(id, payload);
        let mut state = self.lock();
        if state.close.is_some() || state.broken {
            return false;
        }
        if state.already_sent(&out) {
            return true;
        }
        if state.live
            && state.queue.is_empty()
            && let Some(wire) = self.wire.get()
            && state.write_now(wire, &out)
        {
            let wake = !state.rest.is_empty() || state.broken;
            drop(state);
            if wake {
                // The session task finishes the frame, or notices the connection is gone.
                self.notify.notify_one();
            }
            return true;
        }
        let queued = self.enqueue(&mut state, out);
        drop(state);
        self.notify.notify_one();
        queued
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

    /// The close the session was asked for, if any.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.lock().close
    }

    /// Resolves when something was queued, a write needs finishing or a close was requested
    /// since the last call.
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// Records that the client has every event up to `id` (its start or resume position, or an
    /// event the replay skipped): such events are not sent.
    pub fn mark_sent(&self, id: EventId) {
        self.lock().last_sent = Some(id);
    }

    /// The newest event id the client has.
    pub fn last_sent(&self) -> Option<EventId> {
        self.lock().last_sent
    }

    /// The greeting and replay are done: from now on the fan-out writes to the socket itself
    /// whenever nothing waits in the queue.
    pub fn go_live(&self) {
        self.lock().live = true;
    }

    /// Writes what waits, as far as the socket takes it now: the rest of a frame, then (once
    /// live) the queue. A close request stops the queue: its events are dropped.
    fn write_waiting(&self) -> Flushed {
        let Some(wire) = self.wire.get() else {
            return Flushed::Done;
        };
        let mut state = self.lock();
        loop {
            if state.broken {
                return Flushed::Broken;
            }
            if !state.rest.is_empty() {
                match wire.write_rest(&mut state.rest) {
                    Ok(true) => {}
                    Ok(false) => return Flushed::Blocked,
                    Err(_) => state.broken = true,
                }
                continue;
            }
            if !state.live || state.close.is_some() {
                return Flushed::Done;
            }
            let Some(out) = state.queue.pop_front() else {
                // Give back the memory of a burst once it has drained.
                if state.queue.capacity() > 64 {
                    state.queue = VecDeque::new();
                }
                return Flushed::Done;
            };
            state.bytes -= out.queued_bytes();
            if state.already_sent(&out) {
                continue;
            }
            if !state.write_now(wire, &out) {
                state.bytes += out.queued_bytes();
                state.queue.push_front(out);
                return Flushed::Blocked;
            }
        }
    }

    /// Writes everything waiting, waiting for the socket when it is full; false when the
    /// connection failed or took nothing for `stall` (a stalled reader must not pin the
    /// session forever).
    #[allow(clippy::manual_async_fn)] // not `async fn`: it would store its arguments twice
    pub fn flush(&self, stall: Duration) -> impl Future<Output = bool> + Send + '_ {
        async move {
            // Fast path: a reader that keeps up takes everything at once, with no timer armed.
            match self.write_waiting() {
                Flushed::Done => return true,
                Flushed::Broken => return false,
                Flushed::Blocked => {}
            }
            let Some(wire) = self.wire.get() else {
                return true;
            };
            // Boxed: idle sessions do not carry the waiting state.
            Box::pin(async move {
                loop {
                    match tokio::time::timeout(stall, wire.writable()).await {
                        Ok(Ok(())) => {}
                        _ => return false,
                    }
                    match self.write_waiting() {
                        Flushed::Done => return true,
                        Flushed::Broken => return false,
                        Flushed::Blocked => {}
                    }
                }
            })
            .await
        }
    }

    /// Sends one of the session's own frames and waits until it is written. Before the session
    /// is live its frames (greeting, replay) go straight after what is already on the wire and
    /// never into the queue, where live events wait for them; when the socket is full it waits
    /// for room. Once live, a frame goes in order behind whatever waits.
    #[allow(clippy::manual_async_fn)] // not `async fn`: it would store its arguments twice
    pub fn send(&self, out: Out, stall: Duration) -> impl Future<Output = bool> + Send + '_ {
        async move {
            let Some(wire) = self.wire.get() else {
                return true;
            };
            loop {
                let rest_first = {
                    let mut state = self.lock();
                    if state.broken {
                        return false;
                    }
                    if state.already_sent(&out) {
                        return true;
                    }
                    if state.live && (!state.queue.is_empty() || !state.rest.is_empty()) {
                        if !self.enqueue(&mut state, out) {
                            return false;
                        }
                        break;
                    }
                    if state.write_now(wire, &out) {
                        break;
                    }
                    !state.rest.is_empty()
                };
                let room = if rest_first {
                    self.flush(stall).await
                } else {
                    // Boxed: idle sessions do not carry the waiting state.
                    let writable = Box::pin(tokio::time::timeout(stall, wire.writable()));
                    matches!(writable.await, Ok(Ok(())))
                };
                if !room {
                    return false;
                }
            }
            self.flush(stall).await
        }
    }

    /// The session's last frame: drops what is queued, finishes a frame the socket took part
    /// of, and writes `out` (a close frame or message), all within `grace`.
    pub async fn finish(&self, out: Out, grace: Duration) {
        {
            let mut state = self.lock();
            state.queue = VecDeque::new();
            state.bytes = 0;
            state.live = false;
        }
        let _ = tokio::time::timeout(grace, async {
            if !self.flush(grace).await {
                return;
            }
            self.send(out, grace).await;
        })
        .await;
    }

    /// Ends the socket's write side.
    pub fn shutdown(&self) {
        if let Some(wire) = self.wire.get() {
            wire.shutdown();
        }
    }

    /// Takes the next queued item (tests look inside a queue that has no socket).
    #[cfg(test)]
    pub fn next(&self) -> Next {
        let mut state = self.lock();
        if let Some(reason) = state.close {
            return Next::Close(reason);
        }
        match state.queue.pop_front() {
            Some(out) => {
                state.bytes -= out.queued_bytes();
                match out {
                    Out::Message(id, payload) => Next::Event(id, payload),
                    _ => Next::Event(None, Payload::from_static("")),
                }
            }
            None => Next::Empty,
        }
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
