//! Email for critical events: a real SMTP server (Python's `aiosmtpd` from PyPI) receives one
//! message per event with the right headers and both parts, and the events over the hourly cap
//! (a short window here; an hour by default) arrive as one digest.

use std::time::Duration;

use harness::*;
use serde_json::json;

both_engines!(critical_events_are_emailed_and_the_cap_makes_one_digest);

const FROM: &str = "License alerts <alerts@license.test>";
const WINDOW_SECS: u64 = 5;

/// A message's text with quoted-printable soft line breaks removed.
fn unfolded(message: &str) -> String {
    message.replace("=\r\n", "").replace("=\n", "")
}

async fn critical_events_are_emailed_and_the_cap_makes_one_digest(backend: Backend) {
    let smtp = SmtpSink::start().await;
    let url = smtp.url();
    let window = WINDOW_SECS.to_string();
    let env = [
        ("SMTP_URL", url.as_str()),
        ("SMTP_FROM", FROM),
        ("EMAIL_MAX_PER_HOUR", "2"),
        ("EMAIL_WINDOW_SECS", window.as_str()),
        ("DELIVERY_RETRY_SCHEDULE", "0.3,0.3,0.3"),
    ];
    let d = Deployment::start(backend, &env).await;
    let worker_args = [
        "--interval",
        "3600",
        "--smtp-url",
        url.as_str(),
        "--smtp-from",
        FROM,
        "--email-max-per-hour",
        "2",
        "--email-window-secs",
        window.as_str(),
        "--delivery-retry-schedule",
        "0.3,0.3,0.3",
    ];
    let _worker = d.worker(&worker_args);
    let port = d.port();

    let path = "/api/admin/tenants/acme/email";
    let settings = json!({"recipients": ["ops@acme.test", "cto@acme.test"]});
    let (status, body) = admin_json(port, "PUT", path, Some(settings)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["minSeverity"], "error");
    assert_eq!(
        admin_json(port, "GET", path, None).await.1["recipients"][1],
        "cto@acme.test"
    );
    for (bad, field) in [
        (json!({"recipients": []}), "recipients"),
        (json!({"recipients": ["nobody"]}), "recipients"),
        (json!({"recipients": ["a@b.test"], "cc": []}), "cc"),
    ] {
        let (status, body) = admin_json(port, "PUT", path, Some(bad)).await;
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (400, Some(field)),
            "{body}"
        );
    }

    // Start at the beginning of a cap window, so that all five events fall into one.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let into = now % (WINDOW_SECS * 1000);
    if into > 1000 {
        tokio::time::sleep(Duration::from_millis(WINDOW_SECS * 1000 - into + 50)).await;
    }
    let mut ids = Vec::new();
    for n in 0..4 {
        let data = json!({"metric": format!("m{n}"), "used": 120, "limit": 100, "percent": 120});
        let event = publish(port, "acme", "usage_limit_exceeded", data).await;
        ids.push(event["id"].as_str().unwrap().to_owned());
        // The first two are sent before the others are counted.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A warning is below the settings' minimum severity: not mailed.
    publish(
        port,
        "acme",
        "usage_limit_warning",
        json!({"metric": "x", "used": 85, "limit": 100, "percent": 85}),
    )
    .await;

    eventually(
        Duration::from_secs(WINDOW_SECS * 2 + 10),
        "two messages and a digest",
        || async {
            let m = smtp.messages();
            (m.len() >= 3).then_some(m)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let messages: Vec<String> = smtp.messages().iter().map(|m| unfolded(m)).collect();
    assert_eq!(messages.len(), 3, "{messages:#?}");
    for id in &ids[..2] {
        let message = messages
            .iter()
            .find(|m| m.contains(&format!("Message-ID: <{id}.acme@license-gateway>")))
            .unwrap_or_else(|| panic!("no message for {id}: {messages:#?}"));
        assert!(
            message.contains("From: \"License alerts\" <alerts@license.test>")
                || message.contains("From: License alerts <alerts@license.test>"),
            "{message}"
        );
        assert!(message.contains("ops@acme.test") && message.contains("cto@acme.test"));
        assert!(message.contains("multipart/alternative"), "{message}");
        assert!(
            message.contains("text/plain") && message.contains("text/html"),
            "{message}"
        );
        assert!(message.contains("Subject: [error] acme: "), "{message}");
        assert!(message.contains("limit exceeded (120 of 100)"), "{message}");
        assert!(message.contains("Tenant: acme"), "{message}");
    }
    let digest = messages
        .iter()
        .find(|m| m.contains("[digest] acme: 2 more license events"))
        .unwrap_or_else(|| panic!("no digest: {messages:#?}"));
    for id in &ids[2..] {
        assert!(digest.contains(id.as_str()), "the digest lists {id}");
    }
    let (_, log) = admin_json(
        port,
        "GET",
        "/api/admin/tenants/acme/email/deliveries",
        None,
    )
    .await;
    let mut statuses: Vec<String> = log["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap().to_owned())
        .collect();
    statuses.sort();
    assert_eq!(
        statuses,
        [
            "delivered",
            "delivered",
            "delivered",
            "digested",
            "digested"
        ],
        "{log}"
    );
}
