//! Server-Sent Events clients of the gateway: a GET on a plain TCP socket, the response read
//! as the SSE format (close-delimited from a node, chunked through nginx). Reads come back as
//! the WebSocket client's [`Read`], so suites check both transports with the same assertions:
//! a `close` message is a close, the end of the stream is the end.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::WAIT;
use crate::ws::Read;

/// An SSE test client.
pub struct SseClient {
    stream: TcpStream,
    /// Bytes read and not yet decoded (chunked framing).
    raw: Vec<u8>,
    /// Decoded body bytes not yet parsed into events.
    body: Vec<u8>,
    chunked: bool,
    /// Body bytes left in the current chunk.
    chunk_left: usize,
    /// The current chunk's data is read; its CRLF is not yet.
    need_crlf: bool,
    ended: bool,
    /// The response status.
    pub status: u16,
    /// The response head, lower-cased header names.
    pub headers: Vec<(String, String)>,
    /// The `id:` of the last message that carried one.
    pub last_id: Option<String>,
    /// Messages received with an `id:` field, and their data.
    pub with_id: Vec<(String, String)>,
    /// Comment lines (heartbeats) received.
    pub comments: usize,
}

/// One parsed SSE message or comment.
enum Item {
    Message(String),
    Comment,
}

impl SseClient {
    /// Sends `GET <path>` to `127.0.0.1:port` with `headers` and reads the response head.
    pub async fn open(port: u16, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        Self::open_on(stream, port, path, headers).await
    }

    /// [`SseClient::open`] on a connected stream.
    pub async fn open_on(
        mut stream: TcpStream,
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Self> {
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
        );
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut client = Self {
            stream,
            raw: Vec::new(),
            body: Vec::new(),
            chunked: false,
            chunk_left: 0,
            need_crlf: false,
            ended: false,
            status: 0,
            headers: Vec::new(),
            last_id: None,
            with_id: Vec::new(),
            comments: 0,
        };
        tokio::time::timeout(WAIT, client.read_head())
            .await
            .map_err(|_| std::io::Error::other("no response head in time"))??;
        Ok(client)
    }

    /// Opens `/sse/license` with the token in `Authorization` and reads `connected`.
    pub async fn connected(port: u16, token: &str) -> (Self, Value) {
        Self::connected_at(port, "/sse/license", token).await
    }

    /// [`SseClient::connected`] on a path with its query.
    pub async fn connected_at(port: u16, path: &str, token: &str) -> (Self, Value) {
        let auth = format!("Bearer {token}");
        let mut client = Self::open(port, path, &[("Authorization", &auth)])
            .await
            .expect("SSE request");
        assert_eq!(client.status, 200, "SSE status; head {:?}", client.headers);
        let hello = client.next_json().await;
        assert_eq!(
            hello["type"], "connected",
            "expected connected, got {hello}"
        );
        (client, hello)
    }

    /// The value of response header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    async fn read_head(&mut self) -> std::io::Result<()> {
        loop {
            if let Some(end) = find(&self.raw, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.raw[..end]).into_owned();
                self.raw.drain(..end + 4);
                let mut lines = head.split("\r\n");
                let status_line = lines.next().unwrap_or_default();
                self.status = status_line
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                for line in lines {
                    if let Some((k, v)) = line.split_once(':') {
                        self.headers
                            .push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                    }
                }
                self.chunked = self
                    .header("transfer-encoding")
                    .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
                let raw = std::mem::take(&mut self.raw);
                self.decode(&raw);
                return Ok(());
            }
            if !self.fill().await? {
                return Err(std::io::Error::other("connection closed before the head"));
            }
        }
    }

    /// Reads more bytes into `raw`; false at the end of the connection.
    async fn fill(&mut self) -> std::io::Result<bool> {
        let mut buf = [0u8; 8192];
        let n = self.stream.read(&mut buf).await?;
        self.raw.extend_from_slice(&buf[..n]);
        Ok(n > 0)
    }

    /// Moves body bytes from `bytes` (after the head) into `body`, undoing chunked framing.
    fn decode(&mut self, bytes: &[u8]) {
        if !self.chunked {
            self.body.extend_from_slice(bytes);
            return;
        }
        self.raw.extend_from_slice(bytes);
        loop {
            if self.chunk_left > 0 {
                let take = self.chunk_left.min(self.raw.len());
                self.body.extend(self.raw.drain(..take));
                self.chunk_left -= take;
                if self.chunk_left > 0 {
                    return;
                }
                self.need_crlf = true;
            }
            if self.need_crlf {
                // The chunk's trailing CRLF.
                if self.raw.len() < 2 {
                    return;
                }
                self.raw.drain(..2);
                self.need_crlf = false;
            }
            let Some(line_end) = find(&self.raw, b"\r\n") else {
                return;
            };
            let size_line = String::from_utf8_lossy(&self.raw[..line_end]).into_owned();
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or(0);
            self.raw.drain(..line_end + 2);
            if size == 0 {
                self.ended = true;
                return;
            }
            self.chunk_left = size;
        }
    }

    /// The next complete message or comment in `body`.
    fn take_item(&mut self) -> Option<Item> {
        let end = find(&self.body, b"\n\n")?;
        let block = String::from_utf8_lossy(&self.body[..end]).into_owned();
        self.body.drain(..end + 2);
        let mut data: Vec<&str> = Vec::new();
        let mut id = None;
        let mut comment = false;
        for line in block.split('\n') {
            if line.starts_with(':') {
                comment = true;
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push(d.strip_prefix(' ').unwrap_or(d));
            } else if let Some(i) = line.strip_prefix("id:") {
                id = Some(i.trim_start().to_owned());
            }
        }
        if data.is_empty() {
            return comment.then_some(Item::Comment);
        }
        let data = data.join("\n");
        if let Some(id) = id {
            self.last_id = Some(id.clone());
            self.with_id.push((id, data.clone()));
        }
        Some(Item::Message(data))
    }

    /// The next message, close or end of stream, skipping comments; `None` when `within`
    /// passes without one.
    pub async fn read(&mut self, within: Duration) -> Option<Read> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.take_item() {
                Some(Item::Comment) => {
                    self.comments += 1;
                    continue;
                }
                Some(Item::Message(data)) => {
                    let value: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                    if value["type"] == "close" {
                        let code = value["code"].as_u64().unwrap_or(0) as u16;
                        let reason = value["reason"].as_str().unwrap_or_default().to_owned();
                        return Some(Read::Close(Some((code, reason))));
                    }
                    return Some(Read::Text(data));
                }
                None => {}
            }
            if self.ended {
                return Some(Read::Ended);
            }
            let mut buf = [0u8; 8192];
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(n)) => n,
                Ok(Err(_)) => 0,
            };
            if n == 0 {
                self.ended = true;
                continue;
            }
            self.decode(&buf[..n]);
        }
    }

    /// The next message as JSON; panics on anything else.
    pub async fn next_json(&mut self) -> Value {
        match self.read(WAIT).await {
            Some(Read::Text(t)) => {
                serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Expects the server to end the stream with this close code and reason.
    pub async fn expect_close(&mut self, code: u16, reason: &str) {
        match self.read(WAIT).await {
            Some(Read::Close(Some((c, r)))) => {
                assert_eq!((c, r.as_str()), (code, reason), "close code and reason");
                assert!(
                    matches!(self.read(WAIT).await, Some(Read::Ended)),
                    "the stream ends after its close message"
                );
            }
            other => panic!("expected close {code} {reason:?}, got {other:?}"),
        }
    }

    /// Expects no message for `quiet` (heartbeats aside).
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(read) = self.read(quiet).await {
            panic!("expected silence, got {read:?}");
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
