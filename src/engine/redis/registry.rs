//! The node registry on Redis: one expiring key per node, and a sorted set of node ids by
//! their last refresh.

use async_trait::async_trait;
use fred::prelude::*;

use super::keys::{NODES_KEY, node_key};
use super::{RedisEngine, unavailable};
use crate::engine::{EngineError, NODE_TTL, NodeRegistry, NodeStats};
use crate::protocol::now_ms;

#[async_trait]
impl NodeRegistry for RedisEngine {
    async fn report_node(&self, stats: &NodeStats) -> Result<(), EngineError> {
        let json =
            serde_json::to_string(stats).map_err(|e| EngineError::Protocol(e.to_string()))?;
        let now = now_ms();
        let ttl = NODE_TTL.as_millis() as i64;
        let _: () = self
            .client
            .set(
                node_key(&stats.id),
                json,
                Some(Expiration::PX(ttl)),
                None,
                false,
            )
            .await
            .map_err(unavailable)?;
        let _: () = self
            .client
            .zadd(
                NODES_KEY,
                None,
                None,
                false,
                false,
                (now as f64, stats.id.as_str()),
            )
            .await
            .map_err(unavailable)?;
        let _: () = self
            .client
            .zremrangebyscore(NODES_KEY, f64::NEG_INFINITY, (now as i64 - ttl) as f64)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeStats>, EngineError> {
        let since = (now_ms() as i64 - NODE_TTL.as_millis() as i64) as f64;
        let ids: Vec<String> = self
            .client
            .zrangebyscore(NODES_KEY, since, f64::INFINITY, false, None)
            .await
            .map_err(unavailable)?;
        let mut nodes = Vec::with_capacity(ids.len());
        for id in ids {
            let json: Option<String> = self.client.get(node_key(&id)).await.map_err(unavailable)?;
            match json.map(|j| serde_json::from_str::<NodeStats>(&j)) {
                Some(Ok(stats)) => nodes.push(stats),
                Some(Err(error)) => {
                    tracing::warn!(node = %id, %error, "unreadable node registry entry")
                }
                None => {}
            }
        }
        Ok(nodes)
    }
}
