//! What both connect routes (`/ws/license`, `/sse/license`) check before a session starts:
//! the origin, the filter, the token or ticket, and the connection limits.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::Node;
use super::node::ConnectionGuard;
use super::session::Handshake;
use crate::auth::{AuthError, Claims};
use crate::engine::tickets;
use crate::notifications::EventFilter;
use crate::protocol::CloseReason;

/// The TCP peer of the request, as the node's accept loop recorded it (none in-process).
pub struct PeerAddr(pub Option<SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PeerAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|info| info.0);
        Ok(Self(peer))
    }
}

/// The query of a connect request.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConnectQuery {
    /// A tenant token in the URL (the seed's form; WebSocket only; proxies log URLs, so prefer
    /// the `bearer.<JWT>` subprotocol or a ticket).
    pub token: Option<String>,
    /// A connection ticket (`POST /api/connect-ticket`), instead of a token: single use.
    pub ticket: Option<String>,
    /// Resume after this event id: every retained later event is replayed first.
    #[serde(rename = "lastEventId")]
    #[param(pattern = r"^[0-9]+-[0-9]+$")]
    pub last_event_id: Option<String>,
    /// Only these event types, comma-separated.
    types: Option<String>,
    /// Only this severity and above.
    #[serde(rename = "minSeverity")]
    #[param(value_type = Option<crate::protocol::Severity>)]
    min_severity: Option<String>,
    /// Only events naming these modules (and events naming none), comma-separated.
    modules: Option<String>,
}

/// Takes a connection ticket: the claims of the token it was issued for. A used, expired or
/// unknown ticket (or one that cannot be looked up now) is refused like a bad token.
async fn redeem(node: &Node, ticket: &str) -> Result<(String, Claims), AuthError> {
    match node.tickets.redeem_ticket(&tickets::digest(ticket)).await {
        Ok(Some(t)) => Ok((
            t.tenant.clone(),
            Claims {
                tenant: Some(t.tenant),
                user: t.user,
                expires_at: t.expires_at,
            },
        )),
        Ok(None) => Err(AuthError::Invalid),
        Err(error) => {
            tracing::warn!(%error, "ticket lookup failed");
            Err(AuthError::Invalid)
        }
    }
}

/// Whether the request's `Origin` (if any) is allowed.
fn origin_allowed(node: &Node, headers: &HeaderMap) -> bool {
    let (Some(allowed), Some(origin)) =
        (&node.settings.allowed_origins, headers.get(header::ORIGIN))
    else {
        return true;
    };
    let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
    let ok = allowed.iter().any(|a| a == origin);
    if !ok {
        tracing::info!(origin, "connection refused: origin not allowed");
    }
    ok
}

/// Counts a connection toward the node's, its address's and its tenant's limits; `None` when
/// one is reached (or the tenant's cap cannot be checked), with nothing counted.
async fn admit(node: &Arc<Node>, ip: Option<IpAddr>, tenant: &str) -> Option<ConnectionGuard> {
    let mut guard = node.admit(ip)?;
    match node.claim_seat(&mut guard, tenant).await {
        Ok(true) => Some(guard),
        Ok(false) => None,
        Err(error) => {
            tracing::warn!(%error, "tenant connection cap not checked: connection refused");
            None
        }
    }
}

/// A connect request as a route read it.
pub struct Request<'a> {
    /// The TCP peer.
    pub peer: Option<SocketAddr>,
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// The query.
    pub query: &'a ConnectQuery,
    /// The token from the route's carriers, if any.
    pub token: Option<&'a str>,
    /// The resume position from the route's carriers, if any (the query's otherwise).
    pub last_event_id: Option<String>,
}

/// Checks a connect request. `Err` is an HTTP refusal before any session (origin, filter);
/// otherwise the handshake carries the authentication outcome and, for an authenticated
/// connection, either its place within the limits or why it is refused.
pub async fn check(node: &Arc<Node>, request: Request<'_>) -> Result<Handshake, Response> {
    let Request {
        peer,
        headers,
        query,
        token,
        last_event_id,
    } = request;
    if !origin_allowed(node, headers) {
        return Err((StatusCode::FORBIDDEN, "origin not allowed").into_response());
    }
    // A filter that cannot be read is refused at once, naming the parameter.
    let filter = match EventFilter::from_query(
        query.types.as_deref(),
        query.min_severity.as_deref(),
        query.modules.as_deref(),
    ) {
        Ok(filter) => filter.map(Arc::new),
        Err(message) => return Err((StatusCode::BAD_REQUEST, message).into_response()),
    };
    let auth = match (token.filter(|t| !t.is_empty()), query.ticket.as_deref()) {
        (Some(token), _) => node.verifier.verify_tenant(token).await,
        (None, Some(ticket)) => redeem(node, ticket).await,
        (None, None) => Err(AuthError::Missing),
    };
    // Only an authenticated connection within the limits is counted: a refused one never
    // holds a slot, however slowly it answers its close.
    let (refuse, guard) = match &auth {
        _ if node.is_draining() => (Some(CloseReason::GoingAway), None),
        Err(_) => (None, None),
        Ok((tenant, _)) => {
            let ip = peer.map(|p| node.settings.trusted_proxies.client_ip(p.ip(), headers));
            match admit(node, ip, tenant).await {
                Some(guard) => (None, Some(guard)),
                None => (Some(CloseReason::TryAgainLater), None),
            }
        }
    };
    Ok(Handshake {
        auth,
        refuse,
        guard,
        last_event_id: last_event_id.or_else(|| query.last_event_id.clone()),
        filter,
    })
}
