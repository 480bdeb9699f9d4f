//! A TCP proxy between gateways and a Redis server that can make subscriptions go silent
//! (see docs/OPERATIONS.md): connections on which the client sent `SUBSCRIBE` or `SSUBSCRIBE` are
//! remembered, and [`SilencingProxy::silence_subscribers`] keeps them open while dropping
//! everything Redis sends on them — what a failover or a half-broken middlebox does to a
//! subscriber. Connections made later are not affected. Runs on its own thread; stops on drop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{Gateway, WsClient, metric, publish, tenant_token};

/// The proxy; clients connect to `port`.
pub struct SilencingProxy {
    /// Its loopback port.
    pub port: u16,
    subscribers: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl SilencingProxy {
    /// Proxies a free loopback port to `target` (a loopback port).
    pub fn start(target: u16) -> Self {
        Self::start_on(crate::free_port(), target)
    }

    /// Proxies `port` to `target`.
    pub fn start_on(port: u16, target: u16) -> Self {
        Self::try_start_on(port, target).expect("proxy bind")
    }

    /// Proxies `port` to `target`; `Err` when `port` was taken meanwhile.
    pub fn try_start_on(port: u16, target: u16) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true).expect("nonblocking");
        let subscribers: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = subscribers.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("listener");
                let accept = async {
                    while let Ok((client, _)) = listener.accept().await {
                        tokio::spawn(relay(client, target, shared.clone()));
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
        });
        Ok(Self {
            port,
            subscribers,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Silences every connection that has subscribed so far; returns how many.
    pub fn silence_subscribers(&self) -> usize {
        let subscribers = self.subscribers.lock().unwrap();
        for silenced in subscribers.iter() {
            silenced.store(true, Ordering::Relaxed);
        }
        subscribers.len()
    }
}

impl Drop for SilencingProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Copies both ways between `client` and the target; what the server sends is dropped once the
/// connection is silenced.
async fn relay(client: TcpStream, target: u16, subscribers: Arc<Mutex<Vec<Arc<AtomicBool>>>>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    let silenced = Arc::new(AtomicBool::new(false));
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = {
        let silenced = silenced.clone();
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            let mut marked = false;
            loop {
                let n = match client_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if !marked && buf[..n].windows(9).any(|w| w == b"SUBSCRIBE") {
                    marked = true;
                    subscribers.lock().unwrap().push(silenced.clone());
                }
                if server_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    };
    let downstream = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if silenced.load(Ordering::Relaxed) {
                continue;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    // Either side closing ends the relay (and so both connections).
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}

/// The scenario the probe tests share (single Redis, a cluster shard): a subscriber connection that stays open but delivers nothing (a proxy drops what
/// Redis sends on it) is caught by the probe within three periods: readiness 503 meanwhile,
/// the failure counted, the node resubscribes on a new connection, and every event published
/// while it was deaf reaches the client once, in order.
pub async fn silent_subscription_is_caught(node: &Gateway, proxy: &SilencingProxy, tenant: &str) {
    let token = tenant_token(tenant);
    let (mut client, _) = WsClient::connected(&node.ws_url(), &token).await;
    let first = publish(node.port, tenant, "license_updated", json!({ "n": 0 })).await;
    assert_eq!(client.next_json().await["id"], first["id"]);
    let failures_before = metric(node.port, "license_gateway_redis_probe_failures_total").await;

    assert!(
        proxy.silence_subscribers() >= 1,
        "no subscriber went through the proxy"
    );
    let silenced = std::time::Instant::now();
    let mut ids = Vec::new();
    for n in 1..=5 {
        let event = publish(node.port, tenant, "license_updated", json!({ "n": n })).await;
        ids.push(event["id"].clone());
    }
    // Probe period 1 s: detected within 3 s.
    node.wait_unready(
        Duration::from_millis(3500),
        "readiness 503 on a silent subscription",
    )
    .await;
    let detected = silenced.elapsed();
    node.wait_ready().await;
    println!(
        "silent subscription detected after {detected:?}, ready again after {:?}",
        silenced.elapsed()
    );
    let failures = metric(node.port, "license_gateway_redis_probe_failures_total").await;
    assert!(
        failures > failures_before,
        "probe failures {failures_before} → {failures}"
    );

    let after = publish(node.port, tenant, "license_updated", json!({ "n": 6 })).await;
    ids.push(after["id"].clone());
    let mut got = Vec::new();
    while got.len() < ids.len() {
        let message = client.next_json().await;
        if message["type"] == "license_updated" {
            got.push(message["id"].clone());
        }
    }
    assert_eq!(got, ids, "every event once, in order");
    client.expect_silence(Duration::from_millis(300)).await;
}
