//! Debian's Chromium driven through `chromedriver` (W3C WebDriver over loopback HTTP). No CDP
//! crate: the protocol is a handful of JSON requests, sent with [`http`].

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::WAIT;
use crate::http::http;
use crate::process::{TempDir, free_port};

/// A headless Chromium session; closed with its driver on drop.
pub struct Browser {
    driver: Option<Child>,
    port: u16,
    session: String,
    _profile: TempDir,
}

impl Browser {
    pub async fn start() -> Self {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver must be installed (the README's test command installs chromium-driver)");
        let mut browser = Self {
            driver: Some(driver),
            port,
            session: String::new(),
            _profile: TempDir::new("lgw-chrome"),
        };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let profile = browser._profile.0.display().to_string();
        let capabilities = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", "--no-first-run", "--window-size=1200,800",
                format!("--user-data-dir={profile}")]}}}});
        let reply = browser
            .request("POST", "/session", Some(capabilities))
            .await;
        browser.session = reply["sessionId"]
            .as_str()
            .expect("webdriver session")
            .to_owned();
        browser
    }

    async fn request(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string());
        let (status, text) = http(self.port, method, path, None, body.as_deref())
            .await
            .expect("webdriver request");
        let reply: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(status, 200, "webdriver {method} {path}: {text}");
        reply["value"].clone()
    }

    fn path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url` in the current tab.
    pub async fn goto(&self, url: &str) {
        self.request(
            "POST",
            &self.path("/url"),
            Some(serde_json::json!({"url": url})),
        )
        .await;
    }

    /// Runs JavaScript in the page (`return …` gives a value).
    pub async fn eval(&self, script: &str) -> Value {
        self.request(
            "POST",
            &self.path("/execute/sync"),
            Some(serde_json::json!({"script": script, "args": []})),
        )
        .await
    }

    /// Polls a JavaScript expression until it is truthy (in JavaScript's sense); returns it.
    pub async fn wait_for(&self, expression: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let value = self
                .eval(&format!("const v = ({expression}); return v ? [v] : null;"))
                .await;
            if let Value::Array(mut found) = value {
                return found.pop().unwrap_or(Value::Null);
            }
            if Instant::now() > deadline {
                panic!("timed out waiting in the browser for: {expression}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens a new tab and switches to it; returns its handle.
    pub async fn new_tab(&self) -> String {
        let reply = self
            .request(
                "POST",
                &self.path("/window/new"),
                Some(serde_json::json!({"type": "tab"})),
            )
            .await;
        let handle = reply["handle"].as_str().expect("tab handle").to_owned();
        self.switch_to(&handle).await;
        handle
    }

    /// The current tab's handle.
    pub async fn tab(&self) -> String {
        self.request("GET", &self.path("/window"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn switch_to(&self, handle: &str) {
        self.request(
            "POST",
            &self.path("/window"),
            Some(serde_json::json!({"handle": handle})),
        )
        .await;
    }

    /// A PNG screenshot of the current tab.
    pub async fn screenshot(&self) -> Vec<u8> {
        let encoded = self.request("GET", &self.path("/screenshot"), None).await;
        b64decode(encoded.as_str().expect("screenshot"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(mut driver) = self.driver.take() {
            // Deleting the session closes Chromium; the driver goes with it. Blocking HTTP on
            // a thread of its own: drop may run inside a test's async runtime.
            if !self.session.is_empty() {
                let url = format!("http://127.0.0.1:{}/session/{}", self.port, self.session);
                let _ = std::thread::spawn(move || {
                    let client = reqwest::blocking::Client::builder()
                        .no_proxy()
                        .timeout(Duration::from_secs(5))
                        .build();
                    if let Ok(client) = client {
                        let _ = client.delete(url).send();
                    }
                })
                .join();
            }
            let _ = driver.kill();
            let _ = driver.wait();
        }
    }
}

/// Standard base64 (with or without padding), as WebDriver returns screenshots.
pub fn b64decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(text.trim_end_matches('='))
        .expect("base64")
}
