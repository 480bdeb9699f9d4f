//! The ticket role: single-use connection tickets (`POST /api/connect-ticket`), so a browser
//! never has to put a JWT in a URL. A ticket carries its token's tenant, user and `exp`, is
//! valid [`TICKET_TTL`] on any node, and is redeemed (taken) atomically, so it opens one
//! connection at most. Only a digest of the ticket is stored.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::EngineError;

/// How long a ticket stays valid.
pub const TICKET_TTL: Duration = Duration::from_secs(30);

/// What a ticket stands for: the claims of the token it was issued for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketClaims {
    /// The tenant.
    pub tenant: String,
    /// The user, when the token named one.
    pub user: Option<String>,
    /// The token's `exp`, Unix seconds.
    pub expires_at: u64,
}

impl TicketClaims {
    /// How long a ticket for these claims stays valid from now: [`TICKET_TTL`], or until the
    /// token's `exp` when that is sooner (zero once it passed).
    pub fn lifetime(&self) -> Duration {
        let left_ms = (self.expires_at * 1000).saturating_sub(crate::protocol::now_ms());
        TICKET_TTL.min(Duration::from_millis(left_ms))
    }
}

/// Issues and redeems connection tickets.
#[async_trait]
pub trait TicketStore: Send + Sync + 'static {
    /// Stores a ticket (by its digest) for [`TicketClaims::lifetime`].
    async fn issue_ticket(&self, digest: &str, claims: &TicketClaims) -> Result<(), EngineError>;

    /// Takes a ticket: its claims the first time, `None` ever after, after it expired, or for
    /// one never issued.
    async fn redeem_ticket(&self, digest: &str) -> Result<Option<TicketClaims>, EngineError>;
}

/// The stored name of a ticket: its SHA-256, hex (a copy of the store holds no usable ticket).
pub fn digest(ticket: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(ticket.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new ticket: 32 random bytes, URL-safe.
pub fn new_ticket() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..43)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}
