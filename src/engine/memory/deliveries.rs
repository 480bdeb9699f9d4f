//! The delivery store role in memory: each tenant's endpoints, queue and logs live beside its
//! history, under the same lock; a publish enqueues in the same step as the event.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;

use super::MemoryEngine;
use crate::delivery::endpoint::Webhook;
use crate::engine::EngineError;
use crate::engine::deliveries::{Attempt, DeliveryStore, Job, LOG_LEN, Outcome, job_key};
use crate::protocol::{EventId, EventType, Payload};

/// One tenant's endpoints, queued deliveries and logs.
#[derive(Default)]
pub(super) struct Outbound {
    webhooks: BTreeMap<String, Webhook>,
    queue: HashMap<String, Queued>,
    logs: HashMap<String, VecDeque<Attempt>>,
}

struct Queued {
    endpoint: String,
    event_id: EventId,
    due_ms: u64,
    attempt: u32,
    payload: Payload,
}

impl Outbound {
    /// Queues a just-published event for every enabled endpoint that wants it.
    pub(super) fn enqueue(
        &mut self,
        id: EventId,
        payload: &Payload,
        event_type: EventType,
        now_ms: u64,
    ) {
        for (name, hook) in &self.webhooks {
            if hook.enabled && hook.selection.wants(event_type) {
                self.queue.insert(
                    job_key(name, id),
                    Queued {
                        endpoint: name.clone(),
                        event_id: id,
                        due_ms: now_ms,
                        attempt: 0,
                        payload: payload.clone(),
                    },
                );
            }
        }
    }

    fn due(&self, now_ms: u64) -> bool {
        self.queue.values().any(|q| q.due_ms <= now_ms)
    }
}

#[async_trait]
impl DeliveryStore for MemoryEngine {
    async fn put_webhook(
        &self,
        tenant: &str,
        name: &str,
        webhook: &Webhook,
    ) -> Result<bool, EngineError> {
        let mut tenants = self.lock_tenants()?;
        let out = &mut tenants.entry(tenant.to_owned()).or_default().outbound;
        Ok(out
            .webhooks
            .insert(name.to_owned(), webhook.clone())
            .is_none())
    }

    async fn webhooks(&self, tenant: &str) -> Result<Vec<(String, Webhook)>, EngineError> {
        let tenants = self.lock_tenants()?;
        Ok(tenants
            .get(tenant)
            .map(|t| {
                t.outbound
                    .webhooks
                    .iter()
                    .map(|(n, w)| (n.clone(), w.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn delete_webhook(&self, tenant: &str, name: &str) -> Result<bool, EngineError> {
        let mut tenants = self.lock_tenants()?;
        let Some(log) = tenants.get_mut(tenant) else {
            return Ok(false);
        };
        log.outbound.logs.remove(name);
        Ok(log.outbound.webhooks.remove(name).is_some())
    }

    async fn delivery_tenants(&self, now_ms: u64) -> Result<Vec<String>, EngineError> {
        let tenants = self.lock_tenants()?;
        Ok(tenants
            .iter()
            .filter(|(_, t)| t.outbound.due(now_ms))
            .map(|(name, _)| name.clone())
            .collect())
    }

    async fn claim(
        &self,
        tenant: &str,
        now_ms: u64,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<Job>, EngineError> {
        let mut tenants = self.lock_tenants()?;
        let Some(log) = tenants.get_mut(tenant) else {
            return Ok(Vec::new());
        };
        let out = &mut log.outbound;
        let mut due: Vec<&mut Queued> = out
            .queue
            .values_mut()
            .filter(|q| q.due_ms <= now_ms)
            .collect();
        due.sort_by_key(|q| (q.due_ms, q.event_id));
        let mut jobs = Vec::new();
        for q in due.into_iter().take(max) {
            q.attempt += 1;
            q.due_ms = now_ms + lease.as_millis() as u64;
            jobs.push(Job {
                endpoint: q.endpoint.clone(),
                event_id: q.event_id,
                attempt: q.attempt,
                payload: q.payload.clone(),
                webhook: out.webhooks.get(&q.endpoint).cloned(),
            });
        }
        Ok(jobs)
    }

    async fn finish(
        &self,
        tenant: &str,
        job: &Job,
        outcome: Outcome,
        attempt: &Attempt,
    ) -> Result<(), EngineError> {
        let mut tenants = self.lock_tenants()?;
        let out = &mut tenants.entry(tenant.to_owned()).or_default().outbound;
        let key = job.key();
        let ours = out
            .queue
            .get(&key)
            .is_some_and(|q| q.attempt == job.attempt);
        if ours {
            match outcome {
                Outcome::Retry { at_ms } => {
                    if let Some(q) = out.queue.get_mut(&key) {
                        q.due_ms = at_ms;
                    }
                }
                Outcome::Gone => {
                    out.queue.remove(&key);
                    if let Some(hook) = out.webhooks.get_mut(&job.endpoint) {
                        hook.enabled = false;
                    }
                }
                Outcome::Delivered | Outcome::Failed | Outcome::Dropped => {
                    out.queue.remove(&key);
                }
            }
        }
        if out.webhooks.contains_key(&job.endpoint) {
            let log = out.logs.entry(job.endpoint.clone()).or_default();
            log.push_front(attempt.clone());
            log.truncate(LOG_LEN);
        }
        Ok(())
    }

    async fn attempts(
        &self,
        tenant: &str,
        name: &str,
        limit: usize,
    ) -> Result<Vec<Attempt>, EngineError> {
        let tenants = self.lock_tenants()?;
        Ok(tenants
            .get(tenant)
            .and_then(|t| t.outbound.logs.get(name))
            .map(|log| log.iter().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn redeliver(
        &self,
        tenant: &str,
        name: &str,
        event: EventId,
    ) -> Result<bool, EngineError> {
        let mut tenants = self.lock_tenants()?;
        let Some(log) = tenants.get_mut(tenant) else {
            return Ok(false);
        };
        let Some(payload) = log.inbox.payload(event) else {
            return Ok(false);
        };
        if !log.outbound.webhooks.contains_key(name) {
            return Ok(false);
        }
        log.outbound.queue.insert(
            job_key(name, event),
            Queued {
                endpoint: name.to_owned(),
                event_id: event,
                due_ms: 0,
                attempt: 0,
                payload,
            },
        );
        Ok(true)
    }

    async fn repair_delivery_index(&self) -> Result<(), EngineError> {
        // No index to repair: the tenants are walked directly.
        Ok(())
    }
}
