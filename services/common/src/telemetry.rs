//! Tracing setup, done once per process: structured JSON lines (or pretty text) filtered by
//! `RUST_LOG`, every line carrying the service name.

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

use crate::config::TelemetryConfig;

/// Installs the global subscriber. Calling it twice is harmless (the second call is ignored),
/// so tests may call it freely.
pub fn init(service: &'static str, config: &TelemetryConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,sqlx=warn,hyper=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let installed = if config.log_format == "pretty" {
        registry.with(fmt::layer().with_target(false)).try_init()
    } else {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init()
    };
    if installed.is_ok() {
        tracing::info!(service, "telemetry initialised");
    }
}
