//! The delivery store role: a tenant's webhook endpoints, and the durable schedule of
//! deliveries to them. A publish enqueues a job per matching endpoint in the same atomic step
//! as the event (so nothing published is missed); workers *claim* due jobs under a lease (a
//! claimed job is not due again until the lease ends, so two workers never make the same
//! attempt), and *finish* each with its outcome, which also writes the delivery log.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::EngineError;
use crate::delivery::endpoint::{DIGEST_ENDPOINT, EMAIL_ENDPOINT, EmailSettings, Webhook};
use crate::protocol::{EventId, Payload};

/// Delivery log entries kept per endpoint (the newest).
pub const LOG_LEN: usize = 1000;

/// One queued delivery, as a worker claimed it.
#[derive(Debug, Clone)]
pub struct Job {
    /// The endpoint's name.
    pub endpoint: String,
    /// The event.
    pub event_id: EventId,
    /// This attempt's number (1 for the first).
    pub attempt: u32,
    /// The envelope, as published.
    pub payload: Payload,
    /// Where it goes, as configured now (`None`: deleted since; the job is dropped).
    pub target: Option<Target>,
}

/// Where a job goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A webhook endpoint.
    Webhook(Webhook),
    /// The tenant's email recipients, one message for this event.
    Email(EmailSettings),
    /// The tenant's email recipients, one digest of the events over the hourly cap.
    Digest(EmailSettings),
}

impl Target {
    /// Reads an endpoint's stored form, by the endpoint's name.
    pub fn from_stored(endpoint: &str, stored: &str) -> Result<Self, String> {
        match endpoint {
            EMAIL_ENDPOINT => EmailSettings::from_stored(stored).map(Target::Email),
            DIGEST_ENDPOINT => EmailSettings::from_stored(stored).map(Target::Digest),
            _ => Webhook::from_stored(stored).map(Target::Webhook),
        }
        .map_err(|e| format!("{}: {}", e.field, e.message))
    }
}

impl Job {
    /// The job's key in the queue: `w|<endpoint>|<event id>`.
    pub fn key(&self) -> String {
        job_key(&self.endpoint, self.event_id)
    }
}

/// The queue key of endpoint `name`'s delivery of `event`.
pub fn job_key(name: &str, event: EventId) -> String {
    format!("w|{name}|{event}")
}

/// What became of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx: done.
    Delivered,
    /// Failed; tried again at this time (Unix ms).
    Retry {
        /// When.
        at_ms: u64,
    },
    /// The last attempt failed: the delivery is `failed` (it stays in the log).
    Failed,
    /// 410: the endpoint is disabled, the delivery ends.
    Gone,
    /// The endpoint was deleted or disabled: nothing sent.
    Dropped,
    /// Over the tenant's hourly email cap: added to the hour's digest instead.
    Digested,
}

impl Outcome {
    /// The log's `status`.
    pub fn status(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retry { .. } => "retrying",
            Outcome::Failed => "failed",
            Outcome::Gone => "gone",
            Outcome::Dropped => "dropped",
            Outcome::Digested => "digested",
        }
    }
}

/// One attempt in an endpoint's delivery log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = DeliveryAttempt)]
pub struct Attempt {
    /// The event.
    pub event_id: String,
    /// Attempt number (1 for the first).
    pub attempt: u32,
    /// `delivered`, `retrying`, `failed`, `gone` or `dropped`.
    pub status: String,
    /// The endpoint's answer, when it answered.
    pub http_status: Option<u16>,
    /// How long the attempt took.
    pub duration_ms: u64,
    /// When it was made (RFC 3339).
    pub at: String,
    /// When the next attempt runs (RFC 3339), while retrying.
    pub next_attempt_at: Option<String>,
    /// Why it failed without an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Webhook endpoints and the delivery schedule.
#[async_trait]
pub trait DeliveryStore: Send + Sync + 'static {
    /// Stores endpoint `name` (replacing it); true when it was created.
    async fn put_webhook(
        &self,
        tenant: &str,
        name: &str,
        webhook: &Webhook,
    ) -> Result<bool, EngineError>;

    /// The tenant's endpoints, by name.
    async fn webhooks(&self, tenant: &str) -> Result<Vec<(String, Webhook)>, EngineError>;

    /// Removes endpoint `name` (its queued deliveries are dropped as they come due, its log
    /// goes); false when there was none.
    async fn delete_webhook(&self, tenant: &str, name: &str) -> Result<bool, EngineError>;

    /// Tenants that may have deliveries due at `now_ms`.
    async fn delivery_tenants(&self, now_ms: u64) -> Result<Vec<String>, EngineError>;

    /// Claims up to `max` of the tenant's due deliveries for `lease`: each comes back with its
    /// attempt number raised, and is not due again until the lease ends.
    async fn claim(
        &self,
        tenant: &str,
        now_ms: u64,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<Job>, EngineError>;

    /// Records an attempt's outcome and log entry. A job whose lease passed to another worker
    /// (its attempt number moved on) is left as it is; the entry is still logged.
    async fn finish(
        &self,
        tenant: &str,
        job: &Job,
        outcome: Outcome,
        attempt: &Attempt,
    ) -> Result<(), EngineError>;

    /// The newest `limit` log entries of endpoint `name`, newest first.
    async fn attempts(
        &self,
        tenant: &str,
        name: &str,
        limit: usize,
    ) -> Result<Vec<Attempt>, EngineError>;

    /// Queues one more delivery of a retained notification to endpoint `name`; false when
    /// the endpoint or the event is unknown.
    async fn redeliver(
        &self,
        tenant: &str,
        name: &str,
        event: EventId,
    ) -> Result<bool, EngineError>;

    /// Rebuilds the index of tenants with queued deliveries (a publisher may have died between
    /// its publish and its index update).
    async fn repair_delivery_index(&self) -> Result<(), EngineError>;

    /// Stores the tenant's email settings (`None`: removes them).
    async fn put_email(
        &self,
        tenant: &str,
        settings: Option<&EmailSettings>,
    ) -> Result<bool, EngineError>;

    /// The tenant's email settings.
    async fn email(&self, tenant: &str) -> Result<Option<EmailSettings>, EngineError>;

    /// Counts one email of the tenant in the window ending at `window_end_ms`; false when that
    /// makes more than `max` (the event goes to the digest instead).
    async fn email_quota(
        &self,
        tenant: &str,
        window_end_ms: u64,
        max: u32,
    ) -> Result<bool, EngineError>;

    /// Adds an envelope to the window's digest; the first one queues the digest's delivery,
    /// due when the window ends.
    async fn add_to_digest(
        &self,
        tenant: &str,
        window_end_ms: u64,
        envelope: &str,
    ) -> Result<(), EngineError>;

    /// The envelopes of a window's digest.
    async fn digest(&self, tenant: &str, window_end_ms: u64) -> Result<Vec<String>, EngineError>;
}
