//! A webhook receiver for the tests (`tests/webhook_receiver.py`): verifies each request with
//! the `standardwebhooks` package from PyPI and logs it; the test reads the log.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::WAIT;
use crate::process::{TempDir, free_port};

/// A running receiver; killed when dropped.
pub struct WebhookReceiver {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl WebhookReceiver {
    /// Starts one verifying with `secret`; `args` script its answers (`--fail-first`,
    /// `--status`, `--delay-ms`).
    pub async fn start(secret: &str, args: &[&str]) -> Self {
        let dir = TempDir::new("lgw-webhooks");
        let port = free_port();
        let log = dir.0.join("received.jsonl");
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../webhook_receiver.py");
        let child = Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--secret", secret])
            .arg("--log")
            .arg(&log)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 tests/webhook_receiver.py");
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "webhook receiver did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// The receiver's URL (`http://127.0.0.1:<port>/hook`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real SMTP server for the tests: Python's `aiosmtpd` (PyPI) writing every message it
/// accepts into a Maildir; killed when dropped.
pub struct SmtpSink {
    child: Child,
    pub port: u16,
    maildir: PathBuf,
    _dir: TempDir,
}

impl SmtpSink {
    pub async fn start() -> Self {
        let dir = TempDir::new("lgw-smtp");
        let port = free_port();
        let maildir = dir.0.join("Maildir");
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 -m aiosmtpd");
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            child,
            port,
            maildir,
            _dir: dir,
        }
    }

    /// `smtp://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message received so far, as raw text (headers and MIME parts).
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.maildir.join(sub)) {
                for entry in entries.flatten() {
                    if let Ok(text) = std::fs::read_to_string(entry.path()) {
                        out.push(text);
                    }
                }
            }
        }
        out
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
