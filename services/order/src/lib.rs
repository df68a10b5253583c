//! Order service: accepts orders over HTTP, emits order.created, and decides each order's fate
//! from the payment and inventory outcomes (or its deadline), exactly once.
//!
//! The wiring lives here; `domain` decides, `handler` applies events to the state, `store` holds
//! the SQL, `http` the routes, `error` the error policy, `deadline` fails overdue orders,
//! `metrics` counts orders and decisions, and `replay` rebuilds the state from the topics.

pub mod deadline;
pub mod domain;
pub mod error;
pub mod handler;
pub mod http;
pub mod metrics;
pub mod rate_limit;
pub mod replay;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use saga_common::service::{BackgroundTask, RunningService, ServiceConfig, ServiceContext, ServiceSpec, Workload};
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// How long an order may wait for its payment and inventory outcomes unless configured
/// otherwise; also the deadline of orders whose order.created predates recorded deadlines.
pub const DEFAULT_SAGA_DEADLINE: Duration = Duration::from_secs(30);

/// Name, default database and default port of this service; ready without the broker, since
/// accepted orders wait in the outbox while the broker or the registry is down.
pub const SPEC: ServiceSpec = ServiceSpec::new("order-service", "saga_order", 8080).ready_without_broker();

/// Configuration of the order service.
#[derive(Debug, Clone, Parser)]
#[command(name = "order-service", about = "Accepts orders and decides their fate")]
pub struct Config {
    /// Settings shared by every service.
    #[command(flatten)]
    pub service: ServiceConfig,
    /// Seconds an order may wait for its payment and inventory outcomes before it fails with
    /// `deadline_exceeded`.
    #[arg(long = "saga-deadline-secs", env = "SAGA_DEADLINE_SECS", default_value_t = DEFAULT_SAGA_DEADLINE.as_secs_f64())]
    pub saga_deadline_secs: f64,
    /// The per-client limit on placing orders.
    #[command(flatten)]
    pub order_rate_limit: rate_limit::OrderRateLimitConfig,
}

/// The saga deadline of `secs` seconds, as `SAGA_DEADLINE_SECS` gives it.
pub fn saga_deadline_from_secs(secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .map_err(|e| anyhow::anyhow!("SAGA_DEADLINE_SECS must be a positive number of seconds: {e}"))
}

/// Starts the service; `None` if `shutdown` was cancelled before it was up.
pub async fn start(config: &Config, shutdown: CancellationToken) -> anyhow::Result<Option<RunningService>> {
    let saga_deadline = saga_deadline_from_secs(config.saga_deadline_secs)?;
    let Some(context) = ServiceContext::start(SPEC, &config.service, &MIGRATIONS, shutdown).await? else {
        return Ok(None);
    };
    let order_rate_limit = rate_limit::OrderRateLimit::new(config.order_rate_limit).map(Arc::new);
    let routes = http::routes(http::HttpState {
        database: context.database.clone(),
        relay: context.relay.clone(),
        saga_deadline,
        order_rate_limit: order_rate_limit.clone(),
    });
    let handler = handler::OrderHandler {
        database: context.database.clone(),
        relay: context.relay.clone(),
    };
    let deadline_scanner = deadline::DeadlineScanner {
        database: context.database.clone(),
        relay: context.relay.clone(),
        policy: context.policy,
    };
    let listen = config.service.http_listen(&SPEC);
    let mut background = vec![BackgroundTask::new(
        "deadline scanner",
        deadline_scanner.run(context.shutdown.clone()),
    )];
    if let Some(limit) = order_rate_limit {
        background.push(BackgroundTask::new(
            "rate limit upkeep",
            rate_limit::forget_idle_clients_until(limit, context.shutdown.clone()),
        ));
    }
    let workload = Workload {
        consumer: Some((handler::CONSUMED_TOPICS.to_vec(), Arc::new(handler))),
        background,
    };
    Ok(Some(context.launch(listen, routes, http::document(), workload).await?))
}
