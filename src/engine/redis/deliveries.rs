//! The delivery store role on Redis: `deliveries.lua` on each tenant's queue (enqueued by
//! `apply.lua`), and an index of tenants with queued deliveries (`license:dq-due`) that workers
//! poll. The index is a hint kept outside the tenants' slots (a cluster cannot update it in the
//! same step): publishers and workers update it after their step, and
//! [`DeliveryStore::repair_delivery_index`] rebuilds it from the queues.

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::sorted_sets::Ordering;

use super::keys::{
    DELIVERY_INDEX_KEY, DELIVERY_QUEUE_PATTERN, delivery_keys, delivery_log_key, email_count_key,
    email_digest_key, notification_keys, tenant_of_queue_key,
};
use super::{RedisEngine, unavailable};
use crate::delivery::endpoint::{DIGEST_ENDPOINT, EMAIL_ENDPOINT, EmailSettings, Webhook};
use crate::engine::EngineError;
use crate::engine::deliveries::{Attempt, DeliveryStore, Job, LOG_LEN, Outcome, Target, job_key};
use crate::protocol::{EventId, Payload};

/// Cap windows and digests are forgotten this long after they were last written.
const WINDOW_MEMORY_MS: i64 = 86_400_000;

fn protocol(what: &str, detail: impl std::fmt::Debug) -> EngineError {
    EngineError::Protocol(format!("deliveries {what}: {detail:?}"))
}

impl RedisEngine {
    /// Runs one step of `deliveries.lua`; `list` is its sixth key (a log or a digest list).
    async fn queue_step<R: FromValue>(
        &self,
        tenant: &str,
        list: Option<String>,
        args: Vec<Value>,
    ) -> Result<R, EngineError> {
        let mut keys: Vec<String> = delivery_keys(tenant).into();
        keys.push(notification_keys(tenant)[1].clone());
        keys.push(list.unwrap_or_else(|| delivery_log_key(tenant, "")));
        self.scripts
            .deliveries
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(unavailable)
    }

    /// Sets the tenant's index score to `at` unless it is already lower (ZADD LT).
    async fn lower_index(&self, tenant: &str, at: f64) -> Result<(), fred::error::Error> {
        self.client
            .zadd(
                DELIVERY_INDEX_KEY,
                None,
                Some(Ordering::LessThan),
                false,
                false,
                (at, tenant),
            )
            .await
    }

    /// Lowers the tenant's index score to its queue's earliest due time (after a publish or a
    /// redelivery queued something). Best effort: the repair finds what a failure here misses.
    pub(super) async fn index_deliveries(&self, tenant: &str, _hint_ms: u64) {
        let earliest: Option<f64> = match self.queue_step(tenant, None, vec!["peek".into()]).await {
            Ok(earliest) => earliest,
            Err(error) => {
                tracing::debug!(tenant, %error, "delivery index not updated");
                return;
            }
        };
        if let Some(at) = earliest {
            if let Err(error) = self.lower_index(tenant, at).await {
                tracing::debug!(tenant, %error, "delivery index not updated");
            }
        }
    }
}

#[async_trait]
impl DeliveryStore for RedisEngine {
    async fn put_webhook(
        &self,
        tenant: &str,
        name: &str,
        webhook: &Webhook,
    ) -> Result<bool, EngineError> {
        let [hooks, ..] = delivery_keys(tenant);
        let added: i64 = self
            .client
            .hset(hooks, (name, webhook.to_stored()))
            .await
            .map_err(unavailable)?;
        Ok(added == 1)
    }

    async fn webhooks(&self, tenant: &str) -> Result<Vec<(String, Webhook)>, EngineError> {
        let [hooks, ..] = delivery_keys(tenant);
        let all: std::collections::BTreeMap<String, String> =
            self.client.hgetall(hooks).await.map_err(unavailable)?;
        all.into_iter()
            // '@' names are the email settings kept beside the endpoints.
            .filter(|(name, _)| !name.starts_with('@'))
            .map(|(name, json)| {
                Webhook::from_stored(&json)
                    .map(|w| (name, w))
                    .map_err(|e| protocol("stored endpoint", e))
            })
            .collect()
    }

    async fn delete_webhook(&self, tenant: &str, name: &str) -> Result<bool, EngineError> {
        let [hooks, ..] = delivery_keys(tenant);
        let removed: i64 = self.client.hdel(hooks, name).await.map_err(unavailable)?;
        let _: i64 = self
            .client
            .del(delivery_log_key(tenant, name))
            .await
            .map_err(unavailable)?;
        Ok(removed == 1)
    }

    async fn delivery_tenants(&self, now_ms: u64) -> Result<Vec<String>, EngineError> {
        self.client
            .zrangebyscore(
                DELIVERY_INDEX_KEY,
                f64::NEG_INFINITY,
                now_ms as f64,
                false,
                Some((0, 100)),
            )
            .await
            .map_err(unavailable)
    }

    async fn claim(
        &self,
        tenant: &str,
        now_ms: u64,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<Job>, EngineError> {
        let args: Vec<Value> = vec![
            "claim".into(),
            (now_ms as i64).into(),
            (lease.as_millis() as i64).into(),
            (max as i64).into(),
        ];
        let reply: Vec<Value> = self.queue_step(tenant, None, args).await?;
        let Some((next, rest)) = reply.split_first() else {
            return Err(protocol("claim", &reply));
        };
        let mut jobs = Vec::new();
        for item in rest.chunks(4) {
            let [key, attempt, envelope, hook] = item else {
                return Err(protocol("claim", item));
            };
            let key = key.as_string().ok_or_else(|| protocol("claim", key))?;
            let (endpoint, event) = key
                .strip_prefix("w|")
                .and_then(|k| k.rsplit_once('|'))
                .ok_or_else(|| protocol("job", &key))?;
            let stored = hook.as_string().unwrap_or_default();
            jobs.push(Job {
                endpoint: endpoint.to_owned(),
                event_id: event.parse().map_err(|_| protocol("job", &key))?,
                attempt: attempt.as_u64().ok_or_else(|| protocol("claim", attempt))? as u32,
                payload: Payload::from(envelope.as_string().unwrap_or_default()),
                target: (!stored.is_empty())
                    .then(|| Target::from_stored(endpoint, &stored))
                    .transpose()
                    .map_err(|e| protocol("stored endpoint", e))?,
            });
        }
        // The index now says when this tenant is next due; a publish racing with this update
        // lowers it again afterwards (ZADD LT in index_deliveries), and the peek below catches
        // one that queued before it.
        let next = next.as_f64();
        let _: Result<(), _> = match next {
            Some(at) => {
                self.client
                    .zadd(DELIVERY_INDEX_KEY, None, None, false, false, (at, tenant))
                    .await
            }
            None => self.client.zrem(DELIVERY_INDEX_KEY, tenant).await,
        };
        self.index_deliveries(tenant, now_ms).await;
        Ok(jobs)
    }

    async fn finish(
        &self,
        tenant: &str,
        job: &Job,
        outcome: Outcome,
        attempt: &Attempt,
    ) -> Result<(), EngineError> {
        let entry = serde_json::to_string(attempt).map_err(|e| protocol("log entry", e))?;
        let (word, at) = match outcome {
            Outcome::Delivered => ("delivered", 0),
            Outcome::Retry { at_ms } => ("retry", at_ms),
            Outcome::Failed => ("failed", 0),
            Outcome::Gone => ("gone", 0),
            Outcome::Dropped => ("dropped", 0),
            Outcome::Digested => ("digested", 0),
        };
        // A digest is logged with the tenant's email deliveries.
        let log_name = if job.endpoint == DIGEST_ENDPOINT {
            EMAIL_ENDPOINT
        } else {
            job.endpoint.as_str()
        };
        let args: Vec<Value> = vec![
            "finish".into(),
            job.key().into(),
            (job.attempt as i64).to_string().into(),
            word.into(),
            (at as i64).into(),
            entry.into(),
            log_name.into(),
            (LOG_LEN as i64).into(),
        ];
        let log = delivery_log_key(tenant, log_name);
        let _: i64 = self.queue_step(tenant, Some(log), args).await?;
        if let Outcome::Retry { at_ms } = outcome {
            // Best effort, like every index update: the repair finds what this misses.
            let _ = self.lower_index(tenant, at_ms as f64).await;
        }
        Ok(())
    }

    async fn attempts(
        &self,
        tenant: &str,
        name: &str,
        limit: usize,
    ) -> Result<Vec<Attempt>, EngineError> {
        let entries: Vec<String> = self
            .client
            .lrange(delivery_log_key(tenant, name), 0, limit as i64 - 1)
            .await
            .map_err(unavailable)?;
        entries
            .iter()
            .map(|e| serde_json::from_str(e).map_err(|err| protocol("log entry", err)))
            .collect()
    }

    async fn redeliver(
        &self,
        tenant: &str,
        name: &str,
        event: EventId,
    ) -> Result<bool, EngineError> {
        let args: Vec<Value> = vec![
            "redeliver".into(),
            job_key(name, event).into(),
            name.into(),
            event.to_string().into(),
        ];
        let queued: i64 = self.queue_step(tenant, None, args).await?;
        if queued == 1 {
            self.index_deliveries(tenant, 0).await;
        }
        Ok(queued == 1)
    }

    async fn put_email(
        &self,
        tenant: &str,
        settings: Option<&EmailSettings>,
    ) -> Result<bool, EngineError> {
        let [hooks, ..] = delivery_keys(tenant);
        match settings {
            Some(settings) => {
                let added: i64 = self
                    .client
                    .hset(hooks, (EMAIL_ENDPOINT, settings.to_stored()))
                    .await
                    .map_err(unavailable)?;
                Ok(added == 0)
            }
            None => {
                let removed: i64 = self
                    .client
                    .hdel(hooks, EMAIL_ENDPOINT)
                    .await
                    .map_err(unavailable)?;
                let _: i64 = self
                    .client
                    .del(delivery_log_key(tenant, EMAIL_ENDPOINT))
                    .await
                    .map_err(unavailable)?;
                Ok(removed == 1)
            }
        }
    }

    async fn email(&self, tenant: &str) -> Result<Option<EmailSettings>, EngineError> {
        let [hooks, ..] = delivery_keys(tenant);
        let stored: Option<String> = self
            .client
            .hget(hooks, EMAIL_ENDPOINT)
            .await
            .map_err(unavailable)?;
        stored
            .map(|s| EmailSettings::from_stored(&s).map_err(|e| protocol("email settings", e)))
            .transpose()
    }

    async fn email_quota(
        &self,
        tenant: &str,
        window_end_ms: u64,
        max: u32,
    ) -> Result<bool, EngineError> {
        let key = email_count_key(tenant, window_end_ms);
        let sent: i64 = self.client.incr(&key).await.map_err(unavailable)?;
        let _: bool = self
            .client
            .pexpire(&key, WINDOW_MEMORY_MS, None)
            .await
            .map_err(unavailable)?;
        Ok(sent <= i64::from(max))
    }

    async fn add_to_digest(
        &self,
        tenant: &str,
        window_end_ms: u64,
        envelope: &str,
    ) -> Result<(), EngineError> {
        let id = EventId {
            ms: window_end_ms,
            seq: 0,
        };
        let args: Vec<Value> = vec![
            "digest".into(),
            job_key(DIGEST_ENDPOINT, id).into(),
            (window_end_ms as i64).into(),
            envelope.into(),
            WINDOW_MEMORY_MS.into(),
        ];
        let list = email_digest_key(tenant, window_end_ms);
        let _: i64 = self.queue_step(tenant, Some(list), args).await?;
        self.index_deliveries(tenant, window_end_ms).await;
        Ok(())
    }

    async fn digest(&self, tenant: &str, window_end_ms: u64) -> Result<Vec<String>, EngineError> {
        self.client
            .lrange(email_digest_key(tenant, window_end_ms), 0, -1)
            .await
            .map_err(unavailable)
    }

    async fn repair_delivery_index(&self) -> Result<(), EngineError> {
        use futures_util::TryStreamExt;
        let keys: Vec<Key> = if self.cluster {
            self.client
                .scan_cluster_buffered(DELIVERY_QUEUE_PATTERN, Some(1000), None)
                .try_collect()
                .await
        } else {
            self.client
                .scan_buffered(DELIVERY_QUEUE_PATTERN, Some(1000), None)
                .try_collect()
                .await
        }
        .map_err(unavailable)?;
        for key in &keys {
            if let Some(tenant) = key.as_str().and_then(tenant_of_queue_key) {
                self.index_deliveries(tenant, 0).await;
            }
        }
        Ok(())
    }
}
