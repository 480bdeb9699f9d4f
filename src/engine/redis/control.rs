//! Control messages on a tenant's channel: `{"control":"disconnect","tenantId":"acme",
//! "userId":"u1"}`. They start with `{"control":`, which no event envelope does (an envelope
//! starts with its `id`), so telling them apart costs a prefix check per message.

use serde::{Deserialize, Serialize};

use crate::engine::Control;

/// How every control message starts.
const PREFIX: &[u8] = b"{\"control\":";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    control: String,
    #[serde(rename = "tenantId")]
    tenant_id: String,
    #[serde(rename = "userId", default, skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
}

/// The JSON of `control` for `tenant`'s channel.
pub fn encode(tenant: &str, control: &Control) -> String {
    let wire = match control {
        Control::Disconnect { user } => Wire {
            control: "disconnect".into(),
            tenant_id: tenant.into(),
            user_id: user.clone(),
        },
    };
    // Strings only: serialization cannot fail.
    serde_json::to_string(&wire).unwrap_or_default()
}

/// `None` when `payload` is not a control message (an event, or garbage for the envelope
/// check); otherwise the message, or why it cannot be used.
pub fn decode(tenant: &str, payload: &[u8]) -> Option<Result<Control, String>> {
    if !payload.starts_with(PREFIX) {
        return None;
    }
    let wire: Wire = match serde_json::from_slice(payload) {
        Ok(wire) => wire,
        Err(e) => return Some(Err(e.to_string())),
    };
    if wire.tenant_id != tenant {
        return Some(Err(format!(
            "tenantId {:?} is not the channel's",
            wire.tenant_id
        )));
    }
    Some(match wire.control.as_str() {
        "disconnect" => Ok(Control::Disconnect { user: wire.user_id }),
        other => Err(format!("unknown control {other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip_and_are_told_from_events() {
        let all = Control::Disconnect { user: None };
        let one = Control::Disconnect {
            user: Some("u1".into()),
        };
        for control in [all, one] {
            let json = encode("acme", &control);
            assert_eq!(decode("acme", json.as_bytes()), Some(Ok(control)));
            assert!(matches!(decode("globex", json.as_bytes()), Some(Err(_))));
        }
        let event = br#"{"id":"1-0","type":"license_updated","tenantId":"acme"}"#;
        assert_eq!(decode("acme", event), None);
        assert!(matches!(
            decode("acme", br#"{"control":"explode","tenantId":"acme"}"#),
            Some(Err(_))
        ));
        assert!(matches!(decode("acme", br#"{"control":"#), Some(Err(_))));
    }
}
