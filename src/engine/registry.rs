//! The node registry role: which gateway nodes are alive and what each holds
//! (`GET /api/admin/stats`), and the cluster-wide count of each tenant's connections that
//! `MAX_CONNECTIONS_PER_TENANT` is checked against (seats).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::EngineError;

/// How long a node's registry entry lives without a refresh; a dead node drops out of stats
/// after this (within 30 s).
pub const NODE_TTL: Duration = Duration::from_secs(30);

/// How long a node's seats count without a refresh (every 5 s): a crashed node's connections
/// stop counting after this.
pub const SEAT_TTL: Duration = Duration::from_secs(20);

/// One node's entry in the cluster-wide registry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    /// Node id.
    pub id: String,
    /// Open WebSocket sessions.
    pub connections: usize,
    /// Tenants with at least one session here.
    pub tenants: usize,
    /// Start time, RFC 3339.
    pub started_at: String,
    /// Last refresh, RFC 3339.
    pub last_seen: String,
    /// Sessions per tenant.
    pub tenant_connections: BTreeMap<String, usize>,
}

/// Registry of live nodes, each entry expiring after [`NODE_TTL`] without a refresh.
#[async_trait]
pub trait NodeRegistry: Send + Sync + 'static {
    /// Refreshes this node's registry entry.
    async fn report_node(&self, stats: &NodeStats) -> Result<(), EngineError>;

    /// Registry entries of all live nodes (this one included once it has reported).
    async fn nodes(&self) -> Result<Vec<NodeStats>, EngineError>;

    /// Takes one of `tenant`'s `limit` seats for a connection on `node`, atomically against
    /// every node's live seats; `false` when all are taken (nothing is counted then).
    async fn claim_seat(&self, tenant: &str, node: &str, limit: usize)
    -> Result<bool, EngineError>;

    /// Gives back a seat `claim_seat` took.
    async fn release_seat(&self, tenant: &str, node: &str) -> Result<(), EngineError>;

    /// Sets `node`'s seat count of each listed tenant to what it holds and keeps them alive for
    /// another [`SEAT_TTL`]; repairs any release that failed.
    async fn refresh_seats(&self, node: &str, held: &[(String, usize)]) -> Result<(), EngineError>;
}
