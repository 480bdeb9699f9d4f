//! # license-gateway
//!
//! Real-time license events for SaaS front ends. Stateless gateway nodes terminate WebSockets,
//! authenticate them with JWTs and fan out each tenant's events, which reach every node through
//! per-tenant Redis channels; any node can serve any client, so no sticky sessions are needed.
//! Without Redis, an embedded engine runs the same product on one node.
//!
//! # Layout
//!
//! In dependency order: a module uses only modules listed before it.
//!
//! - [`protocol`]: the wire contract — messages, close codes, event types, ids, envelopes.
//! - [`shutdown`]: signals cancel one token.
//! - [`license`]: license documents and the pure rules (status, notices, diffs).
//! - [`notifications`]: the notification center's rules — filters, preferences, read state,
//!   stats.
//! - [`delivery`]: webhooks and email to a tenant's own systems — endpoints, signing, the
//!   SSRF guard, the retry schedule, one attempt.
//! - [`config`]: documented argument structs, with one-line errors naming the variable.
//! - [`metrics`]: Prometheus metrics, rendered at `/metrics`.
//! - [`telemetry`]: logs and traces.
//! - [`auth`]: JWT verification and minting, API extractors.
//! - [`engine`]: the roles ([`engine::Broker`], [`engine::LicenseStore`],
//!   [`engine::NodeRegistry`], [`engine::NotificationStore`], [`engine::DeliveryStore`]) and
//!   their two implementations, [`engine::memory`] (single node)
//!   and [`engine::redis`].
//! - [`worker`]: the validator — evaluates licenses and publishes notices exactly once; run by
//!   the `worker` command, in-process on the embedded engine, and by the admin API — and the
//!   delivery runner, which makes the webhook attempts.
//! - [`gateway`]: the node — upgrade, sessions, hub, stream recovery, drain.
//! - [`api`]: health, readiness, license and admin HTTP routes.
//! - [`web`]: the browser client (`/client.js`) and the demo page (`/`), embedded.
//! - [`app`]: the composition root — state, router, run.
//! - [`loadtest`]: the `loadtest` load generator (BENCHMARKS.md).
//! - [`commands`]: what each subcommand does.
//! - [`cli`]: the command line; `main.rs` only parses and dispatches.
//! - [`fuzzing`]: entry points of the fuzz targets (`tests/fuzz`), public for them; unit tests
//!   replay the checked-in corpus through them.
//!
//! `docs/ARCHITECTURE.md` follows one event and one client through these modules.
//!
//! Only what the binary needs is public (`cli`, `commands`, `config`, `loadtest`,
//! `telemetry`); the rest is crate-private, so the compiler reports what nothing uses. Read the
//! whole with `cargo doc --document-private-items`.

// The layout above links the private modules on purpose.
#![allow(rustdoc::private_intra_doc_links)]

pub(crate) mod api;
pub(crate) mod app;
pub(crate) mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub(crate) mod delivery;
pub(crate) mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod gateway;
pub(crate) mod license;
pub mod loadtest;
pub(crate) mod metrics;
pub(crate) mod notifications;
pub(crate) mod protocol;
pub(crate) mod shutdown;
pub mod telemetry;
pub(crate) mod web;
pub(crate) mod worker;
