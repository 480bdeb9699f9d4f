//! The browser client (`/client.js`) and the demo page (`/`), embedded in the binary: no build
//! step, no files to deploy.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// The browser client, a plain ES module.
pub const CLIENT_JS: &str = include_str!("client.js");
/// The demo page.
pub const INDEX_HTML: &str = include_str!("index.html");
/// The demo page's script.
pub const DEMO_JS: &str = include_str!("demo.js");

/// The demo page's policy: scripts from this origin only (no inline script, so an injected
/// one cannot run), connections to this origin only (its API and WebSocket), no framing.
/// Inline styles stay allowed: the usage bars are sized with `style` attributes.
const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// Routes for the page and the client; they need no state.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/client.js", get(client))
        .route("/demo.js", get(demo))
}

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            // The page's URL carries a token (and, for the demo controls, an admin key).
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        INDEX_HTML,
    )
}

async fn demo() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        DEMO_JS,
    )
}

async fn client() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        CLIENT_JS,
    )
}
