//! A load test's results: one struct, printed as a table for people or one JSON line for the
//! benchmark script.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Publish → receive latency percentiles, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Latency {
    /// From a histogram of microseconds; `None` when it is empty.
    pub fn from_us(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        })
    }
}

/// The fan-out part of a report.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// How events were published (`redis`, `api`).
    pub via: &'static str,
    /// Events accepted by the publish path.
    pub published: u64,
    /// Publishes that failed.
    pub publish_errors: u64,
    /// Publish rate reached, events/s.
    pub publish_rate: f64,
    /// Deliveries owed: each accepted event times its tenant's open connections.
    pub expected: u64,
    /// Distinct events received.
    pub delivered: u64,
    /// `expected − delivered`.
    pub lost: u64,
    /// Events received twice.
    pub duplicates: u64,
    /// Events received out of id order.
    pub reordered: u64,
    /// Events received by a connection of another tenant.
    pub foreign: u64,
    /// Deliveries per second, first publish to last receive.
    pub deliveries_per_sec: f64,
    /// Publish → receive latency.
    pub latency_ms: Option<Latency>,
    /// Server CPU seconds from the first publish to the last receive.
    pub server_cpu_secs: Option<f64>,
    /// Of which in the kernel (socket writes, loopback TCP). From the kernel's own split,
    /// which is tick-sampled: see `server_window_unix_secs`.
    pub server_sys_secs: Option<f64>,
    /// When the server's CPU was read at the span's start and end, Unix seconds: a profiler
    /// sampling the server meanwhile can split the span's CPU into user and kernel time more
    /// finely than the kernel's tick-based split (`tests/bench.py` does, with `perf`).
    pub server_window_unix_secs: Option<[f64; 2]>,
    /// Server CPU seconds per million deliveries.
    pub server_cpu_secs_per_million: Option<f64>,
    /// This process's CPU seconds over the same span.
    pub loadgen_cpu_secs: Option<f64>,
    /// Of which in the kernel (socket reads, epoll).
    pub loadgen_sys_secs: Option<f64>,
}

/// One load-test run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `idle` or `fanout`.
    pub scenario: &'static str,
    /// Connections asked for.
    pub connections: usize,
    /// Tenants they were spread over.
    pub tenants: usize,
    /// Source addresses used.
    pub sources: u8,
    /// Connections that reached `connected`.
    pub connected: usize,
    /// Connections that did not.
    pub connect_failures: usize,
    /// The first failure's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Seconds to open them all.
    pub connect_secs: f64,
    /// Server CPU milliseconds per accepted connection (upgrade, JWT, subscribe, `connected`).
    pub server_cpu_ms_per_connection: Option<f64>,
    /// Server RSS before connecting, KiB.
    pub server_rss_before_kib: Option<u64>,
    /// Server RSS with every connection open and idle, KiB.
    pub server_rss_kib: Option<u64>,
    /// `(rss − rss_before) / connected`, KiB.
    pub server_rss_per_connection_kib: Option<f64>,
    /// The kernel's slab memory per connection, KiB, both ends counted (the load generator's
    /// sockets are on the same machine): what users pay beside the RSS.
    pub kernel_slab_per_connection_kib: Option<f64>,
    /// This process's CPU seconds while connecting.
    pub loadgen_connect_cpu_secs: Option<f64>,
    /// This process's RSS with every connection open, KiB.
    pub loadgen_rss_kib: Option<u64>,
    /// Connections that ended before the run did.
    pub dropped_connections: usize,
    /// The fan-out results (`fanout` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// The resumes after the victim died (`stampede` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume: Option<Resumes>,
    /// The server over time, while clients were replaced (`soak` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soak: Option<Soak>,
}

/// A soak's time series and its memory drift.
#[derive(Debug, Clone, Serialize)]
pub struct Soak {
    /// Clients replaced (closed and resumed) over the run.
    pub replaced: u64,
    /// Server RSS once warmed up, KiB.
    pub rss_warm_kib: Option<u64>,
    /// Server RSS at the end, KiB.
    pub rss_end_kib: Option<u64>,
    /// `(end − warm) / warm`, %.
    pub rss_drift_percent: Option<f64>,
    /// One per second.
    pub samples: Vec<SoakSample>,
}

/// The server at one moment of a soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakSample {
    /// Seconds since the first publish.
    pub secs: f64,
    /// Server RSS, KiB.
    pub rss_kib: Option<u64>,
    /// Publish → receive p99 over the last second, ms.
    pub p99_ms: Option<f64>,
    /// Deliveries so far.
    pub delivered: u64,
}

/// How the clients of a killed node came back (`stampede`).
#[derive(Debug, Clone, Serialize)]
pub struct Resumes {
    /// Clients that reached `connected` on a survivor.
    pub resumed: u64,
    /// Kill → `connected` on a survivor, ms.
    pub latency_ms: Option<Latency>,
    /// Of all clients, the share back within 5 s of the kill, %.
    pub within_5s_percent: Option<f64>,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.digits$}"))
}

impl Report {
    /// One JSON line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The human table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "loadtest {}: {} connections over {} tenants from {} source addresses",
            self.scenario, self.connections, self.tenants, self.sources
        );
        let rate = self.connected as f64 / self.connect_secs.max(1e-9);
        let _ = writeln!(
            out,
            "  connect      {} ok, {} failed in {:.2} s ({rate:.0}/s); server CPU {} ms per connection",
            self.connected,
            self.connect_failures,
            self.connect_secs,
            opt(self.server_cpu_ms_per_connection, 3)
        );
        if let Some(e) = &self.first_error {
            let _ = writeln!(out, "  first error  {e}");
        }
        let _ = writeln!(
            out,
            "  memory       server RSS {} KiB ({} KiB before), {} KiB per connection; load generator RSS {} KiB",
            self.server_rss_kib.map_or("n/a".into(), |v| v.to_string()),
            self.server_rss_before_kib
                .map_or("n/a".into(), |v| v.to_string()),
            opt(self.server_rss_per_connection_kib, 2),
            self.loadgen_rss_kib.map_or("n/a".into(), |v| v.to_string()),
        );
        let _ = writeln!(
            out,
            "  kernel       slab memory {} KiB per connection (both ends, machine-wide)",
            opt(self.kernel_slab_per_connection_kib, 2),
        );
        if let Some(d) = &self.delivery {
            let _ = writeln!(
                out,
                "  publish      {} events via {} at {:.0}/s ({} failed)",
                d.published, d.via, d.publish_rate, d.publish_errors
            );
            let _ = writeln!(
                out,
                "  delivery     {} of {} (lost {}, duplicates {}, reordered {}, foreign {}) at {:.0}/s",
                d.delivered,
                d.expected,
                d.lost,
                d.duplicates,
                d.reordered,
                d.foreign,
                d.deliveries_per_sec
            );
            if let Some(l) = &d.latency_ms {
                let _ = writeln!(
                    out,
                    "  latency ms   p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                    l.p50, l.p90, l.p99, l.p999, l.max
                );
            }
            let _ = writeln!(
                out,
                "  cpu          server {} s ({} in the kernel; {} s per million deliveries); load generator {} s",
                opt(d.server_cpu_secs, 2),
                opt(d.server_sys_secs, 2),
                opt(d.server_cpu_secs_per_million, 2),
                opt(d.loadgen_cpu_secs, 2)
            );
        }
        if let Some(r) = &self.resume {
            let _ = writeln!(
                out,
                "  resume       {} of {} clients on the survivors ({}% within 5 s)",
                r.resumed,
                self.connected,
                opt(r.within_5s_percent, 1)
            );
            if let Some(l) = &r.latency_ms {
                let _ = writeln!(
                    out,
                    "  resume ms    p50 {:.0}  p90 {:.0}  p99 {:.0}  max {:.0} after the kill",
                    l.p50, l.p90, l.p99, l.max
                );
            }
        }
        if let Some(s) = &self.soak {
            let _ = writeln!(
                out,
                "  soak         {} clients replaced; RSS {} KiB after warm-up, {} KiB at the end ({}% drift); {} samples",
                s.replaced,
                s.rss_warm_kib.map_or("n/a".into(), |v| v.to_string()),
                s.rss_end_kib.map_or("n/a".into(), |v| v.to_string()),
                opt(s.rss_drift_percent, 1),
                s.samples.len()
            );
        }
        if self.dropped_connections > 0 {
            let _ = writeln!(
                out,
                "  dropped      {} connections ended early",
                self.dropped_connections
            );
        }
        out
    }
}
