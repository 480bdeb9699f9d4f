//! What a gateway accepts from a tenant channel: an envelope as the engine publishes it — UTF-8
//! JSON with a valid `id`, one of the seven event types and the channel's own `tenantId`.
//! Anything else (garbage, a foreign publisher's own messages) is dropped, never forwarded.

use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{EventId, unix_ms};

/// The fields a gateway checks on a payload from a tenant channel before forwarding it.
#[derive(Debug, Deserialize)]
pub struct ChannelProbe<'a> {
    /// The envelope id (every engine-published event has one).
    #[serde(borrow)]
    pub id: std::borrow::Cow<'a, str>,
    /// Event type: one of the seven. Never read: it is here so that a payload of another
    /// type fails to parse.
    #[serde(rename = "type")]
    #[allow(dead_code)]
    pub event_type: super::EventType,
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
    /// The envelope id.
    pub id: EventId,
    /// The publish timestamp in Unix milliseconds, when it has a valid one.
    pub published_ms: Option<u64>,
    /// The publisher's trace context, when present.
    pub traceparent: Option<std::borrow::Cow<'a, str>>,
}

/// Why a channel payload was dropped instead of forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ChannelPayloadError {
    /// Not a JSON object with an `id`, a known `type` and a `tenantId`.
    #[error("not an event envelope: {0}")]
    NotEnvelope(#[from] serde_json::Error),
    /// Not UTF-8 (text frames must be).
    #[error("not UTF-8")]
    NotUtf8,
    /// The `id` is not `<ms>-<seq>`.
    #[error("malformed id")]
    MalformedId,
    /// `tenantId` names another tenant than the channel's.
    #[error("tenantId {found:?} does not match the channel's tenant")]
    WrongTenant {
        /// The tenant named in the payload.
        found: String,
    },
}

/// Checks a payload from tenant `tenant`'s channel (docs/PROTOCOL.md): it must be UTF-8 JSON with
/// a valid `id`, one of the seven event types and a `tenantId` equal to the channel's tenant.
pub fn check_channel_payload<'a>(
    tenant: &str,
    payload: &'a [u8],
) -> Result<Checked<'a>, ChannelPayloadError> {
    // Checked first: serde_json does not check the strings of fields it skips.
    let text = std::str::from_utf8(payload).map_err(|_| ChannelPayloadError::NotUtf8)?;
    let probe: ChannelProbe<'_> = serde_json::from_str(text)?;
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
        id: probe
            .id
            .parse()
            .map_err(|_| ChannelPayloadError::MalformedId)?,
        published_ms,
        traceparent: probe.traceparent,
    })
}
