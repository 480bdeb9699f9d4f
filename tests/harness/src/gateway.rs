//! Gateway and worker processes of the binary under test, and a [`Deployment`] of one on a
//! chosen engine (embedded, Redis, Redis Cluster) for the suites that run on each.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::WAIT;
use crate::http::http;
use crate::process::{TempDir, binary, free_port, kill};
use crate::redis::{Redis, RedisCluster};
use crate::tokens::{ADMIN_KEY, SECRET};

/// A gateway process.
pub struct Gateway {
    child: Option<Child>,
    pub port: u16,
    pub node_id: String,
    log: PathBuf,
    _dir: TempDir,
}

/// How to start a gateway.
#[derive(Clone, Default)]
pub struct GatewayOptions {
    /// `REDIS_URL`; `None` = embedded engine.
    pub redis_url: Option<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Listen on this port instead of a free one (to restart a node where a balancer expects it).
    pub port: Option<u16>,
    /// Variables of the test environment to leave unset (e.g. `ADMIN_API_KEYS`).
    pub unset: Vec<String>,
}

impl GatewayOptions {
    pub fn memory() -> Self {
        Self::default()
    }

    pub fn redis(redis: &Redis) -> Self {
        let options = Self {
            redis_url: Some(redis.url()),
            ..Self::default()
        };
        match redis.ca_file() {
            Some(ca) => options.env("REDIS_TLS_CA_FILE", ca.display().to_string()),
            None => options,
        }
    }

    pub fn cluster(cluster: &RedisCluster) -> Self {
        Self {
            redis_url: Some(cluster.url()),
            ..Self::default()
        }
    }

    /// Leaves `key` unset instead of the test default.
    pub fn without(mut self, key: &str) -> Self {
        self.unset.push(key.to_owned());
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }
}

impl Gateway {
    /// Starts a gateway and waits until `/readyz` answers 200.
    pub async fn start(options: GatewayOptions) -> Self {
        let gateway = Self::spawn(options);
        gateway.wait_ready().await;
        gateway
    }

    /// Starts a gateway without waiting for it.
    pub fn spawn(options: GatewayOptions) -> Self {
        Self::spawn_args(&["serve"], options)
    }

    /// Starts a looping validator worker (`worker` subcommand) on `redis`.
    pub fn worker(redis: &Redis, args: &[&str]) -> Self {
        Self::worker_on(GatewayOptions::redis(redis), args)
    }

    /// Starts a `worker` with `args` on the engine `options` name.
    pub fn worker_on(options: GatewayOptions, args: &[&str]) -> Self {
        let mut all = vec!["worker"];
        all.extend_from_slice(args);
        Self::spawn_args(&all, options)
    }

    /// Starts the binary with `args` and the test environment.
    pub fn spawn_args(args: &[&str], options: GatewayOptions) -> Self {
        let dir = TempDir::new("lgw-node");
        let port = options.port.unwrap_or_else(free_port);
        let node_id = format!("node-{port}");
        let log = dir.0.join("gateway.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(binary());
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .env("NODE_ID", &node_id)
            .env("JWT_SECRET", SECRET)
            .env("ADMIN_API_KEYS", ADMIN_KEY)
            .env("LOG_FORMAT", "json")
            // Everything at trace, so the leak check on drop sees every log line there is.
            .env("RUST_LOG", "trace")
            .env("UNSUBSCRIBE_DELAY_SECS", "0.2")
            .stdout(Stdio::null())
            .stderr(log_file);
        if let Some(url) = &options.redis_url {
            command.env("REDIS_URL", url);
        }
        for (k, v) in &options.env {
            command.env(k, v);
        }
        for k in &options.unset {
            command.env_remove(k);
        }
        let child = command.spawn().expect("start gateway");
        Self {
            child: Some(child),
            port,
            node_id,
            log,
            _dir: dir,
        }
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws/license", self.port)
    }

    /// Polls `/readyz` until 503; panics naming `what` after `within`.
    pub async fn wait_unready(&self, within: Duration, what: &str) {
        crate::eventually(within, what, || async {
            matches!(
                http(self.port, "GET", "/readyz", None, None).await,
                Ok((503, _))
            )
            .then_some(())
        })
        .await;
    }

    /// Polls `/readyz` until 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT * 2;
        loop {
            if let Ok((200, _)) = http(self.port, "GET", "/readyz", None, None).await {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "gateway on port {} not ready; log:\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Whether the process is still running.
    /// The process's resident memory (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the gateway's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&mut self) {
        if let Some(child) = self.child.as_mut() {
            kill(child, "-TERM");
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("gateway running");
        kill(child, "-TERM");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "gateway did not exit within {within:?}; log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last lines of the gateway's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Gateway {
    /// The first log line holding a secret value (a token, the HMAC secret, the admin key).
    pub fn leaked_secret(&self) -> Option<String> {
        let log = self.log();
        let secrets = crate::tokens::secrets();
        log.lines()
            .find(|line| secrets.iter().any(|s| line.contains(s.as_str())))
            .map(str::to_owned)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- gateway {} log ---\n{}", self.node_id, self.log_tail());
        } else if let Some(line) = self.leaked_secret() {
            // Every test checks this, at trace level, for every process it started.
            panic!("gateway {} logged a secret:\n{line}", self.node_id);
        }
    }
}

/// Which engine a conformance test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Redis,
    /// One redis-server over TLS only, with a test CA.
    RedisTls,
    /// A 3-master/3-replica Redis Cluster (sharded pub/sub).
    Cluster,
}

/// A gateway on the chosen engine, with its Redis (if any) kept alive alongside.
pub struct Deployment {
    pub gateway: Gateway,
    pub redis: Option<Redis>,
    pub cluster: Option<RedisCluster>,
}

impl Deployment {
    pub async fn start(backend: Backend, env: &[(&str, &str)]) -> Self {
        let redis = match backend {
            Backend::Redis => Some(Redis::start()),
            Backend::RedisTls => Some(Redis::start_tls()),
            _ => None,
        };
        let cluster = (backend == Backend::Cluster).then(RedisCluster::start);
        let mut options = match (&redis, &cluster) {
            (Some(r), _) => GatewayOptions::redis(r),
            (_, Some(c)) => GatewayOptions::cluster(c),
            _ => GatewayOptions::memory(),
        };
        for (k, v) in env {
            options = options.env(k, *v);
        }
        let gateway = Gateway::start(options).await;
        Self {
            gateway,
            redis,
            cluster,
        }
    }

    /// A looping worker on the deployment's Redis or cluster (none on the embedded engine,
    /// which validates in-process).
    pub fn worker(&self, args: &[&str]) -> Option<Gateway> {
        let options = match (&self.redis, &self.cluster) {
            (Some(r), _) => GatewayOptions::redis(r),
            (_, Some(c)) => GatewayOptions::cluster(c),
            _ => return None,
        };
        Some(Gateway::worker_on(options, args))
    }

    pub fn ws_url(&self) -> String {
        self.gateway.ws_url()
    }

    pub fn port(&self) -> u16 {
        self.gateway.port
    }
}
