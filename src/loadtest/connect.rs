//! Opening the load generator's clients: many at a time from several source addresses, each
//! answering the server's pings from the moment it is open until every connection is.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use super::clients::{Conn, Ws};
use super::sse::SseConn;
use super::{CommonArgs, Dialect, LoadtestError, TransportArg};
use crate::auth::Signer;

/// How long one connection may take to reach `connected`.
pub(super) const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// The result of opening every connection.
pub struct Opened {
    /// Open connections with their tenant's number.
    pub streams: Vec<(usize, Conn)>,
    /// Connections that failed, and the first reason.
    pub failures: usize,
    /// Why the first failure failed.
    pub first_error: Option<String>,
    /// From the first connect to the last `connected`.
    pub elapsed: Duration,
}

/// Opens `common.connections` connections, tenant `i % tenants` for the i-th, at most
/// `concurrency` handshakes at a time, each one complete when `connected` arrived.
pub async fn open_all(common: &CommonArgs) -> Result<Opened, LoadtestError> {
    let signer = Signer::from_args(&common.auth)?;
    let tokens: Vec<String> = (0..common.tenants)
        .map(|t| signer.mint(&common.tenant(t), None, 3600))
        .collect();
    let url = match &common.query {
        Some(query) => format!("ws://{}/ws/license?{query}", common.target),
        None => format!("ws://{}/ws/license", common.target),
    };
    let sources = common.sources();
    let started = Instant::now();
    let release = CancellationToken::new();
    let results: Vec<(usize, Result<Opening, String>)> =
        futures_util::stream::iter(0..common.connections)
            .map(|i| {
                let tenant = i % common.tenants;
                let source = sources.nth(i);
                let token = tokens[tenant].as_str();
                let url = url.as_str();
                let release = release.clone();
                async move {
                    let opening = async {
                        match common.transport {
                            TransportArg::Websocket => {
                                open_one(url, common.target, common.dialect, source, token)
                                    .await
                                    .map(|ws| Conn::Ws(Box::new(ws)))
                            }
                            TransportArg::Sse => {
                                SseConn::open(common.target, source, token, common.query.as_deref())
                                    .await
                                    .map(Conn::Sse)
                            }
                        }
                    };
                    let opened = tokio::time::timeout(OPEN_TIMEOUT, opening)
                        .await
                        .unwrap_or_else(|_| Err("timed out".to_owned()))
                        .map(|conn| match conn {
                            Conn::Ws(ws) => {
                                Opening::Held(tokio::task::spawn_local(hold(*ws, release)))
                            }
                            conn => Opening::Ready(conn),
                        });
                    (tenant, opened)
                }
            })
            .buffer_unordered(common.concurrency)
            .collect()
            .await;
    let elapsed = started.elapsed();
    release.cancel();
    let mut opened = Opened {
        streams: Vec::with_capacity(results.len()),
        failures: 0,
        first_error: None,
        elapsed,
    };
    for (tenant, result) in results {
        let result = match result {
            Ok(Opening::Ready(conn)) => Ok(conn),
            Ok(Opening::Held(held)) => match held.await {
                Ok(held) => held.map(|ws| Conn::Ws(Box::new(ws))),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e),
        };
        match result {
            Ok(ws) => opened.streams.push((tenant, ws)),
            Err(e) => {
                opened.failures += 1;
                opened.first_error.get_or_insert(e);
            }
        }
    }
    if opened.streams.is_empty() {
        return Err(LoadtestError::Connect(
            opened.first_error.unwrap_or_default(),
        ));
    }
    Ok(opened)
}

/// A connection opened while the others are still opening.
enum Opening {
    /// A WebSocket client answering pings until every connection is open ([`hold`]).
    Held(tokio::task::JoinHandle<Result<Ws, String>>),
    /// An SSE stream (the server needs nothing from it to keep it).
    Ready(Conn),
}

/// Answers the server's pings on an open WebSocket client until `release`, then hands it back.
/// A browser answers pings from the moment it connects; a generator that read nothing until
/// all its connections were open had its first clients dropped as silent (two ping intervals)
/// whenever the connect phase took longer than that (eight nodes and eight generators on two
/// cores). Nothing but pings comes before the publishing starts; anything else is dropped
/// here, so an event would show up as lost, never be hidden.
async fn hold(mut ws: Ws, release: CancellationToken) -> Result<Ws, String> {
    loop {
        tokio::select! {
            biased;
            _ = release.cancelled() => return Ok(ws),
            frame = ws.next() => match frame {
                Some(Ok(Message::Close(_))) | None => {
                    return Err("closed while the others were connecting".to_owned());
                }
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(_)) => {}
            },
        }
    }
}

/// One connection from `source`, token in the subprotocol list, until `connected`; for the
/// seed design, token in the URL, until the upgrade.
pub(super) async fn open_one(
    url: &str,
    target: SocketAddr,
    dialect: Dialect,
    source: Ipv4Addr,
    token: &str,
) -> Result<Ws, String> {
    let seed = dialect == Dialect::Seed;
    let url = if seed {
        let join = if url.contains('?') { '&' } else { '?' };
        format!("{url}{join}token={token}")
    } else {
        url.to_owned()
    };
    let protocols =
        HeaderValue::from_str(&format!("license.v1, bearer.{token}")).map_err(|e| e.to_string())?;
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket.connect(target).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    if !seed {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols);
    }
    // Small buffers: the generator holds as many sockets as the server.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| e.to_string())?;
    if seed {
        return Ok(ws);
    }
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.contains("\"type\":\"connected\"") => Ok(ws),
        Some(Ok(Message::Close(frame))) => Err(format!(
            "closed: {}",
            frame
                .map(|f| format!("{} {}", f.code, f.reason))
                .unwrap_or_default()
        )),
        other => Err(format!("expected connected, got {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::SinkExt;

    /// A client connected to a plain WebSocket server on loopback, and the server's side.
    async fn pair() -> (
        Ws,
        tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio_tungstenite::accept_async(stream).await.unwrap()
        });
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), stream)
            .await
            .unwrap();
        (client, server.await.unwrap())
    }

    #[tokio::test]
    async fn a_held_client_answers_pings_until_released_and_is_handed_back_whole() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let (client, mut server) = pair().await;
                let release = CancellationToken::new();
                let held = tokio::task::spawn_local(hold(client, release.clone()));
                // Two pings while the others would still be connecting: both answered.
                for n in 0..2u8 {
                    server.send(Message::Ping(vec![n].into())).await.unwrap();
                    let answer = tokio::time::timeout(Duration::from_secs(5), server.next())
                        .await
                        .expect("the held client answers the ping");
                    assert!(
                        matches!(&answer, Some(Ok(Message::Pong(p))) if p[..] == [n]),
                        "{answer:?}"
                    );
                }
                release.cancel();
                let mut client = held.await.unwrap().expect("handed back");
                // Still open and readable after the hand-over.
                server.send(Message::text("after")).await.unwrap();
                let next = client.next().await;
                assert!(matches!(&next, Some(Ok(Message::Text(t))) if t.as_str() == "after"));
            })
            .await;
    }

    #[tokio::test]
    async fn a_held_client_that_the_server_closes_is_a_failed_connect() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let (client, mut server) = pair().await;
                let held = tokio::task::spawn_local(hold(client, CancellationToken::new()));
                server.close(None).await.unwrap();
                let result = tokio::time::timeout(Duration::from_secs(5), held)
                    .await
                    .expect("ends without a release")
                    .unwrap();
                assert!(result.is_err());
            })
            .await;
    }
}
