//! The Redis engine (fred): per-tenant pub/sub channels, a stream per tenant for history, Lua
//! scripts that change state and publish atomically, and a node registry with expiry.
//!
//! - [`keys`]: the key layout (every key of tenant `T` carries the hash tag `{T}`).
//! - [`url`]: accepted `REDIS_URL` forms.
//! - [`scripts`]: the Lua scripts (`scripts/*.lua`) and their argument and reply shapes.
//! - [`broker`], [`store`], [`registry`]: the three engine roles.
//! - [`control`]: control messages between nodes on a tenant's channel.
//! - [`subscriber`]: the receive loop and the subscription keeper.
//! - [`probe`]: the subscription probe that catches a subscriber gone silent.
//! - [`topology`]: Redis Cluster slot layout.

pub mod broker;
pub mod control;
pub mod deliveries;
pub mod keys;
pub mod notifications;
pub mod probe;
pub mod registry;
pub mod scripts;
pub mod store;
pub mod subscriber;
pub mod tickets;
pub mod topology;
pub mod url;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use tokio_util::sync::CancellationToken;

use super::{EngineError, EventSink, HistoryConfig};
use scripts::Scripts;

/// The sink the receive loop and keeper hand events to; weak, so the engine does not keep the
/// hub alive.
type SharedSink = Weak<dyn EventSink>;

/// How the engine connects: long-lived nodes reconnect forever; one-shot CLI commands fail fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectMode {
    /// Reconnect with backoff forever; commands time out after a few seconds.
    Service,
    /// No reconnect: a CLI command reports Redis down at once.
    OneShot,
}

/// Redis engine: implements every engine role. Cheap to share behind an `Arc`.
pub struct RedisEngine {
    client: Client,
    config: Config,
    mode: ConnectMode,
    /// Redis Cluster: sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`), scans on every master.
    cluster: bool,
    history: HistoryConfig,
    /// Subscription probe period (`REDIS_PROBE_SECS`); none = no probe.
    probe_every: Option<Duration>,
    /// This node's id (names its probe channels).
    node_id: String,
    scripts: Scripts,
    subscriber: OnceLock<SubscriberClient>,
    state: Arc<RedisState>,
}

/// Health and wanted channels, shared with the background tasks.
#[derive(Default)]
pub struct RedisState {
    /// Tenant channels this node wants, kept here rather than trusting the client's own list:
    /// a server drops sharded subscriptions silently when their slot moves, and fred does not
    /// forget them either, so only this set says what to restore. std Mutex: never held
    /// across an await.
    wanted: Mutex<BTreeSet<String>>,
    /// Subscriber connected and every tracked channel resubscribed.
    subscriptions_ok: AtomicBool,
    /// Last command-connection health check succeeded.
    commands_ok: AtomicBool,
    /// Probes sent and received back.
    probe: probe::ProbeState,
    /// A silent subscription was detected and no probe has come back since.
    probe_failing: AtomicBool,
    /// Asks the keeper to resubscribe every channel and fill the gaps (the probe's remedy).
    resubscribe: tokio::sync::Notify,
}

impl RedisState {
    /// Adds or removes a wanted tenant channel.
    fn want(&self, tenant: &str, wanted: bool) {
        let mut set = self.wanted();
        if wanted {
            set.insert(tenant.to_owned());
        } else {
            set.remove(tenant);
        }
    }

    /// The wanted tenants.
    fn wanted(&self) -> MutexGuard<'_, BTreeSet<String>> {
        // A poisoned lock only means a panic elsewhere mid-insert; the set is still usable.
        self.wanted.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_subscriptions_ok(&self, ok: bool) {
        self.subscriptions_ok.store(ok, Ordering::Relaxed);
    }
}

impl RedisEngine {
    /// The publish command scripts use: sharded pub/sub on a cluster.
    fn publish_command(&self) -> &'static str {
        if self.cluster { "SPUBLISH" } else { "PUBLISH" }
    }
}

fn unavailable(e: fred::error::Error) -> EngineError {
    EngineError::Unavailable(e.to_string())
}

impl RedisEngine {
    /// Connects the command client to `target` (`redis://`, `rediss://`, or a cluster URL
    /// `redis[s]-cluster://host:port[,host:port…]`).
    pub async fn connect(
        target: &url::RedisTarget,
        history: HistoryConfig,
        mode: ConnectMode,
    ) -> Result<Self, EngineError> {
        let url = target.url.as_str();
        let mut config = Config::from_url(&url::fred_url(url))
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        if let Some(tls) = &target.tls {
            config.tls = Some(tls.clone());
        }
        let client = Self::builder(&config, mode, false)
            .build()
            .map_err(unavailable)?;
        client.init().await.map_err(unavailable)?;
        let engine = Self {
            client,
            config,
            mode,
            cluster: url::is_cluster(url),
            history,
            probe_every: None,
            node_id: String::new(),
            scripts: Scripts::default(),
            subscriber: OnceLock::new(),
            state: Arc::new(RedisState::default()),
        };
        engine.state.commands_ok.store(true, Ordering::Relaxed);
        Ok(engine)
    }

    /// Probes this node's subscriptions every `period` once started (docs/OPERATIONS.md); `node_id`
    /// names the probe channels.
    pub fn with_probe(mut self, node_id: &str, period: Duration) -> Self {
        self.probe_every = Some(period);
        self.node_id = node_id.to_owned();
        self
    }

    /// A client builder; `subscriber` for the one that receives pub/sub messages.
    fn builder(config: &Config, mode: ConnectMode, subscriber: bool) -> Builder {
        let mut builder = Builder::from_config(config.clone());
        builder.with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
            if subscriber {
                // A subscriber connection that stops answering is closed and made anew.
                c.unresponsive = fred::types::config::UnresponsiveConfig {
                    max_timeout: Some(probe::UNRESPONSIVE_AFTER),
                    interval: Duration::from_millis(500),
                };
            }
        });
        builder.with_performance_config(|p| {
            // Commands fail (503) instead of waiting forever while Redis is away.
            p.default_command_timeout = Duration::from_secs(3);
            // fred's default of 32 drops messages (`Lagged`) as soon as the receive loop falls
            // behind a burst; the loop only hands bytes to the hub, so a deep buffer is cheap.
            // Only the subscriber gets one: fred preallocates every notification channel of a
            // client at this size, about 10 MiB of RSS per client.
            if subscriber {
                p.broadcast_channel_capacity = 16_384;
            }
        });
        if mode == ConnectMode::Service {
            // Without a policy fred never reconnects. Unlimited attempts, 100 ms doubling to 2 s.
            builder.set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        }
        builder
    }

    fn subscriber(&self) -> Result<&SubscriberClient, EngineError> {
        self.subscriber
            .get()
            .ok_or_else(|| EngineError::Unavailable("redis engine not started".into()))
    }

    /// Connects the subscriber and spawns the engine's background tasks on `tracker`: the
    /// receive loop, the subscription keeper, the slot follower (cluster), the command-link
    /// health check, and the close of both connections at `shutdown`.
    async fn start_tasks(
        &self,
        sink: SharedSink,
        shutdown: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Result<(), EngineError> {
        let sub = Self::builder(&self.config, self.mode, true)
            .build_subscriber_client()
            .map_err(unavailable)?;
        // Listeners first, so the first (re)connect event is not missed.
        let messages = sub.message_rx();
        let events = subscriber::Events {
            errors: sub.error_rx(),
            reconnects: sub.reconnect_rx(),
            changes: sub.cluster_change_rx(),
        };
        sub.init().await.map_err(unavailable)?;
        self.state.set_subscriptions_ok(true);

        tracker.spawn(subscriber::receive(
            messages,
            sink.clone(),
            self.state.clone(),
            shutdown.clone(),
        ));
        if let Some(period) = self.probe_every {
            tracker.spawn(probe::run(
                self.node_id.clone(),
                self.client.clone(),
                sub.clone(),
                self.state.clone(),
                self.cluster,
                period,
                shutdown.clone(),
            ));
        }
        tracker.spawn(subscriber::keep_subscriptions(
            sub.clone(),
            self.state.clone(),
            self.cluster,
            sink,
            events,
            shutdown.clone(),
        ));
        if self.cluster {
            tracker.spawn(topology::follow_slot_moves(sub.clone(), shutdown.clone()));
        }
        tracker.spawn(watch_commands(
            self.client.clone(),
            self.state.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(quit_at(shutdown, self.client.clone(), sub.clone()));
        let _ = self.subscriber.set(sub);
        Ok(())
    }

    /// Connected, and every wanted subscription in place.
    fn ready(&self) -> bool {
        let sub_connected = self.subscriber.get().is_some_and(|s| s.is_connected());
        sub_connected
            && self.client.is_connected()
            && self.state.commands_ok.load(Ordering::Relaxed)
            && self.state.subscriptions_ok.load(Ordering::Relaxed)
            && !self.state.probe_failing.load(Ordering::Relaxed)
    }
}

/// Health check of the command connection: one PING a second until `stop`.
async fn watch_commands(client: Client, state: Arc<RedisState>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let ok = tokio::time::timeout(Duration::from_secs(1), client.ping::<String>(None))
            .await
            .is_ok_and(|r| r.is_ok());
        if state.commands_ok.swap(ok, Ordering::Relaxed) != ok {
            tracing::info!(ok, "redis command connection health changed");
        }
    }
}

/// Closes both connections at shutdown, tracked like every other task.
async fn quit_at(shutdown: CancellationToken, client: Client, sub: SubscriberClient) {
    shutdown.cancelled().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), sub.quit()).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
}
