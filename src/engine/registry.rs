//! The node registry role: which gateway nodes are alive and what each holds
//! (`GET /api/admin/stats`).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::EngineError;

/// How long a node's registry entry lives without a refresh; a dead node drops out of stats
/// after this (within 30 s).
pub const NODE_TTL: Duration = Duration::from_secs(30);

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
}
