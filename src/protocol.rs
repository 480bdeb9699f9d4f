//! The wire contract (SPEC §2–3): client and server messages, close codes, event types and the
//! event envelope. Everything a client can observe is defined here, once.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

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
}

impl CloseReason {
    /// WebSocket close code (RFC 6455 §7.4).
    pub fn code(self) -> u16 {
        match self {
            Self::MissingToken | Self::InvalidToken | Self::TokenExpired => 1008,
            Self::MessageTooBig => 1009,
            Self::GoingAway => 1001,
            Self::TryAgainLater | Self::SlowConsumer => 1013,
        }
    }

    /// Close reason text, exactly as SPEC §2 lists it.
    pub fn text(self) -> &'static str {
        match self {
            Self::MissingToken => "missing token",
            Self::InvalidToken => "invalid token",
            Self::TokenExpired => "token expired",
            Self::MessageTooBig => "message too big",
            Self::GoingAway => "going away",
            Self::TryAgainLater => "try again later",
            Self::SlowConsumer => "slow consumer",
        }
    }

    /// Whether a well-behaved client reconnects after this close.
    pub fn reconnect(self) -> bool {
        !matches!(self, Self::MissingToken | Self::InvalidToken)
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
        }
    }
}

/// The seven event types of SPEC §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// Expiry within a warning threshold.
    LicenseExpiring,
    /// The license or a module passed its expiry.
    LicenseExpired,
    /// Usage reached the warning percentage of a limit.
    UsageLimitWarning,
    /// Usage went over a limit.
    UsageLimitExceeded,
    /// A module became enabled.
    ModuleActivated,
    /// A module became disabled or expired.
    ModuleDeactivated,
    /// The license document changed.
    LicenseUpdated,
}

impl EventType {
    /// Every event type, in SPEC order.
    pub const ALL: [EventType; 7] = [
        Self::LicenseExpiring,
        Self::LicenseExpired,
        Self::UsageLimitWarning,
        Self::UsageLimitExceeded,
        Self::ModuleActivated,
        Self::ModuleDeactivated,
        Self::LicenseUpdated,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LicenseExpiring => "license_expiring",
            Self::LicenseExpired => "license_expired",
            Self::UsageLimitWarning => "usage_limit_warning",
            Self::UsageLimitExceeded => "usage_limit_exceeded",
            Self::ModuleActivated => "module_activated",
            Self::ModuleDeactivated => "module_deactivated",
            Self::LicenseUpdated => "license_updated",
        }
    }

    /// The severity SPEC §3 fixes for this type, whoever publishes.
    pub fn severity(self) -> Severity {
        match self {
            Self::LicenseExpiring | Self::UsageLimitWarning | Self::ModuleDeactivated => {
                Severity::Warning
            }
            Self::LicenseExpired | Self::UsageLimitExceeded => Severity::Error,
            Self::ModuleActivated | Self::LicenseUpdated => Severity::Info,
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for an event type name that SPEC §3 does not list.
#[derive(Debug, thiserror::Error)]
#[error("unknown event type {0:?} (expected one of: {list})", list = EventType::ALL.map(EventType::as_str).join(", "))]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

/// Event severity, as shown to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Informational.
    Info,
    /// Needs attention.
    Warning,
    /// Something stopped working.
    Error,
}

/// A per-tenant event id, `<ms>-<seq>` like a Redis stream id; ordered by `(ms, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    /// Milliseconds since the Unix epoch.
    pub ms: u64,
    /// Sequence within that millisecond.
    pub seq: u64,
}

impl EventId {
    /// The smallest id that sorts after `self`, given the clock reads `now_ms`.
    pub fn next_after(self, now_ms: u64) -> EventId {
        if now_ms > self.ms {
            EventId { ms: now_ms, seq: 0 }
        } else {
            EventId {
                ms: self.ms,
                seq: self.seq + 1,
            }
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Error for a string that is not `<ms>-<seq>`.
#[derive(Debug, thiserror::Error)]
#[error("malformed event id (expected <ms>-<seq>)")]
pub struct MalformedEventId;

impl FromStr for EventId {
    type Err = MalformedEventId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = s.split_once('-').ok_or(MalformedEventId)?;
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(MalformedEventId);
        }
        Ok(EventId {
            ms: ms.parse().map_err(|_| MalformedEventId)?,
            seq: seq.parse().map_err(|_| MalformedEventId)?,
        })
    }
}

/// An event before it has an id: what a publisher asks for. The envelope is serialized once from
/// it, split around the id so the engine can splice in the id it assigns atomically.
#[derive(Debug, Clone)]
pub struct EventDraft {
    /// Tenant the event belongs to.
    pub tenant: String,
    /// Event type; the severity follows from it.
    pub event_type: EventType,
    /// Type-specific fields.
    pub data: Map<String, Value>,
    /// Publish time, RFC 3339 with milliseconds.
    pub timestamp: String,
}

impl EventDraft {
    /// A draft stamped with the current time.
    pub fn new(tenant: impl Into<String>, event_type: EventType, data: Map<String, Value>) -> Self {
        Self {
            tenant: tenant.into(),
            event_type,
            data,
            timestamp: rfc3339_millis(OffsetDateTime::now_utc()),
        }
    }

    /// The envelope JSON split around the id: `prefix + id + suffix` is the full envelope, with
    /// `id` as the first field (SPEC §3 field order). `traceparent` (W3C trace context, only
    /// while traces are exported) becomes a last field, an extension clients may ignore.
    pub fn envelope_parts(&self, traceparent: Option<&str>) -> (String, String) {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Rest<'a> {
            #[serde(rename = "type")]
            event_type: EventType,
            tenant_id: &'a str,
            severity: Severity,
            timestamp: &'a str,
            data: &'a Map<String, Value>,
            #[serde(skip_serializing_if = "Option::is_none", rename = "traceparent")]
            traceparent: Option<&'a str>,
        }
        let rest = serde_json::to_string(&Rest {
            event_type: self.event_type,
            tenant_id: &self.tenant,
            severity: self.event_type.severity(),
            timestamp: &self.timestamp,
            data: &self.data,
            traceparent,
        })
        // A struct of strings and a JSON map cannot fail to serialize.
        .unwrap_or_else(|_| "{}".to_owned());
        // `rest` starts with `{`; the id goes in front of its first field.
        let suffix = format!("\",{}", &rest[1..]);
        ("{\"id\":\"".to_owned(), suffix)
    }

    /// The complete envelope JSON for an assigned id.
    pub fn envelope_json(&self, id: EventId, traceparent: Option<&str>) -> String {
        let (prefix, suffix) = self.envelope_parts(traceparent);
        format!("{prefix}{id}{suffix}")
    }
}

/// The fields a gateway checks on a payload from a tenant channel before forwarding it.
#[derive(Debug, Deserialize)]
pub struct ChannelProbe<'a> {
    /// The envelope id, when present (every engine-published event has one).
    #[serde(default, borrow)]
    pub id: Option<std::borrow::Cow<'a, str>>,
    /// Event type (any string: forwarding does not judge it).
    #[serde(rename = "type", borrow)]
    pub event_type: std::borrow::Cow<'a, str>,
    /// Tenant the publisher meant.
    #[serde(rename = "tenantId", borrow)]
    pub tenant_id: std::borrow::Cow<'a, str>,
    /// Publish time (for latency metrics), when present.
    #[serde(default, borrow)]
    pub timestamp: Option<std::borrow::Cow<'a, str>>,
    /// The publisher's W3C trace context, when it was tracing.
    #[serde(default, borrow)]
    pub traceparent: Option<std::borrow::Cow<'a, str>>,
}

/// What a gateway learns from a checked channel payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked<'a> {
    /// The envelope id, when it has a valid one.
    pub id: Option<EventId>,
    /// The publish timestamp in Unix milliseconds, when it has a valid one.
    pub published_ms: Option<u64>,
    /// The publisher's trace context, when present.
    pub traceparent: Option<std::borrow::Cow<'a, str>>,
}

/// Why a channel payload was dropped instead of forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ChannelPayloadError {
    /// Not a JSON object with string `type` and `tenantId`.
    #[error("not an event envelope: {0}")]
    NotEnvelope(#[from] serde_json::Error),
    /// `tenantId` names another tenant than the channel's.
    #[error("tenantId {found:?} does not match the channel's tenant")]
    WrongTenant {
        /// The tenant named in the payload.
        found: String,
    },
}

/// Checks a payload from tenant `tenant`'s channel (SPEC §2): it must be a JSON object with a
/// string `type` and a `tenantId` equal to the channel's tenant. Returns its id, when it has one.
pub fn check_channel_payload<'a>(
    tenant: &str,
    payload: &'a [u8],
) -> Result<Checked<'a>, ChannelPayloadError> {
    let probe: ChannelProbe<'_> = serde_json::from_slice(payload)?;
    if probe.tenant_id != tenant {
        return Err(ChannelPayloadError::WrongTenant {
            found: probe.tenant_id.into_owned(),
        });
    }
    let published_ms = probe
        .timestamp
        .and_then(|t| OffsetDateTime::parse(&t, &Rfc3339).ok())
        .map(unix_ms);
    Ok(Checked {
        id: probe.id.and_then(|id| id.parse().ok()),
        published_ms,
        traceparent: probe.traceparent,
    })
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
    // `time` drops the fraction when it is zero; SPEC shows `.000Z`.
    if !s.contains('.') {
        s.insert_str(s.len() - 1, ".000");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let ok = br#"{"id":"1-0","type":"x","tenantId":"acme"}"#;
        assert_eq!(
            check_channel_payload("acme", ok).unwrap().id,
            Some("1-0".parse().unwrap())
        );
        assert!(check_channel_payload("other", ok).is_err());
        let stamped = br#"{"type":"x","tenantId":"acme","timestamp":"1970-01-01T00:00:01.500Z"}"#;
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
