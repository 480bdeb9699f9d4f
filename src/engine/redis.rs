//! The Redis engine (fred): per-tenant pub/sub channels, a stream per tenant for history, a Lua
//! script that appends and publishes atomically, and a node registry with expiry.
//!
//! Layout (SPEC §5): every key of tenant `T` carries the hash tag `{T}`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::scripts::Script;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use serde::Deserialize;

use super::{
    Applied, Change, Engine, EngineError, EventSink, Expect, History, HistoryConfig, NODE_TTL,
    NodeStats, Position, Published, TenantRecord,
};
use crate::protocol::{EventId, check_channel_payload, now_ms};

/// Pub/sub channel of tenant `t`.
pub fn events_channel(t: &str) -> String {
    format!("license:events:{{{t}}}")
}

/// History stream of tenant `t`.
pub fn history_key(t: &str) -> String {
    format!("license:history:{{{t}}}")
}

/// Sorted set of node ids scored by their last refresh (ms).
pub const NODES_KEY: &str = "license:nodes";

/// Registry entry of node `id`.
pub fn node_key(id: &str) -> String {
    format!("license:node:{id}")
}

/// The tenant of a channel name, if it is a tenant channel.
fn tenant_of_channel(channel: &str) -> Option<&str> {
    channel.strip_prefix("license:events:{")?.strip_suffix('}')
}

/// License document of tenant `t`.
pub fn doc_key(t: &str) -> String {
    format!("license:doc:{{{t}}}")
}

/// Usage counters of tenant `t`.
pub fn usage_key(t: &str) -> String {
    format!("license:usage:{{{t}}}")
}

/// Notice state of tenant `t` (see `license::rules`).
pub fn notices_key(t: &str) -> String {
    format!("license:notices:{{{t}}}")
}

/// Sorted set of tenants scored by when they next owe a notice (ms).
pub const DEADLINES_KEY: &str = "license:deadlines";

/// Applies a [`Change`] atomically (SPEC §5): checks the document and notice-state conditions,
/// writes, then appends each event to the history and publishes it. Each id is chosen here, not
/// by `XADD *`, because the stored envelope must contain its own id: the server clock's
/// millisecond, or one sequence number past the newest entry when the clock has not moved on.
///
/// KEYS: history stream, channel, document, notice hash. ARGV: max length, ttl in ms, publish
/// command (`PUBLISH`, or `SPUBLISH` on a cluster), the change as JSON.
const APPLY_LUA: &str = r#"
local spec = cjson.decode(ARGV[4])
local function holds(current, expected)
  if expected == cjson.null then return current == false end
  return current == expected
end
if spec.doc_check and not holds(redis.call('GET', KEYS[3]), spec.doc_expect) then
  return {'conflict'}
end
for _, f in ipairs(spec.notices) do
  if not holds(redis.call('HGET', KEYS[4], f.field), f.expect) then return {'conflict'} end
end
if spec.doc_write then
  if spec.doc_set == cjson.null then redis.call('DEL', KEYS[3]) else redis.call('SET', KEYS[3], spec.doc_set) end
end
for _, f in ipairs(spec.notices) do
  if f.set == cjson.null then redis.call('HDEL', KEYS[4], f.field) else redis.call('HSET', KEYS[4], f.field, f.set) end
end
local out = {'ok'}
if #spec.events == 0 then return out end
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seq = 0
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  local lms, lseq = string.match(last[1][1], '^(%d+)-(%d+)$')
  lms = tonumber(lms)
  if ms <= lms then
    ms = lms
    seq = tonumber(lseq) + 1
  end
end
for _, e in ipairs(spec.events) do
  local id = string.format('%d-%d', ms, seq)
  local payload = e[1] .. id .. e[2]
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], id, 'event', payload)
  redis.call(ARGV[3], KEYS[2], payload)
  table.insert(out, id)
  seq = seq + 1
end
local horizon = ms - tonumber(ARGV[2])
if horizon > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d', horizon))
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return out
"#;

/// Reads a tenant's document, usage and notice state in one step, as JSON.
/// KEYS: document, usage hash, notice hash.
const LOAD_LUA: &str = r#"
local doc = redis.call('GET', KEYS[1])
if doc == false then doc = cjson.null end
return cjson.encode({doc = doc, usage = redis.call('HGETALL', KEYS[2]), notices = redis.call('HGETALL', KEYS[3])})
"#;

/// The tenant's events after an id (resume, gap filling). The id must be in the stream: an id
/// that was trimmed, never existed, or belongs to a history lost with a Redis restart cannot be
/// resumed from, and the reply says which (Centrifugo's epoch check, by exact match).
/// With ARGV[3] = `order` (a node's own gap fill) an absent id is enough when the history
/// reaches back to it: everything after it by id order follows.
/// KEYS: history stream. ARGV: the id (`-` for everything), max entries, `exact` | `order`.
/// Reply: `ok, id1, event1, …` | `miss, first, last` | `empty`.
const HISTORY_LUA: &str = r#"
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #first == 0 then return {'empty'} end
local function before(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local start = '-'
if ARGV[1] ~= '-' then
  local present = #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) > 0
  local covered = ARGV[3] == 'order' and not before(ARGV[1], first[1][1])
  if not present and not covered then
    local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
    return {'miss', first[1][1], last[1][1]}
  end
  start = '(' .. ARGV[1]
end
local out = {'ok'}
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', ARGV[2])) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'event' then
      table.insert(out, entry[1])
      table.insert(out, fields[i + 1])
    end
  end
end
return out
"#;

/// Newest id of a stream, or nothing. KEYS: history stream.
const LAST_ID_LUA: &str = r#"
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last == 0 then return false end
return last[1][1]
"#;

/// The change as the apply script reads it.
#[derive(serde::Serialize)]
struct ApplySpec<'a> {
    doc_check: bool,
    doc_expect: Option<&'a str>,
    doc_write: bool,
    doc_set: Option<&'a str>,
    notices: Vec<SwapSpec<'a>>,
    events: Vec<(String, String)>,
}

#[derive(serde::Serialize)]
struct SwapSpec<'a> {
    field: &'a str,
    expect: Option<&'a str>,
    set: Option<&'a str>,
}

/// The record as the load script returns it (hashes as flat key/value lists).
#[derive(serde::Deserialize)]
struct LoadedRecord {
    doc: Option<String>,
    #[serde(default, deserialize_with = "flat_pairs")]
    usage: std::collections::BTreeMap<String, String>,
    #[serde(default, deserialize_with = "flat_pairs")]
    notices: std::collections::BTreeMap<String, String>,
}

/// HGETALL's flat list; Lua's cjson encodes an empty one as `{}`.
fn flat_pairs<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    let mut out = std::collections::BTreeMap::new();
    if let serde_json::Value::Array(items) = value {
        for pair in items.chunks(2) {
            if let [serde_json::Value::String(k), serde_json::Value::String(v)] = pair {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(out)
}

/// Our `redis-cluster://a:1,b:2,…` form (SPEC §1) as fred's `redis-cluster://a:1?node=b:2&…`.
fn fred_url(url: &str) -> String {
    let Some(rest) = url.strip_prefix("redis-cluster://") else {
        return url.to_owned();
    };
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let (hosts, query) = hosts.split_once('?').unwrap_or((hosts, ""));
    let mut nodes = hosts.split(',').map(str::trim).filter(|h| !h.is_empty());
    let first = nodes.next().unwrap_or_default();
    let mut params: Vec<String> = nodes.map(|n| format!("node={n}")).collect();
    if !query.is_empty() {
        params.push(query.to_owned());
    }
    if params.is_empty() {
        format!("redis-cluster://{auth}{first}")
    } else {
        format!("redis-cluster://{auth}{first}?{}", params.join("&"))
    }
}

/// How the engine connects: long-lived nodes reconnect forever; one-shot CLI commands fail fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectMode {
    /// Reconnect with backoff forever; commands time out after a few seconds.
    Service,
    /// No reconnect: a CLI command reports Redis down at once.
    OneShot,
}

/// Redis engine. Cheap to share behind an `Arc`.
pub struct RedisEngine {
    client: Client,
    config: Config,
    mode: ConnectMode,
    /// Redis Cluster: sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`), scans on every master.
    cluster: bool,
    history: HistoryConfig,
    apply_script: Script,
    load_script: Script,
    history_script: Script,
    last_id_script: Script,
    subscriber: OnceLock<SubscriberClient>,
    state: Arc<RedisState>,
}

/// Health shared with the background tasks.
#[derive(Default)]
struct RedisState {
    /// Tenant channels this node wants, kept here rather than trusting the client's own list:
    /// a server drops sharded subscriptions silently when their slot moves, and fred does not
    /// forget them either, so only this set says what to restore.
    wanted: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Subscriber connected and every tracked channel resubscribed.
    subscriptions_ok: AtomicBool,
    /// Last command-connection health check succeeded.
    commands_ok: AtomicBool,
}

impl RedisState {
    /// Adds or removes a wanted tenant channel.
    fn want(&self, tenant: &str, wanted: bool) {
        let mut set = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        if wanted {
            set.insert(tenant.to_owned());
        } else {
            set.remove(tenant);
        }
    }
}

fn unavailable(e: fred::error::Error) -> EngineError {
    EngineError::Unavailable(e.to_string())
}

impl RedisEngine {
    /// Parses the URL (`redis://`, or `redis-cluster://host:port[,host:port…]`) and connects
    /// the command client.
    pub async fn connect(
        url: &str,
        history: HistoryConfig,
        mode: ConnectMode,
    ) -> Result<Self, EngineError> {
        let cluster = url.starts_with("redis-cluster://");
        let config = Config::from_url(&fred_url(url))
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        let client = Self::builder(&config, mode, false)
            .build()
            .map_err(unavailable)?;
        client.init().await.map_err(unavailable)?;
        let engine = Self {
            client,
            config,
            mode,
            cluster,
            history,
            apply_script: Script::from_lua(APPLY_LUA),
            load_script: Script::from_lua(LOAD_LUA),
            history_script: Script::from_lua(HISTORY_LUA),
            last_id_script: Script::from_lua(LAST_ID_LUA),
            subscriber: OnceLock::new(),
            state: Arc::new(RedisState::default()),
        };
        engine.state.commands_ok.store(true, Ordering::Relaxed);
        Ok(engine)
    }

    /// A client builder; `subscriber` for the one that receives pub/sub messages.
    fn builder(config: &Config, mode: ConnectMode, subscriber: bool) -> Builder {
        let mut builder = Builder::from_config(config.clone());
        builder.with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
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
            // Without a policy fred never reconnects (STACK-NOTES). Unlimited attempts, 100 ms
            // doubling to 2 s.
            builder.set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        }
        builder
    }

    fn subscriber(&self) -> Result<&SubscriberClient, EngineError> {
        self.subscriber
            .get()
            .ok_or_else(|| EngineError::Unavailable("redis engine not started".into()))
    }
}

/// Hands one pub/sub message to the sink after checking it (SPEC §2: garbage is dropped, logged
/// and counted, never forwarded).
fn dispatch(message: fred::types::Message, sink: &dyn EventSink) {
    let channel: &str = &message.channel;
    let Some(tenant) = tenant_of_channel(channel) else {
        return;
    };
    let bytes: Bytes = match message.value {
        Value::String(s) => s.into_inner(),
        Value::Bytes(b) => b,
        other => {
            crate::metrics::payload_dropped();
            tracing::warn!(tenant, kind = ?other.kind(), "dropped non-string payload on tenant channel");
            return;
        }
    };
    let (id, receive_span) = match check_channel_payload(tenant, &bytes) {
        Ok(checked) => {
            if let Some(published) = checked.published_ms {
                let now = now_ms() as f64;
                crate::metrics::delivery_latency(((now - published as f64) / 1000.0).max(0.0));
            }
            // This node's part of the publisher's trace, when both sides export.
            let span = match &checked.traceparent {
                Some(parent) if crate::telemetry::exporting() => {
                    let span = tracing::info_span!(
                        "receive",
                        otel.kind = "consumer",
                        messaging.system = "redis",
                        messaging.destination.name = channel,
                        messaging.message.id = checked.id.map(tracing::field::display),
                        tenant
                    );
                    crate::telemetry::set_remote_parent(&span, parent);
                    span
                }
                _ => tracing::Span::none(),
            };
            (checked.id, span)
        }
        Err(error) => {
            crate::metrics::payload_dropped();
            tracing::warn!(tenant, %error, "dropped payload on tenant channel");
            return;
        }
    };
    let _entered = receive_span.entered();
    match Utf8Bytes::try_from(bytes) {
        Ok(payload) => sink.deliver(tenant, id, payload),
        Err(_) => {
            crate::metrics::payload_dropped();
            tracing::warn!(tenant, "dropped non-UTF-8 payload on tenant channel");
        }
    }
}

/// The cluster's slot ranges and their masters as the subscriber routes them (empty when not
/// a cluster).
fn slot_layout(sub: &SubscriberClient) -> Vec<(u16, u16, String)> {
    sub.cached_cluster_state()
        .map(|routing| {
            routing
                .slots()
                .iter()
                .map(|r| (r.start, r.end, r.primary.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Subscribes every wanted tenant channel again; returns how many. Sharded channels go one per
/// call: a call may only name channels of one slot (CROSSSLOT), and fred routes each to the
/// master that owns its slot now.
async fn restore(
    sub: &SubscriberClient,
    cluster: bool,
    state: &RedisState,
) -> Result<usize, fred::error::Error> {
    let channels: Vec<String> = state
        .wanted
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|t| events_channel(t))
        .collect();
    if cluster {
        for channel in &channels {
            sub.ssubscribe(channel.as_str()).await?;
        }
    } else if !channels.is_empty() {
        sub.subscribe(channels.clone()).await?;
    }
    Ok(channels.len())
}

#[async_trait]
impl Engine for RedisEngine {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn start(
        &self,
        sink: Weak<dyn EventSink>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<(), EngineError> {
        let subscriber = Self::builder(&self.config, self.mode, true)
            .build_subscriber_client()
            .map_err(unavailable)?;
        // Listeners first, so the first (re)connect event is not missed.
        let mut messages = subscriber.message_rx();
        let mut reconnects = subscriber.reconnect_rx();
        let mut errors = subscriber.error_rx();
        subscriber.init().await.map_err(unavailable)?;
        self.state.subscriptions_ok.store(true, Ordering::Relaxed);

        // Receive loop: forwards every message; a lag is logged, counted and refilled.
        let keeper_sink = sink.clone();
        let stop = shutdown.clone();
        tracker.spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = messages.recv() => m,
                };
                match message {
                    Ok(message) => {
                        let Some(sink) = sink.upgrade() else { break };
                        dispatch(message, sink.as_ref());
                    }
                    Err(RecvError::Lagged(n)) => {
                        crate::metrics::pubsub_lagged(n);
                        tracing::error!(
                            lost = n,
                            "pub/sub receive loop lagged; refilling from history"
                        );
                        if let Some(sink) = sink.upgrade() {
                            sink.gap_begins();
                            sink.gap_ends();
                        }
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });

        // Subscription keeper: restores every wanted channel after a reconnect and, on a
        // cluster, after a topology change (a failover or a moved slot drops sharded
        // subscriptions). Readiness is off from a connection error until that has succeeded.
        let state = self.state.clone();
        let stop = shutdown.clone();
        let sub = subscriber.clone();
        let cluster = self.cluster;
        let mut changes = subscriber.cluster_change_rx();
        tracker.spawn(async move {
            // fred reports every resync as a change; only a new slot layout needs a restore.
            let mut layout = slot_layout(&sub);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    e = errors.recv() => {
                        if let Ok((error, _)) = e {
                            state.subscriptions_ok.store(false, Ordering::Relaxed);
                            tracing::warn!(%error, "redis subscriber connection error");
                        }
                        continue;
                    }
                    r = reconnects.recv() => if r.is_err() { continue },
                    c = changes.recv(), if cluster => {
                        if c.is_err() || slot_layout(&sub) == layout {
                            continue;
                        }
                        tracing::info!("redis cluster slots moved; restoring subscriptions");
                    }
                }
                state.subscriptions_ok.store(false, Ordering::Relaxed);
                // Nothing arrives before the resubscribe below, so holding live events from
                // here loses none and lets the gap fill go first.
                let sink = keeper_sink.upgrade();
                if let Some(sink) = &sink {
                    sink.gap_begins();
                }
                let restored = loop {
                    match restore(&sub, cluster, &state).await {
                        Ok(n) => break n,
                        Err(error) => {
                            tracing::warn!(%error, "resubscribe failed; retrying");
                            tokio::select! {
                                _ = stop.cancelled() => return,
                                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                            }
                        }
                    }
                };
                layout = slot_layout(&sub);
                state.subscriptions_ok.store(true, Ordering::Relaxed);
                if let Some(sink) = &sink {
                    sink.gap_ends();
                }
                crate::metrics::redis_reconnected();
                tracing::info!(
                    channels = restored,
                    "redis subscriber (re)connected; subscriptions restored"
                );
            }
        });

        // On a cluster, re-read the slot layout every 2 s: a slot moved by resharding drops its
        // sharded subscriptions without any error the client would notice, and the keeper
        // above restores them when the layout it sees has changed.
        if self.cluster {
            let sub = subscriber.clone();
            let stop = shutdown.clone();
            tracker.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(2));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    if let Err(error) = sub.sync_cluster().await {
                        tracing::debug!(%error, "cluster slot refresh failed");
                    }
                }
            });
        }

        // Health check of the command connection: one PING a second.
        let state = self.state.clone();
        let client = self.client.clone();
        let stop = shutdown.clone();
        tracker.spawn(async move {
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
        });

        // Close the connections on shutdown, tracked like every other task.
        let client = self.client.clone();
        let sub = subscriber.clone();
        tracker.spawn(async move {
            shutdown.cancelled().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), sub.quit()).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
        });

        let _ = self.subscriber.set(subscriber);
        Ok(())
    }

    #[tracing::instrument(name = "publish", skip_all, fields(otel.kind = "producer", engine = "redis", tenant = %tenant, events = change.events.len()))]
    async fn apply(&self, tenant: &str, change: &Change) -> Result<Applied, EngineError> {
        let trace = crate::telemetry::current_traceparent();
        let parts: Vec<(String, String)> = change
            .events
            .iter()
            .map(|d| d.envelope_parts(trace.as_deref()))
            .collect();
        let (doc_check, doc_expect) = match &change.doc_expect {
            Expect::Any => (false, None),
            Expect::Absent => (true, None),
            Expect::Value(v) => (true, Some(v.as_str())),
        };
        let spec = ApplySpec {
            doc_check,
            doc_expect,
            doc_write: change.doc_set.is_some(),
            doc_set: change.doc_set.as_ref().and_then(|d| d.as_deref()),
            notices: change
                .notices
                .iter()
                .map(|f| SwapSpec {
                    field: &f.field,
                    expect: f.expect.as_deref(),
                    set: f.set.as_deref(),
                })
                .collect(),
            events: parts.clone(),
        };
        let spec =
            serde_json::to_string(&spec).map_err(|e| EngineError::Protocol(e.to_string()))?;
        let keys = vec![
            history_key(tenant),
            events_channel(tenant),
            doc_key(tenant),
            notices_key(tenant),
        ];
        let args: Vec<Value> = vec![
            (self.history.size as i64).into(),
            (self.history.ttl.as_millis() as i64).into(),
            if self.cluster { "SPUBLISH" } else { "PUBLISH" }.into(),
            spec.into(),
        ];
        // The Redis hop of the publish trace (OpenTelemetry database client conventions).
        let redis_span = tracing::info_span!(
            "redis EVALSHA",
            otel.kind = "client",
            db.system.name = "redis",
            db.operation.name = "EVALSHA"
        );
        let reply: Vec<String> = tracing::Instrument::instrument(
            self.apply_script
                .evalsha_with_reload(&self.client, keys, args),
            redis_span,
        )
        .await
        .map_err(unavailable)?;
        match reply.split_first() {
            Some((status, _)) if status == "conflict" => Ok(Applied::Conflict),
            Some((status, ids)) if status == "ok" && ids.len() == parts.len() => {
                let mut published = Vec::with_capacity(ids.len());
                for (id, (prefix, suffix)) in ids.iter().zip(parts) {
                    let id: EventId = id.parse().map_err(|_| {
                        EngineError::Protocol(format!("apply script returned id {id:?}"))
                    })?;
                    published.push(Published {
                        id,
                        payload: Utf8Bytes::from(format!("{prefix}{id}{suffix}")),
                    });
                }
                for draft in &change.events {
                    crate::metrics::event_published(draft.event_type);
                }
                Ok(Applied::Done(published))
            }
            _ => Err(EngineError::Protocol(format!(
                "apply script returned {reply:?}"
            ))),
        }
    }

    async fn load(&self, tenant: &str) -> Result<TenantRecord, EngineError> {
        let keys = vec![doc_key(tenant), usage_key(tenant), notices_key(tenant)];
        let json: String = self
            .load_script
            .evalsha_with_reload(&self.client, keys, Vec::<Value>::new())
            .await
            .map_err(unavailable)?;
        let loaded: LoadedRecord = serde_json::from_str(&json)
            .map_err(|e| EngineError::Protocol(format!("load script: {e}")))?;
        Ok(TenantRecord {
            doc: loaded.doc,
            usage: loaded.usage,
            notices: loaded.notices,
        })
    }

    async fn merge_usage(
        &self,
        tenant: &str,
        usage: &[(String, String)],
    ) -> Result<(), EngineError> {
        let values: Vec<(String, String)> = usage.to_vec();
        let _: () = self
            .client
            .hset(usage_key(tenant), values)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn licensed_tenants(&self) -> Result<Vec<String>, EngineError> {
        use futures_util::TryStreamExt;
        let pattern = "license:doc:{*}";
        let keys: Vec<Key> = if self.cluster {
            // Every master holds part of the keyspace.
            self.client
                .scan_cluster_buffered(pattern, Some(1000), None)
                .try_collect()
                .await
        } else {
            self.client
                .scan_buffered(pattern, Some(1000), None)
                .try_collect()
                .await
        }
        .map_err(unavailable)?;
        Ok(keys
            .iter()
            .filter_map(|k| k.as_str())
            .filter_map(|k| k.strip_prefix("license:doc:{")?.strip_suffix('}'))
            .map(str::to_owned)
            .collect())
    }

    async fn set_deadline(&self, tenant: &str, at_ms: Option<u64>) -> Result<(), EngineError> {
        let _: () = match at_ms {
            Some(ms) => self
                .client
                .zadd(DEADLINES_KEY, None, None, false, false, (ms as f64, tenant))
                .await
                .map_err(unavailable)?,
            None => self
                .client
                .zrem(DEADLINES_KEY, tenant)
                .await
                .map_err(unavailable)?,
        };
        Ok(())
    }

    async fn due_tenants(&self, now_ms: u64) -> Result<Vec<String>, EngineError> {
        self.client
            .zrangebyscore(DEADLINES_KEY, f64::NEG_INFINITY, now_ms as f64, false, None)
            .await
            .map_err(unavailable)
    }

    async fn subscribe(&self, tenant: &str) -> Result<Option<EventId>, EngineError> {
        let subscriber = self.subscriber()?;
        // Wanted first: a reconnect racing this call restores it too.
        self.state.want(tenant, true);
        let channel = events_channel(tenant);
        let subscribed = if self.cluster {
            subscriber.ssubscribe(channel).await
        } else {
            subscriber.subscribe(channel).await
        };
        if let Err(error) = subscribed {
            self.state.want(tenant, false);
            return Err(unavailable(error));
        }
        let last: Option<String> = self
            .last_id_script
            .evalsha_with_reload(&self.client, vec![history_key(tenant)], Vec::<Value>::new())
            .await
            .map_err(unavailable)?;
        Ok(last.and_then(|id| id.parse().ok()))
    }

    async fn history_after(
        &self,
        tenant: &str,
        after: Option<EventId>,
        position: Position,
    ) -> Result<History, EngineError> {
        let from = after.map_or_else(|| "-".to_owned(), |id| id.to_string());
        let mode = match position {
            Position::Exact => "exact",
            Position::ByOrder => "order",
        };
        let args: Vec<Value> = vec![from.into(), (self.history.size as i64).into(), mode.into()];
        let reply: Vec<String> = self
            .history_script
            .evalsha_with_reload(&self.client, vec![history_key(tenant)], args)
            .await
            .map_err(unavailable)?;
        let bad = || EngineError::Protocol(format!("history script returned {reply:?}"));
        match reply.split_first() {
            Some((status, _)) if status == "empty" => Ok(History::Empty),
            Some((status, rest)) if status == "miss" && rest.len() == 2 => {
                let first = rest[0].parse().map_err(|_| bad())?;
                let last = rest[1].parse().map_err(|_| bad())?;
                Ok(after.map_or(History::Empty, |a| History::miss(a, first, last)))
            }
            Some((status, rest)) if status == "ok" && rest.len() % 2 == 0 => {
                let mut events = Vec::with_capacity(rest.len() / 2);
                for pair in rest.chunks(2) {
                    let id: EventId = pair[0].parse().map_err(|_| bad())?;
                    events.push((id, Utf8Bytes::from(pair[1].clone())));
                }
                Ok(History::After(events))
            }
            _ => Err(bad()),
        }
    }

    async fn unsubscribe(&self, tenant: &str) -> Result<(), EngineError> {
        let subscriber = self.subscriber()?;
        self.state.want(tenant, false);
        let channel = events_channel(tenant);
        if self.cluster {
            subscriber.sunsubscribe(channel).await
        } else {
            subscriber.unsubscribe(channel).await
        }
        .map_err(unavailable)
    }

    async fn report_node(&self, stats: &NodeStats) -> Result<(), EngineError> {
        let json =
            serde_json::to_string(stats).map_err(|e| EngineError::Protocol(e.to_string()))?;
        let now = now_ms();
        let ttl = NODE_TTL.as_millis() as i64;
        let _: () = self
            .client
            .set(
                node_key(&stats.id),
                json,
                Some(Expiration::PX(ttl)),
                None,
                false,
            )
            .await
            .map_err(unavailable)?;
        let _: () = self
            .client
            .zadd(
                NODES_KEY,
                None,
                None,
                false,
                false,
                (now as f64, stats.id.as_str()),
            )
            .await
            .map_err(unavailable)?;
        let _: () = self
            .client
            .zremrangebyscore(NODES_KEY, f64::NEG_INFINITY, (now as i64 - ttl) as f64)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeStats>, EngineError> {
        let since = (now_ms() as i64 - NODE_TTL.as_millis() as i64) as f64;
        let ids: Vec<String> = self
            .client
            .zrangebyscore(NODES_KEY, since, f64::INFINITY, false, None)
            .await
            .map_err(unavailable)?;
        let mut nodes = Vec::with_capacity(ids.len());
        for id in ids {
            let json: Option<String> = self.client.get(node_key(&id)).await.map_err(unavailable)?;
            match json.map(|j| serde_json::from_str::<NodeStats>(&j)) {
                Some(Ok(stats)) => nodes.push(stats),
                Some(Err(error)) => {
                    tracing::warn!(node = %id, %error, "unreadable node registry entry")
                }
                None => {}
            }
        }
        Ok(nodes)
    }

    fn is_ready(&self) -> bool {
        let sub_connected = self.subscriber.get().is_some_and(|s| s.is_connected());
        sub_connected
            && self.client.is_connected()
            && self.state.commands_ok.load(Ordering::Relaxed)
            && self.state.subscriptions_ok.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_tenant_hash_tag() {
        assert_eq!(events_channel("acme"), "license:events:{acme}");
        assert_eq!(history_key("acme"), "license:history:{acme}");
        assert_eq!(tenant_of_channel("license:events:{acme}"), Some("acme"));
        assert_eq!(tenant_of_channel("license:other:{acme}"), None);
    }

    #[test]
    fn cluster_urls_become_fred_urls() {
        assert_eq!(fred_url("redis://a:1"), "redis://a:1");
        assert_eq!(fred_url("redis-cluster://a:1"), "redis-cluster://a:1");
        assert_eq!(
            fred_url("redis-cluster://u:p@a:1,b:2, c:3"),
            "redis-cluster://u:p@a:1?node=b:2&node=c:3"
        );
        assert!(
            Config::from_url(&fred_url("redis-cluster://127.0.0.1:7000,127.0.0.1:7001")).is_ok()
        );
    }
}
