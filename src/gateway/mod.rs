//! The gateway node: sessions on either transport and everything they share on one node.
//!
//! - [`client_ip`]: which address a connection counts for (`TRUSTED_PROXIES`).
//! - [`node`]: the node's shared state ([`node::Node`]) and its connection accounting.
//! - [`admission`]: what both connect routes check — origin, filter, token or ticket, limits.
//! - [`upgrade`]: the `/ws/license` upgrade (token carriers, resume position);
//!   [`websocket`]: the WebSocket transport and its framing.
//! - [`sse`]: `/sse/license` and the Server-Sent Events transport; [`takeover`]: how that
//!   route takes its connection from hyper.
//! - [`transport`]: what a session needs from a transport; [`session`]: one session from
//!   `connected` to its close, on either.
//! - [`hub`]: tenant → sessions, subscriptions; [`recovery`]: ordering, dedup and gap fill of
//!   a tenant's stream; [`outbox`]: a session's bounded queue and the socket the fan-out
//!   writes to; [`wire`]: one frame as one vectored write, shared payload included.
//! - [`lifecycle`]: the node's background tasks, and the drain at shutdown.
//! - [`rate`]: the per-connection token bucket for client frames.
//! - [`filter`]: per-connection event filters (`types`, `minSeverity`, `modules`).

pub mod admission;
pub mod client_ip;
pub mod hub;
pub mod lifecycle;
pub mod node;
pub mod outbox;
pub mod rate;
pub mod recovery;
pub mod session;
pub mod sse;
pub mod takeover;
pub mod transport;
pub mod upgrade;
pub mod websocket;
pub mod window;
pub mod wire;

use std::time::Duration;

pub use node::Node;

/// Gateway settings derived from configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's id.
    pub node_id: String,
    /// Allowed `Origin` values; `None` = any.
    pub allowed_origins: Option<Vec<String>>,
    /// Connection limit; 0 = none.
    pub max_connections: usize,
    /// Largest client frame.
    pub max_frame_bytes: usize,
    /// Server ping interval.
    pub ping_interval: Duration,
    /// Per-session queue bound, in messages.
    pub session_queue_len: usize,
    /// Per-session queue bound, in payload bytes (resume replay included).
    pub session_queue_bytes: usize,
    /// Delay before unsubscribing an idle tenant.
    pub unsubscribe_delay: Duration,
    /// Longest wait for sessions to close at shutdown, after the drain window.
    pub shutdown_timeout: Duration,
    /// On SIGTERM: how long readiness is off before sessions are closed (balancer notices).
    pub drain_delay: Duration,
    /// On SIGTERM: the window over which sessions are closed, spread evenly.
    pub drain_window: Duration,
    /// Time a connection has to send complete request headers (also between requests).
    pub header_timeout: Duration,
    /// Client frames allowed per connection.
    pub client_rate: rate::Rate,
    /// Connections per client address; 0 = none.
    pub max_connections_per_ip: usize,
    /// Connections per tenant across the cluster; 0 = none.
    pub max_connections_per_tenant: usize,
    /// How long a publisher's idempotency key is remembered.
    pub idempotency_ttl: Duration,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: client_ip::TrustedProxies,
    /// Bounds of each tenant's window of recent events (resumes served without a history read).
    pub recent_window: window::WindowLimits,
}

#[cfg(test)]
impl Settings {
    /// Settings for in-process tests: no limits, no drain delay, a short unsubscribe delay.
    pub(crate) fn for_tests(node_id: &str) -> Self {
        Self {
            node_id: node_id.into(),
            allowed_origins: None,
            max_connections: 0,
            max_frame_bytes: 4096,
            ping_interval: Duration::from_secs(25),
            session_queue_len: 64,
            session_queue_bytes: 1 << 20,
            unsubscribe_delay: Duration::from_millis(10),
            shutdown_timeout: Duration::from_secs(1),
            drain_delay: Duration::ZERO,
            drain_window: Duration::ZERO,
            header_timeout: Duration::from_secs(10),
            client_rate: rate::Rate::new(10.0, 20),
            max_connections_per_ip: 0,
            max_connections_per_tenant: 0,
            idempotency_ttl: Duration::from_secs(86_400),
            trusted_proxies: client_ip::TrustedProxies::default(),
            recent_window: window::WindowLimits::default(),
        }
    }
}

#[cfg(test)]
mod tests;
