//! The shared test harness: a real `redis-server` on a free loopback port, real gateway
//! processes (the built binary), and small WebSocket, HTTP and Redis clients. Everything it
//! starts is killed and its files removed on drop, also when a test panics.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fred::prelude::*;
use futures_util::{SinkExt, StreamExt};
use license_gateway::auth::Signer;
use license_gateway::config::AuthArgs;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

/// The HMAC secret every test gateway uses.
pub const SECRET: &str = "test-secret-do-not-use";
/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; a small race, acceptable in tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn kill(child: &mut Child, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
}

/// A real `redis-server` on a free loopback port; without persistence unless started with AOF.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    aof: bool,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// With an append-only file fsynced on every write: a restart keeps the history.
    pub fn start_with_aof() -> Self {
        Self::start_with(true)
    }

    fn start_with(aof: bool) -> Self {
        let dir = TempDir::new("lgw-redis");
        let port = free_port();
        let mut redis = Self {
            child: None,
            port,
            dir,
            aof,
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let aof = if self.aof { "yes" } else { "no" };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                aof,
                "--appendfsync",
                "always",
            ])
            .args(["--loglevel", "warning"])
            .arg("--dir")
            .arg(&self.dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (the README's test command installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut buf).is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A fred client for assertions and for injecting raw traffic.
    pub async fn client(&self) -> Client {
        let config = Config::from_url(&self.url()).expect("redis url");
        let client = Builder::from_config(config).build().expect("fred client");
        client.init().await.expect("connect to test redis");
        client
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real Redis Cluster on loopback: six `redis-server` processes (three masters, three
/// replicas) joined with `redis-cli --cluster create`. Killed and removed on drop.
pub struct RedisCluster {
    nodes: Vec<(u16, Option<Child>)>,
    dir: TempDir,
}

/// A free port whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = 20_000 + (rand_u32() % 9_000) as u16;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish() as u32
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir = TempDir::new("lgw-cluster");
        let mut cluster = Self {
            nodes: Vec::new(),
            dir,
        };
        let mut ports = Vec::new();
        while ports.len() < 6 {
            let p = free_cluster_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        for port in ports {
            cluster.spawn(port);
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for (port, _) in &cluster.nodes {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (it comes with redis-server)");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_healthy(WAIT);
        cluster
    }

    /// Starts the node on `port` and keeps its process (so drop kills it), then waits for it.
    fn spawn(&mut self, port: u16) {
        let dir = self.dir.0.join(port.to_string());
        std::fs::create_dir_all(&dir).expect("node dir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1500"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.nodes.retain(|(p, _)| *p != port);
        self.nodes.push((port, Some(child)));
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "cluster node {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis-cli -p PORT ARGS…`, its stdout.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Ports of the nodes still running.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    /// Waits until every live node says the cluster is ok with all slots served and every
    /// master has a replica in sync.
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok = self.live_ports().iter().all(|p| {
                let info = self.cli(*p, &["cluster", "info"]);
                info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
            }) && self.masters().iter().all(|m| {
                let info = self.cli(*m, &["info", "replication"]);
                info.contains("connected_slaves:1") && info.contains("state=online")
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "cluster did not become healthy");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ports of the current masters (as a live node sees them).
    pub fn masters(&self) -> Vec<u16> {
        let Some(port) = self.live_ports().first().copied() else {
            return Vec::new();
        };
        self.cli(port, &["cluster", "nodes"])
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .filter_map(|l| {
                let addr = l.split_whitespace().nth(1)?;
                addr.split(['@', ':']).nth(1)?.parse().ok()
            })
            .filter(|p| self.live_ports().contains(p))
            .collect()
    }

    /// The master that owns `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        let port = self.live_ports()[0];
        let slot: u16 = self
            .cli(port, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("slot");
        // CLUSTER NODES lists each master's slot ranges after its eighth field.
        self.cli(port, &["cluster", "nodes"])
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .find_map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                let owns = fields.iter().skip(8).any(|range| {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
                });
                owns.then(|| fields[1].split(['@', ':']).nth(1)?.parse().ok())?
            })
            .expect("a master owns every slot")
    }

    /// SIGKILLs the node on `port`.
    pub fn kill(&mut self, port: u16) {
        if let Some((_, child)) = self.nodes.iter_mut().find(|(p, _)| *p == port)
            && let Some(mut c) = child.take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `REDIS_URL` for the gateway: every node, comma-separated.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis-cluster://{}", hosts.join(","))
    }

    /// A clustered fred client for assertions and seeding.
    pub async fn client(&self) -> Client {
        let port = self.live_ports()[0];
        let config =
            Config::from_url(&format!("redis-cluster://127.0.0.1:{port}")).expect("cluster url");
        let client = Builder::from_config(config).build().expect("fred client");
        client.init().await.expect("connect to test cluster");
        client
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// nginx from Debian in front of gateway nodes: round robin, WebSocket upgrade, no stickiness.
pub struct Nginx {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
}

impl Nginx {
    pub async fn start(upstreams: &[u16]) -> Self {
        let dir = TempDir::new("lgw-nginx");
        let port = free_port();
        let d = dir.0.display();
        let servers: String = upstreams
            .iter()
            .map(|p| format!("    server 127.0.0.1:{p} max_fails=1 fail_timeout=1s;\n"))
            .collect();
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             upstream gateways {{\n{servers}  }}\n\
             map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
             server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://gateways;\n\
             proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n\
             proxy_set_header Connection $connection_upgrade;\n      proxy_read_timeout 1h;\n\
             proxy_connect_timeout 1s;\n      proxy_next_upstream error timeout http_502;\n    }}\n  }}\n}}\n"
        );
        let path = dir.0.join("nginx.conf");
        std::fs::write(&path, conf).expect("nginx.conf");
        Self::run(dir, path, port).await
    }

    /// Runs nginx with a prepared config (which must say `daemon off;`) listening on `port`.
    pub async fn start_with_config(dir: TempDir, path: PathBuf, port: u16) -> Self {
        Self::run(dir, path, port).await
    }

    async fn run(dir: TempDir, path: PathBuf, port: u16) -> Self {
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&path)
            .arg("-e")
            .arg(dir.0.join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx must be installed (the README's test command installs it)");
        let nginx = Self {
            child: Some(child),
            port,
            dir,
        };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                nginx.error_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        nginx
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws/license", self.port)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child, "-QUIT");
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a [`follow`]ing client saw.
#[derive(Debug, Default, Clone)]
pub struct Followed {
    /// Event ids in arrival order.
    pub ids: Vec<String>,
    /// `resync_required` messages received.
    pub resyncs: usize,
    /// Connections made (1 + reconnects).
    pub connections: usize,
    /// Nodes that served it.
    pub nodes: std::collections::BTreeSet<String>,
}

/// The id a [`follow`]ing client waits for (the last event published), once known.
#[derive(Clone, Default)]
pub struct Target(std::sync::Arc<std::sync::Mutex<Option<(u64, u64)>>>);

impl Target {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the last id; `None` when nothing was published.
    pub fn set(&self, last: Option<&String>) {
        *self.0.lock().unwrap() = Some(last.map(|id| id_key(id)).unwrap_or((0, 0)));
    }

    fn reached(&self, seen: &Followed) -> bool {
        match *self.0.lock().unwrap() {
            None => false,
            Some(last) => seen.ids.last().is_some_and(|id| id_key(id) >= last) || last == (0, 0),
        }
    }
}

/// A client that stays subscribed through failures: it connects to `urls` in turn, resumes
/// with `last.<id>` after every disconnect, and stops once it holds the `target` id (ids are
/// ordered: everything before it was delivered too, or the checks will say otherwise) or
/// `give_up` passes.
pub async fn follow(
    urls: Vec<String>,
    token: String,
    target: Target,
    give_up: Duration,
) -> Followed {
    follow_hopping(urls, token, target, give_up, None).await
}

/// [`follow`], also disconnecting on purpose every `hop` to resume on the next URL.
pub async fn follow_hopping(
    urls: Vec<String>,
    token: String,
    target: Target,
    give_up: Duration,
    hop: Option<Duration>,
) -> Followed {
    let mut seen = Followed::default();
    let deadline = Instant::now() + give_up;
    let mut attempt = 0usize;
    let done = |seen: &Followed| target.reached(seen);
    while !done(&seen) && Instant::now() < deadline {
        let url = &urls[attempt % urls.len()];
        attempt += 1;
        let mut request = match url.as_str().into_client_request() {
            Ok(r) => r,
            Err(_) => break,
        };
        let mut protocols = format!("license.v1, bearer.{token}");
        if let Some(last) = seen.ids.last() {
            protocols.push_str(&format!(", last.{last}"));
        }
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(&protocols).unwrap(),
        );
        let connected = tokio::time::timeout(
            Duration::from_secs(3),
            tokio_tungstenite::connect_async(request),
        )
        .await;
        let Ok(Ok((ws, _))) = connected else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        seen.connections += 1;
        let mut client = WsClient { ws, protocol: None };
        let hop_at = hop.map(|h| Instant::now() + h);
        loop {
            if done(&seen) || hop_at.is_some_and(|t| Instant::now() >= t) {
                break;
            }
            match client.read(Duration::from_millis(500)).await {
                None => {
                    if Instant::now() > deadline {
                        break;
                    }
                }
                Some(Read::Text(text)) => {
                    let message: Value = serde_json::from_str(&text).expect("JSON");
                    match message["type"].as_str() {
                        Some("connected") => {
                            seen.nodes
                                .insert(message["node"].as_str().unwrap_or_default().to_owned());
                        }
                        Some("resync_required") => seen.resyncs += 1,
                        _ => seen
                            .ids
                            .push(message["id"].as_str().unwrap_or_default().to_owned()),
                    }
                }
                Some(Read::Close(_) | Read::Ended) => break,
            }
        }
        let _ = client.ws.close(None).await;
    }
    seen
}

/// Parses `<ms>-<seq>` for ordering checks.
pub fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("event id");
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

/// Path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_license-gateway")
}

/// Requests an [`OtlpReceiver`] got: path and body.
type Requests = std::sync::Mutex<Vec<(String, Vec<u8>)>>;

/// A minimal OTLP/HTTP receiver: accepts `POST /v1/traces` on a free loopback port, answers
/// 200, and keeps every request body (protobuf) for the test to decode. Stops on drop.
pub struct OtlpReceiver {
    pub port: u16,
    bodies: std::sync::Arc<Requests>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl OtlpReceiver {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind otlp receiver");
        let port = listener.local_addr().expect("addr").port();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (b, st) = (bodies.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let b = b.clone();
                std::thread::spawn(move || Self::serve(stream, &b));
            }
        });
        Self { port, bodies, stop }
    }

    /// Serves one keep-alive connection: requests with a Content-Length body.
    fn serve(mut stream: TcpStream, bodies: &Requests) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < head_end + length {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body = buf[head_end..head_end + length].to_vec();
            buf.drain(..head_end + length);
            bodies.lock().unwrap().push((path, body));
            let reply = "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
            if stream.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for processes that export here.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request received so far: path and body.
    pub fn requests(&self) -> Vec<(String, Vec<u8>)> {
        self.bodies.lock().unwrap().clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

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
}

impl GatewayOptions {
    pub fn memory() -> Self {
        Self::default()
    }

    pub fn redis(redis: &Redis) -> Self {
        Self {
            redis_url: Some(redis.url()),
            env: Vec::new(),
            port: None,
        }
    }

    pub fn cluster(cluster: &RedisCluster) -> Self {
        Self {
            redis_url: Some(cluster.url()),
            env: Vec::new(),
            port: None,
        }
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
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info,license_gateway=debug")
            .env("UNSUBSCRIBE_DELAY_SECS", "0.2")
            .stdout(Stdio::null())
            .stderr(log_file);
        if let Some(url) = &options.redis_url {
            command.env("REDIS_URL", url);
        }
        for (k, v) in &options.env {
            command.env(k, v);
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

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- gateway {} log ---\n{}", self.node_id, self.log_tail());
        }
        self.kill();
    }
}

/// Auth settings matching the test gateways.
pub fn auth_args() -> AuthArgs {
    AuthArgs {
        jwt_secret: Some(SECRET.into()),
        jwt_public_key: None,
        jwt_issuer: None,
        jwt_audience: None,
        jwt_tenant_claim: "tenantId".into(),
        jwt_leeway_secs: 5,
    }
}

/// A tenant token valid for an hour.
pub fn tenant_token(tenant: &str) -> String {
    Signer::from_args(&auth_args())
        .unwrap()
        .mint(Some(tenant), false, 3600)
}

/// An admin token valid for an hour.
pub fn admin_token() -> String {
    Signer::from_args(&auth_args())
        .unwrap()
        .mint(None, true, 3600)
}

/// Signs arbitrary claims with HS256 and the test secret.
pub fn sign_claims(claims: &Value) -> String {
    sign_with(jsonwebtoken::Algorithm::HS256, SECRET.as_bytes(), claims)
}

/// Signs claims with an HMAC algorithm and secret of choice.
pub fn sign_with(alg: jsonwebtoken::Algorithm, secret: &[u8], claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), claims, &key).unwrap()
}

/// RFC 3339 (whole seconds, UTC) of now plus `secs`.
pub fn rfc3339_in(secs: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    t.replace_nanosecond(0)
        .expect("zero nanoseconds")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339")
}

/// A WebSocket client on a socket with a tiny receive buffer, meant never to read: the
/// server's writes to it stall and its queue overflows.
pub async fn stalled_client(port: u16, url: &str, token: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    tokio_tungstenite::client_async(format!("{url}?token={token}"), stream)
        .await
        .expect("stalled client upgrade")
        .0
}

/// Reads everything the server sent until its close frame; returns the code and reason.
pub async fn final_close(ws: &mut Ws, within: Duration) -> Option<(u16, String)> {
    tokio::time::timeout(within, async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Close(frame) = message {
                return frame.map(|f| (u16::from(f.code), f.reason.to_string()));
            }
        }
        None
    })
    .await
    .expect("the server closed the connection in time")
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Base64url without padding.
pub fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        let chars = [n >> 18, n >> 12, n >> 6, n].map(|i| A[(i & 63) as usize] as char);
        out.extend(&chars[..chunk.len() + 1]);
    }
    out
}

/// Minimal HTTP/1.1 request over a fresh connection: returns status and body.
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let body = body.unwrap_or("");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = bearer {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    // Read the head, then exactly Content-Length bytes (some servers keep the connection open
    // despite `Connection: close`); chunked or unsized bodies are read to the end.
    let read = async {
        let mut response = Vec::new();
        let mut buf = [0u8; 8192];
        let head_end = loop {
            if let Some(i) = response.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::other(
                    "connection closed before the response head",
                ));
            }
            response.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&response[..head_end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        match length {
            Some(length) => {
                while response.len() < head_end + length {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    response.extend_from_slice(&buf[..n]);
                }
            }
            None => {
                stream.read_to_end(&mut response).await?;
            }
        }
        let chunked = head.contains("transfer-encoding: chunked");
        Ok::<_, std::io::Error>((response, head_end, chunked))
    };
    let (response, head_end, chunked) = tokio::time::timeout(WAIT, read)
        .await
        .map_err(|_| std::io::Error::other("http timeout"))??;
    let text = String::from_utf8_lossy(&response[..head_end]).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {text:?}")))?;
    let raw = &response[head_end..];
    let body = if chunked {
        dechunk(raw)
    } else {
        String::from_utf8_lossy(raw).into_owned()
    };
    Ok((status, body))
}

/// Decodes a chunked HTTP body.
fn dechunk(mut raw: &[u8]) -> String {
    let mut out = Vec::new();
    while let Some(i) = raw.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&raw[..i]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = i + 2;
        out.extend_from_slice(&raw[start..(start + size).min(raw.len())]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Publishes through the admin API; panics unless 201. Returns the envelope.
pub async fn publish(port: u16, tenant: &str, event_type: &str, data: Value) -> Value {
    let body = serde_json::json!({ "type": event_type, "data": data }).to_string();
    let path = format!("/api/admin/tenants/{tenant}/events");
    let (status, text) = http(port, "POST", &path, Some(&admin_token()), Some(&body))
        .await
        .expect("publish request");
    assert_eq!(status, 201, "publish failed: {text}");
    serde_json::from_str(&text).expect("envelope JSON")
}

/// `GET /api/admin/stats` with an admin token; panics unless 200.
pub async fn admin_stats(port: u16) -> Value {
    let (status, body) = http(port, "GET", "/api/admin/stats", Some(&admin_token()), None)
        .await
        .expect("stats request");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("stats JSON")
}

/// Where a client puts its token.
#[derive(Clone, Copy, Debug)]
pub enum Carrier {
    /// `?token=` (the seed's form).
    Query,
    /// `Sec-WebSocket-Protocol: license.v1, bearer.<JWT>`.
    Subprotocol,
    /// `Authorization: Bearer`.
    Header,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket test client.
pub struct WsClient {
    pub ws: Ws,
    /// The `Sec-WebSocket-Protocol` the server answered.
    pub protocol: Option<String>,
}

/// Connects (the upgrade must succeed); the caller reads `connected` or the close.
pub async fn ws_connect(url: &str, token: Option<&str>, carrier: Carrier) -> WsClient {
    try_ws_connect(url, token, carrier, &[])
        .await
        .expect("websocket upgrade")
}

/// Connects with extra headers; returns the handshake error (e.g. a 403) instead of panicking.
pub async fn try_ws_connect(
    url: &str,
    token: Option<&str>,
    carrier: Carrier,
    headers: &[(&'static str, &str)],
) -> Result<WsClient, tungstenite::Error> {
    let url = match (token, carrier) {
        (Some(t), Carrier::Query) => format!("{url}?token={t}"),
        _ => url.to_owned(),
    };
    let mut request = url.into_client_request()?;
    match (token, carrier) {
        (Some(t), Carrier::Subprotocol) => {
            let value = format!("license.v1, bearer.{t}");
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(&value).unwrap(),
            );
        }
        (Some(t), Carrier::Header) => {
            request.headers_mut().insert(
                "Authorization",
                HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
            );
        }
        _ => {}
    }
    for (k, v) in headers {
        request
            .headers_mut()
            .insert(*k, HeaderValue::from_str(v).unwrap());
    }
    let (ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| tungstenite::Error::Io(std::io::Error::other("connect timeout")))??;
    let protocol = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok(WsClient { ws, protocol })
}

/// What a client read.
#[derive(Debug)]
pub enum Read {
    Text(String),
    Close(Option<(u16, String)>),
    Ended,
}

impl WsClient {
    /// Connects and reads the `connected` message.
    pub async fn connected(url: &str, token: &str) -> (Self, Value) {
        let mut client = ws_connect(url, Some(token), Carrier::Subprotocol).await;
        let hello = client.next_json().await;
        assert_eq!(
            hello["type"], "connected",
            "expected connected, got {hello}"
        );
        (client, hello)
    }

    /// The next text, close or end of stream, skipping pings and pongs.
    pub async fn read(&mut self, within: Duration) -> Option<Read> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            return Some(match next {
                Some(Ok(Message::Text(t))) => Read::Text(t.to_string()),
                Some(Ok(Message::Close(frame))) => Read::Close(
                    frame.map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string())),
                ),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(b))) => {
                    Read::Text(String::from_utf8_lossy(&b).into_owned())
                }
                Some(Err(_)) | None => Read::Ended,
            });
        }
    }

    /// Every message until `quiet` passes without one, as JSON.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(read) = self.read(quiet).await {
            match read {
                Read::Text(t) => out.push(serde_json::from_str(&t).expect("JSON message")),
                other => panic!("expected messages, got {other:?}"),
            }
        }
        out
    }

    /// The next text message as raw text; panics on anything else.
    pub async fn next_text(&mut self) -> String {
        match self.read(WAIT).await {
            Some(Read::Text(t)) => t,
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// The next text message as JSON.
    pub async fn next_json(&mut self) -> Value {
        let text = self.next_text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// Expects the server to close with this code and reason.
    pub async fn expect_close(&mut self, code: u16, reason: &str) {
        match self.read(WAIT).await {
            Some(Read::Close(Some((c, r)))) => {
                assert_eq!((c, r.as_str()), (code, reason), "close code and reason")
            }
            Some(Read::Text(t)) => panic!("expected close {code} {reason:?}, got message {t}"),
            other => panic!("expected close {code} {reason:?}, got {other:?}"),
        }
    }

    /// Expects no message for `quiet` (pings aside).
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(read) = self.read(quiet).await {
            panic!("expected silence, got {read:?}");
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Polls `check` until it returns `Some`, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the binary with arguments and environment; returns status, stdout and stderr.
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut command = Command::new(binary());
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("run cli");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Generates one `#[tokio::test]` per engine (modules `memory` and `redis`) for each listed
/// `async fn name(backend: Backend)` of the calling test file.
#[macro_export]
macro_rules! both_engines {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::Backend::Memory).await } )*
        }
        mod redis {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::Backend::Redis).await } )*
        }
    };
}

/// Generates one `#[tokio::test]` on Redis Cluster (module `cluster`) for each listed
/// `async fn name(backend: Backend)`, for the tests that matter on a cluster.
#[macro_export]
macro_rules! on_cluster {
    ($($name:ident),* $(,)?) => {
        mod cluster {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::Backend::Cluster).await } )*
        }
    };
}

/// Which engine a conformance test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Redis,
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
        let redis = (backend == Backend::Redis).then(Redis::start);
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

// --- a real browser over WebDriver ---------------------------------------------------------------

/// Debian's Chromium driven through `chromedriver` (W3C WebDriver over loopback HTTP). No CDP
/// crate: the protocol is a handful of JSON requests, sent with [`http`].
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
            // Deleting the session closes Chromium; the driver goes with it.
            if !self.session.is_empty()
                && let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port))
            {
                let _ = s.write_all(format!("DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", self.session).as_bytes());
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
            }
            let _ = driver.kill();
            let _ = driver.wait();
        }
    }
}

/// Standard base64 (with or without padding).
pub fn b64decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let digits: Vec<u32> = text.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, d)| acc | d << (18 - 6 * i));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}
