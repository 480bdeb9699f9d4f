//! A minimal OTLP/HTTP receiver: an axum server on a free loopback port that answers 200 to
//! every request and keeps each request's path and body (protobuf) for the test to decode.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{Uri, header};

use crate::server::BackgroundServer;

/// Requests an [`OtlpReceiver`] got: path and body.
type Requests = Mutex<Vec<(String, Vec<u8>)>>;

/// The receiver; stops on drop.
pub struct OtlpReceiver {
    pub port: u16,
    bodies: Arc<Requests>,
    _server: BackgroundServer,
}

impl OtlpReceiver {
    /// Starts serving on its own thread and runtime, so it outlives any one test's runtime.
    pub fn start() -> Self {
        let bodies: Arc<Requests> = Arc::default();
        let kept = bodies.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, body: Bytes| {
            let kept = kept.clone();
            async move {
                kept.lock()
                    .unwrap()
                    .push((uri.path().to_owned(), body.to_vec()));
                ([(header::CONTENT_TYPE, "application/x-protobuf")], "")
            }
        });
        let server = BackgroundServer::start(app);
        Self {
            port: server.port,
            bodies,
            _server: server,
        }
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for processes that export here.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request received so far: path and body.
    pub fn requests(&self) -> Vec<(String, Vec<u8>)> {
        self.bodies.lock().unwrap().clone()
    }
}
