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
use super::{FanoutArgs, LoadtestError, PublishVia, StampedeArgs, connect_phase, procstat};
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

/// Runs the scenario; with `stampede`, kills the target mid-run and lets its clients resume
/// on the survivors.
pub async fn run(
    args: &FanoutArgs,
    stampede: Option<&StampedeArgs>,
) -> Result<Report, LoadtestError> {
    let common = &args.common;
    let resume = match stampede {
        Some(_) if common.transport != super::TransportArg::Websocket => {
            return Err(crate::config::ConfigError::new(
                "--transport",
                "stampede resumes WebSocket clients only",
            )
            .into());
        }
        Some(s) => Some(Resume::new(
            s.survivors.clone(),
            common,
            Duration::from_secs_f64(s.resume_within_secs.max(0.1)),
        )?),
        None => None,
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
        if stampede.is_some() {
            "stampede"
        } else {
            "fanout"
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
    let mut kill_at = stampede.map(|s| (started + Duration::from_secs_f64(s.kill_after_secs), s));
    while sent < total {
        tick.tick().await;
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
    report.delivery = Some(delivery);
    report.resume = resume.map(|r| super::report::Resumes {
        resumed: r.resumed.get(),
        latency_ms: Latency::from_us(&r.latency.borrow()),
        within_5s_percent: {
            let h = r.latency.borrow();
            let clients = report.connected as f64;
            (clients > 0.0).then(|| {
                let within = h.count_between(0, 5_000_000) as f64;
                within / clients * 100.0
            })
        },
    });
    Ok(report)
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
