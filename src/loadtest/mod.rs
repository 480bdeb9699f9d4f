//! `license-gateway loadtest`: a load generator for one gateway node, cheap enough to share the
//! machine with it. One thread (a current-thread runtime), WebSocket clients spread over
//! several 127.0.0.x source addresses, and the server's CPU and RSS read from `/proc`.
//!
//! - [`idle`]: N connections over T tenants, held: connect rate, server CPU per accepted
//!   connection, server RSS per connection.
//! - [`fanout`]: the same, then events published at a rate through the product's own publish
//!   path (the Redis engine, as `publish` and the worker do, or the admin API), with
//!   publish → receive latency in an HDR histogram, deliveries/s, loss, duplicates and
//!   reordering.
//!
//! [`clients`] opens and drives the connections, [`procstat`] samples processes, [`report`]
//! prints the human table or one JSON line.

pub mod clients;
pub mod connect;
pub mod fanout;
pub mod idle;
pub mod procstat;
pub mod report;
pub mod sse;

use std::net::{Ipv4Addr, SocketAddr};

use clap::{Args, Subcommand};

use crate::config::{AuthArgs, ConfigError, HistoryArgs, RedisArgs};

/// Load-generator failures.
#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    /// Bad arguments.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The publisher could not reach the engine or the API.
    #[error("publisher: {0}")]
    Publish(String),
    /// Not one connection could be opened.
    #[error("no connection could be opened: {0}")]
    Connect(String),
}

/// `loadtest`: which scenario.
#[derive(Debug, Clone, Args)]
pub struct LoadtestArgs {
    /// The scenario.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Load-test scenarios.
#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// Open N idle connections over T tenants and hold them.
    Idle(IdleArgs),
    /// Open N connections, publish at a rate, measure every delivery.
    Fanout(FanoutArgs),
    /// `fanout` on a node that is SIGKILLed mid-run: every client resumes on a survivor after
    /// the last event it saw; loss, duplicates, order and resume times are counted.
    Stampede(StampedeArgs),
    /// `fanout` for a long time while a share of the clients is replaced every second (each
    /// closes and reconnects, resuming after its last event): server RSS and p99 sampled every
    /// second, exact counts at the end.
    Soak(SoakArgs),
}

/// `loadtest soak`.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// The fan-out (`--duration-secs` is the soak's length).
    #[command(flatten)]
    pub fanout: FanoutArgs,
    /// Percent of the connections replaced every second.
    #[arg(long, default_value_t = 1.0)]
    pub replace_percent: f64,
    /// Seconds before the RSS is taken as the baseline for the drift.
    #[arg(long, default_value_t = 60.0)]
    pub warmup_secs: f64,
}

/// `loadtest stampede`.
#[derive(Debug, Clone, Args)]
pub struct StampedeArgs {
    /// The fan-out; `--target` is the node that is killed, and every connection opens there.
    #[command(flatten)]
    pub fanout: FanoutArgs,
    /// A surviving node (repeatable): the victim's clients resume there, round robin.
    #[arg(long = "survivor", required = true, value_name = "ADDR")]
    pub survivors: Vec<SocketAddr>,
    /// The victim's process id, SIGKILLed `--kill-after-secs` into the publishing.
    #[arg(long)]
    pub victim_pid: u32,
    /// When to kill the victim, seconds after the first publish.
    #[arg(long, default_value_t = 2.0)]
    pub kill_after_secs: f64,
    /// How long a client keeps trying to resume.
    #[arg(long, default_value_t = 30.0)]
    pub resume_within_secs: f64,
}

/// What every scenario needs.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Gateway address (host:port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5000")]
    pub target: SocketAddr,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Tenants the connections are spread over (round robin).
    #[arg(long, default_value_t = 10)]
    pub tenants: usize,
    /// Tenant ids are this prefix plus a number.
    #[arg(long, default_value = "lt")]
    pub tenant_prefix: String,
    /// Source addresses 127.0.0.1 … 127.0.0.N (counted from `--first-source`), so no single
    /// source runs out of ports.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub sources: u8,
    /// The first source address. Generators run side by side (scale-out) each take their own
    /// addresses: sharing them filled the ephemeral ports, and each `bind` then searched the
    /// port range for seconds of kernel time.
    #[arg(long, value_name = "IPV4", default_value = "127.0.0.1")]
    pub first_source: Ipv4Addr,
    /// Connection handshakes in flight at once.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Query string every connection adds to `/ws/license` (e.g. a filter:
    /// `minSeverity=info`).
    #[arg(long, value_name = "QUERY")]
    pub query: Option<String>,
    /// The transport the clients use.
    #[arg(long, value_enum, default_value_t = TransportArg::Websocket)]
    pub transport: TransportArg,
    /// What the server speaks: this gateway, or the seed design's server (token as `?token=`,
    /// no `connected` message), for side-by-side benchmarks.
    #[arg(long, value_enum, default_value_t = Dialect::Gateway)]
    pub dialect: Dialect,
    /// The gateway's process id: its CPU and RSS are read from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print one JSON line instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Secret that mints the tenant tokens.
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// `loadtest idle`.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Connection options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Seconds to hold the connections once all are open.
    #[arg(long, default_value_t = 5.0)]
    pub hold_secs: f64,
}

/// `--transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportArg {
    /// `/ws/license`.
    Websocket,
    /// `/sse/license` (token in `Authorization`).
    Sse,
}

/// `--dialect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dialect {
    /// license-gateway: the token in the subprotocol; open once `connected` arrives.
    Gateway,
    /// The seed design (`bench/seed-node`): the token as `?token=`; open at the upgrade, since
    /// that server sends nothing before the first event.
    Seed,
}

/// How `fanout` publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublishVia {
    /// Through the Redis engine (needs REDIS_URL), as `publish` and the worker do.
    Redis,
    /// Through `POST /api/admin/tenants/{tenant}/events` on the target.
    Api,
}

/// `loadtest fanout`.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Connection options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Events published per second, over all tenants (round robin).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 5.0)]
    pub duration_secs: f64,
    /// Publish exactly this many events instead (at `--rate`).
    #[arg(long)]
    pub events: Option<u64>,
    /// Longest wait for outstanding deliveries after the last publish.
    #[arg(long, default_value_t = 5.0)]
    pub drain_secs: f64,
    /// Publish path; default: redis when REDIS_URL is set, else the admin API.
    #[arg(long)]
    pub via: Option<PublishVia>,
    /// Admin key for `--via api` (the first of the list).
    #[command(flatten)]
    pub admin: crate::config::AdminKeyArgs,
    /// Publishes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub publish_concurrency: usize,
    /// Redis connection for `--via redis`.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// History settings the Redis publisher trims with.
    #[command(flatten)]
    pub history: HistoryArgs,
}

/// The source addresses connections are spread over: `count` addresses from `first` up.
#[derive(Debug, Clone, Copy)]
pub struct Sources {
    first: u32,
    count: u8,
}

impl Sources {
    /// The source address of connection number `i`.
    pub fn nth(&self, i: usize) -> Ipv4Addr {
        // `check` made sure the last address does not overflow.
        Ipv4Addr::from(self.first.wrapping_add((i % self.count as usize) as u32))
    }
}

impl CommonArgs {
    /// The source addresses to connect from.
    pub fn sources(&self) -> Sources {
        Sources {
            first: u32::from(self.first_source),
            count: self.sources,
        }
    }

    /// Checks the sizes before anything is opened.
    pub fn check(&self) -> Result<(), ConfigError> {
        if u32::from(self.first_source)
            .checked_add(u32::from(self.sources) - 1)
            .is_none()
        {
            return Err(ConfigError::new(
                "--first-source",
                "the last source address is past 255.255.255.255",
            ));
        }
        if self.connections == 0 {
            return Err(ConfigError::new("--connections", "must be at least 1"));
        }
        if self.tenants == 0 || self.tenants > self.connections {
            return Err(ConfigError::new(
                "--tenants",
                "must be from 1 to the number of connections",
            ));
        }
        if self.concurrency == 0 {
            return Err(ConfigError::new("--concurrency", "must be at least 1"));
        }
        if self.dialect == Dialect::Seed && self.transport != TransportArg::Websocket {
            return Err(ConfigError::new(
                "--dialect",
                "the seed design speaks WebSocket only",
            ));
        }
        Ok(())
    }

    /// Tenant id number `i`.
    pub fn tenant(&self, i: usize) -> String {
        format!("{}{i}", self.tenant_prefix)
    }
}

/// Runs the scenario on the current (single-threaded) runtime and prints its report.
pub async fn run(args: LoadtestArgs) -> Result<(), LoadtestError> {
    let report = match args.scenario {
        Scenario::Idle(a) => {
            let json = a.common.json;
            (idle::run(&a).await?, json)
        }
        Scenario::Fanout(a) => {
            let json = a.common.json;
            (fanout::run(&a, fanout::Extra::None).await?, json)
        }
        Scenario::Stampede(a) => {
            let json = a.fanout.common.json;
            (
                fanout::run(&a.fanout, fanout::Extra::Stampede(&a)).await?,
                json,
            )
        }
        Scenario::Soak(a) => {
            let json = a.fanout.common.json;
            (fanout::run(&a.fanout, fanout::Extra::Soak(&a)).await?, json)
        }
    };
    match report {
        (r, true) => println!("{}", r.to_json()),
        (r, false) => print!("{}", r.to_table()),
    }
    Ok(())
}

/// Opens every connection while sampling the server, and lets it settle: the connection part
/// of a report, with the open connections.
async fn connect_phase(
    scenario: &'static str,
    common: &CommonArgs,
) -> Result<(Vec<(usize, clients::Conn)>, report::Report), LoadtestError> {
    common.check()?;
    let pid = common.server_pid;
    let before = procstat::of(pid);
    let slab_before = procstat::kernel_slab_kib();
    let me_before = procstat::this_process();
    let opened = connect::open_all(common).await?;
    let after_connect = procstat::of(pid);
    let me_after = procstat::this_process();
    let connected = opened.streams.len();
    // Let the server finish the last subscriptions and its allocator settle before reading RSS.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let settled = procstat::of(pid);
    let slab_settled = procstat::kernel_slab_kib();
    let rss_per = match (before, settled) {
        (Some(b), Some(s)) => Some((s.rss_kib as f64 - b.rss_kib as f64) / connected as f64),
        _ => None,
    };
    let report = report::Report {
        scenario,
        connections: common.connections,
        tenants: common.tenants,
        sources: common.sources,
        connected,
        connect_failures: opened.failures,
        first_error: opened.first_error,
        connect_secs: opened.elapsed.as_secs_f64(),
        server_cpu_ms_per_connection: procstat::cpu_between(before, after_connect)
            .map(|s| s * 1000.0 / connected as f64),
        server_rss_before_kib: before.map(|s| s.rss_kib),
        server_rss_kib: settled.map(|s| s.rss_kib),
        server_rss_per_connection_kib: rss_per,
        kernel_slab_per_connection_kib: slab_before
            .zip(slab_settled)
            .map(|(b, s)| (s as f64 - b as f64) / connected as f64),
        loadgen_connect_cpu_secs: procstat::cpu_between(me_before, me_after),
        loadgen_rss_kib: procstat::this_process().map(|s| s.rss_kib),
        dropped_connections: 0,
        delivery: None,
        resume: None,
        soak: None,
    };
    Ok((opened.streams, report))
}

#[cfg(test)]
mod tests {
    use super::Sources;

    #[test]
    fn sources_count_up_from_the_first_and_wrap_around_the_count() {
        let sources = Sources {
            first: u32::from(std::net::Ipv4Addr::new(127, 0, 1, 254)),
            count: 4,
        };
        let seen: Vec<String> = (0..6).map(|i| sources.nth(i).to_string()).collect();
        assert_eq!(
            seen,
            [
                "127.0.1.254",
                "127.0.1.255",
                "127.0.2.0",
                "127.0.2.1",
                "127.0.1.254",
                "127.0.1.255"
            ]
        );
    }
}
