//! What a tenant registers: webhook endpoints (`PUT …/webhooks/{name}`) and email recipients
//! (`PUT …/email`), validated field by field, and which events each wants.

use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::signing::Secret;
pub use crate::notifications::preferences::{Invalid, invalid};
use crate::protocol::EventType;
use crate::protocol::event::Severity;

/// Secrets an endpoint may hold at once (the current one and those being rotated out).
pub const MAX_SECRETS: usize = 3;
/// Longest webhook URL.
pub const MAX_URL_LEN: usize = 2048;
/// Most email recipients per tenant.
pub const MAX_RECIPIENTS: usize = 20;

/// Which events a channel wants: some types (or all) from a severity up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Only these types (`None`: every type).
    pub types: Option<Vec<EventType>>,
    /// This severity and above.
    pub min_severity: Severity,
}

impl Selection {
    /// Whether an event of this type is wanted.
    pub fn wants(&self, event_type: EventType) -> bool {
        event_type.severity() >= self.min_severity
            && self.types.as_ref().is_none_or(|t| t.contains(&event_type))
    }
}

/// A webhook endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Where events are POSTed.
    pub url: String,
    /// Signing secrets; each signs every message (rotation).
    pub secrets: Vec<Secret>,
    /// Which events.
    pub selection: Selection,
    /// Disabled endpoints get nothing (a 410 disables one).
    pub enabled: bool,
}

fn object(body: &[u8]) -> Result<Map<String, Value>, Invalid> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid("body", "must be a JSON object")),
        Err(e) => Err(invalid("body", format!("not JSON: {e}"))),
    }
}

fn severity(field: &str, value: &Value) -> Result<Severity, Invalid> {
    match value.as_str() {
        Some("info") => Ok(Severity::Info),
        Some("warning") => Ok(Severity::Warning),
        Some("error") => Ok(Severity::Error),
        _ => Err(invalid(field, "must be \"info\", \"warning\" or \"error\"")),
    }
}

fn types(value: &Value) -> Result<Option<Vec<EventType>>, Invalid> {
    let items = match value {
        Value::Null => return Ok(None),
        Value::Array(items) => items,
        _ => return Err(invalid("types", "must be null or a list of event types")),
    };
    let mut out = Vec::new();
    for item in items {
        let t = item
            .as_str()
            .and_then(|s| s.parse::<EventType>().ok())
            .ok_or_else(|| invalid("types", format!("{item} is not an event type")))?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(Some(out))
}

fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Error => "error",
    }
}

impl Webhook {
    /// Parses a PUT body: `url` and `secret` (one `whsec_…` or a list) required; `types`,
    /// `minSeverity` (default `info`) and `enabled` (default true) optional; nothing else.
    /// The URL's address is checked separately ([`super::ssrf::check_url`]).
    pub fn parse(body: &[u8]) -> Result<Self, Invalid> {
        let map = object(body)?;
        let mut url = None;
        let mut secrets = None;
        let mut selection = Selection {
            types: None,
            min_severity: Severity::Info,
        };
        let mut enabled = true;
        for (field, value) in &map {
            match field.as_str() {
                "url" => match value.as_str() {
                    Some(u) if !u.is_empty() && u.len() <= MAX_URL_LEN => url = Some(u.to_owned()),
                    _ => {
                        return Err(invalid(
                            "url",
                            format!("must be a URL of 1–{MAX_URL_LEN} characters"),
                        ));
                    }
                },
                "secret" => {
                    let texts: Vec<&Value> = match value {
                        Value::String(_) => vec![value],
                        Value::Array(list) if (1..=MAX_SECRETS).contains(&list.len()) => {
                            list.iter().collect()
                        }
                        _ => {
                            return Err(invalid(
                                "secret",
                                format!("must be a whsec_ secret or a list of 1–{MAX_SECRETS}"),
                            ));
                        }
                    };
                    let mut parsed = Vec::new();
                    for text in texts {
                        let text = text
                            .as_str()
                            .ok_or_else(|| invalid("secret", "must be strings"))?;
                        parsed.push(Secret::parse(text).map_err(|e| invalid("secret", e))?);
                    }
                    secrets = Some(parsed);
                }
                "types" => selection.types = types(value)?,
                "minSeverity" => selection.min_severity = severity("minSeverity", value)?,
                "enabled" => {
                    enabled = value
                        .as_bool()
                        .ok_or_else(|| invalid("enabled", "must be true or false"))?;
                }
                other => return Err(invalid(other, "unknown field")),
            }
        }
        Ok(Self {
            url: url.ok_or_else(|| invalid("url", "is required"))?,
            secrets: secrets.ok_or_else(|| invalid("secret", "is required"))?,
            selection,
            enabled,
        })
    }

    /// The stored form (secrets included; never answered to anyone).
    pub fn to_stored(&self) -> String {
        json!({
            "url": self.url,
            "secrets": self.secrets.iter().map(Secret::to_text).collect::<Vec<_>>(),
            "types": self.selection.types.as_ref().map(|t| t.iter().map(|t| t.as_str()).collect::<Vec<_>>()),
            "minSeverity": severity_name(self.selection.min_severity),
            "enabled": self.enabled,
        })
        .to_string()
    }

    /// Reads the stored form back.
    pub fn from_stored(text: &str) -> Result<Self, Invalid> {
        let map = object(text.as_bytes())?;
        let mut body = map.clone();
        body.remove("secrets");
        body.insert(
            "secret".into(),
            map.get("secrets").cloned().unwrap_or(Value::Null),
        );
        Self::parse(Value::Object(body).to_string().as_bytes())
    }

    /// What the API shows: everything but the secrets, which are only counted.
    pub fn redacted(&self, name: &str) -> WebhookView {
        WebhookView {
            name: name.to_owned(),
            url: self.url.clone(),
            types: self.selection.types.clone(),
            min_severity: self.selection.min_severity,
            enabled: self.enabled,
            secrets: self.secrets.len(),
        }
    }
}

/// A webhook endpoint as the API shows it: its secrets counted, never shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookView {
    /// The endpoint's name.
    pub name: String,
    /// Where events are POSTed.
    pub url: String,
    /// Only these types (`null`: every type).
    pub types: Option<Vec<EventType>>,
    /// This severity and above.
    pub min_severity: Severity,
    /// Disabled endpoints get nothing (a 410 answer disables one).
    pub enabled: bool,
    /// How many signing secrets it has.
    pub secrets: usize,
}

/// Endpoint names: 1–64 letters, digits, `_`, `-`, `.`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// A tenant's email settings (`PUT …/email`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmailSettings {
    /// Where messages go.
    pub recipients: Vec<String>,
    /// This severity and above (default `error`).
    #[serde(serialize_with = "ser_severity")]
    pub min_severity: Severity,
}

fn ser_severity<S: serde::Serializer>(s: &Severity, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(severity_name(*s))
}

impl EmailSettings {
    /// Parses a PUT body: `recipients` (1–20 addresses) required, `minSeverity` optional.
    pub fn parse(body: &[u8]) -> Result<Self, Invalid> {
        let map = object(body)?;
        let mut recipients = None;
        let mut min_severity = Severity::Error;
        for (field, value) in &map {
            match field.as_str() {
                "recipients" => {
                    let list = value
                        .as_array()
                        .filter(|l| (1..=MAX_RECIPIENTS).contains(&l.len()))
                        .ok_or_else(|| {
                            invalid(
                                "recipients",
                                format!("must be a list of 1–{MAX_RECIPIENTS} addresses"),
                            )
                        })?;
                    let mut out = Vec::new();
                    for item in list {
                        match item.as_str() {
                            Some(a) if valid_address(a) => out.push(a.to_owned()),
                            _ => {
                                return Err(invalid(
                                    "recipients",
                                    format!("{item} is not an email address"),
                                ));
                            }
                        }
                    }
                    recipients = Some(out);
                }
                "minSeverity" => min_severity = severity("minSeverity", value)?,
                other => return Err(invalid(other, "unknown field")),
            }
        }
        Ok(Self {
            recipients: recipients.ok_or_else(|| invalid("recipients", "is required"))?,
            min_severity,
        })
    }
}

impl EmailSettings {
    /// The stored form: kept among the endpoints under [`EMAIL_ENDPOINT`], with the fields
    /// the publish step's matching reads (`types`, `enabled`).
    pub fn to_stored(&self) -> String {
        json!({
            "recipients": self.recipients,
            "minSeverity": severity_name(self.min_severity),
            "types": null,
            "enabled": true,
        })
        .to_string()
    }

    /// Reads the stored form back.
    pub fn from_stored(text: &str) -> Result<Self, Invalid> {
        let mut map = object(text.as_bytes())?;
        map.remove("types");
        map.remove("enabled");
        Self::parse(Value::Object(map).to_string().as_bytes())
    }

    /// Whether an event of this type is mailed.
    pub fn wants(&self, event_type: EventType) -> bool {
        event_type.severity() >= self.min_severity
    }
}

/// The reserved endpoint name of a tenant's per-event email (no API name contains `@`).
pub const EMAIL_ENDPOINT: &str = "@email";
/// The reserved endpoint name of a tenant's hourly digests (over `EMAIL_MAX_PER_HOUR`).
pub const DIGEST_ENDPOINT: &str = "@digest";

/// A plausible address: one `@`, both sides non-empty, no spaces or angle brackets, ≤ 254.
pub fn valid_address(a: &str) -> bool {
    let Some((local, domain)) = a.split_once('@') else {
        return false;
    };
    a.len() <= 254
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && a.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b',' | b';' | b'"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn webhooks_are_validated_by_field_and_stored_with_their_secrets() {
        let body = format!(
            r#"{{"url":"https://hooks.example.com/x","secret":"{SECRET}","types":["license_expired"],"minSeverity":"warning"}}"#
        );
        let hook = Webhook::parse(body.as_bytes()).unwrap();
        assert!(hook.enabled);
        assert!(hook.selection.wants(EventType::LicenseExpired));
        assert!(!hook.selection.wants(EventType::UsageLimitWarning));
        assert_eq!(Webhook::from_stored(&hook.to_stored()).unwrap(), hook);
        let shown = serde_json::to_string(&hook.redacted("ops")).unwrap();
        assert!(
            !shown.contains("whsec_") && shown.contains("\"secrets\":1"),
            "{shown}"
        );
        for (body, field) in [
            (
                r#"{"secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}"#.to_owned(),
                "url",
            ),
            (r#"{"url":"https://a.example"}"#.to_owned(), "secret"),
            (
                r#"{"url":"https://a.example","secret":"nope"}"#.to_owned(),
                "secret",
            ),
            (
                format!(r#"{{"url":"https://a.example","secret":"{SECRET}","types":["x"]}}"#),
                "types",
            ),
            (
                format!(
                    r#"{{"url":"https://a.example","secret":"{SECRET}","minSeverity":"loud"}}"#
                ),
                "minSeverity",
            ),
            (
                format!(r#"{{"url":"https://a.example","secret":"{SECRET}","colour":1}}"#),
                "colour",
            ),
            (
                format!(
                    r#"{{"url":"https://a.example","secret":["{SECRET}","{SECRET}","{SECRET}","{SECRET}"]}}"#
                ),
                "secret",
            ),
        ] {
            assert_eq!(
                Webhook::parse(body.as_bytes()).unwrap_err().field,
                field,
                "{body}"
            );
        }
        assert!(valid_name("ops-1.main_x") && !valid_name("") && !valid_name("a/b"));
    }

    #[test]
    fn email_settings_are_validated() {
        let s = EmailSettings::parse(br#"{"recipients":["ops@acme.test"]}"#).unwrap();
        assert_eq!(s.min_severity, Severity::Error);
        assert!(s.wants(EventType::LicenseExpired) && !s.wants(EventType::LicenseExpiring));
        assert_eq!(EmailSettings::from_stored(&s.to_stored()).unwrap(), s);
        assert!(!valid_name(EMAIL_ENDPOINT) && !valid_name(DIGEST_ENDPOINT));
        for (body, field) in [
            (&br#"{"recipients":[]}"#[..], "recipients"),
            (br#"{"recipients":["not-an-address"]}"#, "recipients"),
            (br#"{"recipients":["a@b.test","x y@b.test"]}"#, "recipients"),
            (
                br#"{"recipients":["a@b.test"],"minSeverity":"x"}"#,
                "minSeverity",
            ),
            (br#"{"to":["a@b.test"]}"#, "to"),
        ] {
            assert_eq!(EmailSettings::parse(body).unwrap_err().field, field);
        }
    }
}
