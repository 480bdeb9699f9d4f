//! The delivery runner: claims due deliveries from the engine under a lease, makes each
//! attempt (at most [`CONCURRENCY`] at once), and records its outcome, retry time and log
//! entry. Any number of runners may work the same engine; a lease keeps each attempt to one.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::DeliveryArgs;
use crate::delivery::retry::Schedule;
use crate::delivery::webhook;
use crate::engine::DeliveryStore;
use crate::engine::deliveries::{Attempt, Job, Outcome};
use crate::protocol::{now_ms, rfc3339_millis};

/// Attempts in flight per runner at most.
pub const CONCURRENCY: usize = 32;
/// How often the runner looks for due deliveries (a publish is attempted within about this).
const POLL: Duration = Duration::from_millis(200);
/// How often the index of due tenants is rebuilt from the queues.
const REPAIR_EVERY: Duration = Duration::from_secs(10);

/// Makes the deliveries of one engine.
pub struct DeliveryRunner {
    store: Arc<dyn DeliveryStore>,
    client: reqwest::Client,
    schedule: Schedule,
    lease: Duration,
    allow_private: bool,
}

impl DeliveryRunner {
    /// A runner over `store` with the `DELIVERY_*` and `WEBHOOK_*` settings.
    pub fn new(store: Arc<dyn DeliveryStore>, args: &DeliveryArgs) -> Result<Self, reqwest::Error> {
        Ok(Self {
            store,
            client: webhook::client(args.webhook_allow_private)?,
            schedule: args.delivery_retry_schedule.clone(),
            lease: Duration::from_secs(args.delivery_lease_secs),
            allow_private: args.webhook_allow_private,
        })
    }

    /// Runs until `shutdown`, then waits for the attempts in flight (at most their timeout).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(CONCURRENCY));
        let attempts = TaskTracker::new();
        let mut next_repair = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(POLL) => {}
            }
            if tokio::time::Instant::now() >= next_repair {
                next_repair += REPAIR_EVERY;
                if let Err(error) = self.store.repair_delivery_index().await {
                    tracing::debug!(%error, "delivery index repair failed");
                }
            }
            let now = now_ms();
            let tenants = match self.store.delivery_tenants(now).await {
                Ok(tenants) => tenants,
                Err(error) => {
                    tracing::debug!(%error, "due deliveries unavailable");
                    continue;
                }
            };
            for tenant in tenants {
                let free = permits.available_permits();
                if free == 0 {
                    break;
                }
                let jobs = match self.store.claim(&tenant, now, self.lease, free).await {
                    Ok(jobs) => jobs,
                    Err(error) => {
                        tracing::debug!(%tenant, %error, "claim failed");
                        continue;
                    }
                };
                for job in jobs {
                    // Claimed no more than the free permits: one is there for each job.
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        break;
                    };
                    let runner = self.clone();
                    let tenant = tenant.clone();
                    attempts.spawn(async move {
                        runner.attempt(&tenant, job).await;
                        drop(permit);
                    });
                }
            }
        }
        attempts.close();
        let _ =
            tokio::time::timeout(webhook::TIMEOUT + Duration::from_secs(1), attempts.wait()).await;
    }

    /// One attempt of one delivery, in a span continuing the event's trace.
    async fn attempt(&self, tenant: &str, job: Job) {
        let span = tracing::info_span!(
            "webhook attempt",
            otel.kind = "client",
            tenant,
            endpoint = %job.endpoint,
            event = %job.event_id,
            attempt = job.attempt,
            http.response.status_code = tracing::field::Empty,
        );
        if let Some(parent) = traceparent(job.payload.as_str()) {
            crate::telemetry::set_remote_parent(&span, &parent);
        }
        let started = now_ms();
        let (outcome, answer) = match job.webhook.as_ref().filter(|w| w.enabled) {
            Some(hook) => {
                let id = format!("{tenant}:{}", job.event_id);
                let send = webhook::send(
                    &self.client,
                    hook,
                    &id,
                    job.payload.as_str().as_bytes(),
                    self.allow_private,
                );
                let answer = tracing::Instrument::instrument(send, span.clone()).await;
                let outcome = if answer.delivered() {
                    Outcome::Delivered
                } else if answer.gone() {
                    Outcome::Gone
                } else {
                    match self.schedule.after(job.attempt) {
                        Some(delay) => Outcome::Retry {
                            at_ms: now_ms() + delay.as_millis() as u64,
                        },
                        None => Outcome::Failed,
                    }
                };
                (outcome, Some(answer))
            }
            None => (Outcome::Dropped, None),
        };
        if let Some(status) = answer.as_ref().and_then(|a| a.status) {
            span.record("http.response.status_code", status);
        }
        crate::metrics::delivery_attempt("webhook", outcome.status());
        let entry = Attempt {
            event_id: job.event_id.to_string(),
            attempt: job.attempt,
            status: outcome.status().to_owned(),
            http_status: answer.as_ref().and_then(|a| a.status),
            duration_ms: answer.as_ref().map_or(0, |a| a.duration_ms),
            at: rfc3339_ms(started),
            next_attempt_at: match outcome {
                Outcome::Retry { at_ms } => Some(rfc3339_ms(at_ms)),
                _ => None,
            },
            error: answer.and_then(|a| a.error),
        };
        span.in_scope(|| {
            tracing::info!(status = %entry.status, http_status = entry.http_status, "webhook attempt")
        });
        if let Err(error) = self.store.finish(tenant, &job, outcome, &entry).await {
            // The lease runs out and another attempt follows: the endpoint may see this event
            // twice, with the same webhook-id, which is what receivers deduplicate on.
            tracing::warn!(tenant, endpoint = %job.endpoint, %error, "delivery outcome not recorded");
        }
    }
}

fn rfc3339_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    rfc3339_millis(t)
}

/// The envelope's `traceparent`, when its publisher exported traces.
fn traceparent(envelope: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Trace {
        traceparent: Option<String>,
    }
    serde_json::from_str::<Trace>(envelope).ok()?.traceparent
}
