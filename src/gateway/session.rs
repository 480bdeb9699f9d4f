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
use super::outbox::Next;
use super::rate::TokenBucket;
use super::recovery::resync_reason;
use super::transport::{Frame, Incoming, Transport};
use crate::auth::{AuthError, Claims};
use crate::engine::{History, Position};
use crate::metrics;
use crate::notifications::EventMeta;
use crate::protocol::{ClientMessage, CloseReason, EventId, ResyncReason, ServerMessage, now_ms};

/// Events read from the history at a time during a resume.
const REPLAY_PAGE: usize = 100;

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
/// authentication, subscription) is a boxed, transient future, and what it hands on ([`Live`])
/// is moved, not copied, into the session's own future. An `async fn` taking the socket and
/// awaiting both phases keeps a slot for its arguments beside each phase's state (rustc does
/// not overlap them): that layout cost about 0.5 KiB more per connection (BENCHMARKS.md).
pub fn run<W: Transport + 'static>(
    socket: W,
    node: Arc<Node>,
    handshake: Handshake,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    use futures_util::FutureExt;
    use futures_util::future::Either;
    Box::pin(open(socket, node, handshake)).then(|opened| match opened {
        Some(live) => Either::Left(live.run()),
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
    /// Resume position the client asked for, unparsed.
    resume: Option<String>,
    _guard: Option<ConnectionGuard>,
}

/// Refuses, authenticates and subscribes; `None` when the connection was closed instead.
async fn open<W: Transport>(
    mut socket: W,
    node: Arc<Node>,
    handshake: Handshake,
) -> Option<Live<W>> {
    let kind = W::KIND;
    if let Some(reason) = handshake.refuse {
        metrics::closed(kind.label(), Some(reason));
        socket.close(reason).await;
        return None;
    }
    let (tenant, claims) = match handshake.auth {
        Ok(ok) => ok,
        Err(error) => {
            tracing::info!(reason = error.label(), "connection refused");
            metrics::auth_failed(error.label());
            metrics::closed(kind.label(), Some(error.close_reason()));
            socket.close(error.close_reason()).await;
            return None;
        }
    };
    match node
        .hub
        .join(&tenant, claims.user.as_deref(), handshake.filter)
        .await
    {
        Ok(membership) => Some(Live {
            socket,
            node,
            membership,
            expires_at: claims.expires_at,
            resume: handshake.last_event_id,
            _guard: handshake.guard,
        }),
        Err(error) => {
            tracing::warn!(%tenant, %error, "subscription failed; asking the client to retry");
            metrics::closed(kind.label(), Some(CloseReason::TryAgainLater));
            socket.close(CloseReason::TryAgainLater).await;
            None
        }
    }
}

/// The session's log span, made when first needed: an idle session that logs nothing would
/// otherwise hold one for its whole life (0.4 KiB per connection with the JSON formatter's
/// fields, BENCHMARKS.md). While traces are exported it is made at once, so the exported span
/// covers the connection.
struct SessionSpan<'a> {
    tenant: &'a str,
    node: &'a str,
    /// This connection's number on the node; its id is `<node>-<number>`.
    connection: u64,
    span: std::sync::OnceLock<tracing::Span>,
}

impl<'a> SessionSpan<'a> {
    fn new(tenant: &'a str, node: &'a str, connection: u64) -> Self {
        let span = Self {
            tenant,
            node,
            connection,
            span: std::sync::OnceLock::new(),
        };
        if crate::telemetry::exporting() {
            span.get();
        }
        span
    }

    /// `<node>-<number>`, as in `connected` and the logs.
    fn connection_id(&self) -> String {
        format!("{}-{}", self.node, self.connection)
    }

    fn get(&self) -> &tracing::Span {
        self.span.get_or_init(|| {
            tracing::info_span!(
                "session",
                tenant = self.tenant,
                node = self.node,
                connection = %self.connection_id()
            )
        })
    }
}

/// A log event inside the session's span, which is made only if the event is enabled.
macro_rules! session_event {
    ($span:expr, $level:ident, $($arg:tt)+) => {
        if tracing::enabled!(tracing::Level::$level) {
            $span
                .get()
                .in_scope(|| tracing::event!(tracing::Level::$level, $($arg)+));
        }
    };
}

impl<W: Transport> Live<W> {
    /// Serves the connection, leaves the hub and closes. Not an `async fn`: that would move
    /// `self` into a second slot of the future (its parameters are rebound as locals), and
    /// this future lives as long as the connection.
    #[allow(clippy::manual_async_fn)] // deliberately not `async fn`: see above
    fn run(mut self) -> impl std::future::Future<Output = ()> + Send {
        async move {
            // Paired with `session_ended` below, whatever happens in between.
            metrics::session_opened(W::KIND.label());
            let node = &self.node;
            let node_id = node.settings.node_id.as_str();
            // The id is formatted where it is shown, not kept for the session's life.
            let span =
                SessionSpan::new(self.membership.tenant(), node_id, node.next_connection_id());
            let session = Session {
                socket: &mut self.socket,
                node,
                membership: &self.membership,
                span: &span,
                expires_at: self.expires_at,
                last_sent: None,
            };
            let reason = session.serve(self.resume.as_deref()).await;
            node.hub.leave(&self.membership);
            metrics::session_ended(W::KIND.label());
            metrics::closed(W::KIND.label(), reason);
            if let Some(reason) = reason {
                session_event!(span, INFO, reason = reason.label(), "closing session");
                let closing = Box::pin(self.socket.close(reason));
                closing.await;
            } else {
                session_event!(span, DEBUG, "session ended by the client");
            }
            // Named so that the block captures all of `self`: it captures only the fields it
            // mentions, and the connection guard must live as long as the session.
            drop(self);
        }
    }
}

struct Session<'a, W> {
    socket: &'a mut W,
    node: &'a Node,
    membership: &'a Membership,
    span: &'a SessionSpan<'a>,
    /// Token `exp`, Unix seconds.
    expires_at: u64,
    /// Newest event id sent: live events not newer than it were already replayed.
    last_sent: Option<EventId>,
}

impl<W: Transport> Session<'_, W> {
    /// Serves until the connection must close; `Some(reason)` when the server closes it.
    /// (This and `send` return `async move` blocks rather than being `async fn`s, which would
    /// store their arguments twice in futures that every session carries.)
    #[allow(clippy::manual_async_fn)] // deliberately not `async fn`: see above
    fn serve(mut self, resume: Option<&str>) -> impl Future<Output = Option<CloseReason>> {
        async move {
            // Boxed: the greeting's state is not carried for the session's life.
            let greeting = Box::pin(self.greet(resume));
            if !greeting.await {
                return None;
            }

            let ping_every = self.node.settings.ping_interval;
            let mut last_heard = Instant::now();
            let rate = self.node.settings.client_rate;
            let mut bucket = TokenBucket::new(rate, last_heard);
            let mut next_ping = last_heard + ping_every;
            let mut expiry = self.expiry_deadline();
            let timer = tokio::time::sleep_until(next_ping.min(expiry));
            tokio::pin!(timer);
            let outbox: Arc<_> = self.membership.outbox.clone();

            loop {
                tokio::select! {
                    biased;
                    _ = outbox.notified() => loop {
                        match outbox.next() {
                            Next::Event(Some(id), _) if self.last_sent.is_some_and(|last| id <= last) => {}
                            Next::Event(id, payload) => {
                                if !self.send(Frame::Message(id, payload)).await {
                                    // A write given up (stalled a whole ping interval) while
                                    // the queue overflowed is a slow consumer, not a client
                                    // that left. The stalled write is waited for rather than
                                    // abandoned at the overflow: a client that reads again
                                    // within the interval still gets the 1013 close frame.
                                    return outbox.close_reason();
                                }
                                if id.is_some() {
                                    self.last_sent = id;
                                }
                            }
                            Next::Close(reason) => return Some(reason),
                            Next::Empty => break,
                        }
                    },
                    incoming = self.socket.receive() => {
                        last_heard = Instant::now();
                        // Every frame counts, pings included: each costs the node work.
                        if !matches!(incoming, Incoming::Gone | Incoming::TooBig)
                            && !bucket.take(rate, last_heard)
                        {
                            return Some(CloseReason::RateLimited);
                        }
                        match incoming {
                            Incoming::Gone => return None,
                            Incoming::TooBig => return Some(CloseReason::MessageTooBig),
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
                                if !self.send_error("binary frames are not supported; send JSON text").await {
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
                                session_event!(self.span, INFO, "peer silent for two ping intervals; dropping");
                                return None;
                            }
                            if !self.send(Frame::Heartbeat).await {
                                return None;
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
                session_event!(self.span, WARN, %error, "unread count unavailable at connect");
                None
            }
        }
    }

    /// Sends `connected`, then replays the history after `resume`; false when the socket failed.
    async fn greet(&mut self, resume: Option<&str>) -> bool {
        let unread = self.user_summary().await;
        // A fresh session's stream starts after the tenant's current position: the client gets
        // it in `connected`, so it can resume exactly even before its first event.
        if resume.is_none() {
            // Read when the outbox joined when possible: a position read now could already
            // include an event that is waiting in the outbox, which would then be skipped.
            self.last_sent = self
                .membership
                .start
                .or_else(|| self.node.hub.position(self.membership.tenant()));
        }
        let position = self.last_sent.map(|id| id.to_string());
        let connected = ServerMessage::Connected {
            tenant_id: self.membership.tenant(),
            connection_id: &self.span.connection_id(),
            node: &self.node.settings.node_id,
            last_event_id: position,
            unread_count: unread,
        };
        if !self
            .send(Frame::Message(None, connected.to_json().into()))
            .await
        {
            return false;
        }
        session_event!(self.span, DEBUG, "session connected");
        // The subscription is in place and the outbox is collecting live events, so replaying
        // the history now leaves no gap; `last_sent` drops what both paths carry.
        match resume {
            Some(resume) => self.replay(resume).await,
            None => true,
        }
    }

    /// Sends the events after `resume` from the history, or `resync_required` when that is not
    /// possible. False when the socket failed. The history is read in pages of
    /// [`REPLAY_PAGE`] events, so a resume from far back holds one page at a time, and a reader
    /// that does not keep up is dropped by `send` long before the whole history is read.
    async fn replay(&mut self, resume: &str) -> bool {
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
                            session_event!(self.span, WARN, %error, "history unavailable for resume");
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
                self.last_sent = Some(after);
            }
            for (id, payload) in page {
                let meta = EventMeta::read(&payload);
                let wanted = prefs
                    .as_ref()
                    .is_none_or(|p| p.preferences.allows(meta.as_ref()))
                    && self
                        .membership
                        .filter
                        .as_ref()
                        .is_none_or(|f| f.allows(meta.as_ref()));
                if wanted && !self.send(Frame::Message(Some(id), payload)).await {
                    return false;
                }
                self.last_sent = Some(id);
                after = id;
                replayed += 1;
            }
            if complete {
                session_event!(self.span, DEBUG, replayed, "resumed");
                return true;
            }
            position = Position::ByOrder;
        }
    }

    async fn resync(&mut self, reason: ResyncReason) -> bool {
        session_event!(self.span, DEBUG, reason = reason.text(), "resync required");
        metrics::history_replay("resync");
        self.send(Frame::Message(None, reason.message())).await
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
                if self.send(Frame::Message(None, pong.into())).await {
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
                    session_event!(self.span, WARN, other = %tenant, "refresh token names another tenant");
                    metrics::auth_failed("other_tenant");
                    return Err(Some(CloseReason::InvalidToken));
                }
                // A refresh cannot change who the connection is (a revocation names users).
                if !self
                    .node
                    .hub
                    .is_user(self.membership, claims.user.as_deref())
                {
                    session_event!(self.span, WARN, "refresh token names another user");
                    metrics::auth_failed("other_user");
                    return Err(Some(CloseReason::InvalidToken));
                }
                let ok = ServerMessage::AuthOk {
                    expires_at: claims.expires_at * 1000,
                };
                if self.send(Frame::Message(None, ok.to_json().into())).await {
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
        self.send(Frame::Message(None, error.to_json().into()))
            .await
    }

    /// Sends one frame; false when the peer is gone or did not take it within a ping interval
    /// (a stalled reader must not pin the session forever).
    #[allow(clippy::manual_async_fn)] // deliberately not `async fn`: see `serve`
    fn send(&mut self, frame: Frame) -> impl Future<Output = bool> {
        async move {
            let limit = self.node.settings.ping_interval;
            let mut sending = std::pin::pin!(self.socket.send(frame));
            // Fast path: a reader that keeps up takes the frame at once, with no timer armed. Only
            // a stalled one gets the timeout, boxed so that idle sessions do not carry its state.
            if let Some(sent) = futures_util::FutureExt::now_or_never(sending.as_mut()) {
                return sent;
            }
            let stalled = Box::pin(tokio::time::timeout(limit, sending));
            matches!(stalled.await, Ok(true))
        }
    }
}
