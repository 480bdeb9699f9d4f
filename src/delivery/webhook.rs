//! One webhook attempt: the signed POST of an event's envelope, with no redirects, a 10 s
//! timeout, at most 64 KiB of the answer read, and the SSRF guard on the resolved addresses.

use std::time::{Duration, Instant};

use super::endpoint::Webhook;
use super::signing::signature_header;
use super::ssrf::{self, GuardedResolver};

/// Longest wait for an answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of an answer read (the rest is dropped with the connection).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status, when the endpoint answered.
    pub status: Option<u16>,
    /// Why it did not (refused address, connection error, timeout), in a few words.
    pub error: Option<String>,
    /// How long the attempt took, ms.
    pub duration_ms: u64,
}

impl Answer {
    /// Any 2xx.
    pub fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// 410 Gone: the endpoint asks to be disabled.
    pub fn gone(&self) -> bool {
        self.status == Some(410)
    }
}

/// The HTTP client of every webhook attempt.
pub fn client(allow_private: bool) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .no_proxy()
        .dns_resolver(std::sync::Arc::new(GuardedResolver { allow_private }))
        .user_agent(concat!("license-gateway/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// POSTs `body` (the envelope) to the endpoint, signed for `id` (`<tenant>:<event id>`).
pub async fn send(
    client: &reqwest::Client,
    hook: &Webhook,
    id: &str,
    body: &[u8],
    allow_private: bool,
) -> Answer {
    let started = Instant::now();
    let done = |status: Option<u16>, error: Option<String>| Answer {
        status,
        error,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    // The resolver guards names; an address written in the URL is checked here.
    let url = match ssrf_check(&hook.url, allow_private) {
        Ok(url) => url,
        Err(refused) => return done(None, Some(format!("refused: {refused}"))),
    };
    let timestamp = crate::protocol::now_ms() / 1000;
    let request = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            signature_header(&hook.secrets, id, timestamp, body),
        )
        .body(body.to_vec());
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            // The innermost cause says most (a refused name says which, from the resolver).
            let mut cause: &dyn std::error::Error = &error;
            while let Some(inner) = cause.source() {
                cause = inner;
            }
            let what = if error.is_timeout() {
                "timed out".to_owned()
            } else if error.is_connect() {
                format!("could not connect: {cause}")
            } else {
                format!("request failed: {cause}")
            };
            return done(None, Some(what));
        }
    };
    let status = response.status().as_u16();
    // Read a bounded part of the answer so the connection ends cleanly; never more.
    let mut read = 0;
    while read < MAX_ANSWER_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            _ => break,
        }
    }
    done(Some(status), None)
}

/// The URL, unless its scheme or a literal address is refused (names go to the resolver).
fn ssrf_check(url: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_private => {}
        other => return Err(format!("scheme {other}")),
    }
    if !allow_private {
        let ip = parsed
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<std::net::IpAddr>().ok());
        if let Some(ip) = ip.filter(|ip| ssrf::is_internal(*ip)) {
            return Err(format!("internal address {ip}"));
        }
    }
    Ok(parsed)
}
