//! The notification service binary: runs until SIGTERM or Ctrl-C, then stops gracefully.

use clap::Parser;
use notification_service::{start, Config, SPEC};
use saga_common::{service, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init(SPEC.name, &config.service.telemetry);
    if let Some(running) = start(&config, service::shutdown_on_signal()).await? {
        running.wait().await;
    }
    tracing::info!("stopped");
    Ok(())
}
