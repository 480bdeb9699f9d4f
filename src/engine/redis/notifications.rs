//! The notification store role on Redis: `notifications.lua` for every per-user step (its rules
//! shared with `apply.lua` through `inbox.lua`), HINCRBY for the nodes' delivery counts.

use async_trait::async_trait;
use fred::prelude::*;
use serde::Deserialize;
use std::collections::BTreeMap;

use super::keys::{events_channel, notification_keys, stats_key, stats_key_parts};
use super::{RedisEngine, unavailable};
use crate::engine::{Delivered, EngineError, NotificationStore};
use crate::notifications::stats::{TypeStats, median};
use crate::notifications::{Batch, Preferences, ReadChange, ReadState, UserSummary, Versioned};
use crate::protocol::{EventId, EventType, Payload};

/// One type's figures as the stats step returns them.
#[derive(Deserialize)]
struct RawStats {
    p: u64,
    d: u64,
    r: u64,
    /// Seconds to read; cjson writes an empty list as `{}`.
    #[serde(default, deserialize_with = "samples")]
    s: Vec<u64>,
}

fn samples<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(value
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
        .unwrap_or_default())
}

fn protocol(what: &str, reply: impl std::fmt::Debug) -> EngineError {
    EngineError::Protocol(format!("notifications script {what}: {reply:?}"))
}

impl RedisEngine {
    /// Runs one step of `notifications.lua` for `user` of `tenant`.
    async fn inbox_step<R: FromValue>(
        &self,
        tenant: &str,
        user: &str,
        step: &str,
        extra: Vec<Value>,
    ) -> Result<R, EngineError> {
        let mut keys: Vec<String> = notification_keys(tenant).into();
        keys.push(events_channel(tenant));
        let [stats_a, stats_b] = stats_key_parts(tenant);
        let retention = self.history.notifications;
        let mut args: Vec<Value> = vec![
            step.into(),
            (retention.age.as_millis().max(1) as i64).into(),
            (retention.max as i64).into(),
            self.publish_command().into(),
            tenant.into(),
            stats_a.into(),
            stats_b.into(),
            user.into(),
        ];
        args.extend(extra);
        self.scripts
            .notifications
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(unavailable)
    }
}

fn parse_id(text: &str) -> Result<EventId, EngineError> {
    text.parse().map_err(|_| protocol("id", text))
}

#[async_trait]
impl NotificationStore for RedisEngine {
    async fn user_summary(&self, tenant: &str, user: &str) -> Result<UserSummary, EngineError> {
        let (unread, prefs): (u64, Option<String>) =
            self.inbox_step(tenant, user, "summary", Vec::new()).await?;
        let preferences = prefs.map(|json| parse_stored(&json)).transpose()?;
        Ok(UserSummary {
            unread,
            preferences,
        })
    }

    async fn notifications_before(
        &self,
        tenant: &str,
        user: &str,
        before: Option<EventId>,
        count: usize,
    ) -> Result<Batch, EngineError> {
        let before = before.map(|id| id.to_string()).unwrap_or_default();
        let reply: Vec<Value> = self
            .inbox_step(
                tenant,
                user,
                "page",
                vec![before.into(), (count as i64).into()],
            )
            .await?;
        let number = |v: &Value| v.as_u64().ok_or_else(|| protocol("page", v));
        let (Some(unread), Some(more)) = (reply.first(), reply.get(1)) else {
            return Err(protocol("page", &reply));
        };
        let mut batch = Batch {
            items: Vec::new(),
            more: number(more)? == 1,
            unread: number(unread)?,
        };
        for item in reply[2..].chunks(3) {
            let [id, envelope, read] = item else {
                return Err(protocol("page", item));
            };
            let id = parse_id(&id.as_string().ok_or_else(|| protocol("page", id))?)?;
            let envelope = envelope
                .as_string()
                .ok_or_else(|| protocol("page", envelope))?;
            batch
                .items
                .push((id, Payload::from(envelope), number(read)? == 1));
        }
        Ok(batch)
    }

    async fn change_read_state(
        &self,
        tenant: &str,
        user: &str,
        change: ReadChange,
    ) -> Result<Option<ReadState>, EngineError> {
        let (step, arg, changed) = match change {
            ReadChange::Read(id) => ("read", id.to_string(), vec![(id, true)]),
            ReadChange::Unread(id) => ("unread", id.to_string(), vec![(id, false)]),
            ReadChange::ReadAll(up_to) => (
                "readall",
                up_to.map(|id| id.to_string()).unwrap_or_default(),
                Vec::new(),
            ),
        };
        let reply: Vec<String> = self
            .inbox_step(tenant, user, step, vec![arg.into()])
            .await?;
        match reply.as_slice() {
            [status] if status == "missing" => Ok(None),
            [status, unread, rest @ ..] if status == "ok" => Ok(Some(ReadState {
                unread: unread.parse().map_err(|_| protocol(step, &reply))?,
                changed,
                read_up_to: match rest.first() {
                    Some(id) if !id.is_empty() => Some(parse_id(id)?),
                    _ => None,
                },
            })),
            _ => Err(protocol(step, &reply)),
        }
    }

    async fn set_preferences(
        &self,
        tenant: &str,
        user: &str,
        preferences: &Preferences,
    ) -> Result<Versioned, EngineError> {
        let json = serde_json::to_string(preferences).map_err(|e| protocol("prefs", e))?;
        let version: u64 = self
            .inbox_step(tenant, user, "prefs", vec![json.into()])
            .await?;
        Ok(Versioned {
            version,
            preferences: preferences.clone(),
        })
    }

    async fn record_deliveries(&self, delivered: &[Delivered]) -> Result<(), EngineError> {
        let expire = self.history.notifications.age.as_millis() as i64 + 86_400_000;
        let pipeline = self.client.pipeline();
        for d in delivered {
            let key = stats_key(&d.tenant, d.day);
            let field = format!("{}:d", d.event_type.as_str());
            let _: () = pipeline
                .hincrby(&key, field, d.count as i64)
                .await
                .map_err(unavailable)?;
            let _: () = pipeline
                .pexpire(&key, expire, None)
                .await
                .map_err(unavailable)?;
        }
        let _: Vec<Value> = pipeline.all().await.map_err(unavailable)?;
        Ok(())
    }

    async fn notification_stats(
        &self,
        tenant: &str,
        first_day: u64,
    ) -> Result<Vec<TypeStats>, EngineError> {
        let today = crate::notifications::stats::day_of(crate::protocol::now_ms());
        let json: String = self
            .inbox_step(
                tenant,
                "",
                "stats",
                vec![(first_day as i64).into(), (today as i64).into()],
            )
            .await?;
        // cjson writes an empty table as `{}` either way.
        let raw: BTreeMap<String, RawStats> =
            serde_json::from_str(&json).map_err(|e| protocol("stats", e))?;
        let mut out: Vec<TypeStats> = raw
            .into_iter()
            .filter_map(|(t, mut s)| {
                Some(TypeStats {
                    event_type: t.parse::<EventType>().ok()?,
                    published: s.p,
                    delivered: s.d,
                    read_by: s.r,
                    median_seconds_to_read: median(&mut s.s),
                })
            })
            .collect();
        out.sort_by_key(|s| s.event_type);
        Ok(out)
    }
}

/// Preferences as `notifications.lua` stores them: `{"v": version, "p": preferences}`.
fn parse_stored(json: &str) -> Result<Versioned, EngineError> {
    #[derive(Deserialize)]
    struct Stored {
        v: u64,
        p: serde_json::Value,
    }
    let stored: Stored = serde_json::from_str(json).map_err(|e| protocol("prefs", e))?;
    let preferences = Preferences::parse(stored.p.to_string().as_bytes())
        .map_err(|e| protocol("prefs", e.message))?;
    Ok(Versioned {
        version: stored.v,
        preferences,
    })
}
