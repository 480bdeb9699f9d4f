//! The Lua scripts (each in its own file beside this one) and the shapes of what they read and
//! return.

use std::collections::BTreeMap;

use fred::types::scripts::Script;
use serde::Deserialize;

use crate::engine::{Change, DocWrite, Expect, IDEMPOTENCY_MAX_KEYS};

/// The engine's scripts, loaded once (EVALSHA, reloaded when the server lost them).
pub struct Scripts {
    /// `apply.lua`: a change's conditions, writes, history appends and publishes, atomically.
    pub apply: Script,
    /// `load.lua`: document, usage and notice state in one read.
    pub load: Script,
    /// `history.lua`: events after an id, or why there are none.
    pub history: Script,
    /// `newest_id.lua`: the newest history id.
    pub newest_id: Script,
    /// `seat_claim.lua`: one of a tenant's seats, checked against every live node's.
    pub seat_claim: Script,
    /// `seat_release.lua`: a seat given back.
    pub seat_release: Script,
    /// `seat_refresh.lua`: a node's seats of a tenant set and kept alive.
    pub seat_refresh: Script,
    /// `notifications.lua`: one user's notifications, read state and preferences; stats.
    pub notifications: Script,
    /// `deliveries.lua`: claim, finish and redeliver on a tenant's delivery queue.
    pub deliveries: Script,
}

impl Default for Scripts {
    /// The scripts, from the files compiled into the binary.
    fn default() -> Self {
        Self {
            // Both carry the notification rules of `inbox.lua`.
            apply: Script::from_lua(concat!(
                include_str!("scripts/inbox.lua"),
                include_str!("scripts/apply.lua")
            )),
            deliveries: Script::from_lua(include_str!("scripts/deliveries.lua")),
            notifications: Script::from_lua(concat!(
                include_str!("scripts/inbox.lua"),
                include_str!("scripts/notifications.lua")
            )),
            load: Script::from_lua(include_str!("scripts/load.lua")),
            history: Script::from_lua(include_str!("scripts/history.lua")),
            newest_id: Script::from_lua(include_str!("scripts/newest_id.lua")),
            seat_claim: Script::from_lua(include_str!("scripts/seat_claim.lua")),
            seat_release: Script::from_lua(include_str!("scripts/seat_release.lua")),
            seat_refresh: Script::from_lua(include_str!("scripts/seat_refresh.lua")),
        }
    }
}

/// The change as `apply.lua` reads it.
#[derive(serde::Serialize)]
pub struct ApplySpec<'a> {
    doc_check: bool,
    doc_expect: Option<&'a str>,
    doc_write: bool,
    doc_set: Option<&'a str>,
    notices: Vec<SwapSpec<'a>>,
    /// Each event's envelope before and after its id (the script fills the id in).
    events: &'a [(String, String)],
    /// Each event's type, severity (0–2) and module, for the notification rules.
    meta: Vec<(&'static str, u8, Option<&'a str>)>,
    /// The publisher's idempotency key, if any.
    idem: Option<IdemSpec<'a>>,
}

/// An idempotency key as `apply.lua` reads it.
#[derive(serde::Serialize)]
struct IdemSpec<'a> {
    key: &'a str,
    fp: &'a str,
    /// Milliseconds the key is remembered.
    ttl: u64,
    /// Keys remembered per tenant at most.
    max: usize,
}

#[derive(serde::Serialize)]
struct SwapSpec<'a> {
    field: &'a str,
    expect: Option<&'a str>,
    set: Option<&'a str>,
}

impl<'a> ApplySpec<'a> {
    /// The script's view of `change`, with the events already split around their ids.
    pub fn new(change: &'a Change, events: &'a [(String, String)]) -> Self {
        let (doc_check, doc_expect) = match &change.doc_expect {
            Expect::Any => (false, None),
            Expect::Absent => (true, None),
            Expect::Value(v) => (true, Some(v.as_str())),
        };
        let (doc_write, doc_set) = match &change.doc {
            DocWrite::Keep => (false, None),
            DocWrite::Set(doc) => (true, Some(doc.as_str())),
            DocWrite::Delete => (true, None),
        };
        Self {
            doc_check,
            doc_expect,
            doc_write,
            doc_set,
            notices: change
                .notices
                .iter()
                .map(|f| SwapSpec {
                    field: &f.field,
                    expect: f.expect.as_deref(),
                    set: f.set.as_deref(),
                })
                .collect(),
            events,
            meta: change
                .events
                .iter()
                .map(|d| {
                    (
                        d.event_type.as_str(),
                        d.event_type.severity() as u8,
                        d.data.get("module").and_then(|m| m.as_str()),
                    )
                })
                .collect(),
            idem: change.idempotency.as_ref().map(|k| IdemSpec {
                key: &k.key,
                fp: &k.fingerprint,
                ttl: k.ttl.as_millis().max(1) as u64,
                max: IDEMPOTENCY_MAX_KEYS,
            }),
        }
    }
}

/// The record as `load.lua` returns it (hashes as flat key/value lists).
#[derive(Deserialize)]
pub struct LoadedRecord {
    /// The document JSON.
    pub doc: Option<String>,
    /// Usage counters.
    #[serde(default, deserialize_with = "flat_pairs")]
    pub usage: BTreeMap<String, String>,
    /// Notice state.
    #[serde(default, deserialize_with = "flat_pairs")]
    pub notices: BTreeMap<String, String>,
}

/// HGETALL's flat list; Lua's cjson encodes an empty one as `{}`.
fn flat_pairs<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    let mut out = BTreeMap::new();
    if let serde_json::Value::Array(items) = value {
        for pair in items.chunks(2) {
            if let [serde_json::Value::String(k), serde_json::Value::String(v)] = pair {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_records_accept_cjson_empty_hashes() {
        let r: LoadedRecord =
            serde_json::from_str(r#"{"doc":null,"usage":{},"notices":["a","1"]}"#).unwrap();
        assert_eq!(r.doc, None);
        assert!(r.usage.is_empty());
        assert_eq!(r.notices.get("a").map(String::as_str), Some("1"));
    }

    #[test]
    fn doc_writes_map_onto_the_script_flags() {
        let mut change = Change::publish(Vec::new());
        change.doc = DocWrite::Delete;
        let json = serde_json::to_value(ApplySpec::new(&change, &[])).unwrap();
        assert_eq!(json["doc_write"], true);
        assert!(json["doc_set"].is_null());
        change.doc = DocWrite::Keep;
        let json = serde_json::to_value(ApplySpec::new(&change, &[])).unwrap();
        assert_eq!(json["doc_write"], false);
    }
}
