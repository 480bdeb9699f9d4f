//! A Redis Sentinel deployment from Debian's packages: a primary and a replica
//! (`redis-server`) watched by three `redis-sentinel` processes (quorum 2) on free loopback
//! ports. Killed and their files removed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::WAIT;
use crate::process::{TempDir, free_port};
use crate::redis::redis_cli as cli;

/// The service name the sentinels monitor.
pub const SERVICE: &str = "lgw";

/// Primary, replica and three sentinels.
pub struct RedisSentinel {
    /// Data servers by port (the first started as primary).
    servers: Vec<(u16, Option<Child>)>,
    /// Sentinel ports.
    pub sentinels: Vec<u16>,
    sentinel_children: Vec<Child>,
    dir: TempDir,
}

fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl RedisSentinel {
    /// Starts the primary, its replica and three sentinels, and waits until every sentinel
    /// knows the replica and the other two sentinels (so a failover can be agreed).
    pub fn start() -> Self {
        let dir = TempDir::new("lgw-sentinel");
        let (primary, replica) = (free_port(), free_port());
        let mut deployment = Self {
            servers: Vec::new(),
            sentinels: Vec::new(),
            sentinel_children: Vec::new(),
            dir,
        };
        deployment.spawn_server(primary, None);
        deployment.spawn_server(replica, Some(primary));
        wait_for("the replica in sync", WAIT, || {
            cli(replica, &["info", "replication"]).contains("master_link_status:up")
        });
        for _ in 0..3 {
            let port = free_port();
            let conf = deployment.dir.0.join(format!("sentinel-{port}.conf"));
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {SERVICE} 1000\n\
                 sentinel failover-timeout {SERVICE} 5000\n\
                 sentinel parallel-syncs {SERVICE} 1\n",
                dir = deployment.dir.0.display()
            );
            std::fs::write(&conf, text).expect("sentinel config");
            let child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-sentinel must be installed (the README's test command installs it)");
            deployment.sentinels.push(port);
            deployment.sentinel_children.push(child);
        }
        for &port in &deployment.sentinels {
            wait_for(
                "sentinels that know each other and the replica",
                WAIT * 3,
                || {
                    let others = cli(port, &["sentinel", "sentinels", SERVICE]);
                    let replicas = cli(port, &["sentinel", "replicas", SERVICE]);
                    others.matches("runid").count() == 2 && replicas.contains(&replica.to_string())
                },
            );
        }
        deployment
    }

    fn spawn_server(&mut self, port: u16, replica_of: Option<u16>) {
        let dir = self.dir.0.join(port.to_string());
        std::fs::create_dir_all(&dir).expect("server dir");
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&dir);
        if let Some(primary) = replica_of {
            command.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.servers.push((port, Some(child)));
        wait_for("redis-server to start", WAIT, || {
            cli(port, &["ping"]).contains("PONG")
        });
    }

    /// `redis-sentinel://` URL naming all three sentinels and the service.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis-sentinel://{}/{SERVICE}", hosts.join(","))
    }

    /// The primary's port as the first sentinel reports it.
    pub fn primary(&self) -> u16 {
        let reply = cli(
            self.sentinels[0],
            &["sentinel", "get-master-addr-by-name", SERVICE],
        );
        reply
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .expect("the sentinels' primary")
    }

    /// SIGKILLs the primary; returns its port.
    pub fn kill_primary(&mut self) -> u16 {
        let port = self.primary();
        for (p, child) in &mut self.servers {
            if *p == port
                && let Some(mut c) = child.take()
            {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        port
    }

    /// Waits until every sentinel names a primary other than `old`; returns it.
    pub fn wait_promoted(&self, old: u16, within: Duration) -> u16 {
        wait_for("the sentinels to promote the replica", within, || {
            self.sentinels.iter().all(|&s| {
                let reply = cli(s, &["sentinel", "get-master-addr-by-name", SERVICE]);
                reply
                    .lines()
                    .nth(1)
                    .is_some_and(|p| p.trim() != old.to_string())
            })
        });
        self.primary()
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for child in &mut self.sentinel_children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for (_, child) in &mut self.servers {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
