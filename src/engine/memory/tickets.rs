//! The ticket role in memory: a map of digests, expired ones dropped as tickets are issued.

use std::time::Instant;

use async_trait::async_trait;

use super::MemoryEngine;
use crate::engine::EngineError;
use crate::engine::tickets::{TicketClaims, TicketStore};

/// Tickets outstanding at most (each lives 30 s): beyond it issuing fails, so no client can
/// grow the map without bound.
const MAX_TICKETS: usize = 100_000;

#[async_trait]
impl TicketStore for MemoryEngine {
    async fn issue_ticket(&self, digest: &str, claims: &TicketClaims) -> Result<(), EngineError> {
        let mut tickets = self
            .tickets
            .lock()
            .map_err(|_| EngineError::Unavailable("ticket lock poisoned".into()))?;
        let now = Instant::now();
        tickets.retain(|_, (_, until)| *until > now);
        if tickets.len() >= MAX_TICKETS {
            return Err(EngineError::Unavailable(
                "too many outstanding tickets".into(),
            ));
        }
        tickets.insert(digest.to_owned(), (claims.clone(), now + claims.lifetime()));
        Ok(())
    }

    async fn redeem_ticket(&self, digest: &str) -> Result<Option<TicketClaims>, EngineError> {
        let mut tickets = self
            .tickets
            .lock()
            .map_err(|_| EngineError::Unavailable("ticket lock poisoned".into()))?;
        Ok(tickets
            .remove(digest)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(claims, _)| claims))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::HistoryConfig;
    use crate::engine::tickets::{digest, new_ticket};

    #[tokio::test]
    async fn tickets_open_once() {
        let engine = MemoryEngine::new(HistoryConfig::default());
        let ticket = new_ticket();
        assert_eq!(ticket.len(), 43);
        let claims = TicketClaims {
            tenant: "acme".into(),
            user: Some("alice".into()),
            expires_at: crate::protocol::now_ms() / 1000 + 3600,
        };
        engine
            .issue_ticket(&digest(&ticket), &claims)
            .await
            .unwrap();
        assert_eq!(
            engine.redeem_ticket(&digest(&ticket)).await.unwrap(),
            Some(claims.clone())
        );
        assert_eq!(engine.redeem_ticket(&digest(&ticket)).await.unwrap(), None);
        assert_eq!(engine.redeem_ticket(&digest("never")).await.unwrap(), None);
        assert_ne!(digest(&ticket), ticket);

        // A ticket does not outlive its token.
        let spent = TicketClaims {
            expires_at: 1,
            ..claims
        };
        engine.issue_ticket(&digest("late"), &spent).await.unwrap();
        assert_eq!(engine.redeem_ticket(&digest("late")).await.unwrap(), None);
    }
}
