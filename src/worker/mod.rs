//! The validator: turns stored licenses, usage and the clock into events, exactly once, through
//! the license store's atomic compare-and-set ([`crate::engine::LicenseStore::apply`]). The same code serves the
//! `worker` command (Redis), the embedded engine (in-process) and the admin API (changes).
//! The worker role also makes the webhook deliveries ([`deliveries`]).

pub mod deliveries;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Number;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::engine::{
    Applied, Change, DocWrite, EngineError, Expect, FieldSwap, LicenseStore, Published,
    TenantRecord,
};
use crate::license::document::{License, MAX_METRICS, Usage};
use crate::license::rules::{self, Notice, Plan, Rules};
use crate::protocol::{EventDraft, now_ms, rfc3339_millis, unix_ms};

/// How often a looping validator looks for tenants whose deadline has come.
pub const DEADLINE_POLL: Duration = Duration::from_millis(500);
/// Compare-and-set attempts before giving up on a contended tenant (another validator won).
const ATTEMPTS: usize = 8;

/// Validator failures.
#[derive(Debug, thiserror::Error)]
pub enum ValidatorError {
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The stored document cannot be read (written by something else, or corrupted).
    #[error("stored license of {tenant} is unreadable: {message}")]
    Corrupt {
        /// The tenant.
        tenant: String,
        /// Why.
        message: String,
    },
    /// The tenant would have more usage metrics than allowed.
    #[error("at most {0} usage metrics per tenant")]
    TooManyMetrics(usize),
    /// Too many concurrent changes of one tenant.
    #[error("gave up on {0} after repeated concurrent changes")]
    Contended(String),
}

/// Result of storing a license.
#[derive(Debug)]
pub enum PutOutcome {
    /// The document was new.
    Created(Vec<Published>),
    /// The document replaced another.
    Updated(Vec<Published>),
    /// Identical to the stored one: nothing written or published.
    Unchanged,
}

/// Evaluates licenses and publishes notices.
pub struct Validator {
    store: Arc<dyn LicenseStore>,
    rules: Rules,
}

fn drafts(tenant: &str, notices: Vec<Notice>) -> Vec<EventDraft> {
    notices
        .into_iter()
        .map(|n| EventDraft::new(tenant, n.event_type, n.data))
        .collect()
}

/// Parses stored usage counters (JSON number text).
pub fn parse_usage(stored: &BTreeMap<String, String>) -> Usage {
    stored
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), serde_json::from_str::<Number>(v).ok()?)))
        .collect()
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

impl Validator {
    /// A validator over `store` with `rules`.
    pub fn new(store: Arc<dyn LicenseStore>, rules: Rules) -> Self {
        Self { store, rules }
    }

    /// The store it validates.
    pub fn store(&self) -> &dyn LicenseStore {
        self.store.as_ref()
    }

    /// The rules in force.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    fn license(
        &self,
        tenant: &str,
        record: &TenantRecord,
    ) -> Result<Option<License>, ValidatorError> {
        record
            .doc
            .as_deref()
            .map(License::from_stored)
            .transpose()
            .map_err(|e| ValidatorError::Corrupt {
                tenant: tenant.to_owned(),
                message: e.to_string(),
            })
    }

    /// Publishes every notice `tenant` owes now and records its next deadline. Returns the
    /// events published by this call (others may have been published by another validator).
    pub async fn check_tenant(&self, tenant: &str) -> Result<Vec<Published>, ValidatorError> {
        let mut published = Vec::new();
        for _ in 0..ATTEMPTS {
            let record = self.store.load(tenant).await?;
            let Some(license) = self.license(tenant, &record)? else {
                self.store.set_deadline(tenant, None).await?;
                return Ok(published);
            };
            let now = now();
            let usage = parse_usage(&record.usage);
            let rules = self.rules.for_license(&license);
            let plans = rules::evaluate(&license, &usage, &record.notices, now, &rules);
            let mut conflict = false;
            for plan in plans {
                let types: Vec<_> = plan.events.iter().map(|n| n.event_type).collect();
                match self.apply_plan(tenant, &record, plan).await? {
                    Applied::Done(events) => {
                        types.into_iter().for_each(crate::metrics::notice);
                        published.extend(events);
                    }
                    Applied::Conflict => {
                        conflict = true;
                        break;
                    }
                    other => return Err(unexpected(other).into()),
                }
            }
            if conflict {
                continue;
            }
            let next = rules::next_deadline(&license, &rules, now).map(unix_ms);
            self.store.set_deadline(tenant, next).await?;
            return Ok(published);
        }
        Err(ValidatorError::Contended(tenant.to_owned()))
    }

    /// One plan as one atomic change, conditioned on the document it was computed from.
    async fn apply_plan(
        &self,
        tenant: &str,
        record: &TenantRecord,
        plan: Plan,
    ) -> Result<Applied, EngineError> {
        let change = Change {
            doc_expect: Expect::from_option(record.doc.as_ref()),
            doc: DocWrite::Keep,
            notices: vec![FieldSwap {
                field: plan.field,
                expect: plan.expect,
                set: plan.set,
            }],
            events: drafts(tenant, plan.events),
            idempotency: None,
        };
        self.store.apply(tenant, &change).await
    }

    /// Stores (or, with `None`, deletes) the tenant's license and publishes what the change
    /// implies, then any notice now owed. `Ok(None)` from a delete means there was nothing.
    pub async fn put_license(
        &self,
        tenant: &str,
        license: Option<&License>,
    ) -> Result<Option<PutOutcome>, ValidatorError> {
        let new_json = license.map(License::to_json);
        for _ in 0..ATTEMPTS {
            let record = self.store.load(tenant).await?;
            if record.doc == new_json {
                return Ok(new_json.map(|_| PutOutcome::Unchanged));
            }
            // An unreadable stored document is replaced; the diff treats it as absent.
            let old = self.license(tenant, &record).unwrap_or_else(|error| {
                tracing::warn!(%error, "replacing an unreadable stored license");
                None
            });
            let change = Change {
                doc_expect: Expect::from_option(record.doc.as_ref()),
                doc: new_json.clone().map_or(DocWrite::Delete, DocWrite::Set),
                notices: Vec::new(),
                events: drafts(tenant, rules::diff(old.as_ref(), license)),
                idempotency: None,
            };
            match self.store.apply(tenant, &change).await? {
                Applied::Conflict => continue,
                other @ (Applied::Replayed(_) | Applied::KeyReused) => {
                    return Err(unexpected(other).into());
                }
                Applied::Done(mut published) => {
                    match self.check_tenant(tenant).await {
                        Ok(more) => published.extend(more),
                        // The change is stored; owed notices follow on the next pass.
                        Err(error) => {
                            tracing::warn!(tenant, %error, "post-change evaluation failed")
                        }
                    }
                    return Ok(Some(match (record.doc.is_some(), license.is_some()) {
                        (false, _) => PutOutcome::Created(published),
                        _ => PutOutcome::Updated(published),
                    }));
                }
            }
        }
        Err(ValidatorError::Contended(tenant.to_owned()))
    }

    /// Merges usage counters and publishes the threshold notices now owed. The merge is
    /// refused when the tenant would have more than [`MAX_METRICS`] metrics. Once it is stored,
    /// the call succeeds: a notice evaluation that fails then follows on the next pass (an
    /// error here would claim that nothing changed).
    pub async fn put_usage(
        &self,
        tenant: &str,
        usage: &Usage,
    ) -> Result<Vec<Published>, ValidatorError> {
        let stored = self.store.load(tenant).await?.usage;
        let new = usage.keys().filter(|m| !stored.contains_key(*m)).count();
        if stored.len() + new > MAX_METRICS {
            return Err(ValidatorError::TooManyMetrics(MAX_METRICS));
        }
        let values: Vec<(String, String)> = usage
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        self.store.merge_usage(tenant, &values).await?;
        match self.check_tenant(tenant).await {
            Ok(published) => Ok(published),
            Err(error) => {
                tracing::warn!(tenant, %error, "usage stored; its notices follow on the next pass");
                Ok(Vec::new())
            }
        }
    }

    /// One pass over every licensed tenant; errors of one tenant do not stop the pass.
    pub async fn pass(&self) -> Result<PassSummary, ValidatorError> {
        let started = std::time::Instant::now();
        let tenants = self.store.licensed_tenants().await?;
        let mut summary = PassSummary::default();
        for tenant in &tenants {
            match self.check_tenant(tenant).await {
                Ok(published) => summary.events += published.len(),
                Err(error) => {
                    summary.failed += 1;
                    tracing::warn!(tenant, %error, "tenant check failed");
                }
            }
        }
        summary.tenants = tenants.len();
        crate::metrics::worker_pass(started.elapsed().as_secs_f64());
        crate::metrics::worker_tenants_failed(summary.failed as u64);
        tracing::info!(
            tenants = summary.tenants,
            events = summary.events,
            failed = summary.failed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "validator pass done"
        );
        Ok(summary)
    }

    /// Checks the tenants whose deadline has come.
    pub async fn due(&self) -> Result<usize, ValidatorError> {
        let mut events = 0;
        for tenant in self.store.due_tenants(now_ms()).await? {
            match self.check_tenant(&tenant).await {
                Ok(published) => events += published.len(),
                Err(error) => tracing::warn!(%tenant, %error, "tenant check failed"),
            }
        }
        Ok(events)
    }

    /// Loops until `shutdown`: a full pass every `interval`, and the due tenants every
    /// [`DEADLINE_POLL`], so deadlines fire within about half a second, not at the next pass.
    pub async fn run(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut next_pass = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_pass {
                if let Err(error) = self.pass().await {
                    crate::metrics::worker_pass_failed();
                    tracing::warn!(%error, "validator pass failed; retrying at the next tick");
                }
                next_pass = tokio::time::Instant::now() + interval;
            } else if let Err(error) = self.due().await {
                tracing::debug!(%error, "deadline check failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(DEADLINE_POLL) => {}
            }
        }
        tracing::info!(at = %rfc3339_millis(now()), "validator stopped");
    }
}

/// What a pass did.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassSummary {
    /// Tenants checked.
    pub tenants: usize,
    /// Events published by this pass.
    pub events: usize,
    /// Tenants whose check failed.
    pub failed: usize,
}

/// An idempotency outcome from a change that carried no key: the engine broke its contract.
fn unexpected(applied: Applied) -> EngineError {
    EngineError::Protocol(format!(
        "change without an idempotency key answered {applied:?}"
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::memory::MemoryEngine;
    use crate::engine::{History, HistoryConfig, Position};
    use crate::license::document::format_date;

    /// Invariant: however many validators check a tenant, each owed notice is published once,
    /// and a license created five days before expiry gets one notice, for the smallest
    /// threshold it crossed.
    #[tokio::test]
    async fn notices_are_published_once_whoever_checks() {
        let engine = Arc::new(MemoryEngine::new(HistoryConfig {
            size: 100,
            ttl: Duration::from_secs(3600),
            ..HistoryConfig::default()
        }));
        let expires = format_date(OffsetDateTime::now_utc() + time::Duration::days(5));
        let doc = serde_json::json!({"tenantId": "acme", "plan": "pro", "expiresAt": expires});
        let license = License::parse("acme", &doc).expect("license");
        let stored = Change {
            doc_expect: Expect::Absent,
            doc: DocWrite::Set(license.to_json()),
            notices: Vec::new(),
            events: Vec::new(),
            idempotency: None,
        };
        engine.apply("acme", &stored).await.expect("store");
        let validators: Vec<Validator> = (0..4)
            .map(|_| Validator::new(engine.clone(), Rules::new(vec![30, 7, 1], 80.0)))
            .collect();
        let (a, b, c, d) = tokio::join!(
            validators[0].check_tenant("acme"),
            validators[1].check_tenant("acme"),
            validators[2].check_tenant("acme"),
            validators[3].pass(),
        );
        let published = a.unwrap().len() + b.unwrap().len() + c.unwrap().len();
        assert_eq!(published + d.unwrap().events, 1);
        let history = crate::engine::Broker::history_after(&*engine, "acme", None, Position::Exact);
        let History::After(events) = history.await.expect("history") else {
            panic!("no history");
        };
        assert_eq!(events.len(), 1);
        let event: serde_json::Value = serde_json::from_str(events[0].1.as_str()).unwrap();
        assert_eq!(event["type"], "license_expiring");
        assert_eq!(event["data"]["threshold"], 7);
    }
}
