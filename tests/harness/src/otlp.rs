//! A minimal OTLP/HTTP receiver: an axum server on a free loopback port that answers 200 to
//! every request and keeps each request's path and body (protobuf) for the test to decode.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{Uri, header};

/// Requests an [`OtlpReceiver`] got: path and body.
type Requests = Mutex<Vec<(String, Vec<u8>)>>;

/// The receiver; stops on drop.
pub struct OtlpReceiver {
    pub port: u16,
    bodies: Arc<Requests>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Starts serving on its own thread and runtime, so it outlives any one test's runtime.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind otlp receiver");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let bodies: Arc<Requests> = Arc::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let kept = bodies.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("receiver runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let app = axum::Router::new().fallback(move |uri: Uri, body: Bytes| {
                    let kept = kept.clone();
                    async move {
                        kept.lock()
                            .unwrap()
                            .push((uri.path().to_owned(), body.to_vec()));
                        ([(header::CONTENT_TYPE, "application/x-protobuf")], "")
                    }
                });
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Self {
            port,
            bodies,
            stop: Some(stop),
            thread: Some(thread),
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

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
