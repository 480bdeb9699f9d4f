//! One session, on either transport: authentication outcome, `connected`, the event outbox,
//! client messages, heartbeat, live token expiry and in-band refresh, and the close.
//!
//! Large because a session's whole life is one state machine, kept in one place on purpose:
//! its futures are shaped for memory (see [`run`]) and splitting them across modules would
//! hide that.
//!
//! One task per connection, one timer (the earlier of the next ping and the token's expiry):
//! fewer allocations per connection than a reader/writer pair with separate intervals.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::hub::Membership;
use super::node::{ConnectionGuard, Node};
use super::outbox::{Outbox, QueueLimits};
use super::rate::TokenBucket;
use super::recovery::resync_reason;
use super::transport::{Incoming, Transport};
use super::wire::Out;
use crate::auth::{AuthError, Claims};
use crate::engine::{History, Position};
use crate::metrics;
use crate::notifications::{EventFilter, EventMeta};
use crate::protocol::{ClientMessage, CloseReason, EventId, ResyncReason, ServerMessage, now_ms};

/// Events read from the history at a time during a resume.
const REPLAY_PAGE: usize = 100;

/// How long the server's last frame, and then the client's part of the close, may take: a peer
/// that never reads costs the node at most this long.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Everything the route learned before the session starts.
pub struct Handshake {
    /// Verified tenant and claims, or why the token was refused.
    pub auth: Result<(String, Claims), AuthError>,
    /// Set when the node refuses the connection before authentication: at its connection
    /// limit (1013) or draining (1001).
    pub refuse: Option<CloseReason>,
    /// Decrements the node's connection count when the session ends; `None` for a
    /// connection that is refused (it never counts).
    pub guard: Option<ConnectionGuard>,
    /// Resume position the client asked for (`lastEventId`), unparsed.
    pub last_event_id: Option<String>,
    /// What the client asked to receive (`types`, `minSeverity`, `modules`), if it narrowed it.
    pub filter: Option<Arc<crate::notifications::EventFilter>>,
}

/// Runs a session to its end.
///
/// Shaped for memory, since every idle connection carries this future: the opening (refusal,
/// authentication, subscription, `connected` and the resume replay) is a boxed, transient
/// future, and what it hands on ([`Live`]) is moved, not copied, into the session's own future.
/// An `async fn` taking the socket and awaiting both phases keeps a slot for its arguments
/// beside each phase's state (rustc does not overlap them): that layout cost about 0.5 KiB more
/// per connection (BENCHMARKS.md). What only the opening needs (the resume position, the start
/// position, the filter for the replay) stays in the opening's future for the same reason.
pub fn run<W: Transport + 'static>(
    socket: W,
    node: Arc<Node>,
    handshake: Handshake,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    use futures_util::FutureExt;
    use futures_util::future::Either;
    Box::pin(open(socket, node, handshake)).then(|opened| match opened {
        Some((live, greeted)) => Either::Left(live.run(greeted)),
        None => Either::Right(std::future::ready(())),
    })
}

/// What an opened session owns for its life.
struct Live<W> {
    socket: W,
    node: Arc<Node>,
    membership: Membership,
    /// Token `exp`, Unix seconds.
    expires_at: u64,
    span: SessionSpan,
    _guard: Option<ConnectionGuard>,
}

/// Refuses, authenticates, subscribes and greets; `None` when the connection was closed
/// instead. With the session comes whether the greeting reached the client.
async fn open<W: Transport>(
    mut socket: W,
    node: Arc<Node>,
    handshake: Handshake,
) -> Option<(Live<W>, bool)> {
    let kind = W::KIND;
    if let Some(reason) = handshake.refuse {
        metrics::closed(kind.label(), Some(reason));
        refuse(&mut socket, reason).await;
        return None;
    }
    let (tenant, claims) = match handshake.auth {
        Ok(ok) => ok,
        Err(error) => {
            tracing::info!(reason = error.label(), "connection refused");
            metrics::auth_failed(error.label());
            metrics::closed(kind.label(), Some(error.close_reason()));
            refuse(&mut socket, error.close_reason()).await;
            return None;
        }
    };
    let filter = handshake.filter;
    let joined = node
        .hub
        .join(&tenant, claims.user.as_deref(), filter.clone())
        .await;
    match joined {
        Ok((membership, start)) => {
            let (wire, head) = socket.wire();
            membership.outbox.attach(wire, head);
            // Paired with `session_ended` in `Live::run`, whatever happens in between.
            metrics::session_opened(kind.label());
            let connection = node.next_connection_id();
            let mut live = Live {
                socket,
                node,
                membership,
                expires_at: claims.expires_at,
                span: SessionSpan::new(connection),
                _guard: handshake.guard,
            };
            if crate::telemetry::exporting() {
                // Made at once while traces are exported, so the exported span covers the
                // whole connection.
                live.span();
            }
            let greeting = Greeting {
                start,
                resume: handshake.last_event_id.as_deref(),
                filter: filter.as_deref(),
            };
            let greeted = live.session().greet(greeting).await;
            Some((live, greeted))
        }
        Err(error) => {
            tracing::warn!(%tenant, %error, "subscription failed; asking the client to retry");
            metrics::closed(kind.label(), Some(CloseReason::TryAgainLater));
            refuse(&mut socket, CloseReason::TryAgainLater).await;
            None
        }
    }
}

/// Closes a connection that never became a session (it has no outbox of its own yet).
async fn refuse<W: Transport>(socket: &mut W, reason: CloseReason) {
    let outbox = Outbox::new(QueueLimits::messages(1));
    let (wire, head) = socket.wire();
    outbox.attach(wire, head);
    hang_up(socket, &outbox, reason.into()).await;
}

/// The server's last frame, the client's part of the close, then the end of the connection.
async fn hang_up<W: Transport>(socket: &mut W, outbox: &Outbox, last: Out) {
    outbox.finish(last, CLOSE_GRACE).await;
    let _ = tokio::time::timeout(CLOSE_GRACE, socket.closed()).await;
    outbox.shutdown();
}

/// The session's log span, made when first needed: an idle session that logs nothing would
/// otherwise hold one for its whole life (0.4 KiB per connection with the JSON formatter's
/// fields, BENCHMARKS.md). Boxed, and without the tenant and node it names (the caller passes
/// them): every session carries this, most never use it.
struct SessionSpan {
    /// This connection's number on the node; its id is `<node>-<number>`.
    connection: u64,
    span: std::sync::OnceLock<Box<tracing::Span>>,
}

impl SessionSpan {
    fn new(connection: u64) -> Self {
        Self {
            connection,
            span: std::sync::OnceLock::new(),
        }
    }

    /// `<node>-<number>`, as in `connected` and the logs.
    fn connection_id(&self, node: &str) -> String {
        format!("{node}-{}", self.connection)
    }

    fn get(&self, tenant: &str, node: &str) -> &tracing::Span {
        self.span.get_or_init(|| {
            Box::new(tracing::info_span!(
                "session",
                tenant,
                node,
                connection = %self.connection_id(node)
            ))
        })
    }
}

/// A log event inside the session's span (`$session.span()`), which is made only if the event
/// is enabled.
macro_rules! session_event {
    ($session:expr, $level:ident, $($arg:tt)+) => {
        if tracing::enabled!(tracing::Level::$level) {
            $session
                .span()
                .in_scope(|| tracing::event!(tracing::Level::$level, $($arg)+));
        }
    };
}

impl<W: Transport> Live<W> {
    /// The session's log span (made on first use).
    fn span(&self) -> &tracing::Span {
        self.span
            .get(self.membership.tenant(), &self.node.settings.node_id)
    }

    /// The session's working view of this state.
    fn session(&mut self) -> Session<'_, W> {
        Session {
            socket: &mut self.socket,
            node: &self.node,
            membership: &self.membership,
            span: &self.span,
            expires_at: self.expires_at,
        }
    }

    /// Serves the connection (when `greeted`: `connected` and the replay reached the client),
    /// leaves the hub and closes. Not an `async fn`: that would move `self` into a second slot
    /// of the future (its parameters are rebound as locals), and this future lives as long as
    /// the connection.
    #[allow(clippy::manual_async_fn)] // deliberately not `async fn`: see above
    fn run(mut self, greeted: bool) -> impl std::future::Future<Output = ()> + Send {
        async move {
            let reason = match greeted {
                true => self.session().serve().await,
                false => None,
            };
            self.node.hub.leave(&self.membership);
            metrics::session_ended(W::KIND.label());
            metrics::closed(W::KIND.label(), reason);
            let last = match reason {
                Some(reason) => {
                    session_event!(self, INFO, reason = reason.label(), "closing session");
                    Some(Out::from(reason))
                }
                None => {
                    session_event!(self, DEBUG, "session ended by the client");
                    self.socket.peer_close()
                }
            };
            if let Some(last) = last {
                let closing = Box::pin(hang_up(&mut self.socket, &self.membership.outbox, last));
                closing.await;
            }
            // Named so that the block captures all of `self`: it captures only the fields it
            // mentions, and the connection guard must live as long as the session.
            drop(self);
        }
    }
}

/// What the greeting needs and the session's life does not.
struct Greeting<'a> {
    /// The tenant's position when the outbox joined (see [`crate::gateway::hub::Hub::join`]).
    start: Option<EventId>,
    /// Resume position the client asked for (`lastEventId`), unparsed.
    resume: Option<&'a str>,
    /// The session's filter, applied to the replay as the fan-out applies it to live events.
    filter: Option<&'a EventFilter>,
}

struct Session<'a, W> {
    socket: &'a mut W,
    node: &'a Node,
    membership: &'a Membership,
    span: &'a SessionSpan,
    /// Token `exp`, Unix seconds.
    expires_at: u64,
}

impl<W: Transport> Session<'_, W> {
    /// The session's log span (made on first use).
    fn span(&self) -> &tracing::Span {
        self.span
            .get(self.membership.tenant(), &self.node.settings.node_id)
    }

    /// Serves until the connection must close; `Some(reason)` when the server closes it.
    /// (This and `send` return `async move` blocks rather than being `async fn`s, which would
    /// store their arguments twice in futures that every session carries.)
    #[allow(clippy::manual_async_fn)] // deliberately not `async fn`: see above
    fn serve(mut self) -> impl Future<Output = Option<CloseReason>> {
        async move {
            let ping_every = self.node.settings.ping_interval;
            let mut last_heard = Instant::now();
            let rate = self.node.settings.client_rate;
            let mut bucket = TokenBucket::new(rate, last_heard);
            let mut next_ping = last_heard + ping_every;
            let mut expiry = self.expiry_deadline();
            let timer = tokio::time::sleep_until(next_ping.min(expiry));
            tokio::pin!(timer);
            let outbox: Arc<_> = self.membership.outbox.clone();
            // From here on the fan-out writes events to the socket itself while nothing waits
            // in the queue; what queued up during the greeting and replay goes first.
            outbox.go_live();
            if !outbox.flush(ping_every).await {
                return outbox.close_reason();
            }

            loop {
                tokio::select! {
                    biased;
                    _ = outbox.notified() => {
                        // A close request goes before queued events, which are dropped.
                        if let Some(reason) = outbox.close_reason() {
                            return Some(reason);
                        }
                        if !outbox.flush(ping_every).await {
                            // A write given up (stalled a whole ping interval) while the queue
                            // overflowed is a slow consumer, not a client that left. The stalled
                            // write is waited for rather than abandoned at the overflow: a
                            // client that reads again within the interval still gets the 1013
                            // close frame.
                            return outbox.close_reason();
                        }
                    },
                    incoming = self.socket.receive() => {
                        last_heard = Instant::now();
                        // Every frame counts, pings included: each costs the node work.
                        if !matches!(incoming, Incoming::Gone | Incoming::Violation(_))
                            && !bucket.take(rate, last_heard)
                        {
                            return Some(CloseReason::RateLimited);
                        }
                        match incoming {
                            Incoming::Gone => return None,
                            Incoming::Violation(reason) => return Some(reason),
                            Incoming::Ping(payload) => {
                                if !self.send(Out::Pong(payload)).await {
                                    // Gone, or a queue that overflowed behind a stalled reader.
                                    return outbox.close_reason();
                                }
                            }
                            Incoming::Text(text) => {
                                // Boxed: client frames are rare, and the handler's state would otherwise be
                                // carried by every idle session.
                                let handling = Box::pin(self.on_text(&text));
                                match handling.await {
                                    Ok(Some(new_exp)) => {
                                        self.expires_at = new_exp;
                                        expiry = self.expiry_deadline();
                                        timer.as_mut().reset(next_ping.min(expiry));
                                    }
                                    Ok(None) => {}
                                    Err(reason) => return reason,
                                }
                            }
                            Incoming::Binary => {
                                // Boxed: its 256-byte state was the largest of this loop's,
                                // carried by every idle session for a frame clients rarely send.
                                let refusing = Box::pin(self.send_error("binary frames are not supported; send JSON text"));
                                if !refusing.await {
                                    return None;
                                }
                            }
                            Incoming::Alive => {}
                        }
                    }
                    _ = &mut timer => {
                        let now = Instant::now();
                        if now >= expiry {
                            return Some(CloseReason::TokenExpired);
                        }
                        if now >= next_ping {
                            if W::ANSWERS_HEARTBEATS && now.duration_since(last_heard) >= ping_every * 2 {
                                session_event!(self, INFO, "peer silent for two ping intervals; dropping");
                                return None;
                            }
                            if !self.send(Out::Heartbeat).await {
                                return outbox.close_reason();
                            }
                            next_ping = now + ping_every;
                        }
                        timer.as_mut().reset(next_ping.min(expiry));
                    }
                }
            }
        }
    }

    /// For a token that names a user: applies the user's stored preferences to this session and
    /// returns the unread count for `connected`. Read after joining, so a preference change
    /// made from then on reaches the session either way (the hub keeps the newer version).
    async fn user_summary(&mut self) -> Option<u64> {
        let user = self.node.hub.user(self.membership)?;
        let tenant = self.membership.tenant();
        match self.node.notifications.user_summary(tenant, &user).await {
            Ok(summary) => {
                if let Some(preferences) = summary.preferences {
                    self.node
                        .hub
                        .set_preferences(self.membership, Arc::new(preferences));
                }
                Some(summary.unread)
            }
            Err(error) => {
                session_event!(self, WARN, %error, "unread count unavailable at connect");
                None
            }
        }
    }

    /// Sends `connected`, then replays the history after the resume position; false when the
    /// socket failed.
    async fn greet(&mut self, greeting: Greeting<'_>) -> bool {
        let unread = self.user_summary().await;
        // A fresh session's stream starts after the tenant's current position: the client gets
        // it in `connected`, so it can resume exactly even before its first event.
        let outbox = &self.membership.outbox;
        if greeting.resume.is_none() {
            // Read when the outbox joined when possible: a position read now could already
            // include an event that is waiting in the outbox, which would then be skipped.
            let start = greeting
                .start
                .or_else(|| self.node.hub.position(self.membership.tenant()));
            if let Some(start) = start {
                outbox.mark_sent(start);
            }
        }
        let position = outbox.last_sent().map(|id| id.to_string());
        let connected = ServerMessage::Connected {
            tenant_id: self.membership.tenant(),
            connection_id: &self.span.connection_id(&self.node.settings.node_id),
            node: &self.node.settings.node_id,
            last_event_id: position,
            unread_count: unread,
        };
        if !self
            .send(Out::Message(None, connected.to_json().into()))
            .await
        {
            return false;
        }
        session_event!(self, DEBUG, "session connected");
        // The subscription is in place and the outbox is collecting live events, so replaying
        // the history now leaves no gap; the outbox drops what both paths carry.
        match greeting.resume {
            Some(resume) => self.replay(resume, greeting.filter).await,
            None => true,
        }
    }

    /// Sends the events after `resume` from the history, or `resync_required` when that is not
    /// possible. False when the socket failed. The history is read in pages of
    /// [`REPLAY_PAGE`] events, so a resume from far back holds one page at a time, and a reader
    /// that does not keep up is dropped by `send` long before the whole history is read.
    /// `filter`: the session's, applied as the fan-out applies it.
    async fn replay(&mut self, resume: &str, filter: Option<&EventFilter>) -> bool {
        let tenant = self.membership.tenant();
        let mut after: EventId = match resume.parse() {
            Ok(id) => id,
            Err(_) => return self.resync(ResyncReason::Malformed).await,
        };
        // The client's id must be retained; the following pages continue by id order.
        let mut position = Position::Exact;
        let mut replayed = 0;
        // What the live path would let through: the user's preferences and the connection's
        // filter (read once; a change during the replay applies to live events).
        let prefs = self.node.hub.preferences(self.membership);
        loop {
            // A resume from a recent event is served from the node's window when it covers it
            // (in a stampede, most of a tenant's clients resume from the same event).
            let recent = match position {
                Position::Exact => self.node.hub.recent_after(tenant, after),
                Position::ByOrder => None,
            };
            let (page, complete) = match recent {
                Some(events) => {
                    metrics::history_window_resume();
                    (events, true)
                }
                None => {
                    let page = match self
                        .node
                        .broker
                        .history_page(tenant, Some(after), position, REPLAY_PAGE)
                        .await
                    {
                        Ok(History::After(events)) => events,
                        Ok(other) if position == Position::Exact => {
                            return match resync_reason(&other) {
                                Some(reason) => self.resync(reason).await,
                                None => true,
                            };
                        }
                        // Trimmed (or lost) between two pages: events may be missing.
                        Ok(_) => return self.resync(ResyncReason::EventsMissed).await,
                        Err(error) => {
                            session_event!(self, WARN, %error, "history unavailable for resume");
                            return self.resync(ResyncReason::HistoryUnavailable).await;
                        }
                    };
                    let complete = page.len() < REPLAY_PAGE;
                    if position == Position::Exact {
                        self.node
                            .hub
                            .remember_history(tenant, after, &page, complete);
                    }
                    (page, complete)
                }
            };
            if position == Position::Exact {
                metrics::history_replay("replayed");
                self.membership.outbox.mark_sent(after);
            }
            for (id, payload) in page {
                let meta = EventMeta::read(&payload);
                let wanted = prefs
                    .as_ref()
                    .is_none_or(|p| p.preferences.allows(meta.as_ref()))
                    && filter.is_none_or(|f| f.allows(meta.as_ref()));
                if wanted && !self.send(Out::Message(Some(id), payload)).await {
                    return false;
                }
                self.membership.outbox.mark_sent(id);
                after = id;
                replayed += 1;
            }
            if complete {
                session_event!(self, DEBUG, replayed, "resumed");
                return true;
            }
            position = Position::ByOrder;
        }
    }

    async fn resync(&mut self, reason: ResyncReason) -> bool {
        session_event!(self, DEBUG, reason = reason.text(), "resync required");
        metrics::history_replay("resync");
        self.send(Out::Message(None, reason.message())).await
    }

    /// When the token stops being valid on this connection: `exp` plus the leeway.
    fn expiry_deadline(&self) -> Instant {
        let deadline_ms = (self.expires_at + self.node.verifier.leeway_secs()) * 1000;
        let left = deadline_ms.saturating_sub(now_ms());
        Instant::now() + Duration::from_millis(left)
    }

    /// Handles a client text frame. `Ok(Some(exp))` after a successful refresh; `Err` when the
    /// connection must end (`Err(None)`: the socket failed).
    async fn on_text(&mut self, text: &str) -> Result<Option<u64>, Option<CloseReason>> {
        let message = match serde_json::from_str::<ClientMessage>(text) {
            Ok(m) => m,
            Err(error) => {
                let message = format!("malformed or unknown message: {error}");
                return if self.send_error(&message).await {
                    Ok(None)
                } else {
                    Err(None)
                };
            }
        };
        match message {
            ClientMessage::Ping => {
                let pong = ServerMessage::Pong {
                    timestamp: now_ms(),
                }
                .to_json();
                if self.send(Out::Message(None, pong.into())).await {
                    Ok(None)
                } else {
                    Err(None)
                }
            }
            ClientMessage::Auth { token } => {
                let (tenant, claims) =
                    self.node
                        .verifier
                        .verify_tenant(&token)
                        .await
                        .map_err(|e| {
                            metrics::auth_failed(e.label());
                            Some(e.close_reason())
                        })?;
                if tenant != self.membership.tenant() {
                    session_event!(self, WARN, other = %tenant, "refresh token names another tenant");
                    metrics::auth_failed("other_tenant");
                    return Err(Some(CloseReason::InvalidToken));
                }
                // A refresh cannot change who the connection is (a revocation names users).
                if !self
                    .node
                    .hub
                    .is_user(self.membership, claims.user.as_deref())
                {
                    session_event!(self, WARN, "refresh token names another user");
                    metrics::auth_failed("other_user");
                    return Err(Some(CloseReason::InvalidToken));
                }
                let ok = ServerMessage::AuthOk {
                    expires_at: claims.expires_at * 1000,
                };
                if self.send(Out::Message(None, ok.to_json().into())).await {
                    Ok(Some(claims.expires_at))
                } else {
                    Err(None)
                }
            }
        }
    }

    async fn send_error(&mut self, message: &str) -> bool {
        let error = ServerMessage::Error {
            code: "bad_request",
            message,
        };
        self.send(Out::Message(None, error.to_json().into())).await
    }

    /// Sends one frame and waits until the socket took it; false when the peer is gone or did
    /// not take it within a ping interval (a stalled reader must not pin the session forever).
    fn send(&mut self, out: Out) -> impl Future<Output = bool> + '_ {
        self.membership
            .outbox
            .send(out, self.node.settings.ping_interval)
    }
}
