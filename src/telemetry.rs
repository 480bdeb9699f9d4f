//! Logs and traces.
//!
//! Logs: `tracing` to stderr, text on a terminal and JSON otherwise (`LOG_FORMAT`), filtered by
//! `RUST_LOG` (default `info`). Tokens are never recorded: no span or event takes one.
//!
//! Traces: OpenTelemetry over OTLP/HTTP (protobuf) when the standard variables ask for it
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), off otherwise. A
//! publish writes its W3C `traceparent` into the event envelope, so the trace follows the event
//! through Redis to every node that delivers it: `publish` → `redis EVALSHA` on the publishing
//! process, `receive` → `deliver` on each gateway. With export off, no context is read or
//! written and no span reaches an exporter.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{ConfigError, LogFormat};

/// The W3C trace-context field name, in headers and in the event envelope.
pub const TRACEPARENT: &str = "traceparent";

/// Whether spans are exported; read on hot paths, so an atomic rather than a lookup.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Who this process is, for the trace resource (`service.*` conventions).
#[derive(Debug, Clone)]
pub struct ServiceIdentity {
    /// The role: `serve`, `worker`, `publish`, …
    pub role: &'static str,
    /// Unique per process: the node id for `serve`.
    pub instance_id: String,
}

/// Installed telemetry; [`Telemetry::shutdown`] flushes spans still queued.
#[must_use = "call shutdown() before exit, or queued spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is queued and stops the exporter (a short-lived `publish` has spans only
    /// here). Call after the async runtime has finished.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            EXPORTING.store(false, Ordering::Relaxed);
            if let Err(error) = provider.shutdown() {
                eprintln!("warning: trace export did not finish: {error}");
            }
        }
    }
}

/// Whether OTLP export was asked for, from the standard variables; an unsupported choice is a
/// configuration error naming its variable.
fn export_wanted() -> Result<bool, ConfigError> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(false);
    }
    match var("OTEL_TRACES_EXPORTER").as_deref() {
        None | Some("otlp") => {}
        Some("none") => return Ok(false),
        Some(other) => {
            return Err(ConfigError::new(
                "OTEL_TRACES_EXPORTER",
                format!("{other:?} is not supported (expected otlp or none)"),
            ));
        }
    }
    for key in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ] {
        if let Some(p) = var(key)
            && p != "http/protobuf"
        {
            return Err(ConfigError::new(
                key,
                format!("{p:?} is not supported by this build (expected http/protobuf)"),
            ));
        }
    }
    Ok(var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some())
}

/// The tracer provider for OTLP/HTTP export with this process's resource. Must run outside an
/// async runtime: the blocking HTTP client the batch processor's thread uses builds its own.
fn provider(identity: &ServiceIdentity) -> Result<SdkTracerProvider, ConfigError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| ConfigError::new("OTEL_EXPORTER_OTLP_ENDPOINT", e.to_string()))?;
    // `Resource::builder` reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; a name given
    // there wins over ours.
    let mut resource = opentelemetry_sdk::Resource::builder().with_attributes([
        KeyValue::new("service.instance.id", identity.instance_id.clone()),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("license_gateway.role", identity.role),
    ]);
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("license-gateway");
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Installs the global subscriber: logs to stderr (so stdout stays machine-readable for
/// `token` and `publish`), plus span export when configured. Call before the runtime starts.
pub fn init(
    format: Option<LogFormat>,
    identity: &ServiceIdentity,
) -> Result<Telemetry, ConfigError> {
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Text
    } else {
        LogFormat::Json
    });
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_filter(identity.role)));
    // Whatever RUST_LOG says, libraries that log raw protocol data at trace stay at debug:
    // tungstenite logs every received WebSocket message (an in-band refresh carries a token)
    // and client requests with their headers; the HTTP and Redis stacks log buffers too.
    let caps = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("tungstenite", LevelFilter::DEBUG)
        .with_target("tokio_tungstenite", LevelFilter::DEBUG)
        .with_target("hyper", LevelFilter::DEBUG)
        .with_target("hyper_util", LevelFilter::DEBUG)
        .with_target("h2", LevelFilter::DEBUG)
        .with_target("reqwest", LevelFilter::DEBUG)
        .with_target("fred", LevelFilter::DEBUG)
        .with_target("mio", LevelFilter::DEBUG);
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().flatten_event(true).boxed(),
    }
    .with_filter(filter.and(caps));

    let provider = if export_wanted()? {
        Some(provider(identity)?)
    } else {
        None
    };
    // Our own spans only, whatever RUST_LOG says: library internals would swamp a trace.
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("license-gateway"))
            .with_filter(
                Targets::new()
                    .with_target("license_gateway", LevelFilter::INFO)
                    .with_default(LevelFilter::OFF),
            )
    });
    let _ = Registry::default().with(logs).with(traces).try_init();
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    Ok(Telemetry { provider })
}

/// The log filter when `RUST_LOG` is not set. One-shot commands answer with one line of their
/// own (`publish`'s error is the only line on stderr); the Redis client's warnings about the
/// connection it drops on the way out (a `QUIT` it could not send to a dead server) would come
/// before it, now and then, so they keep only fred's errors.
fn default_filter(role: &str) -> &'static str {
    match role {
        "token" | "publish" | "healthcheck" | "openapi" => "info,fred=error",
        _ => "info",
    }
}

/// Whether spans are being exported (cheap; checked before any per-event trace work).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The current span's W3C `traceparent`, when exporting and the span is sampled.
pub fn current_traceparent() -> Option<String> {
    if !exporting() {
        return None;
    }
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_sampled() {
        return None;
    }
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the remote span that `traceparent` names (ignored when malformed).
/// Call before the span is first entered.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    let carrier =
        std::collections::HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract_with_context(&Context::new(), &carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::{EnvFilter, default_filter};

    #[test]
    fn one_shot_commands_keep_only_the_redis_clients_errors() {
        for role in ["publish", "token", "healthcheck", "openapi"] {
            assert!(default_filter(role).contains("fred=error"), "{role}");
        }
        // Services keep fred's warnings: reconnects and timeouts matter there.
        for role in ["serve", "worker", "loadtest"] {
            assert_eq!(default_filter(role), "info", "{role}");
        }
        for role in ["publish", "serve"] {
            assert!(EnvFilter::try_new(default_filter(role)).is_ok(), "{role}");
        }
    }
}
