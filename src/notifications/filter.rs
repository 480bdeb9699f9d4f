//! Per-connection event filters (`types`, `minSeverity`, `modules` on `/ws/license`): a
//! connection receives only the events they let through, live and on resume. Checked once per
//! event and filtered connection at fan-out; the payload stays one shared buffer.

use std::borrow::Cow;

use serde::Deserialize;

use crate::protocol::event::Severity;
use crate::protocol::{EventType, Payload};

/// Most module names one filter may list.
const MAX_MODULES: usize = 50;

/// What one connection asked to receive; every given part must let an event through.
#[derive(Debug, Clone, PartialEq)]
pub struct EventFilter {
    /// Only these types.
    types: Option<Vec<EventType>>,
    /// Only this severity and above.
    min_severity: Option<Severity>,
    /// Events naming a module (`data.module`) only for these modules; events without one pass.
    modules: Option<Vec<Box<str>>>,
}

/// The parts of an envelope a filter reads, read once per event.
#[derive(Deserialize)]
pub struct EventMeta<'a> {
    #[serde(rename = "type")]
    event_type: EventType,
    #[serde(default, borrow)]
    data: Option<MetaData<'a>>,
}

#[derive(Deserialize)]
struct MetaData<'a> {
    #[serde(default, borrow)]
    module: Option<Cow<'a, str>>,
}

impl EventFilter {
    /// The filter the query parameters ask for; `None` when they ask for none. `Err` names the
    /// parameter at fault.
    pub fn from_query(
        types: Option<&str>,
        min_severity: Option<&str>,
        modules: Option<&str>,
    ) -> Result<Option<Self>, String> {
        let list = |s: &str| -> Vec<String> {
            s.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let types = types
            .map(|t| {
                list(t)
                    .iter()
                    .map(|t| t.parse::<EventType>().map_err(|e| format!("types: {e}")))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let min_severity = min_severity
            .map(|s| match s {
                "info" => Ok(Severity::Info),
                "warning" => Ok(Severity::Warning),
                "error" => Ok(Severity::Error),
                other => Err(format!(
                    "minSeverity: {other:?} is not info, warning or error"
                )),
            })
            .transpose()?;
        let modules = modules
            .map(|m| {
                let names = list(m);
                if names.len() > MAX_MODULES || names.iter().any(|n| n.len() > 64) {
                    return Err(format!(
                        "modules: at most {MAX_MODULES} names of at most 64 characters"
                    ));
                }
                Ok(names.into_iter().map(Box::from).collect())
            })
            .transpose()?;
        if types.is_none() && min_severity.is_none() && modules.is_none() {
            return Ok(None);
        }
        Ok(Some(Self {
            types,
            min_severity,
            modules,
        }))
    }

    /// Whether an event passes, given what [`EventMeta::read`] found in it. An envelope that
    /// could not be read passes (every event is an engine envelope; this is never the way to
    /// drop garbage).
    pub fn allows(&self, meta: Option<&EventMeta<'_>>) -> bool {
        let Some(meta) = meta else {
            return true;
        };
        if let Some(types) = &self.types
            && !types.contains(&meta.event_type)
        {
            return false;
        }
        if let Some(min) = self.min_severity
            && meta.event_type.severity() < min
        {
            return false;
        }
        match (
            &self.modules,
            meta.data.as_ref().and_then(|d| d.module.as_deref()),
        ) {
            (Some(modules), Some(module)) => modules.iter().any(|m| &**m == module),
            _ => true,
        }
    }

    /// [`EventFilter::allows`] for one payload (resume replay: one check per replayed event).
    pub fn allows_payload(&self, payload: &Payload) -> bool {
        self.allows(EventMeta::read(payload).as_ref())
    }
}

impl<'a> EventMeta<'a> {
    /// The type and module of an envelope; `None` when it is not one.
    pub fn read(payload: &'a Payload) -> Option<Self> {
        Self::parse(payload.as_str())
    }

    /// [`EventMeta::read`] for envelope text.
    pub fn parse(envelope: &'a str) -> Option<Self> {
        serde_json::from_str(envelope).ok()
    }

    /// The event's type.
    pub fn event_type(&self) -> EventType {
        self.event_type
    }

    /// The module it names (`data.module`), if any.
    pub fn module(&self) -> Option<&str> {
        self.data.as_ref().and_then(|d| d.module.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(t: &str, module: Option<&str>) -> Payload {
        let data = module.map_or("{}".to_owned(), |m| format!(r#"{{"module":"{m}"}}"#));
        Payload::from(format!(
            r#"{{"id":"1-0","type":"{t}","tenantId":"a","data":{data}}}"#
        ))
    }

    #[test]
    fn filters_narrow_by_type_severity_and_module() {
        assert_eq!(EventFilter::from_query(None, None, None), Ok(None));
        let f = EventFilter::from_query(Some("license_expired,module_deactivated"), None, None)
            .unwrap()
            .unwrap();
        assert!(f.allows_payload(&event("license_expired", None)));
        assert!(!f.allows_payload(&event("license_updated", None)));
        let f = EventFilter::from_query(None, Some("warning"), None)
            .unwrap()
            .unwrap();
        assert!(f.allows_payload(&event("usage_limit_warning", None)));
        assert!(f.allows_payload(&event("license_expired", None)));
        assert!(!f.allows_payload(&event("module_activated", None)));
        let f = EventFilter::from_query(None, None, Some("reports, billing"))
            .unwrap()
            .unwrap();
        assert!(f.allows_payload(&event("module_activated", Some("reports"))));
        assert!(!f.allows_payload(&event("module_activated", Some("payroll"))));
        assert!(
            f.allows_payload(&event("license_updated", None)),
            "no module: passes"
        );
        for (types, severity, modules, field) in [
            (Some("nope"), None, None, "types"),
            (None, Some("fatal"), None, "minSeverity"),
            (None, None, Some(&"m,".repeat(60)[..]), "modules"),
        ] {
            let error = EventFilter::from_query(types, severity, modules).unwrap_err();
            assert!(error.starts_with(field), "{error}");
        }
    }
}
