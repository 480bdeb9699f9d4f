//! `GET /sse/license`: the session over Server-Sent Events, for networks that break WebSocket
//! upgrades. The route checks what the WebSocket route checks, answers a refusal with an HTTP
//! status (401, 503, …), and otherwise takes the connection from hyper ([`super::takeover`]):
//! the session writes the response head and then one SSE message per frame straight to the
//! socket, with no buffer of its own between them.
//!
//! Events carry `id:` (so a plain `EventSource` resumes with `Last-Event-ID`); server messages
//! are `data:` lines without one; heartbeats are comment lines; a server-side close is a last
//! `close` message with the WebSocket close code, then the end of the stream.

use std::io::{self, Write};
use std::sync::Arc;

use axum::extract::{FromRef, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpStream;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Node;
use super::admission::{self, ConnectQuery, PeerAddr};
use super::session;
use super::takeover::Takeover;
use super::transport::{Incoming, Transport, TransportKind};
use super::wire::{Encoded, Framing, Out, Wire};
use crate::auth::bearer_token;
use crate::metrics;
use crate::protocol::api_error::{ApiErrorBody, ApiErrorDetail};
use crate::protocol::{CloseReason, ServerMessage};

/// The response head of an accepted stream. `Connection: close` and no length: the body ends
/// with the connection. `X-Accel-Buffering: no` keeps nginx from holding events back.
const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
    Content-Type: text/event-stream; charset=utf-8\r\n\
    Cache-Control: no-cache\r\n\
    X-Accel-Buffering: no\r\n\
    Connection: close\r\n\r\n";

/// A heartbeat: a comment line, which clients ignore and proxies see as traffic.
const HEARTBEAT: &[u8] = b": ping\n\n";

/// The SSE route, for any router state that can hand out the node.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Node>: FromRef<S>,
{
    OpenApiRouter::new().routes(routes!(sse_handler))
}

/// The stream's headers on an answer that does not start one (HEAD).
fn stream_headers() -> [(header::HeaderName, HeaderValue); 3] {
    [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        ),
    ]
}

/// A refusal before the stream starts, in the API's error shape.
fn refusal(status: StatusCode, reason: CloseReason) -> Response {
    let body = ApiErrorBody {
        error: ApiErrorDetail {
            code: reason.label().to_owned(),
            message: reason.text().to_owned(),
            field: None,
        },
    };
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
    } else {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    }
    response
}

/// The live event stream over Server-Sent Events: the same session as the WebSocket.
///
/// Authenticate with `Authorization: Bearer <token>` or `?ticket=` (what `EventSource` can
/// send; no `?token=`). Events carry `id:`; `Last-Event-ID` or `?lastEventId=` resumes. A
/// server-side end is a last `{"type":"close","code","reason"}` message.
#[utoipa::path(
    get,
    path = "/sse/license",
    tag = "stream",
    operation_id = "openEventStream",
    params(
        ConnectQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id (sent by `EventSource` on its own)."),
    ),
    security((), ("tenantToken" = [])),
    responses(
        (status = 200, description = "The stream: `connected` first, then events.",
         body = String, content_type = "text/event-stream"),
        (status = 400, description = "A filter that cannot be read.", body = String,
         content_type = "text/plain"),
        (status = 401, description = "No token or ticket, or a bad, expired or used one.",
         body = ApiErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "The page's origin is not in `ALLOWED_ORIGINS`.",
         body = String, content_type = "text/plain"),
        (status = 503, description = "At a connection limit, or the node drains: retry.",
         body = ApiErrorBody, headers(("Retry-After" = String))),
    )
)]
async fn sse_handler(
    State(node): State<Arc<Node>>,
    PeerAddr(peer): PeerAddr,
    method: Method,
    Query(query): Query<ConnectQuery>,
    takeover: Option<axum::Extension<Arc<Takeover>>>,
    headers: HeaderMap,
) -> Response {
    // No `?token=`: a JWT in a URL ends up in proxy logs; a ticket is single-use.
    let request = admission::Request {
        peer,
        headers: &headers,
        query: &query,
        token: bearer_token(&headers),
        last_event_id: headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned),
    };
    let handshake = match admission::check(&node, request).await {
        Ok(handshake) => handshake,
        Err(refused) => return refused,
    };
    let label = TransportKind::Sse.label();
    if let Err(error) = &handshake.auth {
        tracing::info!(reason = error.label(), "stream refused");
        metrics::auth_failed(error.label());
        metrics::closed(label, Some(error.close_reason()));
        return refusal(StatusCode::UNAUTHORIZED, error.close_reason());
    }
    if let Some(reason) = handshake.refuse {
        metrics::closed(label, Some(reason));
        return refusal(StatusCode::SERVICE_UNAVAILABLE, reason);
    }
    if method == Method::HEAD {
        return (StatusCode::OK, stream_headers()).into_response();
    }
    let Some(axum::Extension(takeover)) = takeover else {
        // Only the node's own listener can hand a connection over.
        return (
            StatusCode::NOT_IMPLEMENTED,
            "streams need the node's listener",
        )
            .into_response();
    };
    let sessions = node.sessions.clone();
    // A stream's client never speaks, so a dead one shows only as unacknowledged writes: the
    // kernel gives up on it after two heartbeat intervals instead of its ~15-minute default.
    let give_up = node.settings.ping_interval * 2;
    takeover.hand_over(Box::new(move |stream| {
        if let Err(error) = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(give_up)) {
            tracing::debug!(%error, "TCP_USER_TIMEOUT not set");
        }
        sessions.spawn(session::run(Sse::new(stream), node, handshake));
    }))
}

/// A session's transport over an SSE response.
pub struct Sse {
    stream: Arc<TcpStream>,
    /// The response head is still to be written (with the first frame).
    head: bool,
}

impl Sse {
    /// A stream whose response head has not been written yet.
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream: Arc::new(stream),
            head: true,
        }
    }
}

/// How a frame goes on the wire: `id:` and `data: ` made per write before the shared payload,
/// a blank line after. A payload with raw line breaks (a foreign publisher's pretty-printed
/// JSON; ours has none) is rewritten as one `data:` line per line.
pub fn encode<'a>(out: &'a Out, prefix: &mut [u8; 64], owned: &'a mut Vec<u8>) -> Encoded<'a> {
    match out {
        Out::Message(id, payload) => {
            let mut cursor = &mut prefix[..];
            // An id is at most 41 characters: this always fits.
            if let Some(id) = id {
                let _ = writeln!(cursor, "id: {id}");
            }
            let _ = cursor.write_all(b"data: ");
            let prefix_len = 64 - cursor.len();
            let text = payload.as_str().as_bytes();
            let body: &'a [u8] = if text.iter().any(|b| matches!(b, b'\n' | b'\r')) {
                *owned = data_lines(text);
                owned
            } else {
                text
            };
            Encoded {
                prefix_len,
                body,
                suffix: b"\n\n",
            }
        }
        Out::Heartbeat => Encoded {
            prefix_len: 0,
            body: HEARTBEAT,
            suffix: b"",
        },
        // An SSE client never pings.
        Out::Pong(_) => Encoded {
            prefix_len: 0,
            body: b"",
            suffix: b"",
        },
        Out::Close(code, reason) => {
            let message = ServerMessage::Close {
                code: *code,
                reason,
            }
            .to_json();
            *owned = format!("data: {message}\n\n").into_bytes();
            Encoded {
                prefix_len: 0,
                body: owned,
                suffix: b"",
            }
        }
    }
}

/// `text` with every line break (CRLF, CR or LF) continued as a new `data:` line.
fn data_lines(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 16);
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\r' | b'\n' => {
                if text[i] == b'\r' && text.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                out.extend_from_slice(b"\ndata: ");
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

impl Transport for Sse {
    const KIND: TransportKind = TransportKind::Sse;
    const ANSWERS_HEARTBEATS: bool = false;

    fn wire(&mut self) -> (Wire, Option<Box<[u8]>>) {
        let head = std::mem::take(&mut self.head).then(|| RESPONSE_HEAD.into());
        (Wire::new(self.stream.clone(), Framing::Sse), head)
    }

    async fn receive(&mut self) -> Incoming {
        loop {
            // `poll_read_ready` keeps one waker in the socket's reader slot (replacing the one
            // hyper's task left there, which would otherwise keep that finished task's memory,
            // 1.2 KiB, alive for the stream's life); `readable()` would add a waiter beside it.
            let ready = std::future::poll_fn(|cx| self.stream.poll_read_ready(cx)).await;
            if ready.is_err() {
                return Incoming::Gone;
            }
            let mut scrap = [0u8; 16];
            match self.stream.try_read(&mut scrap) {
                // The end of the connection, or bytes a stream's client has no reason to send
                // (a stream ends its HTTP connection).
                Ok(_) => return Incoming::Gone,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Incoming::Gone,
            }
        }
    }

    fn peer_close(&self) -> Option<Out> {
        None
    }

    async fn closed(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn line_breaks_become_data_lines() {
        assert_eq!(
            data_lines(b"{\n\"a\":1\r\n}\r"),
            b"{\ndata: \"a\":1\ndata: }\ndata: "
        );
    }

    /// The wire format: head once, `id:` only on events, comments as heartbeats, the close.
    #[tokio::test]
    async fn frames_are_written_as_server_sent_events() {
        use crate::gateway::outbox::{Outbox, QueueLimits};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connecting = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(connecting, listener.accept());
        let mut client = client.unwrap();
        let mut sse = Sse::new(accepted.unwrap().0);
        let outbox = Outbox::new(QueueLimits::messages(8));
        let (wire, head) = sse.wire();
        outbox.attach(wire, head);
        let stall = std::time::Duration::from_secs(1);
        let connected = Out::Message(None, "{\"type\":\"connected\"}".into());
        assert!(outbox.send(connected, stall).await);
        let id = "5-1".parse().unwrap();
        assert!(
            outbox
                .send(Out::Message(Some(id), "{\"id\":\"5-1\"}".into()), stall)
                .await
        );
        assert!(outbox.send(Out::Heartbeat, stall).await);
        outbox.finish(CloseReason::TokenExpired.into(), stall).await;
        outbox.shutdown();
        drop(outbox);
        drop(sse);
        let mut seen = String::new();
        client.read_to_string(&mut seen).await.unwrap();
        let head = std::str::from_utf8(RESPONSE_HEAD).unwrap();
        assert_eq!(
            seen,
            format!(
                "{head}data: {{\"type\":\"connected\"}}\n\nid: 5-1\ndata: {{\"id\":\"5-1\"}}\n\n\
                 : ping\n\ndata: {{\"type\":\"close\",\"code\":1008,\"reason\":\"token expired\"}}\n\n"
            )
        );
    }
}
