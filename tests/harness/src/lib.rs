//! The shared test harness of license-gateway: real `redis-server` processes (one server or a
//! Redis Cluster), real nginx, real gateway and worker processes of the built binary, a real
//! Chromium over WebDriver, and the clients the suites drive them with. Everything it starts is
//! killed and its files removed on drop, also when a test panics.
//!
//! A crate of its own (not a `tests/common` module), so each suite uses the part it needs
//! without dead-code warnings for the rest.

pub mod browser;
pub mod client;
pub mod follow;
pub mod gateway;
pub mod http;
pub mod jwks;
pub mod macros;
pub mod nginx;
pub mod otlp;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod sentinel;
pub mod server;
pub mod sse;
pub mod tokens;
pub mod webhooks;
pub mod ws;

use std::time::Duration;

pub use browser::{Browser, b64decode};
pub use client::{AnyClient, Transport};
pub use follow::*;
pub use gateway::{Backend, Deployment, Gateway, GatewayOptions};
pub use http::{
    KeyedPublish, admin_json, admin_stats, http, metric, metric_series, publish, publish_with_key,
};
pub use jwks::{JwksMode, JwksServer, SigningKey};
pub use nginx::Nginx;
pub use otlp::OtlpReceiver;
pub use process::{TempDir, binary, eventually, free_port, run_cli};
pub use proxy::SilencingProxy;
pub use redis::{Redis, RedisCluster};
pub use sentinel::RedisSentinel;
pub use sse::SseClient;
pub use tokens::*;
pub use webhooks::{SmtpSink, WebhookReceiver};
pub use ws::*;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);
