//! Entry points for the fuzz targets (`tests/fuzz`; public for them, hidden from the docs) and
//! for the corpus regression test: each feeds arbitrary bytes to a parser that takes outside
//! input and checks what must hold of whatever it accepts. A panic anywhere is a finding.

use std::str::FromStr;

use serde_json::Value;

use crate::license::document::{self, License, MAX_METRICS};
use crate::protocol::event::EventId;

/// A client frame: the messages a client may send, and the `lastEventId` it may resume from.
pub fn client_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = serde_json::from_str::<crate::protocol::ClientMessage>(text);
    if let Ok(id) = EventId::from_str(text) {
        // What is accepted prints back to itself (ids go back to clients as text).
        let again = EventId::from_str(&id.to_string()).expect("an id's own text parses");
        assert_eq!(again, id);
    }
}

/// A license document, usage body, notification preferences, webhook endpoint or email settings
/// body as the API receives it.
pub fn license_body(data: &[u8]) {
    if let Ok(hook) = crate::delivery::endpoint::Webhook::parse(data) {
        // What is stored reads back as the same endpoint, and its public view holds no secret.
        let back = crate::delivery::endpoint::Webhook::from_stored(&hook.to_stored());
        assert_eq!(back.as_ref(), Ok(&hook));
        let shown = serde_json::to_string(&hook.redacted("x")).unwrap_or_default();
        for secret in &hook.secrets {
            // The URL is the caller's own text and may contain anything (the fuzzer put a
            // secret-looking string in one); a secret must not show otherwise.
            let text = secret.to_text();
            assert!(hook.url.contains(&text) || !shown.contains(&text));
        }
    }
    let _ = crate::delivery::endpoint::EmailSettings::parse(data);
    if let Ok(prefs) = crate::notifications::Preferences::parse(data) {
        // What is stored reads back as the same preferences.
        let stored = serde_json::to_string(&prefs).expect("preferences serialize");
        let back = crate::notifications::Preferences::parse(stored.as_bytes());
        assert_eq!(back, Ok(prefs));
    }
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Ok(license) = License::parse("acme", &body) {
        // What is stored reads back as the same license, with dates in years 1970–9999 (UTC).
        let stored = serde_json::to_string(&license).expect("a license serializes");
        let back = License::from_stored(&stored).expect("a stored license reads back");
        assert_eq!(back, license);
        let utc = license.expires_at.to_offset(time::UtcOffset::UTC);
        assert!((1970..=9999).contains(&utc.year()), "{utc}");
    }
    if let Ok(usage) = document::parse_usage(&body) {
        assert!(!usage.is_empty() && usage.len() <= MAX_METRICS);
        assert!(usage.values().all(|n| n.as_f64().is_some_and(|v| v >= 0.0)));
    }
}

/// A payload on a tenant's Redis channel: an event envelope, a control message, or garbage.
pub fn channel_payload(data: &[u8]) {
    if let Ok(checked) = crate::protocol::check_channel_payload("acme", data) {
        // Only UTF-8 text naming the channel's tenant, with a valid id and a known type, passes.
        // (Not necessarily what serde_json::Value takes: the JSON grammar allows a lone surrogate
        // escape in a field the check skips, and browsers parse it; the fuzzer found one.)
        let text = std::str::from_utf8(data).expect("checked payloads are UTF-8");
        let probe: crate::protocol::channel::ChannelProbe<'_> =
            serde_json::from_str(text).expect("checked payloads parse as envelopes");
        assert_eq!(probe.tenant_id, "acme");
        assert_eq!(probe.id.parse::<EventId>().ok(), Some(checked.id));
    }
    if let Some(Ok(control)) = crate::engine::redis::control::decode("acme", data) {
        let value: Value = serde_json::from_slice(data).expect("control messages are JSON");
        assert_eq!(value["tenantId"], "acme");
        // What a node accepts, it would also have written the same way.
        let again = crate::engine::redis::control::encode("acme", &control);
        let decoded = crate::engine::redis::control::decode("acme", again.as_bytes());
        assert_eq!(decoded, Some(Ok(control)));
    }
}

/// The bytes a WebSocket client sends, read as frames in chunks of the sizes the first byte
/// picks: whatever arrives, the reader holds at most one frame's header and payload beyond a
/// message under assembly, each within the limit, and stops at the first refusal.
pub fn ws_frames(data: &[u8]) {
    use crate::gateway::websocket::frame::Reader;
    const MAX: usize = 1024;
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let mut reader = Reader::default();
    for piece in data.chunks(usize::from(chunk).max(1)) {
        reader.extend(piece);
        loop {
            match reader.next(MAX) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // Less than one whole frame (14-byte header, payload within the limit) is left over.
        assert!(reader.held() < 2 * MAX + 14, "{} bytes held", reader.held());
    }
}

/// Configuration values: `REDIS_URL`, `TRUSTED_PROXIES`, `ADMIN_API_KEYS`, and a whole command
/// line (arguments separated by NUL bytes) with the checks `serve` runs on it.
pub fn config_values(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if crate::engine::redis::url::check(text).is_ok() {
        let _ = fred::prelude::Config::from_url(&crate::engine::redis::url::fred_url(text));
    }
    let _ = crate::gateway::client_ip::TrustedProxies::parse(text);
    let _ = crate::auth::AdminKeys::parse(Some(text));
    let args = std::iter::once("license-gateway").chain(text.split('\0'));
    if let Ok(crate::cli::Cli {
        command: crate::cli::Command::Serve(serve),
        ..
    }) = <crate::cli::Cli as clap::Parser>::try_parse_from(args)
    {
        let _ = serve.origins();
        let _ = serve.drain();
        let _ = serve.client_msg_rate();
        let _ = serve.unsubscribe_delay();
        let _ = serve.rules.rules();
    }
}

#[cfg(test)]
mod tests {
    //! Every checked-in corpus file through its entry point, on every `cargo test` (the fuzz
    //! runs themselves need cargo-fuzz; see `tests/fuzz/README.md`).

    use std::path::Path;

    fn corpus(target: &str, run: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz/corpus")
            .join(target);
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).expect("corpus directory") {
            let data = std::fs::read(entry.expect("corpus entry").path()).expect("corpus file");
            run(&data);
            files += 1;
        }
        assert!(files > 0, "{} is empty", dir.display());
    }

    #[test]
    fn client_frame_corpus() {
        corpus("client_frame", super::client_frame);
    }

    #[test]
    fn ws_frames_corpus() {
        corpus("ws_frames", super::ws_frames);
    }

    #[test]
    fn license_body_corpus() {
        corpus("license_body", super::license_body);
    }

    #[test]
    fn channel_payload_corpus() {
        corpus("channel_payload", super::channel_payload);
    }

    #[test]
    fn config_values_corpus() {
        corpus("config_values", super::config_values);
    }
}
