//! A user's notification preferences (`GET`/`PUT /api/notifications/preferences`): muted types,
//! a minimum severity and a module list. Applied on the server to every connection of the user;
//! `error` events always pass. Validated field by field, so a 400 names the field at fault.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::filter::EventMeta;
use crate::protocol::EventType;
use crate::protocol::event::Severity;

/// Most module names a preference may list.
pub const MAX_MODULES: usize = 50;
/// Longest module name, in bytes.
pub const MAX_MODULE_LEN: usize = 64;

/// What a user wants delivered. The default lets everything through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Preferences {
    /// Types not delivered (unless of severity `error`).
    pub muted_types: Vec<EventType>,
    /// Events below this severity are not delivered.
    pub min_severity: Severity,
    /// Events naming a module are delivered only for these (`None`: every module).
    pub modules: Option<Vec<String>>,
}

impl Default for Preferences {
    fn default() -> Self {
        Self {
            muted_types: Vec::new(),
            min_severity: Severity::Info,
            modules: None,
        }
    }
}

/// Why a body (preferences, and the delivery settings) was refused: the field and what is
/// wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The JSON field at fault (`body` for the document itself).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// An [`Invalid`] for `field`.
pub fn invalid(field: &str, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

impl Preferences {
    /// Parses a PUT body: a JSON object with any of `mutedTypes`, `minSeverity`, `modules`
    /// (absent fields take their defaults: a PUT replaces the whole object).
    pub fn parse(body: &[u8]) -> Result<Self, Invalid> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| invalid("body", format!("not JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(invalid("body", "must be a JSON object"));
        };
        let mut prefs = Preferences::default();
        for (field, value) in map {
            match field.as_str() {
                "mutedTypes" => prefs.muted_types = parse_types(&value)?,
                "minSeverity" => prefs.min_severity = parse_severity(&value)?,
                "modules" => prefs.modules = parse_modules(&value)?,
                other => return Err(invalid(other, "unknown field")),
            }
        }
        Ok(prefs)
    }

    /// The defaults: nothing to store or to check at fan-out.
    pub fn is_default(&self) -> bool {
        *self == Preferences::default()
    }

    /// Whether an event reaches the user, given what [`EventMeta::read`] found in it. Errors
    /// always do; an envelope that could not be read does too.
    pub fn allows(&self, meta: Option<&EventMeta<'_>>) -> bool {
        let Some(meta) = meta else {
            return true;
        };
        self.allows_event(meta.event_type(), meta.module())
    }

    /// [`Preferences::allows`] for an event's type and module.
    pub fn allows_event(&self, event_type: EventType, module: Option<&str>) -> bool {
        let severity = event_type.severity();
        if severity == Severity::Error {
            return true;
        }
        if severity < self.min_severity || self.muted_types.contains(&event_type) {
            return false;
        }
        match (&self.modules, module) {
            (Some(modules), Some(module)) => modules.iter().any(|m| m == module),
            _ => true,
        }
    }
}

fn parse_types(value: &Value) -> Result<Vec<EventType>, Invalid> {
    let Value::Array(items) = value else {
        return Err(invalid("mutedTypes", "must be an array of event types"));
    };
    let mut types = Vec::new();
    for item in items {
        let t = item
            .as_str()
            .and_then(|s| s.parse::<EventType>().ok())
            .ok_or_else(|| invalid("mutedTypes", format!("{item} is not an event type")))?;
        if !types.contains(&t) {
            types.push(t);
        }
    }
    Ok(types)
}

fn parse_severity(value: &Value) -> Result<Severity, Invalid> {
    match value.as_str() {
        Some("info") => Ok(Severity::Info),
        Some("warning") => Ok(Severity::Warning),
        Some("error") => Ok(Severity::Error),
        _ => Err(invalid(
            "minSeverity",
            format!("{value} is not \"info\", \"warning\" or \"error\""),
        )),
    }
}

fn parse_modules(value: &Value) -> Result<Option<Vec<String>>, Invalid> {
    let items = match value {
        Value::Null => return Ok(None),
        Value::Array(items) => items,
        _ => return Err(invalid("modules", "must be null or an array of names")),
    };
    if items.len() > MAX_MODULES {
        return Err(invalid("modules", format!("at most {MAX_MODULES} names")));
    }
    let mut names: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        match item.as_str() {
            Some(name) if !name.is_empty() && name.len() <= MAX_MODULE_LEN => {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_owned());
                }
            }
            _ => {
                return Err(invalid(
                    "modules",
                    format!("{item} is not a name of 1–{MAX_MODULE_LEN} bytes"),
                ));
            }
        }
    }
    Ok(Some(names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_validated_field_by_field() {
        let p = Preferences::parse(
            br#"{"mutedTypes":["module_activated","module_activated"],"minSeverity":"warning","modules":["reports"]}"#,
        )
        .unwrap();
        assert_eq!(p.muted_types, vec![EventType::ModuleActivated]);
        assert_eq!(p.min_severity, Severity::Warning);
        assert_eq!(p.modules.as_deref(), Some(&["reports".to_owned()][..]));
        assert!(Preferences::parse(b"{}").unwrap().is_default());
        for (body, field) in [
            (&br#"{"mutedTypes":["nope"]}"#[..], "mutedTypes"),
            (br#"{"mutedTypes":"license_expired"}"#, "mutedTypes"),
            (br#"{"minSeverity":"fatal"}"#, "minSeverity"),
            (br#"{"modules":[""]}"#, "modules"),
            (br#"{"modules":7}"#, "modules"),
            (br#"{"colour":"red"}"#, "colour"),
            (b"[]", "body"),
            (b"{", "body"),
        ] {
            assert_eq!(Preferences::parse(body).unwrap_err().field, field);
        }
    }

    #[test]
    fn errors_always_pass_and_the_rest_is_filtered() {
        let p = Preferences {
            muted_types: vec![EventType::UsageLimitWarning],
            min_severity: Severity::Warning,
            modules: Some(vec!["reports".into()]),
        };
        assert!(p.allows_event(EventType::LicenseExpired, Some("payroll")));
        assert!(p.allows_event(EventType::UsageLimitExceeded, None));
        assert!(!p.allows_event(EventType::UsageLimitWarning, None));
        assert!(
            !p.allows_event(EventType::ModuleActivated, Some("reports")),
            "info"
        );
        assert!(p.allows_event(EventType::LicenseExpiring, Some("reports")));
        assert!(!p.allows_event(EventType::LicenseExpiring, Some("payroll")));
        assert!(p.allows_event(EventType::LicenseExpiring, None));
        assert!(Preferences::default().allows_event(EventType::ModuleActivated, None));
    }
}
