//! What a gateway accepts from a tenant channel: a JSON object with a string `type` and the
//! channel's own `tenantId`; anything else is dropped, never forwarded.

use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{EventId, unix_ms};

/// The fields a gateway checks on a payload from a tenant channel before forwarding it.
#[derive(Debug, Deserialize)]
pub struct ChannelProbe<'a> {
    /// The envelope id, when present (every engine-published event has one).
    #[serde(default, borrow)]
    pub id: Option<std::borrow::Cow<'a, str>>,
    /// Event type (any string: forwarding does not judge it). Never read: it is here so that
    /// a payload without a string `type` fails to parse.
    #[serde(rename = "type", borrow)]
    #[allow(dead_code)]
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

/// Checks a payload from tenant `tenant`'s channel (docs/PROTOCOL.md): it must be a JSON object with a
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
