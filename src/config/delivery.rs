//! Webhook delivery settings (`WEBHOOK_ALLOW_PRIVATE`, `DELIVERY_*`).

use clap::Args;

/// Webhook deliveries: who may be reached, and when failed attempts are retried.
#[derive(Debug, Clone, Args)]
pub struct DeliveryArgs {
    /// Let webhooks reach loopback, private and link-local addresses and plain `http://` URLs
    /// (private networks, tests). Default false: refused at registration and at every attempt.
    #[arg(long, env = "WEBHOOK_ALLOW_PRIVATE", value_name = "WEBHOOK_ALLOW_PRIVATE",
          default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook_allow_private: bool,
    /// Seconds before each retry of a failed delivery, comma-separated (jittered ±20 %); after
    /// the last the delivery has failed. Default 5,30,120,600,1800,3600,10800,21600.
    #[arg(long, env = "DELIVERY_RETRY_SCHEDULE", value_name = "DELIVERY_RETRY_SCHEDULE",
          default_value = "5,30,120,600,1800,3600,10800,21600",
          value_parser = crate::delivery::retry::Schedule::parse)]
    pub delivery_retry_schedule: crate::delivery::retry::Schedule,
    /// Seconds a worker holds a delivery it is attempting; a worker that dies leaves it to
    /// another after this. Default 30; at least 11, longer than an attempt can take (10 s), so
    /// that no two workers ever make an attempt of the same delivery at once.
    #[arg(long, env = "DELIVERY_LEASE_SECS", value_name = "DELIVERY_LEASE_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(11..=3600))]
    pub delivery_lease_secs: u64,
    /// SMTP server for email deliveries: `smtp://[user:pass@]host[:port]` (add `?tls=required`
    /// for STARTTLS) or `smtps://…`; unset = no email. May carry a password, so its value is
    /// never shown in `--help`.
    #[arg(
        long,
        env = "SMTP_URL",
        value_name = "SMTP_URL",
        hide_env_values = true
    )]
    pub smtp_url: Option<String>,
    /// The `From` address of emails, e.g. `License alerts <alerts@example.com>`.
    #[arg(long, env = "SMTP_FROM", value_name = "SMTP_FROM")]
    pub smtp_from: Option<String>,
    /// Emails per tenant per hour; the events beyond go into one digest per hour. Default 20.
    #[arg(long, env = "EMAIL_MAX_PER_HOUR", value_name = "EMAIL_MAX_PER_HOUR", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub email_max_per_hour: u32,
    /// The length of the email cap's window, in seconds (an hour; shorter for tests). Default
    /// 3600.
    #[arg(long, env = "EMAIL_WINDOW_SECS", value_name = "EMAIL_WINDOW_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub email_window_secs: u64,
}
