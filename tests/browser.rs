//! The browser client and the demo page in real (headless) Chromium, against real gateways:
//! toasts (severity, text, queue, auto-dismiss, close), module locking, tabs and tenants, and a
//! reconnect with resume when the page's node is killed. Also takes the README's screenshot.

use std::time::{Duration, Instant};

use harness::*;
use serde_json::{Value, json};

const DAY: i64 = 86_400;

fn acme_license(analytics_enabled: bool) -> Value {
    json!({"tenantId": "acme", "plan": "enterprise", "expiresAt": rfc3339_in(200 * DAY),
           "modules": {"analytics": {"enabled": analytics_enabled}, "reports": {"enabled": true}},
           "limits": {"users": 100}})
}

async fn put(port: u16, path: &str, body: &Value) {
    let (status, text) = http(
        port,
        "PUT",
        path,
        Some(&admin_key()),
        Some(&body.to_string()),
    )
    .await
    .unwrap();
    assert!(
        status == 200 || status == 201,
        "PUT {path}: {status} {text}"
    );
}

/// Opens the demo page for `tenant` and waits until it is connected and shows its license.
async fn open_page(browser: &Browser, base: &str, tenant: &str) {
    browser
        .goto(&format!("{base}/?token={}", tenant_token(tenant)))
        .await;
    browser
        .wait_for(
            "window.licenseClient && window.licenseClient.state === 'open'",
            WAIT,
        )
        .await;
    browser
        .wait_for(
            "document.getElementById('state').dataset.state === 'open'",
            WAIT,
        )
        .await;
}

/// Redis, two nodes behind an nginx, acme's license, and a browser.
struct TwoNodes {
    /// Bound by the callers: a `..` pattern would drop (stop) it at once.
    redis: Redis,
    a: Gateway,
    b: Gateway,
    nginx: Nginx,
    browser: Browser,
}

/// Starts [`TwoNodes`] behind an nginx that passes WebSocket upgrades, or (as some proxies do)
/// does not.
async fn two_nodes_behind(websockets: bool) -> TwoNodes {
    let redis = Redis::start();
    let a = Gateway::start(GatewayOptions::redis(&redis)).await;
    let b = Gateway::start(GatewayOptions::redis(&redis)).await;
    let nginx = if websockets {
        Nginx::start(&[a.port, b.port]).await
    } else {
        Nginx::start_without_websockets(&[a.port, b.port]).await
    };
    put(
        a.port,
        "/api/admin/tenants/acme/license",
        &acme_license(true),
    )
    .await;
    TwoNodes {
        redis,
        a,
        b,
        nginx,
        browser: Browser::start().await,
    }
}

/// SIGKILLs whichever of `a` and `b` the page's client is connected to; returns the other's
/// port and node id.
async fn kill_the_pages_node(browser: &Browser, a: &mut Gateway, b: &mut Gateway) -> (u16, String) {
    let node = browser.eval("return window.licenseClient.node;").await;
    let (dead, survivor) = if node == a.node_id { (a, b) } else { (b, a) };
    assert_eq!(node, dead.node_id);
    dead.kill();
    (survivor.port, survivor.node_id.clone())
}

/// A gateway with acme's license, and a browser showing acme's page.
async fn acme_page() -> (Gateway, Browser) {
    let gateway = Gateway::start(GatewayOptions::memory()).await;
    put(
        gateway.port,
        "/api/admin/tenants/acme/license",
        &acme_license(true),
    )
    .await;
    let browser = Browser::start().await;
    open_page(&browser, &gateway.http_url(""), "acme").await;
    (gateway, browser)
}

/// The visible toast as (severity, type, text), or null.
const TOAST: &str = "(() => { const t = document.getElementById('toast'); \
    return t ? [t.dataset.severity, t.dataset.type, t.querySelector('.message').textContent] : null; })()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toasts_show_severity_queue_auto_dismiss_and_close() {
    let (gateway, browser) = acme_page().await;
    browser
        .wait_for(
            "document.querySelector('[data-module=\"analytics\"]')",
            WAIT,
        )
        .await;

    publish(
        gateway.port,
        "acme",
        "usage_limit_warning",
        json!({"metric": "users", "used": 85, "limit": 100, "percent": 85.0}),
    )
    .await;
    let toast = browser.wait_for(TOAST, WAIT).await;
    assert_eq!(toast[0], "warning");
    assert_eq!(toast[1], "usage_limit_warning");
    assert!(
        toast[2].as_str().unwrap().contains("users"),
        "names the metric: {toast}"
    );

    // A second event waits in the queue behind the first.
    publish(
        gateway.port,
        "acme",
        "license_expired",
        json!({"expiredAt": rfc3339_in(0), "module": "analytics"}),
    )
    .await;
    browser.wait_for("document.getElementById('toast-queue') && document.getElementById('toast-queue').textContent === '+1 more'", WAIT).await;
    assert_eq!(
        browser.eval(&format!("return {TOAST};")).await[1],
        "usage_limit_warning",
        "one at a time"
    );

    // The close button shows the next one: an error, naming the module.
    browser
        .eval("document.getElementById('toast-close').click();")
        .await;
    let toast = browser
        .wait_for(
            &format!("{TOAST} && {TOAST}[1] === 'license_expired' && {TOAST}"),
            WAIT,
        )
        .await;
    assert_eq!(toast[0], "error");
    assert!(
        toast[2].as_str().unwrap().contains("analytics"),
        "names the module: {toast}"
    );
    // Errors stay 10 s.
    let shown = Instant::now();
    browser
        .wait_for("!document.getElementById('toast')", Duration::from_secs(15))
        .await;
    let stayed = shown.elapsed();
    println!("error toast stayed {stayed:?}");
    assert!(
        stayed >= Duration::from_millis(9000) && stayed <= Duration::from_millis(11500),
        "{stayed:?}"
    );

    // Info stays 6 s.
    publish(
        gateway.port,
        "acme",
        "module_activated",
        json!({"module": "payroll"}),
    )
    .await;
    let toast = browser.wait_for(TOAST, WAIT).await;
    assert_eq!(toast[0], "info");
    assert!(toast[2].as_str().unwrap().contains("payroll"));
    let shown = Instant::now();
    browser
        .wait_for("!document.getElementById('toast')", Duration::from_secs(10))
        .await;
    let stayed = shown.elapsed();
    println!("info toast stayed {stayed:?}");
    assert!(
        stayed >= Duration::from_millis(5000) && stayed <= Duration::from_millis(7500),
        "{stayed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_deactivation_locks_the_module_in_the_panel() {
    let (gateway, browser) = acme_page().await;
    let locked = "document.querySelector('[data-module=\"analytics\"]')?.dataset.locked";
    assert_eq!(browser.wait_for(locked, WAIT).await, "false");

    put(
        gateway.port,
        "/api/admin/tenants/acme/license",
        &acme_license(false),
    )
    .await;
    browser
        .wait_for(&format!("{locked} === 'true'"), WAIT)
        .await;
    let text = browser
        .eval("return document.querySelector('[data-module=\"analytics\"]').textContent;")
        .await;
    assert!(text.as_str().unwrap().contains("disabled"), "{text}");
    let toast = browser.wait_for(TOAST, WAIT).await;
    assert_eq!(toast[1], "module_deactivated");
    assert!(toast[2].as_str().unwrap().contains("analytics"));
    // The other module stays unlocked.
    assert_eq!(
        browser
            .eval("return document.querySelector('[data-module=\"reports\"]').dataset.locked;")
            .await,
        "false"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_of_a_tenant_get_the_event_and_another_tenant_does_not() {
    let gateway = Gateway::start(GatewayOptions::memory()).await;
    put(
        gateway.port,
        "/api/admin/tenants/acme/license",
        &acme_license(true),
    )
    .await;
    let browser = Browser::start().await;
    let base = gateway.http_url("");
    let first = browser.tab().await;
    open_page(&browser, &base, "acme").await;
    let second = browser.new_tab().await;
    open_page(&browser, &base, "acme").await;
    let other = browser.new_tab().await;
    open_page(&browser, &base, "globex").await;

    let sent = publish(
        gateway.port,
        "acme",
        "license_updated",
        json!({"changes": ["plan"]}),
    )
    .await;
    let id = sent["id"].as_str().unwrap();
    let has_it = format!("window.licenseClient.notifications.filter(n => n.id === '{id}').length");
    for tab in [&first, &second] {
        browser.switch_to(tab).await;
        assert_eq!(browser.wait_for(&has_it, WAIT).await, 1);
        browser.wait_for(TOAST, WAIT).await;
    }
    browser.switch_to(&other).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        browser
            .eval("return window.licenseClient.notifications.length;")
            .await,
        0,
        "globex saw nothing"
    );
    assert_eq!(browser.eval(&format!("return {TOAST};")).await, Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_reconnects_and_resumes_when_its_node_is_killed() {
    let TwoNodes {
        mut a,
        mut b,
        nginx,
        browser,
        redis: _redis,
    } = two_nodes_behind(true).await;
    open_page(
        &browser,
        &format!("http://127.0.0.1:{}", nginx.port),
        "acme",
    )
    .await;
    let (survivor_port, survivor_id) = kill_the_pages_node(&browser, &mut a, &mut b).await;
    // Published through the surviving node while the page has no connection.
    let sent = publish(
        survivor_port,
        "acme",
        "usage_limit_exceeded",
        json!({"metric": "users", "used": 120, "limit": 100, "percent": 120.0}),
    )
    .await;
    let id = sent["id"].as_str().unwrap();
    let count = format!("window.licenseClient.notifications.filter(n => n.id === '{id}').length");
    assert_eq!(browser.wait_for(&count, Duration::from_secs(20)).await, 1);
    assert_eq!(
        browser.eval("return window.licenseClient.node;").await,
        survivor_id.as_str()
    );
    assert_eq!(
        browser.eval("return window.licenseClient.state;").await,
        "open"
    );
    let toast = browser.wait_for(TOAST, WAIT).await;
    assert_eq!(toast[1], "usage_limit_exceeded");
    // Still exactly once a moment later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(browser.eval(&format!("return {count};")).await, 1);
}

/// Behind a proxy that breaks WebSocket upgrades, the page falls back to SSE within 10 s of
/// loading (two failed attempts), shows it, receives every event once, and resumes on the other
/// node when the one it uses is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_falls_back_to_sse_behind_a_proxy_without_websockets_and_resumes_after_a_kill() {
    let TwoNodes {
        mut a,
        mut b,
        nginx,
        browser,
        redis: _redis,
    } = two_nodes_behind(false).await;
    let loaded = Instant::now();
    browser
        .goto(&format!(
            "{}/?token={}",
            nginx.http_url(),
            tenant_token("acme")
        ))
        .await;
    browser
        .wait_for(
            "window.licenseClient && window.licenseClient.state === 'open' && window.licenseClient.transport === 'sse'",
            Duration::from_secs(10),
        )
        .await;
    println!("fell back to SSE {:?} after loading", loaded.elapsed());
    assert!(loaded.elapsed() <= Duration::from_secs(10));
    browser
        .wait_for(
            "document.getElementById('state').dataset.transport === 'sse' && document.getElementById('state').textContent === 'open · SSE'",
            WAIT,
        )
        .await;

    let received = |id: &str| {
        format!("window.licenseClient.notifications.filter(n => n.id === '{id}').length")
    };
    let mut ids = Vec::new();
    for i in 0..3 {
        let sent = publish(
            a.port,
            "acme",
            "usage_limit_warning",
            json!({"metric": "users", "used": 80 + i, "limit": 100, "percent": 80.0 + i as f64}),
        )
        .await;
        ids.push(sent["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        assert_eq!(browser.wait_for(&received(id), WAIT).await, 1);
    }

    let (survivor_port, survivor_id) = kill_the_pages_node(&browser, &mut a, &mut b).await;
    let sent = publish(
        survivor_port,
        "acme",
        "usage_limit_exceeded",
        json!({"metric": "users", "used": 120, "limit": 100, "percent": 120.0}),
    )
    .await;
    let id = sent["id"].as_str().unwrap();
    assert_eq!(
        browser
            .wait_for(&received(id), Duration::from_secs(20))
            .await,
        1
    );
    assert_eq!(
        browser.eval("return window.licenseClient.node;").await,
        survivor_id.as_str()
    );
    assert_eq!(
        browser.eval("return window.licenseClient.transport;").await,
        "sse"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in ids.iter().map(String::as_str).chain([id]) {
        assert_eq!(
            browser.eval(&format!("return {};", received(id))).await,
            1,
            "{id} once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_screenshot() {
    // `serve --demo` with the test secret, so the test can mint the page's tokens.
    let gateway = Gateway::spawn_args(&["serve", "--demo"], GatewayOptions::memory());
    gateway.wait_ready().await;
    let browser = Browser::start().await;
    let url = format!(
        "{}/?token={}&admin={}",
        gateway.http_url(""),
        user_token("acme", "alice"),
        admin_key()
    );
    browser.goto(&url).await;
    browser.wait_for("document.querySelector('#controls:not([hidden])') && document.getElementById('state').dataset.state === 'open'", WAIT).await;
    // Drive it the way a newcomer would: raise usage with the demo controls.
    browser.eval("document.querySelector('[data-usage=\"users\"]').value = 91; document.querySelector('[data-set-usage=\"users\"]').click();").await;
    let toast = browser.wait_for(TOAST, WAIT).await;
    assert_eq!(toast[1], "usage_limit_warning");
    browser.wait_for("document.querySelector('.usage[data-metric=\"users\"] .bar').dataset.state === 'warning'", WAIT).await;
    let png = browser.screenshot().await;
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("demo.png"), &png).unwrap();
    if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/demo.png");
        std::fs::write(docs, &png).unwrap();
    }
}

/// The demo page, plus a second client `window.c2` (with `options` added) whose first token
/// expires in 8 s and whose `getToken` then hands out a fresh one (`window.calls` counts the
/// calls); returns once it is open.
async fn second_client_with_an_expiring_token(options: &str) -> (Gateway, Browser) {
    let gateway = Gateway::start(GatewayOptions::memory().env("JWT_LEEWAY_SECS", "0")).await;
    let browser = Browser::start().await;
    open_page(&browser, &gateway.http_url(""), "acme").await;
    let short = sign_claims(&json!({"tenantId": "acme", "exp": now_secs() + 8}));
    let fresh = sign_claims(&json!({"tenantId": "acme", "exp": now_secs() + 3600}));
    browser
        .eval(&format!(
            "window.tokens = ['{short}', '{fresh}']; window.calls = 0; \
             import('/client.js').then((m) => {{ window.c2 = m.connect({{ {options}fetchLicense: false, \
               refreshBefore: 4000, getToken: () => window.tokens[Math.min(window.calls++, 1)] }}); }});"
        ))
        .await;
    browser
        .wait_for("window.c2 && window.c2.state === 'open'", WAIT)
        .await;
    (gateway, browser)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refreshes_its_token_in_band_before_it_expires() {
    // Its first token expires in 8 s; getToken then hands out a fresh one, which it must send
    // in-band (refreshBefore 4 s → at about 5 s).
    let (gateway, browser) = second_client_with_an_expiring_token("").await;
    let connection = browser.eval("return window.c2.connectionId;").await;
    // Past the first token's expiry: the same connection, never closed, token fetched twice.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(browser.eval("return window.c2.state;").await, "open");
    assert_eq!(
        browser.eval("return window.c2.connectionId;").await,
        connection
    );
    assert_eq!(
        browser.eval("return window.c2.lastClose;").await,
        Value::Null
    );
    assert_eq!(browser.eval("return window.calls;").await, 2);
    // And it still receives events.
    let sent = publish(
        gateway.port,
        "acme",
        "license_updated",
        json!({"changes": ["plan"]}),
    )
    .await;
    let id = sent["id"].as_str().unwrap();
    browser
        .wait_for(
            &format!("window.c2.notifications.some(n => n.id === '{id}')"),
            WAIT,
        )
        .await;
}

/// Over SSE there is no in-band refresh: before the token expires the client reopens its stream
/// with a fresh token and ticket, resuming after the last event, so nothing is lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_reopens_its_stream_with_a_fresh_token_before_it_expires() {
    let (gateway, browser) = second_client_with_an_expiring_token("transport: 'sse', ").await;
    assert_eq!(browser.eval("return window.c2.transport;").await, "sse");
    let first = browser.eval("return window.c2.connectionId;").await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let sent = publish(
            gateway.port,
            "acme",
            "license_updated",
            json!({"changes": ["plan"]}),
        )
        .await;
        ids.push(sent["id"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let sent = publish(
        gateway.port,
        "acme",
        "license_updated",
        json!({"changes": ["plan"]}),
    )
    .await;
    ids.push(sent["id"].as_str().unwrap().to_owned());
    for id in &ids {
        let once = format!("window.c2.notifications.filter(n => n.id === '{id}').length === 1");
        browser.wait_for(&once, WAIT).await;
    }
    assert_eq!(browser.eval("return window.c2.state;").await, "open");
    assert_ne!(
        browser.eval("return window.c2.connectionId;").await,
        first,
        "a new stream"
    );
    assert_eq!(browser.eval("return window.calls;").await, 2);
    assert_eq!(
        browser.eval("return window.c2.lastClose;").await,
        Value::Null,
        "never closed by the server"
    );
    assert_eq!(
        browser.eval("return window.c2.notifications.length;").await,
        3
    );
}

/// A revoked connection is an authentication failure to the browser client: without
/// `getToken` the page goes offline and stays so; with it, the client asks for one new token
/// and reconnects once, with no tight loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_asks_for_a_new_token_or_stays_offline() {
    let gateway = Gateway::start(GatewayOptions::memory()).await;
    let browser = Browser::start().await;
    open_page(&browser, &gateway.http_url(""), "acme").await;
    let fresh = tenant_token("acme");
    browser
        .eval(&format!(
            "window.freshToken = '{fresh}'; window.calls = 0; \
             import('/client.js').then((m) => {{ window.c2 = m.connect({{ fetchLicense: false, \
               getToken: () => {{ window.calls += 1; return window.freshToken; }} }}); }});"
        ))
        .await;
    browser
        .wait_for("window.c2 && window.c2.state === 'open'", WAIT)
        .await;
    let (status, _) = http(
        gateway.port,
        "POST",
        "/api/admin/tenants/acme/disconnect",
        Some(&admin_key()),
        Some("{}"),
    )
    .await
    .unwrap();
    assert_eq!(status, 202);
    browser
        .wait_for(
            "window.licenseClient.state === 'offline' && window.licenseClient.lastClose.reason === 'revoked'",
            WAIT,
        )
        .await;
    browser
        .wait_for("window.calls === 2 && window.c2.state === 'open'", WAIT)
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        browser.eval("return window.licenseClient.state;").await,
        "offline"
    );
    assert_eq!(
        browser.eval("return window.calls;").await,
        2,
        "one new token, no loop"
    );
    assert_eq!(
        browser
            .eval("return document.getElementById('state').dataset.state;")
            .await,
        "offline"
    );
}

/// The bell's count of `tab`'s page, as shown.
const BELL: &str =
    "document.getElementById('bell').hidden ? null : document.getElementById('unread').textContent";

/// Opens the demo page as `user` of acme and waits until it is connected with its bell shown.
async fn open_user_page(browser: &Browser, base: &str, user: &str) {
    browser
        .goto(&format!("{base}/?token={}", user_token("acme", user)))
        .await;
    browser
        .wait_for(
            "window.licenseClient && window.licenseClient.state === 'open' && !document.getElementById('bell').hidden",
            WAIT,
        )
        .await;
}

/// The notification center in the demo page: the bell's count, the panel, mark read, read-all,
/// the same user's second tab following every change, the preferences dialog muting a type (no
/// toast for it; an error still toasts). Takes the README's screenshot of the panel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bell_panel_read_state_across_tabs_and_preferences() {
    let gateway = Gateway::start(GatewayOptions::memory()).await;
    put(
        gateway.port,
        "/api/admin/tenants/acme/license",
        &acme_license(true),
    )
    .await;
    for (t, data) in [
        (
            "usage_limit_warning",
            json!({"metric": "users", "used": 85, "limit": 100, "percent": 85}),
        ),
        (
            "module_deactivated",
            json!({"module": "analytics", "reason": "disabled"}),
        ),
        (
            "license_expiring",
            json!({"expiresAt": rfc3339_in(7 * DAY), "daysLeft": 7, "threshold": 7}),
        ),
    ] {
        publish(gateway.port, "acme", t, data).await;
    }
    let base = gateway.http_url("");
    let browser = Browser::start().await;
    let first = browser.tab().await;
    open_user_page(&browser, &base, "alice").await;
    // The license's creation and the three events.
    assert_eq!(
        browser
            .wait_for(&format!("{BELL} === '4' && {BELL}"), WAIT)
            .await,
        "4"
    );
    let second = browser.new_tab().await;
    open_user_page(&browser, &base, "alice").await;
    browser.wait_for(&format!("{BELL} === '4'"), WAIT).await;

    // Tab one: open the panel, mark the newest read.
    browser.switch_to(&first).await;
    browser
        .eval("document.getElementById('bell').click();")
        .await;
    let rows = "document.querySelectorAll('#inbox li[data-id]').length";
    assert_eq!(
        browser
            .wait_for(&format!("{rows} === 4 && {rows}"), WAIT)
            .await,
        4
    );
    browser
        .eval("document.querySelector('#inbox li[data-id] button.toggle').click();")
        .await;
    browser.wait_for(&format!("{BELL} === '3'"), WAIT).await;
    browser
        .wait_for(
            "document.querySelector('#inbox li[data-id]').dataset.read === 'true'",
            WAIT,
        )
        .await;

    // Tab two follows within a second, and its panel shows the same read flag.
    browser.switch_to(&second).await;
    let started = Instant::now();
    browser.wait_for(&format!("{BELL} === '3'"), WAIT).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    browser
        .eval("document.getElementById('bell').click();")
        .await;
    browser
        .wait_for("document.querySelector('#inbox li[data-id]') && document.querySelector('#inbox li[data-id]').dataset.read === 'true'", WAIT)
        .await;
    browser
        .eval("document.getElementById('read-all').click();")
        .await;
    browser.wait_for(&format!("{BELL} === '0'"), WAIT).await;
    browser.switch_to(&first).await;
    browser.wait_for(&format!("{BELL} === '0'"), WAIT).await;
    browser
        .wait_for("[...document.querySelectorAll('#inbox li[data-id]')].every(li => li.dataset.read === 'true')", WAIT)
        .await;

    // Preferences dialog in tab one: mute module activations.
    browser
        .eval("document.getElementById('prefs-open').click();")
        .await;
    browser
        .wait_for("document.getElementById('prefs').open", WAIT)
        .await;
    browser
        .eval("document.querySelector('[data-mute=\"module_activated\"]').checked = true; document.getElementById('prefs-save').click();")
        .await;
    browser
        .wait_for("!document.getElementById('prefs').open", WAIT)
        .await;
    let (status, stored) = http(
        gateway.port,
        "GET",
        "/api/notifications/preferences",
        Some(&user_token("acme", "alice")),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(stored.contains("module_activated"), "{stored}");
    publish(
        gateway.port,
        "acme",
        "module_activated",
        json!({"module": "payroll"}),
    )
    .await;
    publish(
        gateway.port,
        "acme",
        "license_expired",
        json!({"expiredAt": rfc3339_in(-60)}),
    )
    .await;
    for tab in [&first, &second] {
        browser.switch_to(tab).await;
        // The error arrives (after the muted one, had it been sent) and raises the count.
        browser
            .wait_for(
                "window.licenseClient.notifications.some(n => n.type === 'license_expired')",
                WAIT,
            )
            .await;
        browser.wait_for(&format!("{BELL} === '1'"), WAIT).await;
        assert_eq!(
            browser
                .eval("return window.licenseClient.notifications.filter(n => n.type === 'module_activated').length;")
                .await,
            0,
            "no toast for a muted type"
        );
    }

    // The panel with unread ones, for the README.
    browser.switch_to(&first).await;
    for (t, data) in [
        (
            "usage_limit_exceeded",
            json!({"metric": "users", "used": 104, "limit": 100, "percent": 104}),
        ),
        (
            "module_deactivated",
            json!({"module": "reports", "reason": "expired"}),
        ),
    ] {
        publish(gateway.port, "acme", t, data).await;
    }
    browser.wait_for(&format!("{BELL} === '3'"), WAIT).await;
    browser.eval("window.licenseClient.clear();").await;
    let png = browser.screenshot().await;
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("notifications.png"), &png).unwrap();
    if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/notifications.png");
        std::fs::write(docs, &png).unwrap();
    }
}
