//! Configuration: the documented argument structs of each command. Every setting is an
//! environment variable that a flag may override; the value name of each flag is the
//! variable's name, so a parse error names it.

mod delivery;
mod retention;

pub use delivery::DeliveryArgs;
pub use retention::HistoryArgs;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `healthcheck`: probe the local node.
#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// Port of the node to probe. Default 5000.
    #[arg(long, env = "PORT", value_name = "PORT", default_value_t = 5000)]
    pub port: u16,
}

/// Notice thresholds, shared by `serve` (embedded validator, API) and `worker`.
#[derive(Debug, Clone, Args)]
pub struct RulesArgs {
    /// Days before expiry at which `license_expiring` is sent, comma list. Default `30,7,1`.
    #[arg(
        long,
        env = "EXPIRY_WARNING_DAYS",
        value_name = "EXPIRY_WARNING_DAYS",
        default_value = "30,7,1"
    )]
    pub expiry_warning_days: String,
    /// Usage percentage of a limit at which `usage_limit_warning` is sent. Default 80.
    #[arg(
        long,
        env = "USAGE_WARNING_PERCENT",
        value_name = "USAGE_WARNING_PERCENT",
        default_value_t = 80.0
    )]
    pub usage_warning_percent: f64,
}

impl RulesArgs {
    /// The validated rules.
    pub fn rules(&self) -> Result<crate::license::rules::Rules, ConfigError> {
        let mut days = Vec::new();
        for part in self.expiry_warning_days.split(',') {
            let day: u32 = part
                .trim()
                .parse()
                .ok()
                .filter(|d| (1..=3650).contains(d))
                .ok_or_else(|| {
                    ConfigError::new(
                        "EXPIRY_WARNING_DAYS",
                        format!("{part:?} is not a whole number of days from 1 to 3650"),
                    )
                })?;
            days.push(day);
        }
        let percent = self.usage_warning_percent;
        if !(percent > 0.0 && percent <= 100.0) {
            return Err(ConfigError::new(
                "USAGE_WARNING_PERCENT",
                "must be above 0 and at most 100",
            ));
        }
        Ok(crate::license::rules::Rules::new(days, percent))
    }
}

/// `worker`: the validator on Redis.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// One pass over every tenant, then exit 0 (for a Kubernetes CronJob).
    #[arg(long)]
    pub once: bool,
    /// Seconds between full passes; deadlines fire in between. Default 60.
    #[arg(long, env = "WORKER_INTERVAL_SECS", value_name = "WORKER_INTERVAL_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub interval: u64,
    /// Redis connection (required).
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Notice thresholds.
    #[command(flatten)]
    pub rules: RulesArgs,
    /// History retention applied when trimming.
    #[command(flatten)]
    pub history: HistoryArgs,
    /// Serve `/metrics` and `/healthz` on this address (e.g. `0.0.0.0:9100`); unset = none.
    #[arg(long, env = "METRICS_ADDR", value_name = "METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Webhook deliveries (a looping worker makes them).
    #[command(flatten)]
    pub delivery: DeliveryArgs,
}

/// Redis connection.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// `redis://` or `redis-cluster://` URL; unset = embedded in-memory engine. May carry a
    /// password, so its value is never shown in `--help`.
    #[arg(
        long,
        env = "REDIS_URL",
        value_name = "REDIS_URL",
        hide_env_values = true
    )]
    pub redis_url: Option<String>,
    /// PEM file of the CA that signed the Redis server's certificate (`rediss://`); unset = the
    /// system's roots.
    #[arg(long, env = "REDIS_TLS_CA_FILE", value_name = "REDIS_TLS_CA_FILE")]
    pub redis_tls_ca_file: Option<PathBuf>,
}

/// How tokens are verified and minted.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// HMAC secret for HS256 tokens (shared with the REST API that issues them).
    #[arg(
        long,
        env = "JWT_SECRET",
        value_name = "JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// The HMAC secret being rotated out: still accepted for verification, never used to sign.
    #[arg(
        long,
        env = "JWT_SECRET_PREVIOUS",
        value_name = "JWT_SECRET_PREVIOUS",
        hide_env_values = true
    )]
    pub jwt_secret_previous: Option<String>,
    /// JWKS endpoint of the identity provider: keys chosen by each token's `kid` (RS256/384/512,
    /// ES256/384, EdDSA), refreshed periodically and on an unknown `kid`. Takes precedence over
    /// JWT_PUBLIC_KEY and JWT_SECRET.
    #[arg(long, env = "JWT_JWKS_URL", value_name = "JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// Seconds between JWKS refreshes. Default 300.
    #[arg(long, env = "JWT_JWKS_REFRESH_SECS", value_name = "JWT_JWKS_REFRESH_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub jwt_jwks_refresh_secs: u64,
    /// PEM file with an RSA or EC public key: RS256/ES256 verification instead of a secret.
    #[arg(long, env = "JWT_PUBLIC_KEY", value_name = "JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Required `iss` claim; unset = not checked.
    #[arg(long, env = "JWT_ISSUER", value_name = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim; unset = not checked.
    #[arg(long, env = "JWT_AUDIENCE", value_name = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Claim that names the tenant. Default `tenantId`.
    #[arg(
        long,
        env = "JWT_TENANT_CLAIM",
        value_name = "JWT_TENANT_CLAIM",
        default_value = "tenantId"
    )]
    pub jwt_tenant_claim: String,
    /// Claim that names the user (revocation, notifications); optional in tokens. Default `sub`.
    #[arg(
        long,
        env = "JWT_USER_CLAIM",
        value_name = "JWT_USER_CLAIM",
        default_value = "sub"
    )]
    pub jwt_user_claim: String,
    /// Longest accepted token lifetime: a token whose `exp` is further ahead is refused, at
    /// connect and at refresh. Default 86400.
    #[arg(long, env = "JWT_MAX_TTL_SECS", value_name = "JWT_MAX_TTL_SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub jwt_max_ttl_secs: u64,
    /// Clock-skew allowance on `exp`/`nbf` (at most 300), also when closing live connections.
    /// Default 5.
    #[arg(
        long,
        env = "JWT_LEEWAY_SECS",
        value_name = "JWT_LEEWAY_SECS",
        default_value_t = 5
    )]
    pub jwt_leeway_secs: u64,
}

#[cfg(test)]
impl AuthArgs {
    /// HS256 with `secret`, no issuer or audience, no leeway (unit tests).
    pub(crate) fn hs256(secret: &str) -> Self {
        Self {
            jwt_secret: Some(secret.into()),
            jwt_secret_previous: None,
            jwt_jwks_url: None,
            jwt_jwks_refresh_secs: 300,
            jwt_public_key: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_tenant_claim: "tenantId".into(),
            jwt_user_claim: "sub".into(),
            jwt_max_ttl_secs: 86_400,
            jwt_leeway_secs: 0,
        }
    }
}

/// Admin keys (`serve` checks them; `loadtest --via api` presents the first).
#[derive(Debug, Clone, Args)]
pub struct AdminKeyArgs {
    /// Admin keys for the admin routes, comma list (several valid at once, for rotation), each
    /// at least 32 characters. Unset: admin routes answer 401. `--demo` generates one.
    #[arg(
        long,
        env = "ADMIN_API_KEYS",
        value_name = "ADMIN_API_KEYS",
        hide_env_values = true
    )]
    pub admin_api_keys: Option<String>,
}

impl AdminKeyArgs {
    /// The first key of the list, the one a client of the admin API presents.
    pub fn first(&self) -> Option<&str> {
        self.admin_api_keys
            .as_deref()
            .and_then(|keys| keys.split(',').next())
            .map(str::trim)
            .filter(|key| !key.is_empty())
    }
}

/// `serve`: the gateway node.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Embedded engine with demo tenants; generates a secret and prints a ready URL.
    #[arg(long)]
    pub demo: bool,
    /// Listen port. Default 5000 (the seed's).
    #[arg(long, env = "PORT", value_name = "PORT", default_value_t = 5000)]
    pub port: u16,
    /// Listen address. Default 0.0.0.0; with `--demo`, 127.0.0.1.
    #[arg(long, env = "HOST", value_name = "HOST")]
    pub host: Option<IpAddr>,
    /// Redis connection; unset = embedded engine.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Token verification.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Admin keys of the admin routes.
    #[command(flatten)]
    pub admin: AdminKeyArgs,
    /// Notice thresholds (embedded validator and API changes).
    #[command(flatten)]
    pub rules: RulesArgs,
    /// Seconds between the embedded validator's full passes (no `REDIS_URL`); deadlines fire
    /// in between. Default 60.
    #[arg(long = "worker-interval", env = "WORKER_INTERVAL_SECS", value_name = "WORKER_INTERVAL_SECS",
          default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub worker_interval_secs: u64,
    /// Seconds a connection has to send complete request headers, for its first request and
    /// between later ones (slowloris, idle keep-alive). Default 10.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_SECS", value_name = "HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_header_timeout_secs: u64,
    /// Client frames per second per connection (token bucket); beyond it the connection closes
    /// with 1008 `rate limited`. 0 = no limit. Default 10.
    #[arg(
        long,
        env = "CLIENT_MSG_RATE",
        value_name = "CLIENT_MSG_RATE",
        default_value_t = 10.0
    )]
    pub client_msg_rate: f64,
    /// Client frames a connection may send at once before the rate applies. Default 20.
    #[arg(long, env = "CLIENT_MSG_BURST", value_name = "CLIENT_MSG_BURST", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub client_msg_burst: u32,
    /// Connections per client address on this node; 0 = no limit. Beyond it new connections
    /// close with 1013.
    #[arg(
        long,
        env = "MAX_CONNECTIONS_PER_IP",
        value_name = "MAX_CONNECTIONS_PER_IP",
        default_value_t = 0
    )]
    pub max_connections_per_ip: usize,
    /// Connections per tenant across every node; 0 = no limit. Beyond it new connections close
    /// with 1013; a crashed node's connections stop counting within 20 s.
    #[arg(
        long,
        env = "MAX_CONNECTIONS_PER_TENANT",
        value_name = "MAX_CONNECTIONS_PER_TENANT",
        default_value_t = 0
    )]
    pub max_connections_per_tenant: usize,
    /// Comma list of CIDR blocks of proxies whose `X-Forwarded-For` names the client (the first
    /// untrusted hop from the right). Unset: the peer address is the client.
    #[arg(long, env = "TRUSTED_PROXIES", value_name = "TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
    /// Comma list of allowed `Origin`s; unset = any. Requests without `Origin` are allowed.
    #[arg(long, env = "ALLOWED_ORIGINS", value_name = "ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,
    /// Connections per node; 0 = no limit. Beyond it new connections close with 1013.
    #[arg(
        long,
        env = "MAX_CONNECTIONS",
        value_name = "MAX_CONNECTIONS",
        default_value_t = 0
    )]
    pub max_connections: usize,
    /// Largest client frame in bytes; larger ones close with 1009. Default 4096.
    #[arg(long, env = "MAX_FRAME_BYTES", value_name = "MAX_FRAME_BYTES", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub max_frame_bytes: u32,
    /// Server ping interval in seconds; a peer silent for two intervals is dropped. Default 25.
    #[arg(long, env = "PING_INTERVAL_SECS", value_name = "PING_INTERVAL_SECS", default_value_t = 25,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ping_interval_secs: u64,
    /// Seconds between subscription probes on Redis: a subscription that delivers
    /// nothing while connected is caught within three periods. 0 = off. Default 5.
    #[arg(long, env = "REDIS_PROBE_SECS", value_name = "REDIS_PROBE_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub redis_probe_secs: u64,
    /// Events buffered per connection before it counts as a slow consumer. Default 512.
    #[arg(long, env = "SESSION_QUEUE_LEN", value_name = "SESSION_QUEUE_LEN", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub session_queue_len: u32,
    /// Payload bytes queued per connection before it counts as a slow consumer. Default
    /// 1048576.
    #[arg(long, env = "SESSION_QUEUE_BYTES", value_name = "SESSION_QUEUE_BYTES", default_value_t = 1_048_576,
          value_parser = clap::value_parser!(u64).range(4096..=1_073_741_824))]
    pub session_queue_bytes: u64,
    /// History retention.
    #[command(flatten)]
    pub history: HistoryArgs,
    /// Webhook deliveries (made in-process on the embedded engine).
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    /// How long publishers' idempotency keys are remembered.
    #[command(flatten)]
    pub idempotency: IdempotencyArgs,
    /// This node's id in stats and `connected` messages; default: host name plus a random suffix.
    #[arg(long, env = "NODE_ID", value_name = "NODE_ID")]
    pub node_id: Option<String>,
    /// Seconds a tenant subscription lingers after its last local connection leaves. Default 2.
    #[arg(
        long,
        env = "UNSUBSCRIBE_DELAY_SECS",
        value_name = "UNSUBSCRIBE_DELAY_SECS",
        default_value_t = 2.0
    )]
    pub unsubscribe_delay_secs: f64,
    /// On SIGTERM, seconds readiness stays off before sessions are closed. Default 0.
    #[arg(
        long,
        env = "DRAIN_DELAY_SECS",
        value_name = "DRAIN_DELAY_SECS",
        default_value_t = 0.0
    )]
    pub drain_delay_secs: f64,
    /// On SIGTERM, seconds over which sessions are closed with 1001, spread evenly. Default 2.
    #[arg(
        long,
        env = "DRAIN_WINDOW_SECS",
        value_name = "DRAIN_WINDOW_SECS",
        default_value_t = 2.0
    )]
    pub drain_window_secs: f64,
    /// Longest wait for sessions to close on shutdown before the process exits anyway. Default 10.
    #[arg(
        long,
        env = "SHUTDOWN_TIMEOUT_SECS",
        value_name = "SHUTDOWN_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub shutdown_timeout_secs: u64,
}

impl ServeArgs {
    /// The parsed `ALLOWED_ORIGINS` list, `None` when any origin is allowed.
    pub fn origins(&self) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(raw) = &self.allowed_origins else {
            return Ok(None);
        };
        let list: Vec<String> = raw
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if list.is_empty() {
            return Err(ConfigError::new("ALLOWED_ORIGINS", "empty list"));
        }
        Ok(Some(list))
    }

    /// The drain delay and window as durations.
    pub fn drain(&self) -> Result<(Duration, Duration), ConfigError> {
        let delay = Duration::try_from_secs_f64(self.drain_delay_secs)
            .map_err(|e| ConfigError::new("DRAIN_DELAY_SECS", e.to_string()))?;
        let window = Duration::try_from_secs_f64(self.drain_window_secs)
            .map_err(|e| ConfigError::new("DRAIN_WINDOW_SECS", e.to_string()))?;
        Ok((delay, window))
    }

    /// The client frame rate per second, checked.
    pub fn client_msg_rate(&self) -> Result<f64, ConfigError> {
        if self.client_msg_rate.is_finite() && self.client_msg_rate >= 0.0 {
            Ok(self.client_msg_rate)
        } else {
            Err(ConfigError::new(
                "CLIENT_MSG_RATE",
                "must be 0 or a positive number",
            ))
        }
    }

    /// The unsubscribe delay as a duration.
    pub fn unsubscribe_delay(&self) -> Result<Duration, ConfigError> {
        Duration::try_from_secs_f64(self.unsubscribe_delay_secs)
            .map_err(|e| ConfigError::new("UNSUBSCRIBE_DELAY_SECS", e.to_string()))
    }
}

/// `token`: mint a JWT.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Tenant the token is for.
    #[arg(long)]
    pub tenant: String,
    /// User the token names (the `JWT_USER_CLAIM` claim); unset = none.
    #[arg(long)]
    pub user: Option<String>,
    /// Lifetime in seconds. Default 3600.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
    /// Signing settings (JWT_SECRET, JWT_ISSUER, JWT_AUDIENCE, JWT_TENANT_CLAIM).
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// `publish`: one event through the atomic publish path.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Tenant to publish to.
    #[arg(long)]
    pub tenant: String,
    /// Event type (`license_expiring`, `usage_limit_warning`, …).
    #[arg(long = "type")]
    pub event_type: String,
    /// Event `data` as a JSON object. Default `{}`.
    #[arg(long)]
    pub data: Option<String>,
    /// Redis connection (required).
    #[command(flatten)]
    pub redis: RedisArgs,
    /// History retention applied when trimming.
    #[command(flatten)]
    pub history: HistoryArgs,
    /// A key that makes retries safe: a repeat with the same key and the same event prints the
    /// first publish's id and publishes nothing; with another event it fails (exit 2).
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// How long the key is remembered.
    #[command(flatten)]
    pub idempotency: IdempotencyArgs,
}

/// How long publishers' idempotency keys are remembered, per tenant.
#[derive(Debug, Clone, Args)]
pub struct IdempotencyArgs {
    /// Seconds an idempotency key is remembered: a retry within it gets the original event.
    /// Default 86400.
    #[arg(long, env = "IDEMPOTENCY_TTL_SECS", value_name = "IDEMPOTENCY_TTL_SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..=2_592_000))]
    pub idempotency_ttl_secs: u64,
}

impl IdempotencyArgs {
    /// The ttl as a duration.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.idempotency_ttl_secs)
    }
}

/// A configuration value that cannot be used; displays as one line naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid {var}: {message}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// A new error for `var`.
    pub fn new(var: &'static str, message: impl Into<String>) -> Self {
        Self {
            var,
            message: message.into(),
        }
    }
}
