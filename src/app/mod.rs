//! The composition root: builds a node from its parts, assembles its router from the route
//! modules (which never import this one back), and runs it from start to drained stop.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;

use crate::api::webhooks::DeliveryApi;
use crate::auth::{AdminKeys, Verifier};
use crate::config::DeliveryArgs;
use crate::engine::{EngineError, Engines};
use crate::gateway::takeover::{Detachable, Takeover};
use crate::gateway::{Node, Settings, lifecycle};
use crate::license::rules::Rules;
use crate::worker::Validator;
use crate::worker::deliveries::DeliveryRunner;

/// The router's state: the node and the validator; cheap to clone. Handlers take the part
/// they use (`State<Arc<Node>>`, `State<Arc<Validator>>`) through [`FromRef`].
#[derive(Clone)]
pub struct AppState {
    /// The gateway node.
    pub node: Arc<Node>,
    /// License evaluation and notices (admin API, embedded validator).
    pub validator: Arc<Validator>,
    /// Credentials of the admin routes.
    pub admin_keys: Arc<AdminKeys>,
    /// The engine's name, for the logs.
    pub engine: &'static str,
    /// Run the validator loop in-process (embedded engine), with this full-pass interval.
    pub embedded_validator: Option<Duration>,
    /// Webhook endpoints and delivery logs for the admin API.
    pub deliveries: Arc<DeliveryApi>,
    /// The delivery runner, in-process on the embedded engine (on Redis the worker runs it).
    pub embedded_runner: Option<Arc<DeliveryRunner>>,
}

impl AppState {
    /// Builds the node and validator over `engines`. Nothing runs until [`run`].
    pub fn new(
        settings: Settings,
        verifier: Verifier,
        admin_keys: AdminKeys,
        engines: &Engines,
        rules: Rules,
        embedded_validator: Option<Duration>,
        delivery: &DeliveryArgs,
    ) -> Self {
        let node = Node::new(
            settings,
            Arc::new(verifier),
            engines.broker.clone(),
            engines.registry.clone(),
            engines.notifications.clone(),
            engines.tickets.clone(),
        );
        Self {
            node: Arc::new(node),
            validator: Arc::new(Validator::new(engines.store.clone(), rules)),
            admin_keys: Arc::new(admin_keys),
            engine: engines.name,
            deliveries: Arc::new(DeliveryApi {
                store: engines.deliveries.clone(),
                allow_private: delivery.webhook_allow_private,
            }),
            // The same process validates: it also delivers. A client that cannot be built
            // (no TLS roots) leaves deliveries queued, and says so.
            embedded_runner: embedded_validator.and_then(|_| {
                match DeliveryRunner::new(engines.deliveries.clone(), delivery) {
                    Ok(runner) => Some(Arc::new(runner)),
                    Err(error) => {
                        tracing::warn!(%error, "delivery runner unavailable: deliveries stay queued");
                        None
                    }
                }
            }),
            embedded_validator,
        }
    }
}

impl FromRef<AppState> for Arc<Node> {
    fn from_ref(state: &AppState) -> Self {
        state.node.clone()
    }
}

impl FromRef<AppState> for Arc<Validator> {
    fn from_ref(state: &AppState) -> Self {
        state.validator.clone()
    }
}

impl FromRef<AppState> for Arc<DeliveryApi> {
    fn from_ref(state: &AppState) -> Self {
        state.deliveries.clone()
    }
}

impl FromRef<AppState> for Arc<AdminKeys> {
    fn from_ref(state: &AppState) -> Self {
        state.admin_keys.clone()
    }
}

impl FromRef<AppState> for Arc<Verifier> {
    fn from_ref(state: &AppState) -> Self {
        state.node.verifier.clone()
    }
}

/// The documented routes of a node (the streams and the API) and their OpenAPI document.
fn documented() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi;
    OpenApiRouter::with_openapi(crate::api::openapi::ApiDoc::openapi())
        .merge(crate::gateway::upgrade::routes())
        .merge(crate::gateway::sse::routes())
        .merge(crate::api::routes())
        .split_for_parts()
}

/// The OpenAPI document of every documented route, as `/openapi.json` serves it.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    documented().1
}

/// Every HTTP route of a node: the streams, the API and its document, the page and the client.
pub fn app(state: AppState) -> Router {
    let (routes, document) = documented();
    let rendered = crate::api::openapi::Rendered::new(&document);
    routes
        .layer(axum::Extension(rendered))
        .merge(crate::web::routes())
        .with_state(state)
}

/// While a node connects its engine: `/healthz` 200 (the process runs), `/readyz` 503
/// `starting`, `/metrics`, on a clone of the node's listener, so the node is alive from its
/// first second whatever state Redis is in. [`Starting::stop`] hands the port to the node.
pub struct Starting {
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl Starting {
    /// Serves the start-up routes on a clone of `listener` (the original stays with the
    /// caller for the node).
    pub fn serve(listener: &std::net::TcpListener) -> std::io::Result<Self> {
        let clone = TcpListener::from_std(listener.try_clone()?)?;
        let stop = CancellationToken::new();
        let app = crate::api::probe_routes::<()>().route(
            "/readyz",
            axum::routing::get(|| async {
                (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(serde_json::json!({ "status": "starting" })),
                )
            }),
        );
        let server = tokio::spawn(
            axum::serve(clone, app)
                .with_graceful_shutdown(stop.clone().cancelled_owned())
                .into_future(),
        );
        let server = tokio::spawn(async move {
            if let Ok(Err(error)) = server.await {
                tracing::warn!(%error, "start-up listener failed");
            }
        });
        Ok(Self { stop, server })
    }

    /// Stops accepting on the clone; requests in flight finish.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.server).await;
    }
}

/// Accepts HTTP/1 connections until `stop`, then asks each to finish its request and close.
/// Each connection gets `header_timeout` to send complete request headers, for its first
/// request and every later one it keeps the connection open for: a slowloris or an idle
/// keep-alive connection is closed instead of holding a socket forever (`axum::serve` gives
/// hyper no timer, so no such timeout applied). Upgraded WebSockets leave this loop's care.
async fn serve_http(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    stop: CancellationToken,
) {
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, most likely: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // The peer rides along as axum's ConnectInfo (per-address limits); a Router clone is a
        // reference count.
        let app = app.clone();
        // The SSE route takes its connection from hyper through this slot.
        let takeover = Arc::new(Takeover::default());
        let slot = takeover.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            let extensions = request.extensions_mut();
            extensions.insert(axum::extract::ConnectInfo(peer));
            extensions.insert(slot.clone());
            let mut app = app.clone();
            async move { tower::Service::call(&mut app, request).await }
        });
        let stop = stop.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            let io = hyper_util::rt::TokioIo::new(Detachable::new(stream, takeover.clone()));
            {
                let connection = builder.serve_connection(io, service);
                tokio::pin!(connection);
                tokio::select! {
                    served = connection.as_mut() => {
                        if let Err(error) = served {
                            tracing::trace!(%error, "connection ended");
                        }
                    }
                    _ = stop.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
            }
            // hyper dropped the socket with the connection; a route that took it gets it now.
            takeover.finish();
        });
    }
    connections.close();
    connections.wait().await;
}

/// Failure to run a node.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The engine could not start.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The listener failed.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves on `listener` until `shutdown` fires, then drains: readiness off, no new
/// connections, every session closed with 1001, background tasks stopped — all within the
/// configured shutdown timeout.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let node = state.node.clone();
    lifecycle::start(&node).await?;
    node.background
        .spawn(crate::metrics::upkeep(node.background_stop.clone()));
    if let Some(interval) = state.embedded_validator {
        let validator = state.validator.clone();
        node.background
            .spawn(validator.run(interval, node.background_stop.clone()));
    }
    if let Some(runner) = state.embedded_runner.clone() {
        node.background
            .spawn(runner.run(node.background_stop.clone()));
    }

    match listener.local_addr() {
        Ok(addr) => {
            tracing::info!(%addr, node = %node.settings.node_id, engine = state.engine, "gateway listening")
        }
        Err(error) => tracing::warn!(%error, "gateway listening on an unknown address"),
    }
    let stop_accepting = CancellationToken::new();
    let header_timeout = node.settings.header_timeout;
    let server = tokio::spawn(serve_http(
        listener,
        app(state),
        header_timeout,
        stop_accepting.clone(),
    ));

    shutdown.cancelled().await;
    lifecycle::drain(&node, || stop_accepting.cancel()).await;
    lifecycle::stop(&node).await;
    match tokio::time::timeout(Duration::from_secs(2), server).await {
        Ok(Ok(())) => {}
        Ok(Err(join)) => tracing::warn!(error = %join, "server task failed"),
        Err(_) => tracing::warn!("HTTP connections still open at exit"),
    }
    tracing::info!("gateway stopped");
    Ok(())
}

#[cfg(test)]
mod tests;
