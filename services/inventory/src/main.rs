//! Inventory service: reserves stock for orders all-or-nothing, commits it for confirmed orders and releases it for failed ones.

use clap::Parser;
use saga_common::service::{bind, serve, ServiceConfig, ServiceContext, ServiceSpec};
use saga_common::telemetry;
use sqlx::migrate::Migrator;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

const SPEC: ServiceSpec = ServiceSpec { name: "inventory-service", default_database: "saga_inventory", default_http_port: 8083 };

#[derive(Debug, Parser)]
#[command(name = "inventory-service", about = "Inventory service: reserves stock for orders all-or-nothing, commits it for confirmed orders and releases it for failed ones.")]
struct Cli {
    #[command(flatten)]
    service: ServiceConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(SPEC.name, &cli.service.telemetry);
    let Some(context) = ServiceContext::start(SPEC, &cli.service, &MIGRATIONS).await? else {
        return Ok(());
    };
    let listener = bind(cli.service.http_listen(&SPEC)).await?;
    serve(listener, context.health_router(), context.shutdown.clone()).await?;
    tracing::info!("stopped");
    Ok(())
}
