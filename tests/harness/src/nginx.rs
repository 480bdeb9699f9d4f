//! nginx from Debian as the load balancer in front of gateway nodes (no sticky sessions).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::WAIT;
use crate::process::{TempDir, free_port, kill};

/// nginx from Debian in front of gateway nodes: round robin, WebSocket upgrade, no stickiness.
pub struct Nginx {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
}

impl Nginx {
    /// Round robin over `upstreams`, passing WebSocket upgrades, SSE unbuffered.
    pub async fn start(upstreams: &[u16]) -> Self {
        Self::start_proxy(upstreams, true).await
    }

    /// Like a proxy that breaks WebSockets: upgrade requests reach the nodes without their
    /// `Upgrade` header (so the handshake fails), while ordinary requests and SSE pass.
    pub async fn start_without_websockets(upstreams: &[u16]) -> Self {
        Self::start_proxy(upstreams, false).await
    }

    async fn start_proxy(upstreams: &[u16], websockets: bool) -> Self {
        let dir = TempDir::new("lgw-nginx");
        let port = free_port();
        let d = dir.0.display();
        let servers: String = upstreams
            .iter()
            .map(|p| format!("    server 127.0.0.1:{p} max_fails=1 fail_timeout=1s;\n"))
            .collect();
        let upgrade = if websockets {
            "proxy_set_header Upgrade $http_upgrade;\n      \
             proxy_set_header Connection $connection_upgrade;"
        } else {
            "proxy_set_header Connection \"\";"
        };
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             upstream gateways {{\n{servers}  }}\n\
             map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
             server {{\n    listen 127.0.0.1:{port};\n\
             location /sse/ {{\n      proxy_pass http://gateways;\n      proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\";\n      proxy_buffering off;\n      proxy_cache off;\n\
             proxy_read_timeout 1h;\n      proxy_connect_timeout 1s;\n\
             proxy_next_upstream error timeout http_502 http_503;\n    }}\n\
             location / {{\n      proxy_pass http://gateways;\n\
             proxy_http_version 1.1;\n      {upgrade}\n      proxy_read_timeout 1h;\n\
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

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
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
