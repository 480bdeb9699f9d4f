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

/// Routes for the page and the client; they need no state.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/client.js", get(client))
}

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
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
