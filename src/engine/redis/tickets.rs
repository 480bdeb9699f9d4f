//! The ticket role on Redis: `SET license:ticket:<digest> … PX 30000 NX` to issue, `GETDEL` to
//! redeem (atomic: one connection per ticket, on any node).

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::{Expiration, SetOptions};

use super::{RedisEngine, unavailable};
use crate::engine::EngineError;
use crate::engine::tickets::{TicketClaims, TicketStore};

fn key(digest: &str) -> String {
    format!("license:ticket:{digest}")
}

#[async_trait]
impl TicketStore for RedisEngine {
    async fn issue_ticket(&self, digest: &str, claims: &TicketClaims) -> Result<(), EngineError> {
        let json =
            serde_json::to_string(claims).map_err(|e| EngineError::Protocol(e.to_string()))?;
        let _: Option<String> = self
            .client
            .set(
                key(digest),
                json,
                // At least 1 ms: Redis refuses a zero expiry.
                Some(Expiration::PX(
                    (claims.lifetime().as_millis() as i64).max(1),
                )),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn redeem_ticket(&self, digest: &str) -> Result<Option<TicketClaims>, EngineError> {
        let stored: Option<String> = self.client.getdel(key(digest)).await.map_err(unavailable)?;
        stored
            .map(|s| serde_json::from_str(&s).map_err(|e| EngineError::Protocol(e.to_string())))
            .transpose()
    }
}
