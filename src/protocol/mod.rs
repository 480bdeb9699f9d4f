//! The wire contract (docs/PROTOCOL.md): client and server messages, close codes, event types and the
//! event envelope. Everything a client can observe is defined here, once.

pub mod api_error;
pub mod channel;
pub mod event;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use channel::check_channel_payload;
pub use event::{EventDraft, EventId, EventType, Severity, UnknownEventType};

/// Subprotocol the server answers when a client offers it (the browser carrier for tokens).
pub const SUBPROTOCOL: &str = "license.v1";
/// Prefix of the subprotocol entry that carries the JWT.
pub const BEARER_PREFIX: &str = "bearer.";
/// Prefix of the subprotocol entry that carries the resume position.
pub const LAST_ID_PREFIX: &str = "last.";

/// Why the server closes a connection: code, reason text, and whether the client should retry.
/// Centrifuge keeps disconnects as data in the same way (`disconnect.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No token was presented.
    MissingToken,
    /// The token failed verification (signature, algorithm, claims, tenant).
    InvalidToken,
    /// The token's `exp` passed (at connect or on a live connection).
    TokenExpired,
    /// A client frame exceeded `MAX_FRAME_BYTES`.
    MessageTooBig,
    /// The node is shutting down or draining.
    GoingAway,
    /// The node is at its connection limit.
    TryAgainLater,
    /// The client read too slowly and its bounded queue overflowed.
    SlowConsumer,
    /// An admin revoked the connection's tenant or user.
    Revoked,
    /// The client sent frames faster than its rate allows.
    RateLimited,
    /// The client broke a rule of WebSocket framing (unmasked frame, reserved bits, …).
    ProtocolError,
    /// The client sent a text message that is not UTF-8.
    InvalidText,
}

impl CloseReason {
    /// WebSocket close code (RFC 6455 §7.4).
    pub fn code(self) -> u16 {
        match self {
            Self::MissingToken
            | Self::InvalidToken
            | Self::TokenExpired
            | Self::Revoked
            | Self::RateLimited => 1008,
            Self::MessageTooBig => 1009,
            Self::GoingAway => 1001,
            Self::ProtocolError => 1002,
            Self::InvalidText => 1007,
            Self::TryAgainLater | Self::SlowConsumer => 1013,
        }
    }

    /// Close reason text, exactly as docs/PROTOCOL.md lists it.
    pub fn text(self) -> &'static str {
        match self {
            Self::MissingToken => "missing token",
            Self::InvalidToken => "invalid token",
            Self::TokenExpired => "token expired",
            Self::MessageTooBig => "message too big",
            Self::GoingAway => "going away",
            Self::TryAgainLater => "try again later",
            Self::SlowConsumer => "slow consumer",
            Self::Revoked => "revoked",
            Self::RateLimited => "rate limited",
            Self::ProtocolError => "protocol error",
            Self::InvalidText => "invalid utf-8",
        }
    }

    /// Short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::InvalidToken => "invalid_token",
            Self::TokenExpired => "token_expired",
            Self::MessageTooBig => "message_too_big",
            Self::GoingAway => "going_away",
            Self::TryAgainLater => "try_again_later",
            Self::SlowConsumer => "slow_consumer",
            Self::Revoked => "revoked",
            Self::RateLimited => "rate_limited",
            Self::ProtocolError => "protocol_error",
            Self::InvalidText => "invalid_text",
        }
    }
}

/// Shared, immutable UTF-8 bytes of one serialized message (an event envelope or a control
/// message). A clone is a reference count: an event is serialized once and every recipient
/// shares the buffer, which the fan-out writes to each socket as it is (`gateway::wire`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload(axum::extract::ws::Utf8Bytes);

impl Payload {
    /// A payload of static text.
    pub const fn from_static(text: &'static str) -> Self {
        Self(axum::extract::ws::Utf8Bytes::from_static(text))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl From<String> for Payload {
    fn from(text: String) -> Self {
        Self(text.into())
    }
}

impl From<&str> for Payload {
    fn from(text: &str) -> Self {
        Self(text.into())
    }
}

impl TryFrom<bytes::Bytes> for Payload {
    type Error = std::str::Utf8Error;
    /// Checks the bytes are UTF-8 (once, when they arrive from a channel).
    fn try_from(bytes: bytes::Bytes) -> Result<Self, Self::Error> {
        axum::extract::ws::Utf8Bytes::try_from(bytes).map(Self)
    }
}

/// Why a client must refetch state instead of resuming: the `reason` of `resync_required`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncReason {
    /// The tenant's history is empty (never written, expired, or lost).
    HistoryEmpty,
    /// `lastEventId` is older than the oldest retained event.
    TooOld,
    /// `lastEventId` is newer than the newest event.
    TooNew,
    /// `lastEventId` lies within the history but names none of its events.
    NotInHistory,
    /// `lastEventId` is not of the `<ms>-<seq>` form.
    Malformed,
    /// The history could not be read.
    HistoryUnavailable,
    /// The node lost events it cannot recover (a gap fill found the history trimmed or lost).
    EventsMissed,
}

impl ResyncReason {
    /// The reason text clients see.
    pub fn text(self) -> &'static str {
        match self {
            Self::HistoryEmpty => "history is empty",
            Self::TooOld => "lastEventId is older than the oldest retained event",
            Self::TooNew => "lastEventId is newer than the newest event",
            Self::NotInHistory => "lastEventId is not in the history",
            Self::Malformed => "lastEventId is malformed",
            Self::HistoryUnavailable => "history is unavailable",
            Self::EventsMissed => {
                "events may have been missed (history lost or trimmed); refetch the license"
            }
        }
    }

    /// The `resync_required` message.
    pub fn message(self) -> Payload {
        ServerMessage::ResyncRequired {
            reason: self.text(),
        }
        .to_json()
        .into()
    }
}

/// Messages a client may send. Extra fields are ignored (a newer client may add some); an
/// unknown `type` or a missing required field is an error.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Application-level ping; answered with `pong`.
    Ping,
    /// In-band token refresh.
    Auth {
        /// The fresh JWT.
        token: String,
    },
}

/// Messages the server sends besides events.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    /// First message after authentication, once the tenant's subscription is in place.
    Connected {
        /// The connection's tenant.
        #[serde(rename = "tenantId")]
        tenant_id: &'a str,
        /// Unique id of this connection.
        #[serde(rename = "connectionId")]
        connection_id: &'a str,
        /// The node serving it.
        node: &'a str,
        /// Extension: the position this connection's event stream starts after (absent when
        /// the tenant has no history yet). A client that has seen no event resumes from it.
        #[serde(rename = "lastEventId", skip_serializing_if = "Option::is_none")]
        last_event_id: Option<String>,
        /// The user's unread notifications, when the token names a user.
        #[serde(rename = "unreadCount", skip_serializing_if = "Option::is_none")]
        unread_count: Option<u64>,
    },
    /// Reply to a client `ping`.
    Pong {
        /// Server time, Unix milliseconds.
        timestamp: u64,
    },
    /// Reply to a successful in-band `auth`.
    AuthOk {
        /// The new token's expiry, Unix milliseconds.
        #[serde(rename = "expiresAt")]
        expires_at: u64,
    },
    /// The requested resume position cannot be honoured.
    ResyncRequired {
        /// Why.
        reason: &'a str,
    },
    /// A malformed or unknown client message; the connection stays open.
    Error {
        /// Machine-readable code.
        code: &'a str,
        /// Human-readable explanation.
        message: &'a str,
    },
    /// On SSE only: the server ends the stream, for the reason a WebSocket close frame would
    /// carry (the stream has no close frame).
    Close {
        /// The WebSocket close code of the reason.
        code: u16,
        /// The close reason text.
        reason: &'a str,
    },
    /// The user's read state changed (on any node); not an event.
    NotificationState {
        /// Unread notifications now.
        #[serde(rename = "unreadCount")]
        unread_count: u64,
        /// Notifications marked read or unread.
        #[serde(skip_serializing_if = "Option::is_none")]
        changed: Option<Vec<ReadFlag>>,
        /// After a read-all: everything up to this id is read.
        #[serde(rename = "readUpTo", skip_serializing_if = "Option::is_none")]
        read_up_to: Option<String>,
    },
}

/// One notification's new read flag in `notification_state`.
#[derive(Debug, Serialize)]
pub struct ReadFlag {
    /// The notification (event) id.
    pub id: String,
    /// Read now.
    pub read: bool,
}

impl ServerMessage<'_> {
    /// JSON text of the message.
    pub fn to_json(&self) -> String {
        // Enum of strings and integers: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Unix milliseconds of `t` (0 before the epoch).
pub fn unix_ms(t: OffsetDateTime) -> u64 {
    (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64
}

/// Current Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 in UTC with exactly three fractional digits, e.g. `2026-11-29T12:00:00.000Z`.
pub fn rfc3339_millis(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let t = t
        .replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap_or(t);
    let mut s = t.format(&Rfc3339).unwrap_or_default();
    // `time` drops the fraction when it is zero; the protocol shows `.000Z`.
    if !s.contains('.') {
        s.insert_str(s.len() - 1, ".000");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    #[test]
    fn event_ids_parse_order_and_advance() {
        let a: EventId = "1764417600000-0".parse().unwrap();
        let b: EventId = "1764417600000-1".parse().unwrap();
        assert!(a < b);
        assert_eq!(a.to_string(), "1764417600000-0");
        assert_eq!(
            b.next_after(1764417600000),
            "1764417600000-2".parse().unwrap()
        );
        assert_eq!(b.next_after(1764417600005).to_string(), "1764417600005-0");
        for bad in ["", "1", "1-", "-1", "a-1", "1-2-3", "+1-2", "1 -2"] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn envelope_has_id_first_and_fixed_severity() {
        let mut data = Map::new();
        data.insert("metric".into(), "users".into());
        let mut draft = EventDraft::new("acme", EventType::UsageLimitWarning, data);
        draft.timestamp = "2026-11-29T12:00:00.000Z".into();
        let json = draft.envelope_json("5-1".parse().unwrap(), None);
        assert_eq!(
            json,
            r#"{"id":"5-1","type":"usage_limit_warning","tenantId":"acme","severity":"warning","timestamp":"2026-11-29T12:00:00.000Z","data":{"metric":"users"}}"#
        );
        let traced = draft.envelope_json("5-1".parse().unwrap(), Some("00-ab-cd-01"));
        assert!(traced.ends_with(r#""data":{"metric":"users"},"traceparent":"00-ab-cd-01"}"#));
        let checked = check_channel_payload("acme", traced.as_bytes()).unwrap();
        assert_eq!(checked.traceparent.as_deref(), Some("00-ab-cd-01"));
    }

    #[test]
    fn channel_payloads_are_checked() {
        let ok = br#"{"id":"1-0","type":"license_updated","tenantId":"acme"}"#;
        assert_eq!(
            check_channel_payload("acme", ok).unwrap().id,
            "1-0".parse().unwrap()
        );
        assert!(check_channel_payload("other", ok).is_err());
        let stamped = br#"{"id":"1-0","type":"license_expired","tenantId":"acme","timestamp":"1970-01-01T00:00:01.500Z"}"#;
        assert_eq!(
            check_channel_payload("acme", stamped).unwrap().published_ms,
            Some(1500)
        );
        for bad in [
            &b"garbage"[..],
            b"[]",
            b"{\"type\":1,\"tenantId\":\"acme\"}",
            b"{\"type\":\"x\"}",
            b"\xff",
            // Another publisher's own messages: no id, an unknown type, a malformed id.
            b"{\"type\":\"license_updated\",\"tenantId\":\"acme\"}",
            b"{\"id\":\"1-0\",\"type\":\"custom\",\"tenantId\":\"acme\"}",
            b"{\"id\":\"x\",\"type\":\"license_updated\",\"tenantId\":\"acme\"}",
            // Non-UTF-8 inside a field the check does not read.
            b"{\"id\":\"1-0\",\"type\":\"license_updated\",\"tenantId\":\"acme\",\"x\":\"\xad\"}",
        ] {
            assert!(check_channel_payload("acme", bad).is_err());
        }
    }

    #[test]
    fn client_messages_parse_strictly() {
        assert!(matches!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping)
        ));
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"auth","token":"t"}"#).is_ok());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"nope"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"auth"}"#).is_err());
    }

    #[test]
    fn timestamps_have_milliseconds() {
        let t = OffsetDateTime::from_unix_timestamp(1_764_417_600).unwrap();
        assert_eq!(rfc3339_millis(t), "2025-11-29T12:00:00.000Z");
        let t = t + time::Duration::milliseconds(42);
        assert_eq!(rfc3339_millis(t), "2025-11-29T12:00:00.042Z");
    }
}
