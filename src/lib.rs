//! # license-gateway
//!
//! Real-time license events for SaaS front ends. Stateless gateway nodes terminate WebSockets,
//! authenticate them with JWTs and fan out each tenant's events, which reach every node through
//! per-tenant Redis channels; any node can serve any client, so no sticky sessions are needed.
//! Without Redis, an embedded engine runs the same product on one node.
//!
//! # Layout
//!
//! - [`config`]: command line and environment, with one-line errors naming the variable.
//! - [`protocol`]: the wire contract — messages, close codes, event types, ids, envelopes.
//! - [`auth`]: JWT verification and minting, API extractors.
//! - [`engine`]: the engine trait; [`engine::memory`] (single node) and [`engine::redis`].
//! - [`gateway`]: the node — [`gateway::hub`] (tenant → sessions, subscriptions, fan-out) and
//!   [`gateway::session`] (one WebSocket).
//! - [`license`]: license documents and the pure rules (status, notices, diffs).
//! - [`worker`]: the validator — evaluates licenses and publishes notices exactly once; run by
//!   the `worker` command, in-process on the embedded engine, and by the admin API.
//! - [`api`]: health, readiness, license and admin HTTP routes.
//! - [`commands`]: what each subcommand does; `main.rs` only parses and dispatches.
//! - [`web`]: the browser client (`/client.js`) and the demo page (`/`), embedded.
//! - [`metrics`]: Prometheus metrics, rendered at `/metrics`.
//! - [`loadtest`]: the `loadtest` load generator (BENCHMARKS.md).
//! - [`telemetry`], [`shutdown`]: logs and traces, signals.

pub mod api;
pub mod auth;
pub mod commands;
pub mod config;
pub mod engine;
pub mod gateway;
pub mod license;
pub mod loadtest;
pub mod metrics;
pub mod protocol;
pub mod shutdown;
pub mod telemetry;
pub mod web;
pub mod worker;
