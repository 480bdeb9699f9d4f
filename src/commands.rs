//! What each subcommand does. `main.rs` parses, initialises telemetry and maps the errors
//! returned here to exit codes.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{self, AppState};
use crate::auth::{AdminKeys, Signer, Verifier, valid_tenant_id};
use crate::config::{
    AuthArgs, ConfigError, HealthcheckArgs, PublishArgs, ServeArgs, TokenArgs, WorkerArgs,
};
use crate::engine::memory::MemoryEngine;
use crate::engine::redis::url::RedisTarget;
use crate::engine::redis::{ConnectMode, RedisEngine};
use crate::engine::{Applied, EngineError, Engines, HistoryConfig, IdempotencyKey};
use crate::gateway::Settings;
use crate::gateway::client_ip::TrustedProxies;
use crate::gateway::rate::Rate;
use crate::protocol::{EventDraft, EventType};

/// A failed command, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Exit 2: invalid configuration or input.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Exit 2: invalid input to a command.
    #[error("{0}")]
    Usage(String),
    /// Exit 1: the engine (Redis) cannot be used.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Exit 1: a worker pass left tenants unchecked.
    #[error("{0}")]
    Incomplete(String),
    /// Exit 1: the validator failed.
    #[error(transparent)]
    Validator(#[from] crate::worker::ValidatorError),
    /// Exit 1: the server failed.
    #[error(transparent)]
    Serve(#[from] app::AppError),
    /// Exit 1: the load test could not run.
    #[error(transparent)]
    Loadtest(#[from] crate::loadtest::LoadtestError),
    /// Exit 1: the bound listener could not be served.
    #[error("cannot serve: {0}")]
    Listen(std::io::Error),
    /// Exit 1: the listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

impl CommandError {
    /// Process exit code: 2 for bad configuration or input, 1 for runtime failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_)
            | Self::Usage(_)
            | Self::Loadtest(crate::loadtest::LoadtestError::Config(_)) => 2,
            _ => 1,
        }
    }
}

/// A random alphanumeric string (demo secret, node id suffix).
fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// The default node id: host name plus a random suffix, so restarts are distinguishable.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    format!("{host}-{}", random_string(6).to_lowercase())
}

/// Connects the Redis engine, retrying until `shutdown` (a node may start before Redis).
async fn connect_redis(
    target: &RedisTarget,
    history: HistoryConfig,
    shutdown: &CancellationToken,
) -> Result<RedisEngine, CommandError> {
    let mut delay = Duration::from_millis(200);
    loop {
        match RedisEngine::connect(target, history, ConnectMode::Service).await {
            Ok(engine) => return Ok(engine),
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "cannot reach Redis yet");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(error.into()),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// `serve`: runs a gateway node named `node_id` until SIGTERM/SIGINT.
pub async fn serve(mut args: ServeArgs, node_id: String) -> Result<(), CommandError> {
    crate::metrics::install();
    let shutdown = CancellationToken::new();
    crate::shutdown::cancel_on_signal(shutdown.clone());

    if args.demo {
        if args.redis.redis_url.take().is_some() {
            tracing::warn!("--demo runs the embedded engine; REDIS_URL is ignored");
        }
        if args.auth.jwt_secret.is_none() && args.auth.jwt_public_key.is_none() {
            args.auth.jwt_secret = Some(random_string(40));
        }
        if args.admin.admin_api_keys.is_none() {
            args.admin.admin_api_keys = Some(random_string(40));
        }
    }
    let verifier = Verifier::from_args(&args.auth)?;
    let admin_keys = AdminKeys::parse(args.admin.admin_api_keys.as_deref())?;
    let (drain_delay, drain_window) = args.drain()?;
    let settings = Settings {
        node_id,
        allowed_origins: args.origins()?,
        max_connections: args.max_connections,
        max_frame_bytes: args.max_frame_bytes as usize,
        ping_interval: Duration::from_secs(args.ping_interval_secs),
        session_queue_len: args.session_queue_len as usize,
        session_queue_bytes: args.session_queue_bytes as usize,
        unsubscribe_delay: args.unsubscribe_delay()?,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout_secs),
        drain_delay,
        drain_window,
        header_timeout: Duration::from_secs(args.http_header_timeout_secs),
        client_rate: Rate::new(args.client_msg_rate()?, args.client_msg_burst),
        max_connections_per_ip: args.max_connections_per_ip,
        max_connections_per_tenant: args.max_connections_per_tenant,
        idempotency_ttl: args.idempotency.ttl(),
        trusted_proxies: TrustedProxies::parse(args.trusted_proxies.as_deref().unwrap_or(""))
            .map_err(|e| ConfigError::new("TRUSTED_PROXIES", e))?,
        recent_window: {
            let history = HistoryConfig::from_args(&args.history);
            crate::gateway::window::WindowLimits::under_history(history.size, history.ttl)
        },
    };
    // On Redis the `worker` command validates; the embedded engine does it in-process.
    let embedded_validator = args
        .redis
        .redis_url
        .is_none()
        .then_some(Duration::from_secs(args.worker_interval_secs));
    let history = HistoryConfig::from_args(&args.history);
    let rules = args.rules.rules()?;
    check_smtp(&args.delivery)?;
    let target = match &args.redis.redis_url {
        Some(url) => Some(RedisTarget::new(
            url,
            args.redis.redis_tls_ca_file.as_deref(),
        )?),
        None => None,
    };

    // The demo listens on loopback unless HOST says otherwise; a node on every interface.
    let default_host = if args.demo {
        std::net::Ipv4Addr::LOCALHOST
    } else {
        std::net::Ipv4Addr::UNSPECIFIED
    };
    let addr = std::net::SocketAddr::new(args.host.unwrap_or(default_host.into()), args.port);
    let listener = bind(addr).await?;
    let (engines, listener) = match &target {
        Some(target) => {
            // Alive (healthz) and honest (readyz 503) while Redis cannot be reached yet.
            let listener = listener.into_std().map_err(CommandError::Listen)?;
            let starting = app::Starting::serve(&listener).map_err(CommandError::Listen)?;
            let connected = connect_redis(target, history, &shutdown).await;
            starting.stop().await;
            let listener = TcpListener::from_std(listener).map_err(CommandError::Listen)?;
            let mut engine = connected?;
            if args.redis_probe_secs > 0 {
                let period = Duration::from_secs(args.redis_probe_secs);
                engine = engine.with_probe(&settings.node_id, period);
            }
            (Engines::of("redis", engine), listener)
        }
        None => (Engines::of("memory", MemoryEngine::new(history)), listener),
    };
    if admin_keys.is_empty() {
        tracing::warn!("ADMIN_API_KEYS is not set: admin routes answer 401 to everyone");
    }
    let state = AppState::new(
        settings,
        verifier,
        admin_keys,
        &engines,
        rules,
        embedded_validator,
        &args.delivery,
    );
    if args.demo {
        seed_demo(&state).await?;
        let admin_key = args.admin.first().unwrap_or_default();
        print_demo_banner(&args.auth, admin_key, listener.local_addr().ok());
    }
    app::run(listener, state, shutdown).await?;
    Ok(())
}

/// Stores the demo tenants' licenses and usage: `acme` (enterprise, a module expiring in 20
/// days, users near their limit) and `globex` (starter, expiring in 6 days).
async fn seed_demo(state: &AppState) -> Result<(), CommandError> {
    use crate::license::document::{License, parse_usage};
    let today = time::OffsetDateTime::now_utc();
    let today = today.replace_nanosecond(0).unwrap_or(today);
    let in_days = |d: i64| crate::license::document::format_date(today + time::Duration::days(d));
    let tenants = [
        (
            serde_json::json!({
                "tenantId": "acme", "plan": "enterprise", "expiresAt": in_days(45),
                "modules": {"analytics": {"enabled": true, "expiresAt": in_days(20)},
                            "payroll": {"enabled": false}, "reports": {"enabled": true}},
                "limits": {"users": 100, "storage_gb": 50}
            }),
            serde_json::json!({"users": 72, "storage_gb": 18.5}),
        ),
        (
            serde_json::json!({
                "tenantId": "globex", "plan": "starter", "expiresAt": in_days(6),
                "modules": {"reports": {"enabled": true}},
                "limits": {"users": 10}
            }),
            serde_json::json!({"users": 4}),
        ),
    ];
    for (doc, usage) in tenants {
        let tenant = doc["tenantId"].as_str().unwrap_or_default().to_owned();
        let license =
            License::parse(&tenant, &doc).map_err(|e| CommandError::Usage(e.to_string()))?;
        let usage = parse_usage(&usage).map_err(|e| CommandError::Usage(e.to_string()))?;
        state.validator.put_license(&tenant, Some(&license)).await?;
        state.validator.put_usage(&tenant, &usage).await?;
    }
    Ok(())
}

/// Prints the ready-to-use URLs and tokens of `--demo`.
fn print_demo_banner(auth: &AuthArgs, admin: &str, addr: Option<std::net::SocketAddr>) {
    let Ok(signer) = Signer::from_args(auth) else {
        return;
    };
    let port = addr.map(|a| a.port()).unwrap_or(5000);
    let day = 24 * 3600;
    let acme = signer.mint("acme", Some("alice"), day);
    let globex = signer.mint("globex", Some("bob"), day);
    println!(
        "\nlicense-gateway demo (embedded engine)\n\
         \n  Open the demo page (tenant acme, with demo controls):\
         \n    http://127.0.0.1:{port}/?token={acme}&admin={admin}\n\
         \n  WebSocket (tenant acme):   ws://127.0.0.1:{port}/ws/license?token={acme}\
         \n  WebSocket (tenant globex): ws://127.0.0.1:{port}/ws/license?token={globex}\
         \n  Admin key:                 {admin}\
         \n\n  License view (tenant acme):\
         \n    curl http://127.0.0.1:{port}/api/license -H 'Authorization: Bearer {acme}'\
         \n\n  Push acme's usage over its limit (publishes usage_limit_exceeded):\
         \n    curl -X PUT http://127.0.0.1:{port}/api/admin/tenants/acme/usage \\\
         \n      -H 'Authorization: Bearer {admin}' -d '{{\"users\":120}}'\
         \n\n  Publish an event to acme:\
         \n    curl -X POST http://127.0.0.1:{port}/api/admin/tenants/acme/events \\\
         \n      -H 'Authorization: Bearer {admin}' -H 'Content-Type: application/json' \\\
         \n      -d '{{\"type\":\"usage_limit_warning\",\"data\":{{\"metric\":\"users\",\"used\":85,\"limit\":100,\"percent\":85}}}}'\n"
    );
}

/// `token`: prints a JWT alone on one line.
pub fn token(args: &TokenArgs) -> Result<String, CommandError> {
    if !valid_tenant_id(&args.tenant) {
        return Err(CommandError::Usage(format!(
            "invalid tenant id {:?}",
            args.tenant
        )));
    }
    let signer = Signer::from_args(&args.auth)?;
    Ok(signer.mint(&args.tenant, args.user.as_deref(), args.ttl))
}

/// `publish`: validates the event, publishes it through Redis, returns its id.
pub async fn publish(args: &PublishArgs) -> Result<String, CommandError> {
    if !valid_tenant_id(&args.tenant) {
        return Err(CommandError::Usage(format!(
            "invalid tenant id {:?}",
            args.tenant
        )));
    }
    let event_type: EventType = args
        .event_type
        .parse()
        .map_err(|e: crate::protocol::UnknownEventType| CommandError::Usage(e.to_string()))?;
    if let Some(key) = &args.idempotency_key
        && !IdempotencyKey::valid(key)
    {
        return Err(CommandError::Usage(
            "--idempotency-key must be 1-128 printable ASCII characters".into(),
        ));
    }
    let data = match &args.data {
        None => Map::new(),
        Some(raw) => match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(CommandError::Usage("--data must be a JSON object".into())),
            Err(e) => {
                return Err(CommandError::Usage(format!(
                    "--data is not valid JSON: {e}"
                )));
            }
        },
    };
    let url = args.redis.redis_url.as_deref().ok_or_else(|| {
        ConfigError::new(
            "REDIS_URL",
            "required: publish goes through Redis to every node",
        )
    })?;
    let target = RedisTarget::new(url, args.redis.redis_tls_ca_file.as_deref())?;
    let history = HistoryConfig::from_args(&args.history);
    let engine = RedisEngine::connect(&target, history, ConnectMode::OneShot).await?;
    let draft = EventDraft::new(args.tenant.clone(), event_type, data);
    let Some(key) = &args.idempotency_key else {
        let published = crate::engine::Broker::publish(&engine, &draft).await?;
        return Ok(published.id.to_string());
    };
    let key = IdempotencyKey {
        key: key.clone(),
        fingerprint: draft.fingerprint(),
        ttl: args.idempotency.ttl(),
    };
    match crate::engine::Broker::publish_idempotent(&engine, &draft, &key).await? {
        Applied::Done(published) if published.len() == 1 => Ok(published[0].id.to_string()),
        Applied::Replayed(published) => {
            tracing::info!(id = %published.id, "idempotency key seen before: nothing published");
            Ok(published.id.to_string())
        }
        Applied::KeyReused => Err(CommandError::Usage(
            "--idempotency-key was used for a different event of this tenant".into(),
        )),
        other => {
            Err(EngineError::Protocol(format!("idempotent publish answered {other:?}")).into())
        }
    }
}

/// `worker`: one pass (`--once`) or a loop until SIGTERM/SIGINT.
pub async fn worker(args: &WorkerArgs) -> Result<(), CommandError> {
    let rules = args.rules.rules()?;
    check_smtp(&args.delivery)?;
    let url = args.redis.redis_url.as_deref().ok_or_else(|| {
        ConfigError::new(
            "REDIS_URL",
            "required: the worker validates licenses stored in Redis",
        )
    })?;
    let target = RedisTarget::new(url, args.redis.redis_tls_ca_file.as_deref())?;
    let history = HistoryConfig::from_args(&args.history);
    let shutdown = CancellationToken::new();
    crate::shutdown::cancel_on_signal(shutdown.clone());
    let mode = if args.once {
        ConnectMode::OneShot
    } else {
        ConnectMode::Service
    };
    // Metrics and healthz first: the worker is alive while Redis cannot be reached yet.
    let metrics_server = match args.metrics_addr {
        Some(addr) => Some(serve_metrics(addr, shutdown.clone()).await?),
        None => None,
    };
    let engine = if args.once {
        RedisEngine::connect(&target, history, mode)
            .await
            .map_err(CommandError::from)
    } else {
        connect_redis(&target, history, &shutdown).await
    };
    let engine = match engine {
        Ok(engine) => engine,
        Err(error) => {
            shutdown.cancel();
            if let Some(server) = metrics_server {
                let _ = server.await;
            }
            return Err(error);
        }
    };
    let engine = Arc::new(engine);
    let validator = Arc::new(crate::worker::Validator::new(engine.clone(), rules));
    let result = run_validator(args, validator, engine, shutdown.clone()).await;
    // A `--once` run ends its metrics listener with it.
    shutdown.cancel();
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    result
}

/// Checks `SMTP_URL` and `SMTP_FROM` at start-up (exit 2 naming the variable) rather than at
/// the first email.
fn check_smtp(args: &crate::config::DeliveryArgs) -> Result<(), ConfigError> {
    match (&args.smtp_url, &args.smtp_from) {
        (Some(url), Some(from)) => crate::delivery::email::Mailer::new(url, from)
            .map(|_| ())
            .map_err(|e| match e.strip_prefix("SMTP_FROM: ") {
                Some(rest) => ConfigError::new("SMTP_FROM", rest),
                None => ConfigError::new("SMTP_URL", e.trim_start_matches("SMTP_URL: ")),
            }),
        (Some(_), None) => Err(ConfigError::new("SMTP_FROM", "required with SMTP_URL")),
        _ => Ok(()),
    }
}

/// Binds a listen address, naming it in the error.
async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, CommandError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| CommandError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// Binds `addr` and serves `/metrics` and `/healthz` until `shutdown`.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, CommandError> {
    crate::metrics::install();
    let listener = bind(addr).await?;
    tracing::info!(%addr, "worker metrics listening");
    let app = crate::api::probe_routes::<()>();
    tokio::spawn(crate::metrics::upkeep(shutdown.clone()));
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::warn!(%error, "worker metrics listener failed");
        }
    }))
}

/// The validator's pass (`--once`) or loop.
async fn run_validator(
    args: &WorkerArgs,
    validator: Arc<crate::worker::Validator>,
    deliveries: Arc<RedisEngine>,
    shutdown: CancellationToken,
) -> Result<(), CommandError> {
    if args.once {
        let summary = validator.pass().await?;
        if summary.failed > 0 {
            return Err(CommandError::Incomplete(format!(
                "{} tenant(s) could not be checked",
                summary.failed
            )));
        }
        return Ok(());
    }
    tracing::info!(interval_secs = args.interval, "worker looping");
    // A looping worker also makes the webhook deliveries; `--once` (a CronJob) does not.
    let runner = crate::worker::deliveries::DeliveryRunner::new(deliveries, &args.delivery)
        .map_err(|e| CommandError::Incomplete(e.to_string()))?;
    tokio::join!(
        validator.run(Duration::from_secs(args.interval), shutdown.clone()),
        Arc::new(runner).run(shutdown),
    );
    Ok(())
}

/// `healthcheck`: `GET /healthz` on the local node within two seconds; no curl in the image.
pub async fn healthcheck(args: &HealthcheckArgs) -> Result<(), CommandError> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| CommandError::Incomplete(format!("healthz: {e}")))?;
    let url = format!("http://127.0.0.1:{}/healthz", args.port);
    match client.get(url).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(CommandError::Incomplete(format!(
            "healthz answered {}",
            response.status()
        ))),
        Err(e) if e.is_timeout() => Err(CommandError::Incomplete("healthz timed out".into())),
        Err(e) => Err(CommandError::Incomplete(format!("healthz: {e}"))),
    }
}

/// `openapi`: the document a node serves at `/openapi.json`, for generating clients offline.
pub fn openapi() -> String {
    crate::api::openapi::Rendered::text(&crate::app::openapi_document())
}
