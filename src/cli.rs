//! The command line: the binary's subcommands and global options. `main.rs` parses it; the
//! argument structs live in [`crate::config`] and [`crate::loadtest`].

use clap::{Parser, Subcommand};

use crate::config::{HealthcheckArgs, LogFormat, PublishArgs, ServeArgs, TokenArgs, WorkerArgs};

/// Real-time license-event gateway.
#[derive(Debug, Parser)]
#[command(name = "license-gateway", version, about, propagate_version = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
    /// Log format: `text` (default on a terminal) or `json` (default otherwise).
    #[arg(long, env = "LOG_FORMAT", value_name = "LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
}

/// The binary's roles.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// HTTP + WebSocket gateway (Redis engine with REDIS_URL, embedded engine without).
    Serve(ServeArgs),
    /// Mint a JWT signed with JWT_SECRET (development and tests).
    Token(TokenArgs),
    /// Publish one event through the engine's atomic publish path (needs REDIS_URL).
    Publish(PublishArgs),
    /// Validator worker on Redis: evaluates every license and publishes notices, exactly once.
    Worker(WorkerArgs),
    /// Exit 0 when the local node answers `GET /healthz` (container health checks).
    Healthcheck(HealthcheckArgs),
    /// Load generator for one node: idle connections or fan-out, measured (BENCHMARKS.md).
    Loadtest(crate::loadtest::LoadtestArgs),
    /// Print the OpenAPI 3.1 document (what a node serves at /openapi.json) and exit.
    Openapi,
}
