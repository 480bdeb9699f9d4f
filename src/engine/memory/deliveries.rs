//! The delivery store role in memory: each tenant's endpoints, email settings, queue, logs and
//! digests live beside its history, under the same lock; a publish enqueues in the same step
//! as the event.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;

use super::MemoryEngine;
use crate::delivery::endpoint::{DIGEST_ENDPOINT, EMAIL_ENDPOINT, EmailSettings, Webhook};
use crate::engine::EngineError;
use crate::engine::deliveries::{Attempt, DeliveryStore, Job, LOG_LEN, Outcome, Target, job_key};
use crate::protocol::{EventId, EventType, Payload};

/// Windows (of the email cap) forgotten this long after they end.
const WINDOW_MEMORY_MS: u64 = 86_400_000;

/// One tenant's endpoints, queued deliveries, logs and email windows.
#[derive(Default)]
pub(super) struct Outbound {
    webhooks: BTreeMap<String, Webhook>,
    email: Option<EmailSettings>,
    queue: HashMap<String, Queued>,
    logs: HashMap<String, VecDeque<Attempt>>,
    /// Emails sent per window (by the window's end, ms).
    emailed: BTreeMap<u64, u32>,
    /// Envelopes over the cap per window, for its digest.
    digests: BTreeMap<u64, Vec<String>>,
}

struct Queued {
    endpoint: String,
    event_id: EventId,
    due_ms: u64,
    attempt: u32,
    payload: Payload,
}

impl Outbound {
    /// Queues a just-published event for every enabled endpoint (and the email settings) that
    /// want it.
    pub(super) fn enqueue(
        &mut self,
        id: EventId,
        payload: &Payload,
        event_type: EventType,
        now_ms: u64,
    ) {
        let hooks = self
            .webhooks
            .iter()
            .filter(|(_, hook)| hook.enabled && hook.selection.wants(event_type))
            .map(|(name, _)| name.as_str());
        let email = self
            .email
            .as_ref()
            .filter(|e| e.wants(event_type))
            .map(|_| EMAIL_ENDPOINT);
        let names: Vec<String> = hooks.chain(email).map(str::to_owned).collect();
        for name in names {
            self.queue.insert(
                job_key(&name, id),
                Queued {
                    endpoint: name,
                    event_id: id,
                    due_ms: now_ms,
                    attempt: 0,
                    payload: payload.clone(),
                },
            );
        }
    }

    fn target(&self, endpoint: &str) -> Option<Target> {
        match endpoint {
            EMAIL_ENDPOINT => self.email.clone().map(Target::Email),
            DIGEST_ENDPOINT => self.email.clone().map(Target::Digest),
            name => self.webhooks.get(name).cloned().map(Target::Webhook),
        }
    }

    fn knows(&self, endpoint: &str) -> bool {
        match endpoint {
            EMAIL_ENDPOINT | DIGEST_ENDPOINT => self.email.is_some(),
            name => self.webhooks.contains_key(name),
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
        let mut claimed = Vec::new();
        for q in due.into_iter().take(max) {
            q.attempt += 1;
            q.due_ms = now_ms + lease.as_millis() as u64;
            claimed.push((q.endpoint.clone(), q.event_id, q.attempt, q.payload.clone()));
        }
        Ok(claimed
            .into_iter()
            .map(|(endpoint, event_id, attempt, payload)| Job {
                target: out.target(&endpoint),
                endpoint,
                event_id,
                attempt,
                payload,
            })
            .collect())
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
                Outcome::Delivered | Outcome::Failed | Outcome::Dropped | Outcome::Digested => {
                    out.queue.remove(&key);
                }
            }
        }
        if out.knows(&job.endpoint) {
            // A digest is logged with the tenant's email deliveries.
            let name = if job.endpoint == DIGEST_ENDPOINT {
                EMAIL_ENDPOINT
            } else {
                job.endpoint.as_str()
            };
            let log = out.logs.entry(name.to_owned()).or_default();
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
        if !log.outbound.knows(name) {
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

    async fn put_email(
        &self,
        tenant: &str,
        settings: Option<&EmailSettings>,
    ) -> Result<bool, EngineError> {
        let mut tenants = self.lock_tenants()?;
        let out = &mut tenants.entry(tenant.to_owned()).or_default().outbound;
        let had = out.email.is_some();
        out.email = settings.cloned();
        if settings.is_none() {
            out.logs.remove(EMAIL_ENDPOINT);
        }
        Ok(had)
    }

    async fn email(&self, tenant: &str) -> Result<Option<EmailSettings>, EngineError> {
        let tenants = self.lock_tenants()?;
        Ok(tenants.get(tenant).and_then(|t| t.outbound.email.clone()))
    }

    async fn email_quota(
        &self,
        tenant: &str,
        window_end_ms: u64,
        max: u32,
    ) -> Result<bool, EngineError> {
        let mut tenants = self.lock_tenants()?;
        let out = &mut tenants.entry(tenant.to_owned()).or_default().outbound;
        out.emailed
            .retain(|end, _| *end + WINDOW_MEMORY_MS > window_end_ms);
        let sent = out.emailed.entry(window_end_ms).or_default();
        *sent += 1;
        Ok(*sent <= max)
    }

    async fn add_to_digest(
        &self,
        tenant: &str,
        window_end_ms: u64,
        envelope: &str,
    ) -> Result<(), EngineError> {
        let mut tenants = self.lock_tenants()?;
        let out = &mut tenants.entry(tenant.to_owned()).or_default().outbound;
        out.digests
            .retain(|end, _| *end + WINDOW_MEMORY_MS > window_end_ms);
        let list = out.digests.entry(window_end_ms).or_default();
        list.push(envelope.to_owned());
        if list.len() == 1 {
            let id = EventId {
                ms: window_end_ms,
                seq: 0,
            };
            out.queue.insert(
                job_key(DIGEST_ENDPOINT, id),
                Queued {
                    endpoint: DIGEST_ENDPOINT.to_owned(),
                    event_id: id,
                    due_ms: window_end_ms,
                    attempt: 0,
                    payload: Payload::from(""),
                },
            );
        }
        Ok(())
    }

    async fn digest(&self, tenant: &str, window_end_ms: u64) -> Result<Vec<String>, EngineError> {
        let tenants = self.lock_tenants()?;
        Ok(tenants
            .get(tenant)
            .and_then(|t| t.outbound.digests.get(&window_end_ms).cloned())
            .unwrap_or_default())
    }
}
