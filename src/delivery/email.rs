//! Email for a tenant's critical events over SMTP (`SMTP_URL`, `SMTP_FROM`): one message per
//! event, plain text and HTML, its `Message-ID` made of the event id and the tenant; and one
//! digest per window for the events over `EMAIL_MAX_PER_HOUR`.

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;

use super::endpoint::EmailSettings;

/// Longest wait for the SMTP server per message.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// An SMTP connection setting and the sender address.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// From `smtp://[user:pass@]host[:port]` (STARTTLS when `?tls=required`) or `smtps://`
    /// (TLS from the first byte), and the `From` address.
    pub fn new(url: &str, from: &str) -> Result<Self, String> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|_| "SMTP_URL: not an smtp:// or smtps:// URL".to_owned())?
            .timeout(Some(TIMEOUT))
            .build();
        let from = from
            .parse::<Mailbox>()
            .map_err(|e| format!("SMTP_FROM: {e}"))?;
        Ok(Self { transport, from })
    }

    /// Sends the message of one event (its envelope JSON) to the tenant's recipients.
    pub async fn send_event(
        &self,
        tenant: &str,
        settings: &EmailSettings,
        envelope: &str,
    ) -> Result<(), String> {
        let event: Value = serde_json::from_str(envelope).map_err(|e| format!("envelope: {e}"))?;
        let id = event["id"].as_str().unwrap_or_default();
        let line = describe(&event);
        let severity = event["severity"].as_str().unwrap_or("info");
        let subject = format!("[{severity}] {tenant}: {line}");
        let rows = rows(tenant, &event);
        let text = rows
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("\n");
        let html = format!(
            "<!doctype html><html><body><h2>{}</h2><table>{}</table></body></html>",
            escape(&line),
            rows.iter()
                .map(|(k, v)| format!("<tr><th align=\"left\">{k}</th><td>{}</td></tr>", escape(v)))
                .collect::<String>()
        );
        let message_id = format!("<{id}.{}@license-gateway>", message_id_part(tenant));
        self.send(settings, &subject, message_id, text, html).await
    }

    /// Sends the digest of the events over the cap in one window.
    pub async fn send_digest(
        &self,
        tenant: &str,
        settings: &EmailSettings,
        envelopes: &[String],
        window_end_ms: u64,
    ) -> Result<(), String> {
        let events: Vec<Value> = envelopes
            .iter()
            .filter_map(|e| serde_json::from_str(e).ok())
            .collect();
        let subject = format!(
            "[digest] {tenant}: {} more license event{}",
            events.len(),
            if events.len() == 1 { "" } else { "s" }
        );
        let lines: Vec<String> = events
            .iter()
            .map(|e| {
                format!(
                    "{} {} ({}): {}",
                    e["timestamp"].as_str().unwrap_or_default(),
                    e["type"].as_str().unwrap_or_default(),
                    e["id"].as_str().unwrap_or_default(),
                    describe(e)
                )
            })
            .collect();
        let text = format!(
            "Tenant {tenant}: these events came after the hourly email limit was reached.\n\n{}",
            lines.join("\n")
        );
        let html = format!(
            "<!doctype html><html><body><p>Tenant {}: these events came after the hourly email limit was reached.</p><ul>{}</ul></body></html>",
            escape(tenant),
            lines
                .iter()
                .map(|l| format!("<li>{}</li>", escape(l)))
                .collect::<String>()
        );
        let message_id = format!(
            "<digest-{window_end_ms}.{}@license-gateway>",
            message_id_part(tenant)
        );
        self.send(settings, &subject, message_id, text, html).await
    }

    async fn send(
        &self,
        settings: &EmailSettings,
        subject: &str,
        message_id: String,
        text: String,
        html: String,
    ) -> Result<(), String> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .message_id(Some(message_id));
        for to in &settings.recipients {
            let mailbox = to
                .parse::<Mailbox>()
                .map_err(|e| format!("recipient {to}: {e}"))?;
            builder = builder.to(mailbox);
        }
        let message = builder
            .multipart(MultiPart::alternative_plain_html(text, html))
            .map_err(|e| format!("message: {e}"))?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| format!("SMTP: {e}"))
    }
}

/// One line about an event, naming its metric or module (as the browser client's `describe`).
pub fn describe(event: &Value) -> String {
    let d = &event["data"];
    let text = |k: &str| {
        d[k].as_str()
            .map(str::to_owned)
            .or_else(|| d[k].as_f64().map(|n| n.to_string()))
    };
    let what = text("module").map_or("License".to_owned(), |m| format!("Module \"{m}\""));
    match event["type"].as_str().unwrap_or_default() {
        "license_expiring" => format!(
            "{what} expires in {} days",
            text("daysLeft").unwrap_or_default()
        ),
        "license_expired" => format!("{what} expired"),
        "usage_limit_warning" => format!(
            "{}: {}% of the limit used ({} of {})",
            text("metric").unwrap_or_default(),
            text("percent").unwrap_or_default(),
            text("used").unwrap_or_default(),
            text("limit").unwrap_or_default()
        ),
        "usage_limit_exceeded" => format!(
            "{}: limit exceeded ({} of {})",
            text("metric").unwrap_or_default(),
            text("used").unwrap_or_default(),
            text("limit").unwrap_or_default()
        ),
        "module_activated" => format!("{what} activated"),
        "module_deactivated" => format!("{what} deactivated"),
        "license_updated" => "License updated".to_owned(),
        other => other.to_owned(),
    }
}

/// The facts of an event, as the message's table.
fn rows(tenant: &str, event: &Value) -> Vec<(&'static str, String)> {
    let text = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    let mut rows = vec![
        ("Tenant", tenant.to_owned()),
        ("Event", text(&event["type"])),
        ("Severity", text(&event["severity"])),
        ("What", describe(event)),
    ];
    for (label, key) in [("Module", "module"), ("Metric", "metric")] {
        if let Some(v) = event["data"].get(key) {
            rows.push((label, text(v)));
        }
    }
    rows.push(("Time", text(&event["timestamp"])));
    rows.push(("Event id", text(&event["id"])));
    rows
}

/// The tenant in a `Message-ID`: verbatim when it is an atom, its other bytes percent-encoded.
fn message_id_part(tenant: &str) -> String {
    tenant
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_described_and_tenants_fit_a_message_id() {
        let e: Value = serde_json::from_str(
            r#"{"id":"5-0","type":"usage_limit_exceeded","severity":"error","timestamp":"t","data":{"metric":"users","used":120,"limit":100}}"#,
        )
        .unwrap();
        assert_eq!(describe(&e), "users: limit exceeded (120 of 100)");
        assert!(rows("acme", &e).contains(&("Metric", "users".to_owned())));
        assert_eq!(message_id_part("acme-01"), "acme-01");
        assert_eq!(message_id_part("a@b"), "a%40b");
        assert_eq!(escape("<b>&"), "&lt;b&gt;&amp;");
        assert!(Mailer::new("smtp://127.0.0.1:2525", "gw@license.test").is_ok());
        assert!(Mailer::new("http://x", "gw@license.test").is_err());
        assert!(Mailer::new("smtp://127.0.0.1:2525", "not an address").is_err());
    }
}
