//! `GET /ws/license`: origin check, connection limit, the token (from one of three carriers),
//! the resume position, then the upgrade into a session task of its own.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRef, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::Node;
use super::node::ConnectionGuard;
use super::session::{self, Handshake};
use crate::auth::{AuthError, Claims, bearer_token};
use crate::engine::tickets;
use crate::notifications::EventFilter;
use crate::protocol::{BEARER_PREFIX, CloseReason, LAST_ID_PREFIX, SUBPROTOCOL};

/// The WebSocket route, for any router state that can hand out the node.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Node>: FromRef<S>,
{
    Router::new().route("/ws/license", get(ws_handler))
}

/// The TCP peer of the request, as the node's accept loop recorded it (none in-process).
struct PeerAddr(Option<SocketAddr>);

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

#[derive(Debug, Deserialize)]
struct WsQuery {
    token: Option<String>,
    /// A connection ticket (`POST /api/connect-ticket`), instead of a token.
    ticket: Option<String>,
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
    types: Option<String>,
    #[serde(rename = "minSeverity")]
    min_severity: Option<String>,
    modules: Option<String>,
}

/// The value of the first subprotocol entry with `prefix`.
fn protocol_entry<'a>(headers: &'a HeaderMap, prefix: &str) -> Option<&'a str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(prefix))
}

/// The token a client presented: subprotocol `bearer.<JWT>` first (the browser carrier), then
/// `Authorization: Bearer`, then `?token=` (the seed's form).
fn presented_token<'a>(headers: &'a HeaderMap, query: &'a WsQuery) -> Option<&'a str> {
    protocol_entry(headers, BEARER_PREFIX)
        .or_else(|| bearer_token(headers))
        .or(query.token.as_deref())
        .filter(|t| !t.is_empty())
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
        tracing::info!(origin, "upgrade refused: origin not allowed");
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

async fn ws_handler(
    State(node): State<Arc<Node>>,
    PeerAddr(peer): PeerAddr,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&node, &headers) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    // A filter that cannot be read is refused before the upgrade, naming the parameter.
    let filter = match EventFilter::from_query(
        query.types.as_deref(),
        query.min_severity.as_deref(),
        query.modules.as_deref(),
    ) {
        Ok(filter) => filter.map(Arc::new),
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    let auth = match (presented_token(&headers, &query), query.ticket.as_deref()) {
        (Some(token), _) => node.verifier.verify_tenant(token).await,
        (None, Some(ticket)) => redeem(&node, ticket).await,
        (None, None) => Err(AuthError::Missing),
    };
    // Only an authenticated connection within the limits is counted: a refused one never
    // holds a slot, however slowly it answers its close frame.
    let (refuse, guard) = match &auth {
        _ if node.is_draining() => (Some(CloseReason::GoingAway), None),
        Err(_) => (None, None),
        Ok((tenant, _)) => {
            let ip = peer.map(|p| node.settings.trusted_proxies.client_ip(p.ip(), &headers));
            match admit(&node, ip, tenant).await {
                Some(guard) => (None, Some(guard)),
                None => (Some(CloseReason::TryAgainLater), None),
            }
        }
    };
    let last_event_id = protocol_entry(&headers, LAST_ID_PREFIX)
        .map(str::to_owned)
        .or(query.last_event_id);
    let handshake = Handshake {
        auth,
        refuse,
        guard,
        last_event_id,
        filter,
    };
    let frame = node.settings.max_frame_bytes;
    let sessions = node.sessions.clone();
    upgrade
        .protocols([SUBPROTOCOL])
        // Small buffers: tungstenite's 128 KiB defaults cost ~130 KiB per idle connection. The
        // read chunk is what an idle connection keeps; the buffer grows for a larger frame, and
        // client frames are few and small (a ping is 21 bytes, a refresh a few hundred). 64 B
        // instead of 1 KiB saved ~0.25 KiB each.
        .read_buffer_size(frame.min(64))
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(frame)
        .max_frame_size(frame)
        // The session gets a task of its own, and axum's upgrade task ends: awaited inside it,
        // the session would be stored beside the slots axum keeps for the socket and config.
        .on_upgrade(move |socket| {
            sessions.spawn(session::run(socket, node, handshake));
            std::future::ready(())
        })
}
