//! The dashboard binary: serves the saga dashboard until SIGTERM or Ctrl-C, then stops.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = dashboard_service::Config::parse();
    saga_common::telemetry::init(dashboard_service::NAME, &config.telemetry);
    let running = dashboard_service::start(&config, saga_common::service::shutdown_on_signal()).await?;
    tracing::info!(url = %format!("http://{}/", running.local_addr), "dashboard serving");
    running.wait().await;
    tracing::info!("stopped");
    saga_common::telemetry::shutdown();
    Ok(())
}
