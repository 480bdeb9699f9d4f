//! The rules that turn (document, usage, notice state, now) into notices and a status. Pure
//! functions: no I/O, no clock; the validator supplies `now` and applies the plans atomically.
//!
//! Notice state is a map of fields (stored as a Redis hash `license:notices:{T}`):
//! - `usage:<metric>` → `warning` | `exceeded` (absent: nothing notified since usage was below
//!   the warning line);
//! - `expiry:license`, `expiry:module:<name>` → `<expiresAt>|t<days>` (the smallest threshold
//!   notified for that expiry date) or `<expiresAt>|expired`.
//!
//! A [`Plan`] changes one field from an expected value to a new one and carries the events that
//! change implies; applying it is a compare-and-set, so any number of validators publish each
//! notice once.

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value, json};
use time::{Duration, OffsetDateTime};

use super::document::{License, Usage, format_date};
use crate::protocol::EventType;

/// Thresholds of the rules (`EXPIRY_WARNING_DAYS`, `USAGE_WARNING_PERCENT`).
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Expiry warning thresholds in days, largest first, distinct, all positive.
    pub expiry_warning_days: Vec<u32>,
    /// Usage warning line, percent of the limit.
    pub usage_warning_percent: f64,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            expiry_warning_days: vec![30, 7, 1],
            usage_warning_percent: 80.0,
        }
    }
}

impl Rules {
    /// These rules with the tenant's own thresholds (its document's `notifications`) in place
    /// of the node's, where it has any.
    pub fn for_license(&self, license: &License) -> Rules {
        let Some(own) = &license.notifications else {
            return self.clone();
        };
        Rules::new(
            own.expiry_warning_days
                .clone()
                .unwrap_or_else(|| self.expiry_warning_days.clone()),
            own.usage_warning_percent
                .unwrap_or(self.usage_warning_percent),
        )
    }

    /// Rules with thresholds normalised (sorted largest first, duplicates removed).
    pub fn new(mut days: Vec<u32>, usage_warning_percent: f64) -> Self {
        days.sort_unstable_by(|a, b| b.cmp(a));
        days.dedup();
        Self {
            expiry_warning_days: days,
            usage_warning_percent,
        }
    }
}

/// An event a plan publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// Event type.
    pub event_type: EventType,
    /// Event data.
    pub data: Map<String, Value>,
}

fn notice(event_type: EventType, data: Value) -> Notice {
    let data = match data {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    Notice { event_type, data }
}

/// One compare-and-set on the notice state, with the events it implies.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The state field.
    pub field: String,
    /// Its value the plan was computed from (`None`: absent).
    pub expect: Option<String>,
    /// Its new value (`None`: remove).
    pub set: Option<String>,
    /// Events to publish, in order, when the swap succeeds.
    pub events: Vec<Notice>,
}

/// Usage level of one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Below the warning line.
    Ok,
    /// At or above the warning line, not over the limit.
    Warning,
    /// Over the limit.
    Exceeded,
}

impl Level {
    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Exceeded => "exceeded",
        }
    }
}

/// `used / limit × 100` rounded to one decimal (a zero limit counts as 0 % unused, 100 % used).
pub fn percent(used: f64, limit: f64) -> f64 {
    if limit <= 0.0 {
        return if used > 0.0 { 100.0 } else { 0.0 };
    }
    (used / limit * 1000.0).round() / 10.0
}

/// The level of `used` against `limit`.
pub fn level(used: f64, limit: f64, rules: &Rules) -> Level {
    if used > limit {
        Level::Exceeded
    } else if limit > 0.0 && used * 100.0 >= rules.usage_warning_percent * limit {
        Level::Warning
    } else {
        Level::Ok
    }
}

fn num(n: &Number) -> f64 {
    n.as_f64().unwrap_or(0.0)
}

/// Whole days left until `t`, rounded up (0 once passed).
pub fn days_left(t: OffsetDateTime, now: OffsetDateTime) -> i64 {
    let secs = (t - now).whole_seconds();
    if secs <= 0 {
        0
    } else {
        (secs + 86_399) / 86_400
    }
}

/// Something that expires: the license, or a module with its own date.
struct Subject<'a> {
    field: String,
    module: Option<&'a str>,
    expires_at: OffsetDateTime,
}

fn subjects(license: &License) -> Vec<Subject<'_>> {
    let mut out = vec![Subject {
        field: "expiry:license".into(),
        module: None,
        expires_at: license.expires_at,
    }];
    for (name, module) in &license.modules {
        // A disabled module is locked already; its own expiry changes nothing for the tenant.
        if let (true, Some(t)) = (module.enabled, module.expires_at) {
            out.push(Subject {
                field: format!("expiry:module:{name}"),
                module: Some(name),
                expires_at: t,
            });
        }
    }
    out
}

/// What a stored expiry state says about expiry date `t`: the smallest threshold notified, and
/// whether the expiry itself was notified. State for another date counts as nothing.
fn expiry_state(stored: Option<&String>, t: OffsetDateTime) -> (Option<u32>, bool) {
    let Some((date, marker)) = stored.and_then(|s| s.split_once('|')) else {
        return (None, false);
    };
    if date != format_date(t) {
        return (None, false);
    }
    match marker {
        "expired" => (Some(0), true),
        m => (m.strip_prefix('t').and_then(|d| d.parse().ok()), false),
    }
}

fn with_module(mut data: Value, module: Option<&str>) -> Value {
    if let (Some(m), Value::Object(map)) = (module, &mut data) {
        map.insert("module".into(), m.into());
    }
    data
}

/// Every notice owed at `now`, as compare-and-set plans (state-only plans re-arm usage notices).
pub fn evaluate(
    license: &License,
    usage: &Usage,
    state: &BTreeMap<String, String>,
    now: OffsetDateTime,
    rules: &Rules,
) -> Vec<Plan> {
    let mut plans = Vec::new();
    for subject in subjects(license) {
        let stored = state.get(&subject.field);
        let (notified, expired) = expiry_state(stored, subject.expires_at);
        let date = format_date(subject.expires_at);
        if now >= subject.expires_at {
            if !expired {
                let mut events = Vec::new();
                if let Some(m) = subject.module {
                    events.push(notice(
                        EventType::ModuleDeactivated,
                        json!({"module": m, "reason": "expired"}),
                    ));
                }
                events.push(notice(
                    EventType::LicenseExpired,
                    with_module(json!({"expiredAt": date}), subject.module),
                ));
                plans.push(Plan {
                    field: subject.field,
                    expect: stored.cloned(),
                    set: Some(format!("{date}|expired")),
                    events,
                });
            }
            continue;
        }
        // The smallest threshold already crossed (several crossed at once: one notice).
        let crossed = rules
            .expiry_warning_days
            .iter()
            .copied()
            .filter(|d| subject.expires_at - now <= Duration::days(*d as i64))
            .min();
        if let Some(threshold) = crossed
            && notified.is_none_or(|n| threshold < n)
        {
            plans.push(Plan {
                field: subject.field,
                expect: stored.cloned(),
                set: Some(format!("{date}|t{threshold}")),
                events: vec![notice(
                    EventType::LicenseExpiring,
                    with_module(
                        json!({
                            "expiresAt": date,
                            "daysLeft": days_left(subject.expires_at, now),
                            "threshold": threshold,
                        }),
                        subject.module,
                    ),
                )],
            });
        }
    }

    for (metric, limit) in &license.limits {
        let field = format!("usage:{metric}");
        let stored = state.get(&field);
        let used = usage
            .get(metric)
            .cloned()
            .unwrap_or_else(|| Number::from(0));
        let now_level = level(num(&used), num(limit), rules);
        let data = || json!({"metric": metric, "used": used, "limit": limit, "percent": percent(num(&used), num(limit))});
        let (set, events) = match (now_level, stored.map(String::as_str)) {
            (Level::Exceeded, Some("exceeded")) | (Level::Warning, Some("warning")) => continue,
            (Level::Ok, None) => continue,
            (Level::Exceeded, _) => (
                Some("exceeded"),
                vec![notice(EventType::UsageLimitExceeded, data())],
            ),
            // Back under the limit after exceeding it: re-arm `exceeded`, no second warning.
            (Level::Warning, Some("exceeded")) => (Some("warning"), vec![]),
            (Level::Warning, _) => (
                Some("warning"),
                vec![notice(EventType::UsageLimitWarning, data())],
            ),
            // Below the warning line: re-arm both.
            (Level::Ok, Some(_)) => (None, vec![]),
        };
        plans.push(Plan {
            field,
            expect: stored.cloned(),
            set: set.map(str::to_owned),
            events,
        });
    }
    // State of metrics whose limit was removed.
    for field in state.keys().filter(|f| f.starts_with("usage:")) {
        if !license.limits.contains_key(&field["usage:".len()..]) {
            plans.push(Plan {
                field: field.clone(),
                expect: state.get(field).cloned(),
                set: None,
                events: vec![],
            });
        }
    }
    plans
}

/// When the next notice falls due after `now` (an expiry threshold or an expiry), if ever.
pub fn next_deadline(
    license: &License,
    rules: &Rules,
    now: OffsetDateTime,
) -> Option<OffsetDateTime> {
    subjects(license)
        .into_iter()
        .flat_map(|s| {
            let t = s.expires_at;
            rules
                .expiry_warning_days
                .iter()
                .map(move |d| t - Duration::days(*d as i64))
                .chain(std::iter::once(t))
        })
        .filter(|t| *t > now)
        .min()
}

/// The events a change of the document implies: module activations and
/// deactivations, then `license_updated` with the changed paths. Identical documents: none.
pub fn diff(old: Option<&License>, new: Option<&License>) -> Vec<Notice> {
    let (old, new) = match (old, new) {
        (None, None) => return vec![],
        (None, Some(_)) => {
            return vec![notice(
                EventType::LicenseUpdated,
                json!({"changes": ["created"]}),
            )];
        }
        (Some(_), None) => {
            return vec![notice(
                EventType::LicenseUpdated,
                json!({"changes": ["deleted"]}),
            )];
        }
        (Some(o), Some(n)) => (o, n),
    };
    let mut changes: Vec<String> = Vec::new();
    let mut events = Vec::new();
    if old.plan != new.plan {
        changes.push("plan".into());
    }
    if old.expires_at != new.expires_at {
        changes.push("expiresAt".into());
    }
    let metrics: std::collections::BTreeSet<&String> =
        old.limits.keys().chain(new.limits.keys()).collect();
    for metric in metrics {
        if old.limits.get(metric) != new.limits.get(metric) {
            changes.push(format!("limits.{metric}"));
        }
    }
    let names: std::collections::BTreeSet<&String> =
        old.modules.keys().chain(new.modules.keys()).collect();
    for name in names {
        let (o, n) = (old.modules.get(name), new.modules.get(name));
        let was = o.is_some_and(|m| m.enabled);
        let is = n.is_some_and(|m| m.enabled);
        if was != is || o.is_none() != n.is_none() {
            changes.push(format!("modules.{name}.enabled"));
        }
        if o.and_then(|m| m.expires_at) != n.and_then(|m| m.expires_at) {
            changes.push(format!("modules.{name}.expiresAt"));
        }
        match (was, is) {
            (false, true) => {
                events.push(notice(EventType::ModuleActivated, json!({"module": name})))
            }
            (true, false) => events.push(notice(
                EventType::ModuleDeactivated,
                json!({"module": name, "reason": "disabled"}),
            )),
            _ => {}
        }
    }
    if !changes.is_empty() {
        events.push(notice(
            EventType::LicenseUpdated,
            json!({"changes": changes}),
        ));
    }
    events
}

/// The computed view of `GET /api/license`.
pub fn status(license: &License, usage: &Usage, now: OffsetDateTime, rules: &Rules) -> Value {
    let largest = rules.expiry_warning_days.first().copied().unwrap_or(0);
    let expired = now >= license.expires_at;
    let status = if expired {
        "expired"
    } else if license.expires_at - now <= Duration::days(largest as i64) {
        "expiring"
    } else {
        "active"
    };
    let mut modules = Map::new();
    for (name, module) in &license.modules {
        let reason = if expired {
            Some("license_expired")
        } else if !module.enabled {
            Some("disabled")
        } else if module.expires_at.is_some_and(|t| now >= t) {
            Some("expired")
        } else {
            None
        };
        let mut m =
            json!({"enabled": module.enabled, "locked": reason.is_some(), "reason": reason});
        if let Some(t) = module.expires_at {
            m["expiresAt"] = format_date(t).into();
        }
        modules.insert(name.clone(), m);
    }
    let mut limits = Map::new();
    for (metric, limit) in &license.limits {
        let used = usage
            .get(metric)
            .cloned()
            .unwrap_or_else(|| Number::from(0));
        let (u, l) = (num(&used), num(limit));
        limits.insert(
            metric.clone(),
            json!({"used": used, "limit": limit, "percent": percent(u, l), "state": level(u, l, rules).as_str()}),
        );
    }
    json!({
        "tenantId": license.tenant_id,
        "license": license,
        "usage": usage,
        "status": status,
        "daysLeft": days_left(license.expires_at, now),
        "modules": modules,
        "limits": limits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
    }

    fn module(enabled: bool, expires: Option<&str>) -> super::super::document::Module {
        super::super::document::Module {
            enabled,
            expires_at: expires.map(at),
        }
    }

    fn license(expires: &str) -> License {
        License {
            tenant_id: "acme".into(),
            plan: "pro".into(),
            expires_at: at(expires),
            modules: BTreeMap::new(),
            limits: BTreeMap::from([("users".to_owned(), Number::from(100))]),
            notifications: None,
        }
    }

    /// Evaluates against the state and applies the plans the way the engine does, returning
    /// the events.
    fn apply(
        state: &mut BTreeMap<String, String>,
        plans_for: impl FnOnce(&BTreeMap<String, String>) -> Vec<Plan>,
    ) -> Vec<Notice> {
        let plans = plans_for(state);
        let mut events = Vec::new();
        for plan in plans {
            assert_eq!(
                state.get(&plan.field),
                plan.expect.as_ref(),
                "plans start from the state"
            );
            match plan.set {
                Some(v) => state.insert(plan.field, v),
                None => state.remove(&plan.field),
            };
            events.extend(plan.events);
        }
        events
    }

    #[test]
    fn usage_sequence_warns_exceeds_and_rearms() {
        let l = license("2030-01-01T00:00:00Z");
        let now = at("2026-01-01T00:00:00Z");
        let rules = Rules::default();
        let mut state = BTreeMap::new();
        let mut seen = Vec::new();
        for used in [79, 81, 85, 101, 70, 82] {
            let usage = Usage::from([("users".to_owned(), Number::from(used))]);
            for e in apply(&mut state, |s| evaluate(&l, &usage, s, now, &rules)) {
                seen.push((used, e.event_type, e.data["percent"].clone()));
            }
        }
        assert_eq!(
            seen,
            vec![
                (81, EventType::UsageLimitWarning, json!(81.0)),
                (101, EventType::UsageLimitExceeded, json!(101.0)),
                (82, EventType::UsageLimitWarning, json!(82.0)),
            ]
        );
        // Evaluating again with no change owes nothing.
        let usage = Usage::from([("users".to_owned(), Number::from(82))]);
        assert!(evaluate(&l, &usage, &state, now, &rules).is_empty());
    }

    #[test]
    fn exceeded_then_warning_range_then_exceeded_again() {
        let l = license("2030-01-01T00:00:00Z");
        let now = at("2026-01-01T00:00:00Z");
        let rules = Rules::default();
        let mut state = BTreeMap::new();
        let mut types = Vec::new();
        for used in [0, 150, 90, 120] {
            let usage = Usage::from([("users".to_owned(), Number::from(used))]);
            types.extend(
                apply(&mut state, |s| evaluate(&l, &usage, s, now, &rules))
                    .into_iter()
                    .map(|e| e.event_type),
            );
        }
        assert_eq!(
            types,
            vec![EventType::UsageLimitExceeded, EventType::UsageLimitExceeded]
        );
    }

    #[test]
    fn expiry_thresholds_notify_once_each_and_the_smallest_when_several_cross() {
        let l = license("2026-02-01T00:00:00Z");
        let rules = Rules::default();
        let mut state = BTreeMap::new();
        let usage = Usage::new();
        let mut seen = Vec::new();
        for now in [
            "2025-12-01T00:00:00Z",
            "2026-01-02T12:00:00Z",
            "2026-01-03T00:00:00Z",
            "2026-01-27T00:00:00Z",
            "2026-01-31T06:00:00Z",
            "2026-01-31T07:00:00Z",
            "2026-02-01T00:00:00Z",
            "2026-02-02T00:00:00Z",
        ] {
            for e in apply(&mut state, |s| evaluate(&l, &usage, s, at(now), &rules)) {
                seen.push((
                    now,
                    e.event_type,
                    e.data.get("threshold").cloned(),
                    e.data.get("daysLeft").cloned(),
                ));
            }
        }
        assert_eq!(
            seen,
            vec![
                (
                    "2026-01-02T12:00:00Z",
                    EventType::LicenseExpiring,
                    Some(json!(30)),
                    Some(json!(30))
                ),
                (
                    "2026-01-27T00:00:00Z",
                    EventType::LicenseExpiring,
                    Some(json!(7)),
                    Some(json!(5))
                ),
                (
                    "2026-01-31T06:00:00Z",
                    EventType::LicenseExpiring,
                    Some(json!(1)),
                    Some(json!(1))
                ),
                (
                    "2026-02-01T00:00:00Z",
                    EventType::LicenseExpired,
                    None,
                    None
                ),
            ]
        );
        // Created five days before expiry: one notice, for the smallest crossed threshold.
        let mut state = BTreeMap::new();
        let events = apply(&mut state, |s| {
            evaluate(&l, &usage, s, at("2026-01-27T00:00:00Z"), &rules)
        });
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data["threshold"], 7);
        // A renewal is a new expiry date: its thresholds notify again.
        let renewed = license("2026-02-20T00:00:00Z");
        let events = apply(&mut state, |s| {
            evaluate(&renewed, &usage, s, at("2026-02-15T00:00:00Z"), &rules)
        });
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data["expiresAt"], "2026-02-20T00:00:00Z");
    }

    #[test]
    fn module_expiry_deactivates_and_expires_with_the_module_named() {
        let mut l = license("2030-01-01T00:00:00Z");
        l.modules.insert(
            "analytics".into(),
            module(true, Some("2026-03-01T00:00:00Z")),
        );
        l.modules
            .insert("old".into(), module(false, Some("2026-03-01T00:00:00Z")));
        let mut state = BTreeMap::new();
        let events = apply(&mut state, |s| {
            evaluate(
                &l,
                &Usage::new(),
                s,
                at("2026-03-01T00:00:01Z"),
                &Rules::default(),
            )
        });
        let summary: Vec<(EventType, Value)> = events
            .iter()
            .map(|e| (e.event_type, Value::Object(e.data.clone())))
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    EventType::ModuleDeactivated,
                    json!({"module": "analytics", "reason": "expired"})
                ),
                (
                    EventType::LicenseExpired,
                    json!({"expiredAt": "2026-03-01T00:00:00Z", "module": "analytics"})
                ),
            ]
        );
        assert_eq!(
            next_deadline(&l, &Rules::default(), at("2026-02-20T00:00:00Z")),
            Some(at("2026-02-22T00:00:00Z")),
            "the module's 7-day threshold comes next"
        );
    }

    #[test]
    fn diff_lists_changes_and_module_transitions() {
        let mut old = license("2030-01-01T00:00:00Z");
        old.modules.insert("a".into(), module(true, None));
        old.modules.insert("b".into(), module(false, None));
        assert!(diff(Some(&old), Some(&old)).is_empty());
        let mut new = old.clone();
        new.plan = "enterprise".into();
        new.limits.insert("users".into(), Number::from(200));
        new.modules.get_mut("a").unwrap().enabled = false;
        new.modules.get_mut("b").unwrap().enabled = true;
        new.modules
            .insert("c".into(), module(true, Some("2027-01-01T00:00:00Z")));
        let events = diff(Some(&old), Some(&new));
        let summary: Vec<(EventType, Value)> = events
            .iter()
            .map(|e| (e.event_type, Value::Object(e.data.clone())))
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    EventType::ModuleDeactivated,
                    json!({"module": "a", "reason": "disabled"})
                ),
                (EventType::ModuleActivated, json!({"module": "b"})),
                (EventType::ModuleActivated, json!({"module": "c"})),
                (
                    EventType::LicenseUpdated,
                    json!({"changes": ["plan", "limits.users", "modules.a.enabled", "modules.b.enabled", "modules.c.enabled", "modules.c.expiresAt"]})
                ),
            ]
        );
        assert_eq!(
            diff(None, Some(&old))[0].data["changes"],
            json!(["created"])
        );
        assert_eq!(
            diff(Some(&old), None)[0].data["changes"],
            json!(["deleted"])
        );
    }

    #[test]
    fn status_shows_expiry_locks_and_limits() {
        let mut l = license("2026-01-10T00:00:00Z");
        l.modules.insert("a".into(), module(true, None));
        l.modules.insert("b".into(), module(false, None));
        l.modules
            .insert("c".into(), module(true, Some("2025-12-01T00:00:00Z")));
        let usage = Usage::from([("users".to_owned(), Number::from(85))]);
        let rules = Rules::default();
        let s = status(&l, &usage, at("2025-12-29T12:00:00Z"), &rules);
        assert_eq!(s["status"], "expiring");
        assert_eq!(s["daysLeft"], 12);
        assert_eq!(
            s["modules"]["a"],
            json!({"enabled": true, "locked": false, "reason": null})
        );
        assert_eq!(s["modules"]["b"]["reason"], "disabled");
        assert_eq!(s["modules"]["c"]["reason"], "expired");
        assert_eq!(
            s["limits"]["users"],
            json!({"used": 85, "limit": 100, "percent": 85.0, "state": "warning"})
        );
        assert_eq!(
            status(&l, &usage, at("2025-01-01T00:00:00Z"), &rules)["status"],
            "active"
        );
        let s = status(&l, &usage, at("2026-01-10T00:00:00Z"), &rules);
        assert_eq!(s["status"], "expired");
        assert_eq!(s["daysLeft"], 0);
        assert_eq!(s["modules"]["a"]["reason"], "license_expired");
    }

    #[test]
    fn a_tenants_own_thresholds_replace_the_nodes() {
        let node = Rules::new(vec![30, 7, 1], 80.0);
        let mut license = license("2027-01-01T00:00:00Z");
        assert_eq!(node.for_license(&license), node);
        license.notifications = Some(crate::license::document::Thresholds {
            expiry_warning_days: Some(vec![14, 60, 14]),
            usage_warning_percent: None,
        });
        let own = node.for_license(&license);
        assert_eq!(own.expiry_warning_days, vec![60, 14]);
        assert_eq!(own.usage_warning_percent, 80.0);
    }
}
