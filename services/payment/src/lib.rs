//! Payment service: charges orders through the payment gateway and refunds the charges of
//! failed orders.
//!
//! It consumes `orders`. Each order's payment is one state machine ([`domain`]): order.created
//! makes a pending payment, which the [`charger`] charges in the background, many orders at once
//! (payment.success or payment.failed), so a slow charge holds up no other order; order.failed
//! moves a capture to refunding (or, while the charge is still pending, has the capture given
//! back as soon as it completes), and the charger refunds it (payment.refunded); order.confirmed
//! changes nothing. Every order is charged at most once and refunded at most once, across
//! redeliveries, crashes, restarts and instances sharing a database (see [`handler`], [`store`]
//! and [`charger`]); the gateway is idempotent by key (see [`gateway`]).
//!
//! Layout: [`domain`] decides (pure), [`handler`] applies consumed events, [`charger`] makes the
//! gateway calls, through the circuit breaker of [`breaker`] (pure) and [`gateway::circuit`],
//! [`store`] holds the SQL, [`http`] serves payments, [`error`] classifies what
//! goes wrong, [`replay`] rebuilds the state from the topics with the same code and no gateway,
//! on the tables held in memory by [`rebuilt`].

use std::sync::Arc;

use clap::Parser;
use saga_common::service::{BackgroundTask, RunningService, ServiceConfig, ServiceContext, ServiceSpec, Workload};
use saga_contracts::Topic;
use sqlx::migrate::Migrator;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub mod breaker;
pub mod charger;
pub mod domain;
pub mod error;
pub mod gateway;
pub mod handler;
pub mod http;
pub mod rebuilt;
pub mod replay;
pub mod store;

use charger::Charger;
use gateway::{GatewayCircuit, GatewayConfig, MeteredGateway, PaymentGateway};
use handler::PaymentHandler;

/// The service's own migrations, run by the live service at startup and by replay on its target.
pub(crate) static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Name, default database and default port of this service.
pub const SPEC: ServiceSpec = ServiceSpec::new("payment-service", "saga_payment", 8082);

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
    let gateway: Arc<dyn PaymentGateway> = Arc::new(MeteredGateway::new(gateway(context.database.clone())));
    // The recorder must be in place before the circuit publishes its first state.
    saga_common::metrics::install();
    let circuit = Arc::new(GatewayCircuit::new(config.gateway.breaker.settings()));
    let concurrency = usize::try_from(config.gateway.charge_concurrency).unwrap_or(usize::MAX);
    let (charges, charger) = Charger::new(
        context.database.clone(),
        gateway,
        circuit.clone(),
        context.relay.clone(),
        context.policy,
        concurrency,
    );
    let handler = PaymentHandler::new(context.database.clone(), context.relay.clone(), charges);
    let listen = config.service.http_listen(&SPEC);
    let routes = http::routes(context.database.clone(), circuit);
    let workload = Workload {
        consumer: Some((vec![Topic::Orders], Arc::new(handler))),
        background: vec![BackgroundTask::new("charger", charger.run(context.shutdown.clone()))],
    };
    let running = context.launch(listen, routes, http::document(), workload).await?;
    Ok(Some(running))
}
