//! The license document and usage map (docs/PROTOCOL.md, license documents), with strict validation that names the field
//! at fault. Stored in a canonical form (dates in UTC, keys sorted) so that diffs are stable.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

/// A validation failure: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Dotted path of the field (`modules.analytics.expiresAt`), or `body`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// One module of a license.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = LicenseModule)]
pub struct Module {
    /// Whether the tenant may use it.
    pub enabled: bool,
    /// The module's own expiry, if any (RFC 3339).
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<OffsetDateTime>,
}

/// A tenant's license document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({
    "tenantId": "acme", "plan": "enterprise", "expiresAt": "2027-01-31T00:00:00Z",
    "modules": {"analytics": {"enabled": true, "expiresAt": "2026-12-15T00:00:00Z"},
                "payroll": {"enabled": false}},
    "limits": {"users": 100, "storage_gb": 50}
}))]
pub struct License {
    /// The tenant (equal to the path's tenant).
    pub tenant_id: String,
    /// Plan name: 1–128 characters.
    #[schema(min_length = 1, max_length = 128)]
    pub plan: String,
    /// When the license expires (RFC 3339, between 1970 and 9999).
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Modules by name (1–64 letters, digits, `_`, `-`, `.`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub modules: BTreeMap<String, Module>,
    /// Limits by metric (names as for modules): non-negative numbers.
    #[schema(value_type = BTreeMap<String, f64>)]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Number>,
    /// The tenant's own notice thresholds, when it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<Thresholds>,
}

/// A tenant's own notice thresholds (`notifications` in its license document), each overriding
/// the node's (`EXPIRY_WARNING_DAYS`, `USAGE_WARNING_PERCENT`) when given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = LicenseThresholds)]
pub struct Thresholds {
    /// Days before an expiry at which to warn: 1–10 values, each 1–365.
    #[schema(min_items = 1, max_items = 10, value_type = Option<Vec<u32>>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_warning_days: Option<Vec<u32>>,
    /// Percent of a limit at which usage warns: 1–100.
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_warning_percent: Option<f64>,
}

impl Thresholds {
    /// Validates the `notifications` object of a license document.
    fn parse(value: &Value) -> Result<Self, FieldError> {
        const FIELD: &str = "notifications";
        let map = object(FIELD, value)?;
        only_fields(FIELD, map, &["expiryWarningDays", "usageWarningPercent"])?;
        let expiry_warning_days = match map.get("expiryWarningDays") {
            None => None,
            Some(value) => {
                let field = "notifications.expiryWarningDays";
                let Value::Array(items) = value else {
                    return Err(FieldError::new(
                        field,
                        format!("must be an array of days, not {}", kind(value)),
                    ));
                };
                if items.is_empty() || items.len() > 10 {
                    return Err(FieldError::new(field, "must hold 1-10 values"));
                }
                let days = items
                    .iter()
                    .map(|d| match d.as_u64() {
                        Some(d @ 1..=365) => Ok(d as u32),
                        _ => Err(FieldError::new(
                            field,
                            "each value must be a whole number of days, 1-365",
                        )),
                    })
                    .collect::<Result<Vec<u32>, _>>()?;
                Some(days)
            }
        };
        let usage_warning_percent = match map.get("usageWarningPercent") {
            None => None,
            Some(value) => match value.as_f64() {
                Some(p) if value.is_number() && (1.0..=100.0).contains(&p) => Some(p),
                _ => {
                    return Err(FieldError::new(
                        "notifications.usageWarningPercent",
                        "must be a number, 1-100",
                    ));
                }
            },
        };
        Ok(Self {
            expiry_warning_days,
            usage_warning_percent,
        })
    }
}

/// Usage counters by metric: non-negative numbers.
pub type Usage = BTreeMap<String, Number>;

const MAX_NAME: usize = 64;

fn check_name(field: &str, name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("names are 1-{MAX_NAME} characters of letters, digits, '_', '-' or '.'"),
        ))
    }
}

fn object<'a>(field: &str, value: &'a Value) -> Result<&'a Map<String, Value>, FieldError> {
    value
        .as_object()
        .ok_or_else(|| FieldError::new(field, format!("must be an object, not {}", kind(value))))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn only_fields(prefix: &str, map: &Map<String, Value>, allowed: &[&str]) -> Result<(), FieldError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(FieldError::new(
            join(prefix, unknown),
            format!("unknown field (allowed: {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

fn date(field: &str, value: &Value) -> Result<OffsetDateTime, FieldError> {
    let text = value.as_str().ok_or_else(|| {
        FieldError::new(
            field,
            format!("must be an RFC 3339 date string, not {}", kind(value)),
        )
    })?;
    let parsed = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| FieldError::new(field, format!("not an RFC 3339 date ({e}): {text:?}")))?;
    // Checked before converting to UTC: the conversion itself fails (panics) when the instant
    // leaves the year range, and dates before 1970 cannot be formatted back the same way.
    if !(0..=MAX_UNIX_SECS).contains(&parsed.unix_timestamp()) {
        return Err(FieldError::new(
            field,
            format!("must lie between 1970 and 9999 in UTC: {text:?}"),
        ));
    }
    Ok(parsed.to_offset(time::UtcOffset::UTC))
}

/// 9999-12-31T23:59:59Z, the last accepted instant.
const MAX_UNIX_SECS: i64 = 253_402_300_799;

/// Most usage metrics a tenant may have.
pub const MAX_METRICS: usize = 100;

/// A non-negative, finite JSON number.
pub fn quantity(field: &str, value: &Value) -> Result<Number, FieldError> {
    match value {
        Value::Number(n) if n.as_f64().is_some_and(|f| f.is_finite() && f >= 0.0) => Ok(n.clone()),
        Value::Number(_) => Err(FieldError::new(field, "must not be negative")),
        other => Err(FieldError::new(
            field,
            format!("must be a non-negative number, not {}", kind(other)),
        )),
    }
}

impl License {
    /// Validates a document for `tenant`: strict types, RFC 3339 dates, non-negative limits, no
    /// unknown fields, and a `tenantId` equal to `tenant`.
    pub fn parse(tenant: &str, body: &Value) -> Result<License, FieldError> {
        let map = object("body", body)?;
        only_fields(
            "",
            map,
            &[
                "tenantId",
                "plan",
                "expiresAt",
                "modules",
                "limits",
                "notifications",
            ],
        )?;
        let tenant_id = match map.get("tenantId") {
            Some(Value::String(t)) if t == tenant => t.clone(),
            Some(Value::String(t)) => {
                return Err(FieldError::new(
                    "tenantId",
                    format!("{t:?} differs from the path's tenant {tenant:?}"),
                ));
            }
            Some(other) => {
                return Err(FieldError::new(
                    "tenantId",
                    format!("must be a string, not {}", kind(other)),
                ));
            }
            None => return Err(FieldError::new("tenantId", "required")),
        };
        let plan = match map.get("plan") {
            Some(Value::String(p)) if !p.is_empty() && p.chars().count() <= 128 => p.clone(),
            Some(Value::String(_)) => {
                return Err(FieldError::new("plan", "must be 1-128 characters"));
            }
            Some(other) => {
                return Err(FieldError::new(
                    "plan",
                    format!("must be a string, not {}", kind(other)),
                ));
            }
            None => return Err(FieldError::new("plan", "required")),
        };
        let expires_at = match map.get("expiresAt") {
            Some(v) => date("expiresAt", v)?,
            None => return Err(FieldError::new("expiresAt", "required")),
        };
        let mut modules = BTreeMap::new();
        if let Some(value) = map.get("modules") {
            for (name, module) in object("modules", value)? {
                let field = format!("modules.{name}");
                check_name(&field, name)?;
                let m = object(&field, module)?;
                only_fields(&field, m, &["enabled", "expiresAt"])?;
                let enabled = match m.get("enabled") {
                    Some(Value::Bool(b)) => *b,
                    Some(other) => {
                        return Err(FieldError::new(
                            format!("{field}.enabled"),
                            format!("must be a boolean, not {}", kind(other)),
                        ));
                    }
                    None => return Err(FieldError::new(format!("{field}.enabled"), "required")),
                };
                let expires_at = match m.get("expiresAt") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(date(&format!("{field}.expiresAt"), v)?),
                };
                modules.insert(
                    name.clone(),
                    Module {
                        enabled,
                        expires_at,
                    },
                );
            }
        }
        let mut limits = BTreeMap::new();
        if let Some(value) = map.get("limits") {
            for (metric, limit) in object("limits", value)? {
                let field = format!("limits.{metric}");
                check_name(&field, metric)?;
                limits.insert(metric.clone(), quantity(&field, limit)?);
            }
        }
        let notifications = map
            .get("notifications")
            .map(Thresholds::parse)
            .transpose()?;
        Ok(License {
            tenant_id,
            plan,
            expires_at,
            modules,
            limits,
            notifications,
        })
    }

    /// The canonical stored JSON.
    pub fn to_json(&self) -> String {
        // Strings, booleans, numbers and valid dates: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a stored document; `None` when it is unreadable (logged by the caller).
    pub fn from_stored(json: &str) -> Result<License, serde_json::Error> {
        serde_json::from_str(json)
    }
}

/// Validates a usage body: an object of metric → non-negative number.
pub fn parse_usage(body: &Value) -> Result<Usage, FieldError> {
    let map = object("body", body)?;
    if map.is_empty() {
        return Err(FieldError::new("body", "no metrics given"));
    }
    if map.len() > MAX_METRICS {
        return Err(FieldError::new(
            "body",
            format!("at most {MAX_METRICS} usage metrics per tenant"),
        ));
    }
    let mut usage = Usage::new();
    for (metric, value) in map {
        check_name(metric, metric)?;
        usage.insert(metric.clone(), quantity(metric, value)?);
    }
    Ok(usage)
}

/// RFC 3339 of a stored date, as it appears in documents and events.
pub fn format_date(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Value {
        json!({
            "tenantId": "acme", "plan": "enterprise", "expiresAt": "2027-01-31T00:00:00Z",
            "modules": {"analytics": {"enabled": true, "expiresAt": "2026-12-15T00:00:00+01:00"},
                        "payroll": {"enabled": false}},
            "limits": {"users": 100, "storage_gb": 50.5}
        })
    }

    /// Regression: `9999-12-31T23:59:59-01:00` lies in year 10000 in UTC and used to panic;
    /// `0000-01-01T00:00:00+01:00` was stored as an empty string.
    #[test]
    fn dates_outside_1970_to_9999_in_utc_are_refused_naming_the_field() {
        for bad in [
            "9999-12-31T23:59:59-01:00",
            "0000-01-01T00:00:00+01:00",
            "1969-12-31T23:59:59Z",
        ] {
            let mut doc = good();
            doc["expiresAt"] = json!(bad);
            let error = License::parse("acme", &doc).unwrap_err();
            assert_eq!(error.field, "expiresAt", "{bad}");
            doc["expiresAt"] = json!("2027-01-01T00:00:00Z");
            doc["modules"]["analytics"]["expiresAt"] = json!(bad);
            let error = License::parse("acme", &doc).unwrap_err();
            assert_eq!(error.field, "modules.analytics.expiresAt", "{bad}");
        }
        for edge in [
            "1970-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "9999-12-31T23:59:59+01:00",
        ] {
            let mut doc = good();
            doc["expiresAt"] = json!(edge);
            let license = License::parse("acme", &doc).unwrap();
            assert!(!license.to_json().contains("\"expiresAt\":\"\""), "{edge}");
        }
    }

    #[test]
    fn tenant_thresholds_are_optional_strict_and_round_trip() {
        let mut doc = good();
        doc["notifications"] = json!({"expiryWarningDays": [60, 14], "usageWarningPercent": 90});
        let license = License::parse("acme", &doc).unwrap();
        let own = license.notifications.clone().unwrap();
        assert_eq!(own.expiry_warning_days, Some(vec![60, 14]));
        assert_eq!(own.usage_warning_percent, Some(90.0));
        assert_eq!(License::from_stored(&license.to_json()).unwrap(), license);
        // A document without them stores exactly as before.
        let plain = License::parse("acme", &good()).unwrap();
        assert!(!plain.to_json().contains("notifications"));
        for (bad, field) in [
            (json!([]), "notifications"),
            (
                json!({"expiryWarningDays": []}),
                "notifications.expiryWarningDays",
            ),
            (
                json!({"expiryWarningDays": [366]}),
                "notifications.expiryWarningDays",
            ),
            (
                json!({"expiryWarningDays": [1.5]}),
                "notifications.expiryWarningDays",
            ),
            (
                json!({"expiryWarningDays": "7"}),
                "notifications.expiryWarningDays",
            ),
            (
                json!({"usageWarningPercent": 0}),
                "notifications.usageWarningPercent",
            ),
            (
                json!({"usageWarningPercent": "90"}),
                "notifications.usageWarningPercent",
            ),
            (json!({"mutedTypes": []}), "notifications.mutedTypes"),
        ] {
            let mut doc = good();
            doc["notifications"] = bad.clone();
            assert_eq!(
                License::parse("acme", &doc).unwrap_err().field,
                field,
                "{bad}"
            );
        }
    }

    /// Regression (found by the `license_body` fuzz target): a limit such as `1.88e28` came
    /// back from storage as `1.8800000000000001e28`; serde_json now parses floats exactly.
    #[test]
    fn stored_limits_read_back_exactly() {
        let mut body =
            json!({"tenantId": "acme", "plan": "x", "expiresAt": "2027-01-01T00:00:00Z"});
        body["limits"] = serde_json::from_str(r#"{"a": 1.88e28, "b": 0.1, "c": 50.5}"#).unwrap();
        let license = License::parse("acme", &body).unwrap();
        let stored = serde_json::to_string(&license).unwrap();
        assert_eq!(License::from_stored(&stored).unwrap(), license);
    }

    #[test]
    fn more_than_100_metrics_are_refused() {
        let many: Map<String, Value> = (0..=MAX_METRICS)
            .map(|i| (format!("m{i}"), json!(1)))
            .collect();
        assert_eq!(parse_usage(&Value::Object(many)).unwrap_err().field, "body");
        let enough: Map<String, Value> = (0..MAX_METRICS)
            .map(|i| (format!("m{i}"), json!(1)))
            .collect();
        assert!(parse_usage(&Value::Object(enough)).is_ok());
    }

    #[test]
    fn a_good_document_parses_into_canonical_form() {
        let license = License::parse("acme", &good()).unwrap();
        assert_eq!(
            license.modules["analytics"]
                .expires_at
                .map(format_date)
                .as_deref(),
            Some("2026-12-14T23:00:00Z")
        );
        let stored = license.to_json();
        assert_eq!(License::from_stored(&stored).unwrap(), license);
        assert!(stored.contains(r#""storage_gb":50.5"#), "{stored}");
    }

    #[test]
    fn bad_documents_name_the_field() {
        let cases: Vec<(Value, &str)> = vec![
            (json!([]), "body"),
            (
                json!({"plan": "x", "expiresAt": "2027-01-01T00:00:00Z"}),
                "tenantId",
            ),
            (
                json!({"tenantId": "other", "plan": "x", "expiresAt": "2027-01-01T00:00:00Z"}),
                "tenantId",
            ),
            (
                json!({"tenantId": "acme", "plan": 5, "expiresAt": "2027-01-01T00:00:00Z"}),
                "plan",
            ),
            (
                json!({"tenantId": "acme", "plan": "x", "expiresAt": "tomorrow"}),
                "expiresAt",
            ),
            (
                json!({"tenantId": "acme", "plan": "x", "expiresAt": "2027-02-30T00:00:00Z"}),
                "expiresAt",
            ),
            (json!({"tenantId": "acme", "plan": "x"}), "expiresAt"),
            (
                json!({"tenantId": "acme", "plan": "x", "expiresAt": "2027-01-01T00:00:00Z", "color": 1}),
                "color",
            ),
            (
                json!({"tenantId": "acme", "plan": "x", "expiresAt": "2027-01-01T00:00:00Z", "limits": {"users": -1}}),
                "limits.users",
            ),
            (
                json!({"tenantId": "acme", "plan": "x", "expiresAt": "2027-01-01T00:00:00Z", "limits": {"users": "100"}}),
                "limits.users",
            ),
            (
                json!({"tenantId": "acme", "plan": "x", "expiresAt": "2027-01-01T00:00:00Z", "modules": {"a": {"enabled": "yes"}}}),
                "modules.a.enabled",
            ),
            (
                json!({"tenantId": "acme", "plan": "x", "expiresAt": "2027-01-01T00:00:00Z", "modules": {"a": {}}}),
                "modules.a.enabled",
            ),
            (
                json!({"tenantId": "acme", "plan": "x", "expiresAt": "2027-01-01T00:00:00Z", "modules": {"a": {"enabled": true, "x": 1}}}),
                "modules.a.x",
            ),
            (
                json!({"tenantId": "acme", "plan": "x", "expiresAt": "2027-01-01T00:00:00Z", "modules": {"a": {"enabled": true, "expiresAt": 5}}}),
                "modules.a.expiresAt",
            ),
            (
                json!({"tenantId": "acme", "plan": "x", "expiresAt": "2027-01-01T00:00:00Z", "modules": []}),
                "modules",
            ),
        ];
        for (doc, field) in cases {
            let err = License::parse("acme", &doc).unwrap_err();
            assert_eq!(err.field, field, "{doc}: {err}");
        }
    }

    #[test]
    fn usage_bodies_are_strict() {
        assert_eq!(
            parse_usage(&json!({"users": 85})).unwrap()["users"],
            Number::from(85)
        );
        assert_eq!(
            parse_usage(&json!({"users": -1})).unwrap_err().field,
            "users"
        );
        assert_eq!(
            parse_usage(&json!({"users": "1"})).unwrap_err().field,
            "users"
        );
        assert_eq!(parse_usage(&json!({})).unwrap_err().field, "body");
        assert_eq!(parse_usage(&json!(5)).unwrap_err().field, "body");
    }
}
