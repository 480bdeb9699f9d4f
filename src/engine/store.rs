//! The license store role: documents, usage counters, notice state and deadlines. Every write
//! that publishes goes through [`LicenseStore::apply`], one atomic compare-and-set step that
//! also appends and publishes its events, so a notice is published exactly once however many
//! validators run.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use super::{EngineError, Published};
use crate::protocol::EventDraft;

/// A tenant's stored license state, read in one atomic step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantRecord {
    /// The license document JSON, if any.
    pub doc: Option<String>,
    /// Usage counters: metric → number (JSON number text).
    pub usage: BTreeMap<String, String>,
    /// Notice state: field → value (see `license::rules`).
    pub notices: BTreeMap<String, String>,
}

/// What the stored document must be for a [`Change`] to apply.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// Not checked.
    Any,
    /// No document stored.
    Absent,
    /// Exactly this JSON stored.
    Value(String),
}

impl Expect {
    /// `Absent` for `None`, `Value` otherwise.
    pub fn from_option(doc: Option<&String>) -> Self {
        doc.map_or(Expect::Absent, |d| Expect::Value(d.clone()))
    }
}

/// What a [`Change`] does to the stored document.
#[derive(Debug, Clone, PartialEq)]
pub enum DocWrite {
    /// Leave it as it is.
    Keep,
    /// Store this JSON.
    Set(String),
    /// Remove it.
    Delete,
}

/// A compare-and-set on one notice-state field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSwap {
    /// The field.
    pub field: String,
    /// Its expected current value (`None`: absent).
    pub expect: Option<String>,
    /// Its new value (`None`: remove).
    pub set: Option<String>,
}

/// A publisher's idempotency key (`Idempotency-Key`, `publish --idempotency-key`): recorded in
/// the same atomic step as the event, so a retry with the same key and the same request gets
/// the original event instead of a second one, on any node.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyKey {
    /// The key, 1–128 printable ASCII characters, scoped to the tenant.
    pub key: String,
    /// What was asked for ([`EventDraft::fingerprint`]): the same key with another request is
    /// refused.
    pub fingerprint: String,
    /// How long the key is remembered.
    pub ttl: Duration,
}

/// Idempotency keys remembered per tenant at most; beyond it the soonest to expire is forgotten
/// first (and a retry with it would publish anew).
pub const IDEMPOTENCY_MAX_KEYS: usize = 10_000;

impl IdempotencyKey {
    /// Checks a presented key: 1–128 printable ASCII characters (space included).
    pub fn valid(key: &str) -> bool {
        (1..=128).contains(&key.len()) && key.bytes().all(|b| (0x20..0x7f).contains(&b))
    }
}

/// An atomic change of a tenant's state: every condition holds and everything is applied and
/// published, or nothing is (a publish is never half-applied; notices go out once).
#[derive(Debug, Clone)]
pub struct Change {
    /// Condition on the stored document.
    pub doc_expect: Expect,
    /// Write to the document.
    pub doc: DocWrite,
    /// Compare-and-set on notice-state fields.
    pub notices: Vec<FieldSwap>,
    /// Events to append to the history and publish, in order, all of the change's tenant.
    pub events: Vec<EventDraft>,
    /// For a one-event publish: apply only if the key is new (see [`Applied::Replayed`]).
    pub idempotency: Option<IdempotencyKey>,
}

impl Change {
    /// A change that only publishes events.
    pub fn publish(events: Vec<EventDraft>) -> Self {
        Self {
            doc_expect: Expect::Any,
            doc: DocWrite::Keep,
            notices: Vec::new(),
            events,
            idempotency: None,
        }
    }

    /// This change (one event), applied only if `key` was not used before.
    pub fn with_idempotency(mut self, key: IdempotencyKey) -> Self {
        self.idempotency = Some(key);
        self
    }
}

/// Outcome of [`LicenseStore::apply`].
#[derive(Debug, Clone)]
pub enum Applied {
    /// Conditions held; the events were published with these ids.
    Done(Vec<Published>),
    /// A condition did not hold (someone else changed the state first); nothing was applied.
    Conflict,
    /// The idempotency key was used before for the same request: nothing was applied; this is
    /// the event that request published.
    Replayed(Published),
    /// The idempotency key was used before for another request: nothing was applied.
    KeyReused,
}

/// License documents, usage, notice state and deadlines.
#[async_trait]
pub trait LicenseStore: Send + Sync + 'static {
    /// Checks the change's conditions and applies it — state writes, history appends and
    /// channel publishes — as one atomic step.
    async fn apply(&self, tenant: &str, change: &Change) -> Result<Applied, EngineError>;

    /// The tenant's document, usage and notice state, read atomically.
    async fn load(&self, tenant: &str) -> Result<TenantRecord, EngineError>;

    /// Merges usage counters (metric → JSON number text) into the stored ones.
    async fn merge_usage(
        &self,
        tenant: &str,
        usage: &[(String, String)],
    ) -> Result<(), EngineError>;

    /// Tenants that have a license document.
    async fn licensed_tenants(&self) -> Result<Vec<String>, EngineError>;

    /// Records when the tenant next owes a notice (Unix ms), or that it never will.
    async fn set_deadline(&self, tenant: &str, at_ms: Option<u64>) -> Result<(), EngineError>;

    /// Tenants whose recorded deadline is at or before `now_ms`.
    async fn due_tenants(&self, now_ms: u64) -> Result<Vec<String>, EngineError>;
}

/// [`crate::engine::Broker::publish_idempotent`] for an engine whose broker publishes through
/// its license store (both do).
pub async fn publish_idempotent<S: LicenseStore + ?Sized>(
    store: &S,
    draft: &EventDraft,
    key: &IdempotencyKey,
) -> Result<Applied, EngineError> {
    let change = Change::publish(vec![draft.clone()]).with_idempotency(key.clone());
    store.apply(&draft.tenant, &change).await
}

/// The single published event of an unconditional one-event change.
pub fn single(applied: Applied) -> Result<Published, EngineError> {
    match applied {
        Applied::Done(mut published) if published.len() == 1 => Ok(published.remove(0)),
        other => Err(EngineError::Protocol(format!(
            "unconditional publish returned {other:?}"
        ))),
    }
}
