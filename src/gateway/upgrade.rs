//! `GET /ws/license`: the upgrade request's checks (RFC 6455 §4.2.1), the token (from one of
//! three carriers) and the resume position, the checks both transports share
//! ([`super::admission`]), then the session in a task of its own. The route takes the
//! connection from hyper ([`super::takeover`]) instead of using hyper's upgrade: the session
//! owns the bare socket, which the fan-out writes to directly ([`super::outbox`]), and the
//! `101` answer goes out with the first frame.

use std::sync::Arc;

use axum::extract::{FromRef, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
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

/// Whether the comma-separated `name` header lists `token` (case-insensitive).
fn lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The `101 Switching Protocols` answer to a valid upgrade request, or why it is refused (400).
fn handshake(headers: &HeaderMap) -> Result<Box<[u8]>, &'static str> {
    let refuse = Err;
    if !lists(headers, header::CONNECTION, "upgrade")
        || !lists(headers, header::UPGRADE, "websocket")
    {
        return refuse("not a WebSocket upgrade");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return refuse("Sec-WebSocket-Version must be 13");
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return refuse("Sec-WebSocket-Key is missing");
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    // The browser client offers `license.v1` beside its token; a client that offered it gets
    // it back, as browsers require of a server that picks a subprotocol.
    let protocol = if lists(headers, header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL) {
        format!("Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n")
    } else {
        String::new()
    };
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{protocol}\r\n"
    );
    Ok(head.into_bytes().into_boxed_slice())
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
) -> Response {
    // Checked before admission, which may use up a ticket.
    let head = match handshake(&headers) {
        Ok(head) => head,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    let Some(axum::Extension(takeover)) = takeover else {
        // Only the node's own listener can hand a connection over.
        return (
            StatusCode::UPGRADE_REQUIRED,
            "the connection cannot be upgraded",
        )
            .into_response();
    };
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
    let max_frame = node.settings.max_frame_bytes;
    let sessions = node.sessions.clone();
    takeover.hand_over(Box::new(move |stream| {
        let socket = WebSocket::new(stream, Some(head), max_frame);
        sessions.spawn(session::run(socket, node, handshake));
    }))
}
