//! The payment service binary: runs until SIGTERM or Ctrl-C, then stops gracefully.

use clap::Parser;
use payment_service::{start, Config, SPEC};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    saga_common::service::run_until_stopped(SPEC.name, &config.service.telemetry, |shutdown| {
        start(&config, shutdown)
    })
    .await
}
