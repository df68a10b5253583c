//! Order service: accepts orders over HTTP, emits order.created, and decides each order's fate from payment and inventory outcomes.

use clap::Parser;
use saga_common::service::{bind, serve, ServiceConfig, ServiceContext, ServiceSpec};
use saga_common::telemetry;
use sqlx::migrate::Migrator;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

const SPEC: ServiceSpec = ServiceSpec { name: "order-service", default_database: "saga_order", default_http_port: 8080 };

#[derive(Debug, Parser)]
#[command(name = "order-service", about = "Order service: accepts orders over HTTP, emits order.created, and decides each order's fate from payment and inventory outcomes.")]
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
