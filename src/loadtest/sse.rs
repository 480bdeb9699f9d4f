//! The load generator's SSE clients: `GET /sse/license` on a plain socket, and a reader that
//! hands back each message's `data` (the gateway's streams are close-delimited, unchunked).

use std::net::{Ipv4Addr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// One SSE connection.
pub struct SseConn {
    stream: TcpStream,
    /// Bytes read and not yet handed out.
    buf: Vec<u8>,
    /// Where the unread part of `buf` starts.
    start: usize,
}

/// What a read found.
pub enum SseRead {
    /// A message's `data`.
    Data(Vec<u8>),
    /// The stream ended (`reason` when the server said why).
    Ended(String),
}

impl SseConn {
    /// Connects from `source`, sends the request with the token, and reads up to `connected`.
    pub async fn open(
        target: SocketAddr,
        source: Ipv4Addr,
        token: &str,
        query: Option<&str>,
    ) -> Result<Self, String> {
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket
            .bind(SocketAddr::from((source, 0)))
            .map_err(|e| format!("bind {source}: {e}"))?;
        let mut stream = socket.connect(target).await.map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let path = match query {
            Some(q) => format!("/sse/license?{q}"),
            None => "/sse/license".to_owned(),
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {target}\r\nAccept: text/event-stream\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut conn = Self {
            stream,
            buf: Vec::new(),
            start: 0,
        };
        let head_end = loop {
            if let Some(end) = find(&conn.buf, b"\r\n\r\n") {
                break end;
            }
            if !conn.fill().await? {
                return Err("connection closed before the response head".into());
            }
        };
        let status_ok = conn.buf.starts_with(b"HTTP/1.1 200");
        if !status_ok {
            let head = String::from_utf8_lossy(&conn.buf[..head_end]).into_owned();
            return Err(format!(
                "refused: {}",
                head.lines().next().unwrap_or_default()
            ));
        }
        conn.start = head_end + 4;
        match conn.next().await {
            SseRead::Data(d) if find(&d, b"\"type\":\"connected\"").is_some() => Ok(conn),
            SseRead::Data(d) => Err(format!(
                "expected connected, got {}",
                String::from_utf8_lossy(&d)
            )),
            SseRead::Ended(reason) => Err(reason),
        }
    }

    /// Reads more; false at the end of the stream.
    async fn fill(&mut self) -> Result<bool, String> {
        // Keep the buffer small between messages: the generator holds as many as the server.
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        let mut chunk = [0u8; 4096];
        let n = self
            .stream
            .read(&mut chunk)
            .await
            .map_err(|e| e.to_string())?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// The next message's data, skipping comments.
    pub async fn next(&mut self) -> SseRead {
        loop {
            if let Some(end) = find(&self.buf[self.start..], b"\n\n") {
                let block = &self.buf[self.start..self.start + end];
                self.start += end + 2;
                let data: Vec<u8> = block
                    .split(|b| *b == b'\n')
                    .filter_map(|line| line.strip_prefix(b"data: "))
                    .flatten()
                    .copied()
                    .collect();
                if data.is_empty() {
                    continue;
                }
                if find(&data, b"{\"type\":\"close\"").is_some() {
                    return SseRead::Ended(String::from_utf8_lossy(&data).into_owned());
                }
                return SseRead::Data(data);
            }
            match self.fill().await {
                Ok(true) => {}
                Ok(false) => return SseRead::Ended("stream ended".into()),
                Err(e) => return SseRead::Ended(e),
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
