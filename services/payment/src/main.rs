//! Payment service: charges orders through the payment gateway and refunds the charges of failed orders.

use clap::Parser;
use saga_common::service::{bind, serve, ServiceConfig, ServiceContext, ServiceSpec};
use saga_common::telemetry;
use sqlx::migrate::Migrator;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

const SPEC: ServiceSpec = ServiceSpec { name: "payment-service", default_database: "saga_payment", default_http_port: 8082 };

#[derive(Debug, Parser)]
#[command(name = "payment-service", about = "Payment service: charges orders through the payment gateway and refunds the charges of failed orders.")]
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
