//! Control messages on a tenant's channel, e.g. `{"control":"disconnect","tenantId":"acme",
//! "userId":"u1"}`. They start with `{"control":`, which no event envelope does (an envelope
//! starts with its `id`), so telling them apart costs a prefix check per message. Read-state
//! and preference changes are written by `notifications.lua` in the same shape.

use serde::{Deserialize, Serialize};

use crate::engine::Control;
use crate::notifications::{Preferences, ReadState, Versioned};
use crate::protocol::EventId;

/// How every control message starts.
const PREFIX: &[u8] = b"{\"control\":";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Wire {
    control: String,
    tenant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unread_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    changed: Option<Changed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    read_up_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    preferences: Option<serde_json::Value>,
}

/// `changed` as written: a list of `{"id","read"}`, or `{}` for none (Lua's cjson cannot tell
/// an empty array from an empty object).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Changed {
    List(Vec<WireChange>),
    Empty {},
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireChange {
    id: String,
    read: bool,
}

impl Wire {
    fn new(control: &str, tenant: &str, user: Option<&str>) -> Self {
        Self {
            control: control.into(),
            tenant_id: tenant.into(),
            user_id: user.map(str::to_owned),
            unread_count: None,
            changed: None,
            read_up_to: None,
            version: None,
            preferences: None,
        }
    }
}

/// The JSON of `control` for `tenant`'s channel.
pub fn encode(tenant: &str, control: &Control) -> String {
    let wire = match control {
        Control::Disconnect { user } => Wire::new("disconnect", tenant, user.as_deref()),
        Control::NotificationState { user, state } => Wire {
            unread_count: Some(state.unread),
            changed: Some(Changed::List(
                state
                    .changed
                    .iter()
                    .map(|(id, read)| WireChange {
                        id: id.to_string(),
                        read: *read,
                    })
                    .collect(),
            )),
            read_up_to: state.read_up_to.map(|id| id.to_string()),
            ..Wire::new("notification_state", tenant, Some(user))
        },
        Control::Preferences { user, preferences } => Wire {
            version: Some(preferences.version),
            preferences: serde_json::to_value(&preferences.preferences).ok(),
            ..Wire::new("preferences", tenant, Some(user))
        },
    };
    // Strings, numbers and JSON values only: serialization cannot fail.
    serde_json::to_string(&wire).unwrap_or_default()
}

/// `None` when `payload` is not a control message (an event, or garbage for the envelope
/// check); otherwise the message, or why it cannot be used.
pub fn decode(tenant: &str, payload: &[u8]) -> Option<Result<Control, String>> {
    if !payload.starts_with(PREFIX) {
        return None;
    }
    Some(decode_wire(tenant, payload))
}

fn decode_wire(tenant: &str, payload: &[u8]) -> Result<Control, String> {
    let wire: Wire = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    if wire.tenant_id != tenant {
        return Err(format!(
            "tenantId {:?} is not the channel's",
            wire.tenant_id
        ));
    }
    let user = || wire.user_id.clone().ok_or("userId missing");
    let id = |s: &str| s.parse::<EventId>().map_err(|_| format!("bad id {s:?}"));
    match wire.control.as_str() {
        "disconnect" => Ok(Control::Disconnect {
            user: wire.user_id.clone(),
        }),
        "notification_state" => {
            let changed = match &wire.changed {
                Some(Changed::List(list)) => list
                    .iter()
                    .map(|c| Ok((id(&c.id)?, c.read)))
                    .collect::<Result<Vec<_>, String>>()?,
                _ => Vec::new(),
            };
            Ok(Control::NotificationState {
                user: user()?,
                state: ReadState {
                    unread: wire.unread_count.ok_or("unreadCount missing")?,
                    changed,
                    read_up_to: wire.read_up_to.as_deref().map(id).transpose()?,
                },
            })
        }
        "preferences" => {
            let value = wire.preferences.as_ref().ok_or("preferences missing")?;
            let preferences = Preferences::parse(value.to_string().as_bytes())
                .map_err(|e| format!("preferences.{}: {}", e.field, e.message))?;
            Ok(Control::Preferences {
                user: user()?,
                preferences: Versioned {
                    version: wire.version.ok_or("version missing")?,
                    preferences,
                },
            })
        }
        other => Err(format!("unknown control {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::EventType;

    #[test]
    fn control_messages_round_trip_and_are_told_from_events() {
        let all = Control::Disconnect { user: None };
        let one = Control::Disconnect {
            user: Some("u1".into()),
        };
        let id = EventId { ms: 5, seq: 1 };
        let state = Control::NotificationState {
            user: "u1".into(),
            state: ReadState {
                unread: 3,
                changed: vec![(id, true)],
                read_up_to: Some(id),
            },
        };
        let prefs = Control::Preferences {
            user: "u1".into(),
            preferences: Versioned {
                version: 4,
                preferences: Preferences {
                    muted_types: vec![EventType::ModuleActivated],
                    ..Preferences::default()
                },
            },
        };
        for control in [all, one, state, prefs] {
            let json = encode("acme", &control);
            assert_eq!(decode("acme", json.as_bytes()), Some(Ok(control)));
            assert!(matches!(decode("globex", json.as_bytes()), Some(Err(_))));
        }
        let event = br#"{"id":"1-0","type":"license_updated","tenantId":"acme"}"#;
        assert_eq!(decode("acme", event), None);
        for bad in [
            &br#"{"control":"explode","tenantId":"acme"}"#[..],
            br#"{"control":"#,
            br#"{"control":"notification_state","tenantId":"acme","userId":"u"}"#,
            br#"{"control":"preferences","tenantId":"acme","userId":"u","version":1,"preferences":{"minSeverity":"x"}}"#,
        ] {
            assert!(matches!(decode("acme", bad), Some(Err(_))), "{bad:?}");
        }
        // As notifications.lua writes an empty change list.
        let lua = br#"{"control":"notification_state","tenantId":"acme","userId":"u","unreadCount":0,"changed":{},"readUpTo":"5-1"}"#;
        assert!(matches!(
            decode("acme", lua),
            Some(Ok(Control::NotificationState { .. }))
        ));
    }
}
