//! `POST /api/connect-ticket`: trades a tenant token (in the `Authorization` header) for a
//! single-use ticket valid 30 s on any node, for `?ticket=` at the upgrade, so a JWT never has
//! to go in a URL (where proxies log it).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::error::ApiError;
use crate::auth::TenantAuth;
use crate::engine::tickets::{TicketClaims, digest, new_ticket};
use crate::gateway::Node;
use crate::protocol::now_ms;

/// `POST /api/connect-ticket` → `{"ticket","expiresAt"}` (Unix ms: 30 s, or the token's own
/// `exp` when sooner).
pub async fn connect_ticket(
    State(node): State<Arc<Node>>,
    TenantAuth { tenant, claims }: TenantAuth,
) -> Result<Json<Value>, ApiError> {
    let ticket = new_ticket();
    let claims = TicketClaims {
        tenant,
        user: claims.user,
        expires_at: claims.expires_at,
    };
    node.tickets.issue_ticket(&digest(&ticket), &claims).await?;
    let expires_at = now_ms() + claims.lifetime().as_millis() as u64;
    crate::metrics::ticket_issued();
    Ok(Json(json!({ "ticket": ticket, "expiresAt": expires_at })))
}
