//! The delivery runner: claims due deliveries from the engine under a lease, makes each
//! attempt (at most [`CONCURRENCY`] at once), and records its outcome, retry time and log
//! entry (webhooks, and email with its hourly cap and digest). Any number of runners may work
//! the same engine; a lease keeps each attempt to one.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::DeliveryArgs;
use crate::delivery::email::Mailer;
use crate::delivery::endpoint::EmailSettings;
use crate::delivery::retry::Schedule;
use crate::delivery::webhook::{self, Answer};
use crate::engine::DeliveryStore;
use crate::engine::deliveries::{Attempt, Job, Outcome, Target};
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
    /// `None` without `SMTP_URL`: email deliveries fail (and are retried) until it is set.
    mailer: Option<Mailer>,
    schedule: Schedule,
    lease: Duration,
    allow_private: bool,
    email_max: u32,
    email_window_ms: u64,
}

/// Why a runner cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The HTTP client (its TLS roots).
    #[error("webhook client: {0}")]
    Client(#[from] reqwest::Error),
    /// `SMTP_URL` or `SMTP_FROM`.
    #[error("{0}")]
    Smtp(String),
}

impl DeliveryRunner {
    /// A runner over `store` with the `DELIVERY_*` and `WEBHOOK_*` settings.
    pub fn new(store: Arc<dyn DeliveryStore>, args: &DeliveryArgs) -> Result<Self, RunnerError> {
        let mailer = match (&args.smtp_url, &args.smtp_from) {
            (Some(url), Some(from)) => Some(Mailer::new(url, from).map_err(RunnerError::Smtp)?),
            (Some(_), None) => {
                return Err(RunnerError::Smtp(
                    "SMTP_FROM: required with SMTP_URL".into(),
                ));
            }
            _ => None,
        };
        Ok(Self {
            store,
            client: webhook::client(args.webhook_allow_private)?,
            mailer,
            schedule: args.delivery_retry_schedule.clone(),
            lease: Duration::from_secs(args.delivery_lease_secs),
            allow_private: args.webhook_allow_private,
            email_max: args.email_max_per_hour,
            email_window_ms: args.email_window_secs * 1000,
        })
    }

    /// Runs until `shutdown`, then waits for the attempts in flight (at most their timeout).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(CONCURRENCY));
        let attempts = TaskTracker::new();
        // A finished attempt wakes the loop at once: with a backlog, the next batch is claimed
        // as slots free up instead of one batch per poll.
        let wake = Arc::new(Notify::new());
        let mut next_repair = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(POLL) => {}
                _ = wake.notified() => {}
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
                    let wake = wake.clone();
                    attempts.spawn(async move {
                        runner.attempt(&tenant, job).await;
                        drop(permit);
                        wake.notify_one();
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
            "delivery attempt",
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
        let channel = match job.target {
            Some(Target::Email(_) | Target::Digest(_)) => "email",
            _ => "webhook",
        };
        let (outcome, answer) = match &job.target {
            Some(Target::Webhook(hook)) if hook.enabled => {
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
                    self.after_failure(job.attempt)
                };
                (outcome, Some(answer))
            }
            Some(Target::Email(settings)) => {
                let email = self.email(tenant, &job, settings);
                tracing::Instrument::instrument(email, span.clone()).await
            }
            Some(Target::Digest(settings)) => {
                let digest = self.digest(tenant, &job, settings);
                tracing::Instrument::instrument(digest, span.clone()).await
            }
            _ => (Outcome::Dropped, None),
        };
        if let Some(status) = answer.as_ref().and_then(|a| a.status) {
            span.record("http.response.status_code", status);
        }
        crate::metrics::delivery_attempt(channel, outcome.status());
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
            tracing::info!(channel, status = %entry.status, http_status = entry.http_status, "delivery attempt")
        });
        if let Err(error) = self.store.finish(tenant, &job, outcome, &entry).await {
            // The lease runs out and another attempt follows: the endpoint may see this event
            // twice, with the same webhook-id, which is what receivers deduplicate on.
            tracing::warn!(tenant, endpoint = %job.endpoint, %error, "delivery outcome not recorded");
        }
    }
}

impl DeliveryRunner {
    /// A failed attempt: retried per the schedule, or failed after its last.
    fn after_failure(&self, attempt: u32) -> Outcome {
        match self.schedule.after(attempt) {
            Some(delay) => Outcome::Retry {
                at_ms: now_ms() + delay.as_millis() as u64,
            },
            None => Outcome::Failed,
        }
    }

    fn mail_answer(
        &self,
        started: u64,
        result: Result<(), String>,
        attempt: u32,
    ) -> (Outcome, Option<Answer>) {
        let duration_ms = now_ms().saturating_sub(started);
        match result {
            Ok(()) => (
                Outcome::Delivered,
                Some(Answer {
                    status: None,
                    error: None,
                    duration_ms,
                }),
            ),
            Err(error) => (
                self.after_failure(attempt),
                Some(Answer {
                    status: None,
                    error: Some(error),
                    duration_ms,
                }),
            ),
        }
    }

    /// One event's email, unless the tenant's window is full: then it joins the window's
    /// digest (counted on the first attempt only, so retries do not use up the cap).
    async fn email(
        &self,
        tenant: &str,
        job: &Job,
        settings: &EmailSettings,
    ) -> (Outcome, Option<Answer>) {
        let started = now_ms();
        let Some(mailer) = &self.mailer else {
            return self.mail_answer(started, Err("SMTP_URL is not set".into()), job.attempt);
        };
        if job.attempt == 1 {
            let window_end = (started / self.email_window_ms + 1) * self.email_window_ms;
            match self
                .store
                .email_quota(tenant, window_end, self.email_max)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    let added = self
                        .store
                        .add_to_digest(tenant, window_end, job.payload.as_str())
                        .await;
                    return match added {
                        Ok(()) => (Outcome::Digested, None),
                        Err(e) => self.mail_answer(started, Err(e.to_string()), job.attempt),
                    };
                }
                Err(e) => return self.mail_answer(started, Err(e.to_string()), job.attempt),
            }
        }
        let result = mailer
            .send_event(tenant, settings, job.payload.as_str())
            .await;
        self.mail_answer(started, result, job.attempt)
    }

    /// A window's digest (the job's id carries the window's end).
    async fn digest(
        &self,
        tenant: &str,
        job: &Job,
        settings: &EmailSettings,
    ) -> (Outcome, Option<Answer>) {
        let started = now_ms();
        let Some(mailer) = &self.mailer else {
            return self.mail_answer(started, Err("SMTP_URL is not set".into()), job.attempt);
        };
        let window_end = job.event_id.ms;
        let result = match self.store.digest(tenant, window_end).await {
            Ok(envelopes) if envelopes.is_empty() => Ok(()),
            Ok(envelopes) => {
                mailer
                    .send_digest(tenant, settings, &envelopes, window_end)
                    .await
            }
            Err(e) => Err(e.to_string()),
        };
        self.mail_answer(started, result, job.attempt)
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
