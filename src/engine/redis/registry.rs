//! The node registry on Redis: one expiring key per node, and a sorted set of node ids by
//! their last refresh; a tenant's seats in one hash (`seat_*.lua`), a field per node with its
//! own expiry, so a crashed node's connections stop counting.

use async_trait::async_trait;
use fred::prelude::*;

use super::keys::{NODES_KEY, node_key, seats_key};
use super::{RedisEngine, unavailable};
use crate::engine::{EngineError, NODE_TTL, NodeRegistry, NodeStats, SEAT_TTL};
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

    async fn claim_seat(
        &self,
        tenant: &str,
        node: &str,
        limit: usize,
    ) -> Result<bool, EngineError> {
        let args: Vec<Value> = vec![
            node.into(),
            (limit as i64).into(),
            (SEAT_TTL.as_millis() as i64).into(),
        ];
        let claimed: i64 = self
            .scripts
            .seat_claim
            .evalsha_with_reload(&self.client, vec![seats_key(tenant)], args)
            .await
            .map_err(unavailable)?;
        Ok(claimed == 1)
    }

    async fn release_seat(&self, tenant: &str, node: &str) -> Result<(), EngineError> {
        let _: i64 = self
            .scripts
            .seat_release
            .evalsha_with_reload(&self.client, vec![seats_key(tenant)], vec![node])
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn refresh_seats(&self, node: &str, held: &[(String, usize)]) -> Result<(), EngineError> {
        let ttl = SEAT_TTL.as_millis() as i64;
        // One script per tenant (each its own slot on a cluster), all in flight at once.
        let refreshes = held.iter().map(|(tenant, count)| {
            let args: Vec<Value> = vec![node.into(), (*count as i64).into(), ttl.into()];
            self.scripts.seat_refresh.evalsha_with_reload::<i64, _, _>(
                &self.client,
                vec![seats_key(tenant)],
                args,
            )
        });
        for result in futures_util::future::join_all(refreshes).await {
            result.map_err(unavailable)?;
        }
        Ok(())
    }
}
