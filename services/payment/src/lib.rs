//! Payment service: charges orders through the payment gateway and refunds the charges of
//! failed orders.
//!
//! It consumes `orders`: order.created records a pending payment that the [`charger`] charges in
//! the background, many orders at once (payment.success or payment.failed), so a slow charge
//! holds up no other order; order.failed has its capture refunded (payment.refunded), also when
//! the capture completes only after the failure; order.confirmed changes nothing. Every order is
//! charged at most once and refunded at most once, across redeliveries, crashes, restarts and
//! instances sharing a database (see [`handler`] and [`charger`]); the gateway is idempotent by
//! key (see [`gateway`]).

use std::sync::Arc;

use clap::Parser;
use saga_common::service::{RunningService, ServiceConfig, ServiceContext, ServiceSpec, Workload};
use saga_contracts::Topic;
use sqlx::migrate::Migrator;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub mod charger;
pub mod gateway;
pub mod handler;
pub mod http;
pub mod payments;

use charger::Charger;
use gateway::{GatewayConfig, PaymentGateway};
use handler::PaymentHandler;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Name, default database and default port of this service.
pub const SPEC: ServiceSpec = ServiceSpec {
    name: "payment-service",
    default_database: "saga_payment",
    default_http_port: 8082,
};

/// Configuration of the payment service.
#[derive(Debug, Clone, Parser)]
#[command(name = "payment-service", about = "Charges orders and refunds failed ones")]
pub struct Config {
    /// Settings shared by every service.
    #[command(flatten)]
    pub service: ServiceConfig,
    /// Which payment gateway to use and how the simulated one behaves.
    #[command(flatten)]
    pub gateway: GatewayConfig,
}

/// Starts the service with the gateway chosen by `config`; `None` if `shutdown` was cancelled
/// before it was up.
pub async fn start(config: &Config, shutdown: CancellationToken) -> anyhow::Result<Option<RunningService>> {
    start_with_gateway(config, shutdown, |database| {
        tracing::info!(gateway = ?config.gateway.kind, "payment gateway selected");
        config.gateway.build(database)
    })
    .await
}

/// Starts the service with the gateway `gateway` builds from the service's database pool (for
/// tests that wrap or replace the gateway); `None` if `shutdown` was cancelled before it was up.
pub async fn start_with_gateway(
    config: &Config,
    shutdown: CancellationToken,
    gateway: impl FnOnce(PgPool) -> Arc<dyn PaymentGateway>,
) -> anyhow::Result<Option<RunningService>> {
    let Some(context) = ServiceContext::start(SPEC, &config.service, &MIGRATIONS, shutdown).await? else {
        return Ok(None);
    };
    let gateway = gateway(context.database.clone());
    let concurrency = usize::try_from(config.gateway.charge_concurrency).unwrap_or(usize::MAX);
    let (charges, charger) = Charger::new(
        context.database.clone(),
        gateway.clone(),
        context.relay.clone(),
        concurrency,
    );
    let handler = PaymentHandler::new(context.database.clone(), gateway, context.relay.clone(), charges);
    let listen = config.service.http_listen(&SPEC);
    let routes = http::routes(context.database.clone());
    let workload = Workload {
        consumer: Some((vec![Topic::Orders], Arc::new(handler))),
        background: vec![Box::pin(charger.run(context.shutdown.clone()))],
    };
    let running = context.launch(listen, routes, workload).await?;
    Ok(Some(running))
}
