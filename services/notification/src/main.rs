//! Notification service: emails each order's outcome to its customer exactly once.

use clap::Parser;
use saga_common::service::{bind, serve, ServiceConfig, ServiceContext, ServiceSpec};
use saga_common::telemetry;
use sqlx::migrate::Migrator;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

const SPEC: ServiceSpec = ServiceSpec { name: "notification-service", default_database: "saga_notification", default_http_port: 8084 };

#[derive(Debug, Parser)]
#[command(name = "notification-service", about = "Notification service: emails each order's outcome to its customer exactly once.")]
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
