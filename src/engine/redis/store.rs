//! The license store role on Redis: `apply.lua` for every conditional change (and every
//! publish), `load.lua` for one-step reads, a sorted set of deadlines.

use async_trait::async_trait;
use fred::prelude::*;

use super::keys::{
    DEADLINES_KEY, DOC_PATTERN, delivery_keys, doc_key, events_channel, history_key,
    idempotency_expiry_key, idempotency_key, notices_key, notification_keys, stats_key_parts,
    tenant_of_doc_key, usage_key,
};
use super::scripts::{ApplySpec, LoadedRecord};
use super::{RedisEngine, unavailable};
use crate::engine::{Applied, Change, EngineError, LicenseStore, Published, TenantRecord};
use crate::protocol::{EventId, Payload};

#[async_trait]
impl LicenseStore for RedisEngine {
    #[tracing::instrument(name = "publish", skip_all, fields(otel.kind = "producer", engine = "redis", tenant = %tenant, events = change.events.len()))]
    async fn apply(&self, tenant: &str, change: &Change) -> Result<Applied, EngineError> {
        let trace = crate::telemetry::current_traceparent();
        let parts: Vec<(String, String)> = change
            .events
            .iter()
            .map(|d| d.envelope_parts(trace.as_deref()))
            .collect();
        let spec = serde_json::to_string(&ApplySpec::new(change, &parts))
            .map_err(|e| EngineError::Protocol(e.to_string()))?;
        let mut keys = vec![
            history_key(tenant),
            events_channel(tenant),
            doc_key(tenant),
            notices_key(tenant),
            idempotency_key(tenant),
            idempotency_expiry_key(tenant),
        ];
        keys.extend(notification_keys(tenant));
        keys.extend(delivery_keys(tenant));
        let [stats_a, stats_b] = stats_key_parts(tenant);
        let retention = self.history.notifications;
        let args: Vec<Value> = vec![
            (self.history.size as i64).into(),
            (self.history.ttl.as_millis() as i64).into(),
            self.publish_command().into(),
            spec.into(),
            (retention.age.as_millis().max(1) as i64).into(),
            (retention.max as i64).into(),
            stats_a.into(),
            stats_b.into(),
        ];
        // The Redis hop of the publish trace (OpenTelemetry database client conventions).
        let redis_span = tracing::info_span!(
            "redis EVALSHA",
            otel.kind = "client",
            db.system.name = "redis",
            db.operation.name = "EVALSHA"
        );
        let reply: Vec<String> = tracing::Instrument::instrument(
            self.scripts
                .apply
                .evalsha_with_reload(&self.client, keys, args),
            redis_span,
        )
        .await
        .map_err(unavailable)?;
        // A trailing 'jobs': deliveries were queued; workers find the tenant through the index.
        let (reply, queued) = match reply.split_last() {
            Some((last, rest)) if last == "jobs" => (rest, true),
            _ => (reply.as_slice(), false),
        };
        let applied = parse_applied(reply, parts)?;
        if queued {
            self.index_deliveries(tenant, crate::protocol::now_ms())
                .await;
        }
        if matches!(applied, Applied::Done(_)) {
            for draft in &change.events {
                crate::metrics::event_published(draft.event_type);
            }
        }
        Ok(applied)
    }

    async fn load(&self, tenant: &str) -> Result<TenantRecord, EngineError> {
        let keys = vec![doc_key(tenant), usage_key(tenant), notices_key(tenant)];
        let json: String = self
            .scripts
            .load
            .evalsha_with_reload(&self.client, keys, Vec::<Value>::new())
            .await
            .map_err(unavailable)?;
        let loaded: LoadedRecord = serde_json::from_str(&json)
            .map_err(|e| EngineError::Protocol(format!("load script: {e}")))?;
        Ok(TenantRecord {
            doc: loaded.doc,
            usage: loaded.usage,
            notices: loaded.notices,
        })
    }

    async fn merge_usage(
        &self,
        tenant: &str,
        usage: &[(String, String)],
    ) -> Result<(), EngineError> {
        let values: Vec<(String, String)> = usage.to_vec();
        let _: () = self
            .client
            .hset(usage_key(tenant), values)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn licensed_tenants(&self) -> Result<Vec<String>, EngineError> {
        use futures_util::TryStreamExt;
        let keys: Vec<Key> = if self.cluster {
            // Every master holds part of the keyspace.
            self.client
                .scan_cluster_buffered(DOC_PATTERN, Some(1000), None)
                .try_collect()
                .await
        } else {
            self.client
                .scan_buffered(DOC_PATTERN, Some(1000), None)
                .try_collect()
                .await
        }
        .map_err(unavailable)?;
        Ok(keys
            .iter()
            .filter_map(|k| k.as_str())
            .filter_map(tenant_of_doc_key)
            .map(str::to_owned)
            .collect())
    }

    async fn set_deadline(&self, tenant: &str, at_ms: Option<u64>) -> Result<(), EngineError> {
        let _: () = match at_ms {
            Some(ms) => self
                .client
                .zadd(DEADLINES_KEY, None, None, false, false, (ms as f64, tenant))
                .await
                .map_err(unavailable)?,
            None => self
                .client
                .zrem(DEADLINES_KEY, tenant)
                .await
                .map_err(unavailable)?,
        };
        Ok(())
    }

    async fn due_tenants(&self, now_ms: u64) -> Result<Vec<String>, EngineError> {
        self.client
            .zrangebyscore(DEADLINES_KEY, f64::NEG_INFINITY, now_ms as f64, false, None)
            .await
            .map_err(unavailable)
    }
}

/// Reads `apply.lua`'s reply: the ids it assigned, joined with each event's envelope parts.
fn parse_applied(reply: &[String], parts: Vec<(String, String)>) -> Result<Applied, EngineError> {
    match reply.split_first() {
        Some((status, _)) if status == "conflict" => Ok(Applied::Conflict),
        Some((status, _)) if status == "reused" => Ok(Applied::KeyReused),
        Some((status, rest)) if status == "replayed" && rest.len() == 2 => {
            let id: EventId = rest[0].parse().map_err(|_| {
                EngineError::Protocol(format!("apply script replayed id {:?}", rest[0]))
            })?;
            Ok(Applied::Replayed(Published {
                id,
                payload: Payload::from(rest[1].as_str()),
            }))
        }
        Some((status, ids)) if status == "ok" && ids.len() == parts.len() => {
            let mut published = Vec::with_capacity(ids.len());
            for (id, (prefix, suffix)) in ids.iter().zip(parts) {
                let id: EventId = id.parse().map_err(|_| {
                    EngineError::Protocol(format!("apply script returned id {id:?}"))
                })?;
                published.push(Published {
                    id,
                    payload: Payload::from(format!("{prefix}{id}{suffix}")),
                });
            }
            Ok(Applied::Done(published))
        }
        _ => Err(EngineError::Protocol(format!(
            "apply script returned {reply:?}"
        ))),
    }
}
