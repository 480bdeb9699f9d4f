//! Real `redis-server` processes from Debian's package: one server on a free loopback port, or a
//! 3-master/3-replica Redis Cluster. Killed and their files removed on drop.

use crate::proxy::SilencingProxy;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fred::prelude::*;

use crate::WAIT;
use crate::process::{TempDir, free_port};

/// `redis-cli -p PORT ARGS…` (plain TCP), its stdout.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (it comes with redis-server)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A real `redis-server` on a free loopback port; without persistence unless started with AOF.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    aof: bool,
    /// TLS only (`--tls-port`), with a certificate of a test CA made with openssl.
    tls: bool,
}

/// Makes a test CA and a certificate for 127.0.0.1 signed by it in `dir`: `ca.crt`,
/// `server.crt`, `server.key`.
pub fn make_test_ca(dir: &Path) {
    let run = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl")
            .success();
        assert!(ok, "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=license-gateway test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

impl Redis {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// With an append-only file fsynced on every write: a restart keeps the history.
    pub fn start_with_aof() -> Self {
        Self::start_with(true)
    }

    /// TLS only, with a test CA ([`Redis::ca_file`]).
    pub fn start_tls() -> Self {
        Self::start_with_tls(false, true)
    }

    fn start_with(aof: bool) -> Self {
        Self::start_with_tls(aof, false)
    }

    fn start_with_tls(aof: bool, tls: bool) -> Self {
        let dir = TempDir::new("lgw-redis");
        if tls {
            make_test_ca(&dir.0);
        }
        let port = free_port();
        let mut redis = Self {
            child: None,
            port,
            dir,
            aof,
            tls,
        };
        redis.spawn();
        redis
    }

    /// The test CA's certificate (TLS servers only).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.then(|| self.dir.0.join("ca.crt"))
    }

    fn spawn(&mut self) {
        let aof = if self.aof { "yes" } else { "no" };
        let mut command = Command::new("redis-server");
        if self.tls {
            let file = |name: &str| self.dir.0.join(name).display().to_string();
            command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .args(["--tls-cert-file", &file("server.crt")])
                .args(["--tls-key-file", &file("server.key")])
                .args(["--tls-ca-cert-file", &file("ca.crt")])
                .args(["--tls-auth-clients", "no"]);
        } else {
            command.args(["--port", &self.port.to_string()]);
        }
        let child = command
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
        while self.tls && Instant::now() < deadline {
            let ca = self.dir.0.join("ca.crt");
            let pong = Command::new("redis-cli")
                .args(["--tls", "--cacert"])
                .arg(&ca)
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "ping"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG");
            if pong {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server: commands sent meanwhile wait in its
    /// socket buffers and run when it is thawed.
    pub fn freeze(&self, frozen: bool) {
        let child = self.child.as_ref().expect("a running redis-server");
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {signal} redis-server");
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
    /// A node that announces another port to clients (a proxy in front of it): (port, announced).
    announce: Option<(u16, u16)>,
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
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    h.write_u128(now.map_or(0, |d| d.as_nanos()));
    h.finish() as u32
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_announcing(false).0
    }

    /// A cluster whose first master is reached through a [`SilencingProxy`]: that master
    /// announces the proxy's port, so clients connect to it only through the proxy.
    pub fn start_with_proxy() -> (Self, SilencingProxy) {
        let (cluster, proxy) = Self::start_announcing(true);
        (cluster, proxy.expect("proxy"))
    }

    fn start_announcing(with_proxy: bool) -> (Self, Option<SilencingProxy>) {
        // A node whose bus port (+10000, inside the ephemeral range) was taken between the check
        // and its bind exits, and `--cluster create` would then wait forever; the proxy's port
        // can be taken the same way: such a start is abandoned and retried on other ports.
        for _ in 0..3 {
            if let Some(started) = Self::try_start(with_proxy.then(crate::free_port)) {
                return started;
            }
        }
        panic!("a Redis Cluster did not form in three attempts");
    }

    fn try_start(proxy_port: Option<u16>) -> Option<(Self, Option<SilencingProxy>)> {
        let dir = TempDir::new("lgw-cluster");
        let mut ports = Vec::new();
        while ports.len() < 6 {
            let p = free_cluster_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let mut cluster = Self {
            nodes: Vec::new(),
            dir,
            announce: proxy_port.map(|proxy| (ports[0], proxy)),
        };
        let proxy = match proxy_port.map(|proxy| SilencingProxy::try_start_on(proxy, ports[0])) {
            Some(Ok(proxy)) => Some(proxy),
            Some(Err(_)) => return None,
            None => None,
        };
        for port in ports {
            if !cluster.spawn(port) {
                return None;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        let all_running = cluster
            .nodes
            .iter_mut()
            .all(|(_, c)| c.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None))));
        if !all_running {
            return None;
        }
        let mut create = Command::new("timeout");
        create.args(["30", "redis-cli", "--cluster", "create"]);
        for (port, _) in &cluster.nodes {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (it comes with redis-server)");
        if !out.status.success() {
            eprintln!(
                "cluster create failed, retrying: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            return None;
        }
        cluster.wait_healthy(WAIT);
        Some((cluster, proxy))
    }

    /// Starts the node on `port` and keeps its process (so drop kills it), then waits for it;
    /// false when it exited instead (its port or bus port was taken meanwhile).
    fn spawn(&mut self, port: u16) -> bool {
        let dir = self.dir.0.join(port.to_string());
        std::fs::create_dir_all(&dir).expect("node dir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1500"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(match self.announce {
                Some((p, announced)) if p == port => {
                    vec!["--cluster-announce-port".to_owned(), announced.to_string()]
                }
                _ => Vec::new(),
            })
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
            let exited = self
                .nodes
                .iter_mut()
                .find(|(p, _)| *p == port)
                .and_then(|(_, c)| c.as_mut())
                .is_some_and(|c| !matches!(c.try_wait(), Ok(None)));
            if exited {
                eprintln!("cluster node {port} exited at start; retrying on other ports");
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "cluster node {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// `redis-cli -p PORT ARGS…`, its stdout.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        redis_cli(port, args)
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
