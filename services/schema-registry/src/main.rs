//! `schema-registry`: serves the Confluent-compatible Avro schema registry until SIGTERM or ctrl-c.
//!
//! Configuration comes from flags or environment variables (see `--help`); logs go to stderr,
//! filtered by `RUST_LOG` (default `info`).

use anyhow::Context;
use clap::Parser;
use std::time::Duration;

use schema_registry::{Error, Registry, RegistryConfig, RunningRegistry};
use tracing_subscriber::EnvFilter;

/// Confluent-compatible Avro schema registry backed by a Kafka topic.
#[derive(Debug, Parser)]
#[command(name = "schema-registry", version, about)]
struct Cli {
    #[command(flatten)]
    registry: RegistryConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();

    let Some(registry) = start_when_broker_answers(cli.registry).await? else {
        return Ok(());
    };
    let shutdown = registry.shutdown_handle();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        shutdown.shutdown();
    });
    registry.wait().await.context("serving the schema registry")?;
    tracing::info!("schema registry stopped");
    Ok(())
}

/// Starts the registry, retrying with backoff while the broker cannot be used yet (it may be
/// starting or restarting); other errors are fatal. `None` if a shutdown signal came first.
async fn start_when_broker_answers(config: RegistryConfig) -> anyhow::Result<Option<RunningRegistry>> {
    let mut delay = Duration::from_millis(250);
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        match Registry::start(config.clone()).await {
            Ok(registry) => return Ok(Some(registry)),
            Err(error @ (Error::Kafka { .. } | Error::Read { .. })) => {
                tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "broker not usable yet, retrying");
            }
            Err(error) => return Err(error).context("starting the schema registry"),
        }
        tokio::select! {
            () = &mut signal => return Ok(None),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Resolves on ctrl-c or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
