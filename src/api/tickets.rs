//! `POST /api/connect-ticket`: trades a tenant token (in the `Authorization` header) for a
//! single-use ticket valid 30 s on any node, for `?ticket=` at the upgrade, so a JWT never has
//! to go in a URL (where proxies log it).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::openapi::{Unauthenticated, Unavailable};
use crate::auth::TenantAuth;
use crate::engine::tickets::{TicketClaims, digest, new_ticket};
use crate::gateway::Node;
use crate::protocol::now_ms;

/// A connection ticket.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ticket {
    /// For `?ticket=` on `/ws/license` or `/sse/license`, once.
    pub ticket: String,
    /// Unix milliseconds: 30 s from now, or the token's own `exp` when sooner.
    pub expires_at: u64,
}

/// Trade the tenant token for a single-use connection ticket, valid 30 s on any node.
///
/// The ticket carries the token's tenant, user and `exp`; a used, expired or unknown ticket is
/// refused like a bad token.
#[utoipa::path(
    post,
    path = "/api/connect-ticket",
    tag = "tenant",
    operation_id = "connectTicket",
    security(("tenantToken" = [])),
    responses(
        (status = 200, description = "A fresh ticket.", body = Ticket),
        Unauthenticated, Unavailable,
    )
)]
pub async fn connect_ticket(
    State(node): State<Arc<Node>>,
    TenantAuth { tenant, claims }: TenantAuth,
) -> Result<Json<Ticket>, ApiError> {
    let ticket = new_ticket();
    let claims = TicketClaims {
        tenant,
        user: claims.user,
        expires_at: claims.expires_at,
    };
    node.tickets.issue_ticket(&digest(&ticket), &claims).await?;
    let expires_at = now_ms() + claims.lifetime().as_millis() as u64;
    crate::metrics::ticket_issued();
    Ok(Json(Ticket { ticket, expires_at }))
}
