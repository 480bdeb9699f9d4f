//! Out-of-band delivery of events to a tenant's own systems: webhook endpoints (signed with
//! Standard Webhooks) and email. The rules and the one-attempt sender live here; the
//! durable schedule is an engine role (`DeliveryStore`), and the worker runs the attempts
//! (`worker::deliveries`), never a gateway node.
//!
//! - [`endpoint`]: what a tenant registers, validated field by field, and what it wants.
//! - [`signing`]: `whsec_` secrets and `webhook-signature`.
//! - [`ssrf`]: internal addresses refused at registration and at every attempt.
//! - [`retry`]: the backoff schedule with jitter.
//! - [`webhook`]: one signed POST and what came of it.
//! - [`email`]: one message per event, and the digest of those over the hourly cap.

pub mod email;
pub mod endpoint;
pub mod retry;
pub mod signing;
pub mod ssrf;
pub mod webhook;
