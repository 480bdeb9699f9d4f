//! `loadtest fanout`: N connections over T tenants; events published at a rate, round robin
//! over the tenants, through the product's publish path; every delivery checked and timed.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::clients::{Resume, Shared, drive_all};
use super::report::{Delivery, Latency, Report};
use super::{
    FanoutArgs, LoadtestError, PublishVia, SoakArgs, StampedeArgs, connect_phase, procstat,
};
use crate::engine::redis::{ConnectMode, RedisEngine};
use crate::engine::{Broker, HistoryConfig};
use crate::protocol::{EventDraft, EventType};

/// Where events are published.
enum Publisher {
    /// The Redis engine's atomic publish, as `publish` and the worker use it.
    Redis(Box<RedisEngine>),
    /// The admin API over keep-alive connections.
    Api(ApiClient),
}

impl Publisher {
    async fn publish(&self, tenant: &str, data: Map<String, Value>) -> Result<(), String> {
        match self {
            Publisher::Redis(engine) => {
                let draft = EventDraft::new(tenant, EventType::ModuleActivated, data);
                engine
                    .publish(&draft)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Publisher::Api(api) => api.publish(tenant, data).await,
        }
    }
}

/// The admin API's publish route, over reqwest's pooled keep-alive connections.
struct ApiClient {
    client: reqwest::Client,
    target: std::net::SocketAddr,
    admin_key: String,
}

impl ApiClient {
    async fn publish(&self, tenant: &str, data: Map<String, Value>) -> Result<(), String> {
        let body = serde_json::json!({"type": "module_activated", "data": data}).to_string();
        let url = format!("http://{}/api/admin/tenants/{tenant}/events", self.target);
        let response = self
            .client
            .post(url)
            .bearer_auth(&self.admin_key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match response.status() {
            reqwest::StatusCode::CREATED => Ok(()),
            other => Err(format!("API answered {other}")),
        }
    }
}

/// What a fan-out does besides publishing.
#[derive(Clone, Copy)]
pub enum Extra<'a> {
    /// Nothing.
    None,
    /// Kill the target mid-run; its clients resume on the survivors.
    Stampede(&'a StampedeArgs),
    /// Replace a share of the clients every second; sample the server every second.
    Soak(&'a SoakArgs),
}

/// Runs the scenario, with its [`Extra`].
pub async fn run(args: &FanoutArgs, extra: Extra<'_>) -> Result<Report, LoadtestError> {
    let common = &args.common;
    let stampede = match extra {
        Extra::Stampede(s) => Some(s),
        _ => None,
    };
    let soak = match extra {
        Extra::Soak(s) => Some(s),
        _ => None,
    };
    if !matches!(extra, Extra::None) && common.transport != super::TransportArg::Websocket {
        return Err(crate::config::ConfigError::new(
            "--transport",
            "stampede and soak resume WebSocket clients only",
        )
        .into());
    }
    let resume = match extra {
        Extra::Stampede(s) => Some(Resume::new(
            s.survivors.clone(),
            common,
            Duration::from_secs_f64(s.resume_within_secs.max(0.1)),
            0,
        )?),
        Extra::Soak(_) => Some(Resume::new(
            vec![common.target],
            common,
            Duration::from_secs(30),
            common.connections,
        )?),
        Extra::None => None,
    };
    if args.rate.is_nan() || args.rate <= 0.0 {
        return Err(crate::config::ConfigError::new("--rate", "must be above 0").into());
    }
    let via = args.via.unwrap_or(if args.redis.redis_url.is_some() {
        PublishVia::Redis
    } else {
        PublishVia::Api
    });
    let publisher = Rc::new(match via {
        PublishVia::Redis => {
            let url = args.redis.redis_url.as_deref().ok_or_else(|| {
                crate::config::ConfigError::new("REDIS_URL", "required for --via redis")
            })?;
            let target = crate::engine::redis::url::RedisTarget::new(
                url,
                args.redis.redis_tls_ca_file.as_deref(),
            )?;
            Publisher::Redis(Box::new(
                RedisEngine::connect(
                    &target,
                    HistoryConfig::from_args(&args.history),
                    ConnectMode::OneShot,
                )
                .await
                .map_err(|e| LoadtestError::Publish(e.to_string()))?,
            ))
        }
        PublishVia::Api => Publisher::Api(ApiClient {
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .map_err(|e| LoadtestError::Publish(e.to_string()))?,
            target: common.target,
            admin_key: args.admin.first().map(str::to_owned).ok_or_else(|| {
                crate::config::ConfigError::new("ADMIN_API_KEYS", "required for --via api")
            })?,
        }),
    });

    let (streams, mut report) = connect_phase(
        match extra {
            Extra::None => "fanout",
            Extra::Stampede(_) => "stampede",
            Extra::Soak(_) => "soak",
        },
        common,
    )
    .await?;
    let mut per_tenant = vec![0u64; common.tenants];
    for (tenant, _) in &streams {
        per_tenant[*tenant] += 1;
    }
    let shared = Shared::new();
    let stop = CancellationToken::new();
    let tasks = drive_all(streams, &shared, &stop, resume.as_ref());

    let total = args
        .events
        .unwrap_or((args.rate * args.duration_secs).round() as u64);
    let accepted: Rc<Vec<Cell<u64>>> = Rc::new((0..common.tenants).map(|_| Cell::new(0)).collect());
    let errors = Rc::new(Cell::new(0u64));
    let in_flight = Arc::new(Semaphore::new(args.publish_concurrency.max(1)));
    let server_start = procstat::of(common.server_pid);
    let me_start = procstat::this_process();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0u64;
    let mut sampler = soak.map(|s| Sampler::new(s, common.connections, started));
    let mut kill_at = stampede.map(|s| (started + Duration::from_secs_f64(s.kill_after_secs), s));
    while sent < total {
        tick.tick().await;
        if let (Some(sampler), Some(resume)) = (&mut sampler, &resume) {
            sampler.every_second(resume, &shared, common.server_pid);
        }
        if let Some((_, s)) = kill_at.filter(|(at, _)| Instant::now() >= *at) {
            kill(s.victim_pid)?;
            if let Some(resume) = &resume {
                resume.killed_at.set(Some(Instant::now()));
            }
            tracing::info!(pid = s.victim_pid, "victim killed");
            kill_at = None;
        }
        let due = ((started.elapsed().as_secs_f64() * args.rate) as u64 + 1).min(total);
        while sent < due {
            let tenant_no = (sent % common.tenants as u64) as usize;
            // Each tenant's events are numbered from 0, in the order they are published.
            let seq = sent / common.tenants as u64;
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break;
            };
            let (publisher, accepted, errors, shared) = (
                publisher.clone(),
                accepted.clone(),
                errors.clone(),
                shared.clone(),
            );
            let tenant = common.tenant(tenant_no);
            tokio::task::spawn_local(async move {
                let mut data = Map::new();
                data.insert("k".into(), tenant_no.into());
                data.insert("seq".into(), seq.into());
                data.insert("t".into(), shared.now_us().into());
                match publisher.publish(&tenant, data).await {
                    Ok(()) => accepted[tenant_no].set(accepted[tenant_no].get() + 1),
                    Err(error) => {
                        if errors.get() == 0 {
                            tracing::warn!(%error, "publish failed");
                        }
                        errors.set(errors.get() + 1);
                    }
                }
                drop(permit);
            });
            sent += 1;
        }
    }
    // Every publish answered…
    let _ = in_flight
        .acquire_many(args.publish_concurrency.max(1) as u32)
        .await;
    let publish_secs = started.elapsed().as_secs_f64();
    let expected: u64 = (0..common.tenants)
        .map(|t| accepted[t].get() * per_tenant[t])
        .sum();
    // … then every delivery, or the drain time is up.
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain_secs.max(0.0));
    while shared.delivered.get() < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let server_end = procstat::of(common.server_pid);
    let me_end = procstat::this_process();
    stop.cancel();

    let mut delivery = Delivery {
        via: match via {
            PublishVia::Redis => "redis",
            PublishVia::Api => "api",
        },
        published: accepted.iter().map(Cell::get).sum(),
        publish_errors: errors.get(),
        publish_rate: sent as f64 / publish_secs.max(1e-9),
        expected,
        delivered: 0,
        lost: 0,
        duplicates: 0,
        reordered: 0,
        foreign: 0,
        deliveries_per_sec: 0.0,
        latency_ms: Latency::from_us(&shared.latency.borrow()),
        server_cpu_secs: procstat::cpu_between(server_start, server_end),
        server_sys_secs: procstat::sys_between(server_start, server_end),
        server_window_unix_secs: procstat::window_between(server_start, server_end),
        server_cpu_secs_per_million: None,
        loadgen_cpu_secs: procstat::cpu_between(me_start, me_end),
        loadgen_sys_secs: procstat::sys_between(me_start, me_end),
    };
    for task in tasks {
        let Ok(tally) = task.await else { continue };
        delivery.delivered += tally.received;
        delivery.duplicates += tally.duplicates;
        delivery.reordered += tally.reordered;
        delivery.foreign += tally.foreign;
        if tally.ended.is_some() {
            report.dropped_connections += 1;
        }
    }
    delivery.lost = expected.saturating_sub(delivery.delivered);
    let span = shared
        .last_receive
        .get()
        .map_or(publish_secs, |t| t.duration_since(started).as_secs_f64());
    delivery.deliveries_per_sec = delivery.delivered as f64 / span.max(1e-9);
    delivery.server_cpu_secs_per_million = delivery
        .server_cpu_secs
        .filter(|_| delivery.delivered > 0)
        .map(|s| s / delivery.delivered as f64 * 1e6);
    report.soak = sampler.map(|s| s.finish(procstat::of(common.server_pid)));
    report.delivery = Some(delivery);
    report.resume = resume.map(|r| super::report::Resumes {
        resumed: r.resumed.get(),
        latency_ms: Latency::from_us(&r.latency.borrow()),
        within_5s_percent: {
            let h = r.latency.borrow();
            // Of all clients (stampede), or of all replacements (soak, more than the clients).
            let clients = (report.connected as f64).max(r.resumed.get() as f64);
            (clients > 0.0).then(|| {
                let within = h.count_between(0, 5_000_000) as f64;
                within / clients * 100.0
            })
        },
    });
    Ok(report)
}

/// `soak`: replaces clients and samples the server once a second.
struct Sampler {
    started: Instant,
    next: Instant,
    per_second: usize,
    cursor: usize,
    connections: usize,
    warmup: Duration,
    replaced: u64,
    samples: Vec<super::report::SoakSample>,
}

impl Sampler {
    fn new(args: &SoakArgs, connections: usize, started: Instant) -> Self {
        Self {
            started,
            next: started + Duration::from_secs(1),
            per_second: ((connections as f64 * args.replace_percent / 100.0).round() as usize)
                .min(connections),
            cursor: 0,
            connections,
            warmup: Duration::from_secs_f64(args.warmup_secs.max(0.0)),
            replaced: 0,
            samples: Vec::new(),
        }
    }

    fn every_second(&mut self, resume: &Resume, shared: &Shared, pid: Option<u32>) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next += Duration::from_secs(1);
        for _ in 0..self.per_second {
            if let Some(kick) = resume.kicks.get(self.cursor % self.connections) {
                kick.notify_one();
                self.replaced += 1;
            }
            self.cursor += 1;
        }
        let p99 = {
            let mut recent = shared.recent_latency.borrow_mut();
            let p99 = (!recent.is_empty()).then(|| recent.value_at_quantile(0.99) as f64 / 1000.0);
            recent.reset();
            p99
        };
        self.samples.push(super::report::SoakSample {
            secs: now.duration_since(self.started).as_secs_f64(),
            rss_kib: procstat::of(pid).map(|s| s.rss_kib),
            p99_ms: p99,
            delivered: shared.delivered.get(),
        });
    }

    fn finish(self, end: Option<procstat::Sample>) -> super::report::Soak {
        let warm = self
            .samples
            .iter()
            .find(|s| s.secs >= self.warmup.as_secs_f64())
            .and_then(|s| s.rss_kib);
        let end = end.map(|s| s.rss_kib);
        super::report::Soak {
            replaced: self.replaced,
            rss_warm_kib: warm,
            rss_end_kib: end,
            rss_drift_percent: warm
                .zip(end)
                .map(|(w, e)| (e as f64 - w as f64) / w as f64 * 100.0),
            samples: self.samples,
        }
    }
}

/// SIGKILLs `pid` (the victim of a stampede).
fn kill(pid: u32) -> Result<(), LoadtestError> {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .map_err(|e| LoadtestError::Publish(format!("kill {pid}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(LoadtestError::Publish(format!(
            "kill {pid} failed: {status}"
        )))
    }
}
