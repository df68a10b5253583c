//! Inventory service: reserves stock for orders all-or-nothing, commits it for confirmed orders
//! and releases it for failed ones.

use clap::Parser;
use saga_common::service::{RunningService, ServiceConfig, ServiceContext, ServiceSpec, Workload};
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Name, default database and default port of this service.
pub const SPEC: ServiceSpec =
    ServiceSpec { name: "inventory-service", default_database: "saga_inventory", default_http_port: 8083 };

/// Configuration of the inventory service.
#[derive(Debug, Clone, Parser)]
#[command(name = "inventory-service", about = "Reserves, commits and releases stock for orders")]
pub struct Config {
    /// Settings shared by every service.
    #[command(flatten)]
    pub service: ServiceConfig,
}

/// Starts the service; `None` if `shutdown` was cancelled before it was up.
pub async fn start(config: &Config, shutdown: CancellationToken) -> anyhow::Result<Option<RunningService>> {
    let Some(context) = ServiceContext::start(SPEC, &config.service, &MIGRATIONS, shutdown).await? else {
        return Ok(None);
    };
    let listen = config.service.http_listen(&SPEC);
    let running = context.launch(listen, axum::Router::new(), Workload { consumer: None, background: Vec::new() }).await?;
    Ok(Some(running))
}
