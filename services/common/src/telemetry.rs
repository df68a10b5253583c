//! Tracing setup, done once per process: structured JSON lines (or pretty text) filtered by
//! `RUST_LOG`, every line carrying the service name, and, when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set, every span exported over OTLP (HTTP, protobuf) as an OpenTelemetry trace.
//!
//! One saga is one trace: the W3C `traceparent` of the span that wrote an outbox row is stored
//! with it, the relay's publish span continues it and puts its own context in the record's
//! headers, and the consumer's span continues that. Without an exporter no OpenTelemetry layer is
//! installed (spans stay plain `tracing` spans, costing next to nothing) and the traceparent a
//! record came with is handed on unchanged, so the log lines of one saga still share a trace id.

use std::sync::OnceLock;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{filter::filter_fn, fmt, prelude::*, EnvFilter, Layer};

use crate::codec::TRACEPARENT_HEADER;
use crate::config::TelemetryConfig;

/// The exporting tracer provider of this process, kept so [`shutdown`] can flush it.
static TRACER_PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber. Calling it twice is harmless (the second call is ignored),
/// so tests may call it freely.
pub fn init(service: &'static str, config: &TelemetryConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,sqlx=warn,hyper=warn"));
    let traces = config
        .otlp_endpoint
        .as_deref()
        .filter(|e| !e.trim().is_empty())
        .map(|endpoint| {
            trace_layer(service, endpoint).map_err(|error| format!("traces are not exported to {endpoint}: {error}"))
        });
    let (traces, trace_error) = match traces {
        Some(Ok(layer)) => (Some(layer), None),
        Some(Err(error)) => (None, Some(error)),
        None => (None, None),
    };
    let logs = if config.log_format == "pretty" {
        fmt::layer().with_target(false).boxed()
    } else {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(traces)
        .with(logs)
        .try_init();
    if installed.is_ok() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        tracing::info!(
            service,
            traces_exported_to = config.otlp_endpoint.as_deref(),
            "telemetry initialised"
        );
        if let Some(error) = trace_error {
            tracing::error!(error, "tracing without export");
        }
    }
}

/// The OpenTelemetry layer exporting to `endpoint`: spans of the platform's own code only
/// (library spans would add noise, not steps of the saga), batched in a background thread.
fn trace_layer<S>(service: &'static str, endpoint: &str) -> Result<Box<dyn Layer<S> + Send + Sync>, String>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span> + Send + Sync,
{
    use opentelemetry_otlp::WithExportConfig;
    // The exporter resolves the signal path itself when the endpoint comes from the environment;
    // given explicitly it is used as is, so add the OTLP/HTTP path for traces.
    let traces_endpoint = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces_endpoint)
        .build()
        .map_err(|e| e.to_string())?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    let tracer = provider.tracer(service);
    let _ = TRACER_PROVIDER.set(provider);
    Ok(tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(filter_fn(|metadata| is_platform_code(metadata.target())))
        .boxed())
}

/// Whether a span comes from the platform's crates rather than a library.
fn is_platform_code(target: &str) -> bool {
    const PLATFORM_CRATES: [&str; 7] = [
        "saga_common",
        "order_service",
        "payment_service",
        "inventory_service",
        "notification_service",
        "dashboard_service",
        "schema_registry",
    ];
    let crate_name = target.split("::").next().unwrap_or(target);
    PLATFORM_CRATES.contains(&crate_name)
}

/// Flushes the spans not yet exported; call once before the process exits.
pub fn shutdown() {
    if let Some(provider) = TRACER_PROVIDER.get() {
        if let Err(error) = provider.shutdown() {
            eprintln!("flushing traces at exit failed: {error}");
        }
    }
}

/// Makes `span` a child of the span described by a W3C `traceparent` (from a record's headers,
/// an outbox row or an HTTP request). Nothing happens without an exporter or a valid value.
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else { return };
    let carrier = std::collections::HashMap::from([(TRACEPARENT_HEADER.to_string(), traceparent.to_string())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The W3C `traceparent` of `span` when spans are exported, else `None`.
pub fn traceparent_of(span: &Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT_HEADER)
}

/// The trace context to hand on to work the current span causes (an outbox row, a pending
/// charge, an email to send): the current span's when spans are exported, else `inherited`
/// (the traceparent of the record being handled).
pub fn handed_on_traceparent(inherited: Option<&str>) -> Option<String> {
    traceparent_of(&Span::current()).or_else(|| inherited.map(str::to_string))
}

/// Axum middleware: the server span of one HTTP request (OpenTelemetry HTTP conventions), named
/// after the route template, continuing the caller's trace when the request has a `traceparent`.
pub async fn trace_http_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let method = request.method().clone();
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{method} {}", route.as_deref().unwrap_or("unmatched")),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = route.as_deref(),
        url.path = request.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    let traceparent = request
        .headers()
        .get(TRACEPARENT_HEADER)
        .and_then(|value| value.to_str().ok());
    continue_trace(&span, traceparent);
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_of_the_platform_crates_are_exported_and_library_spans_are_not() {
        assert!(is_platform_code("saga_common::consumer"));
        assert!(is_platform_code("payment_service::charger"));
        assert!(is_platform_code("order_service"));
        assert!(!is_platform_code("sqlx::query"));
        assert!(!is_platform_code("hyper::proto"));
        assert!(!is_platform_code("saga_commons"));
    }

    #[test]
    fn without_an_exporter_the_inherited_traceparent_is_handed_on() {
        let inherited = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = tracing::info_span!("work");
        let _entered = span.enter();
        assert_eq!(handed_on_traceparent(Some(inherited)).as_deref(), Some(inherited));
        assert_eq!(handed_on_traceparent(None), None);
    }
}
