//! Inventory service: reserves stock for orders all-or-nothing, commits it for confirmed orders
//! and releases it for failed ones; operators adjust stock over HTTP.
//!
//! Guarantees: stock is conserved (sum of adjustments = available + reserved + committed),
//! concurrent orders never oversell (stock rows are locked in sku order, even across several
//! instances), and every consumed event and every adjustment is applied exactly once. The state
//! can be rebuilt from the topics with the same code ([`replay`]).

use std::sync::Arc;

use clap::Parser;
use saga_common::service::{RunningService, ServiceConfig, ServiceContext, ServiceSpec, Workload};
use saga_contracts::Topic;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

mod adjustments;
pub mod domain;
pub mod error;
mod handler;
mod http;
mod rebuilt;
pub mod replay;
mod store;

pub use error::{Error, InvalidOrder};

/// The service's migrations, run by the live service and by replay on its target database.
static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Name, default database and default port of this service.
pub const SPEC: ServiceSpec = ServiceSpec::new("inventory-service", "saga_inventory", 8083);

/// Configuration of the inventory service.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "inventory-service",
    about = "Reserves, commits and releases stock for orders"
)]
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
    let routes = http::routes(http::HttpState {
        database: context.database.clone(),
        relay: context.relay.clone(),
    });
    let handler = handler::InventoryHandler {
        database: context.database.clone(),
        relay: context.relay.clone(),
    };
    let workload = Workload {
        consumer: Some((vec![Topic::Orders], Arc::new(handler))),
        background: Vec::new(),
    };
    let running = context.launch(listen, routes, http::document(), workload).await?;
    Ok(Some(running))
}
