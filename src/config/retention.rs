//! What every publish keeps: history and notification retention (`HISTORY_*`,
//! `NOTIFICATION_*`).

use clap::Args;

/// Per-tenant history and notification retention, used by everything that publishes.
#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// Per-tenant events kept for resume. Default 1000.
    #[arg(long, env = "HISTORY_SIZE", value_name = "HISTORY_SIZE", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub history_size: u32,
    /// Age after which history entries are trimmed, in seconds. Default 86400.
    #[arg(long, env = "HISTORY_TTL_SECS", value_name = "HISTORY_TTL_SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub history_ttl_secs: u64,
    /// Notifications kept per tenant at most (the oldest go first). Default 10000.
    #[arg(long, env = "NOTIFICATION_MAX", value_name = "NOTIFICATION_MAX", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub notification_max: u32,
    /// Days a notification is kept (fractions allowed, e.g. 0.5). Default 90.
    #[arg(long, env = "NOTIFICATION_RETENTION_DAYS", value_name = "NOTIFICATION_RETENTION_DAYS",
          default_value_t = 90.0, value_parser = retention_days)]
    pub notification_retention_days: f64,
}

/// A retention in days: more than 0, at most ten years.
fn retention_days(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(d) if d > 0.0 && d <= 3650.0 => Ok(d),
        _ => Err("must be a number of days above 0 and at most 3650".into()),
    }
}
