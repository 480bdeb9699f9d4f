//! Events: the seven types and their severities, per-tenant ids, and the envelope a publisher
//! drafts before the engine assigns its id.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::rfc3339_millis;

/// The seven event types (docs/PROTOCOL.md, event types), ordered as documented.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
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
    /// Every event type, in the documented order.
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

    /// The severity the protocol fixes for this type, whoever publishes.
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

/// Error for an event type name that the protocol does not list.
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

/// Event severity, as shown to users; ordered `Info < Warning < Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
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

    /// What a publisher asked for, as a hex SHA-256 of the type and the data (objects' keys in
    /// sorted order): an idempotency key may be reused only for the same request.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        hash.update(self.event_type.as_str().as_bytes());
        hash.update(b"\n");
        // A map of JSON values always serializes.
        hash.update(serde_json::to_vec(&self.data).unwrap_or_default());
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The envelope JSON split around the id: `prefix + id + suffix` is the full envelope, with
    /// `id` as the first field (the documented field order). `traceparent` (W3C trace context, only
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
