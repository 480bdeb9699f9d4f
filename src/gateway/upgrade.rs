//! `GET /ws/license`: the token (from one of three carriers) and the resume position, the
//! checks both transports share ([`super::admission`]), then the upgrade into a session task of
//! its own.

use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRef, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Node;
use super::admission::{self, ConnectQuery, PeerAddr};
use super::session;
use super::takeover::Takeover;
use super::websocket::WebSocket;
use crate::auth::bearer_token;
use crate::protocol::{BEARER_PREFIX, LAST_ID_PREFIX, SUBPROTOCOL};

/// The WebSocket route, for any router state that can hand out the node.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Node>: FromRef<S>,
{
    OpenApiRouter::new().routes(routes!(ws_handler))
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
fn presented_token<'a>(headers: &'a HeaderMap, query: &'a ConnectQuery) -> Option<&'a str> {
    protocol_entry(headers, BEARER_PREFIX)
        .or_else(|| bearer_token(headers))
        .or(query.token.as_deref())
        .filter(|t| !t.is_empty())
}

/// The live event stream over WebSocket (docs/PROTOCOL.md).
///
/// The token goes in the `bearer.<JWT>` subprotocol (browsers), `Authorization: Bearer`, or
/// `?token=`; or a ticket in `?ticket=`. A bad token, a refusal at a limit and every later end
/// are close codes after the upgrade (4001 unauthorized, 1013 try again later, …), not statuses.
#[utoipa::path(
    get,
    path = "/ws/license",
    tag = "stream",
    operation_id = "openWebSocket",
    params(ConnectQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket; `connected` is the first message."),
        (status = 400, description = "Not a WebSocket upgrade, or a filter that cannot be read.",
         body = String, content_type = "text/plain"),
        (status = 403, description = "The page's origin is not in `ALLOWED_ORIGINS`.",
         body = String, content_type = "text/plain"),
        (status = 426, description = "The connection cannot be upgraded.", body = String,
         content_type = "text/plain"),
    )
)]
async fn ws_handler(
    State(node): State<Arc<Node>>,
    PeerAddr(peer): PeerAddr,
    Query(query): Query<ConnectQuery>,
    takeover: Option<axum::Extension<Arc<Takeover>>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let request = admission::Request {
        peer,
        headers: &headers,
        query: &query,
        token: presented_token(&headers, &query),
        last_event_id: protocol_entry(&headers, LAST_ID_PREFIX).map(str::to_owned),
    };
    let handshake = match admission::check(&node, request).await {
        Ok(handshake) => handshake,
        Err(refusal) => return refusal,
    };
    // The socket is hyper's to hand over as an upgrade: it need not stay ready to be taken.
    if let Some(axum::Extension(takeover)) = takeover {
        takeover.upgrading();
    }
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
            sessions.spawn(session::run(WebSocket(socket), node, handshake));
            std::future::ready(())
        })
}
