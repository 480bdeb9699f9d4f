//! The notification center (#16), part by part: per-connection filters so far (the tenant
//! thresholds are in `licenses.rs`).

use std::time::Duration;

use harness::*;
use serde_json::{Value, json};

every_engine!(connection_filters_narrow_live_events_and_resume);

const QUIET: Duration = Duration::from_millis(500);

/// `(type, data.module)` of each event a client received.
fn kinds(events: &[Value]) -> Vec<(String, Option<String>)> {
    events
        .iter()
        .map(|e| {
            let module = e["data"]["module"].as_str().map(str::to_owned);
            (e["type"].as_str().unwrap().to_owned(), module)
        })
        .collect()
}

fn kind(t: &str, module: Option<&str>) -> (String, Option<String>) {
    (t.to_owned(), module.map(str::to_owned))
}

/// `types`, `minSeverity` and `modules` on `/ws/license` narrow what a connection receives,
/// strictly (an `error` event outside the filter is not sent on it), live and on resume; bad
/// values refuse the upgrade with 400.
async fn connection_filters_narrow_live_events_and_resume(backend: Backend) {
    let d = Deployment::start(backend, &[]).await;
    let token = tenant_token("acme");
    let url = d.ws_url();
    let (mut all, _) = WsClient::connected(&url, &token).await;
    let narrow_url = format!("{url}?types=license_expired,module_deactivated&modules=reports");
    let (mut narrow, _) = WsClient::connected(&narrow_url, &token).await;
    let (mut severe, _) = WsClient::connected(&format!("{url}?minSeverity=warning"), &token).await;
    let (mut activations, _) =
        WsClient::connected(&format!("{url}?types=module_activated"), &token).await;

    let first = publish(
        d.port(),
        "acme",
        "license_updated",
        json!({"changes": ["plan"]}),
    )
    .await;
    for (t, data) in [
        (
            "module_deactivated",
            json!({"module": "payroll", "reason": "disabled"}),
        ),
        (
            "module_deactivated",
            json!({"module": "reports", "reason": "disabled"}),
        ),
        (
            "license_expired",
            json!({"expiredAt": "2026-12-01T00:00:00Z"}),
        ),
        (
            "usage_limit_warning",
            json!({"metric": "users", "used": 85, "limit": 100, "percent": 85}),
        ),
    ] {
        publish(d.port(), "acme", t, data).await;
    }
    assert_eq!(all.drain(QUIET).await.len(), 5);
    assert_eq!(
        kinds(&narrow.drain(QUIET).await),
        vec![
            kind("module_deactivated", Some("reports")),
            kind("license_expired", None),
        ]
    );
    assert_eq!(
        kinds(&severe.drain(QUIET).await),
        vec![
            kind("module_deactivated", Some("payroll")),
            kind("module_deactivated", Some("reports")),
            kind("license_expired", None),
            kind("usage_limit_warning", None),
        ]
    );
    // Strict: even the error event stays off a connection that asked for other types.
    activations.expect_silence(QUIET).await;

    // A resume replays only what the filter lets through.
    let id = first["id"].as_str().unwrap();
    let resume_url = format!("{url}?types=license_expired&lastEventId={id}");
    let (mut resumed, _) = WsClient::connected(&resume_url, &token).await;
    assert_eq!(
        kinds(&resumed.drain(QUIET).await),
        vec![kind("license_expired", None)]
    );

    for bad in ["types=nope", "minSeverity=fatal", "types=license_expired,"] {
        let refused = try_ws_connect(
            &format!("{url}?{bad}"),
            Some(&token),
            Carrier::Subprotocol,
            &[],
        )
        .await;
        match (bad, refused) {
            // A trailing comma is only an empty entry: accepted.
            ("types=license_expired,", Ok(_)) => {}
            (_, Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                assert_eq!(response.status(), 400, "{bad}");
            }
            (bad, other) => panic!("{bad}: {:?}", other.map(|_| "upgraded")),
        }
    }
}
