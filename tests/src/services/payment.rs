//! Starting the payment service for a test, and looking at what it recorded: its payments over
//! HTTP, and in its database the payments and the simulated gateway's ledger.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use payment_service::breaker::BreakerSettings;
use payment_service::gateway::{GatewayConfig, OutageSwitch, SimulatedGateway};
use reqwest::StatusCode;
use saga_common::service::RunningService;
use saga_contracts::{OrderCreated, OrderId};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::TestEnv;

/// The payment service's name: its consumer group and dead-letter topic stem.
pub const PAYMENT_SERVICE: &str = payment_service::SPEC.name;

/// Starts the payment service on `env`'s topics and a database of its own, with the default
/// (simulated) gateway. Several started on one `env` share the database and the consumer group,
/// like instances of one deployment. Stop it with [`RunningService::stop`].
pub async fn start(env: &TestEnv) -> anyhow::Result<RunningService> {
    let config = payment_service::Config {
        service: env.service_config("payment"),
        gateway: payment_service::gateway::GatewayConfig::default(),
    };
    payment_service::start(&config, CancellationToken::new())
        .await?
        .context("the payment service stopped before it was up")
}

/// Starts the payment service like [`start`], with its circuit breaker set to `breaker` and the
/// simulated gateway down whenever `outage` is on.
pub async fn start_with_outage(
    env: &TestEnv,
    breaker: BreakerSettings,
    outage: OutageSwitch,
) -> anyhow::Result<RunningService> {
    let config = payment_service::Config {
        service: env.service_config("payment"),
        gateway: GatewayConfig {
            breaker: breaker.into(),
            ..GatewayConfig::default()
        },
    };
    payment_service::start_with_gateway(&config, CancellationToken::new(), |database| {
        Arc::new(SimulatedGateway::new(database, Duration::ZERO, 0.0).with_outage(outage))
    })
    .await?
    .context("the payment service stopped before it was up")
}

/// `GET /admin/gateway/circuit`: the status of the service's circuit breaker, which must answer
/// 200.
pub async fn circuit(service: &RunningService) -> anyhow::Result<Value> {
    let response = crate::get(format!(
        "http://{}{}",
        service.local_addr,
        payment_service::http::CIRCUIT_PATH
    ))
    .await?;
    anyhow::ensure!(
        response.status() == StatusCode::OK,
        "GET /admin/gateway/circuit answered {}",
        response.status()
    );
    Ok(response.json().await?)
}

/// The payment service's database, for looking at its payments, gateway ledger and outbox.
pub async fn database(env: &TestEnv) -> anyhow::Result<PgPool> {
    Ok(PgPool::connect(&env.database_url("payment")).await?)
}

/// `GET /payments/{order_id}`: the status and the JSON answer.
pub async fn payment(
    service: &RunningService,
    order_id: impl std::fmt::Display,
) -> anyhow::Result<(StatusCode, Value)> {
    let response = crate::get(format!("http://{}/payments/{order_id}", service.local_addr)).await?;
    Ok((response.status(), response.json().await?))
}

/// `GET /health/live`: the status and the JSON answer (tasks, dead letters counted).
pub async fn live(service: &RunningService) -> anyhow::Result<(StatusCode, Value)> {
    let response = crate::get(format!("http://{}/health/live", service.local_addr)).await?;
    Ok((response.status(), response.json().await?))
}

/// The stored status of the payment of `order_id`, if it has one.
pub async fn status(database: &PgPool, order_id: OrderId) -> anyhow::Result<Option<String>> {
    Ok(sqlx::query_scalar("SELECT status FROM payments WHERE order_id = $1")
        .bind(order_id.uuid())
        .fetch_optional(database)
        .await?)
}

/// One row of the simulated gateway's ledger: a charge or a refund under one idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LedgerEntry {
    /// The order id for a charge, `refund-<order_id>` for a refund.
    pub idempotency_key: String,
    /// `charge` or `refund`.
    pub operation: String,
    /// Every call under the key that reached the ledger.
    pub attempts: i32,
    /// `captured`, `declined`, `refunded`, or `None` while no call took effect.
    pub outcome: Option<String>,
    /// The amount asked for, in minor units.
    pub amount_minor: i64,
}

impl LedgerEntry {
    /// The entry of `order`'s total captured after `attempts` calls.
    pub fn captured(order: &OrderCreated, attempts: i32) -> Self {
        Self {
            idempotency_key: order.envelope.order_id.to_string(),
            operation: "charge".into(),
            attempts,
            outcome: Some("captured".into()),
            amount_minor: order.total_minor,
        }
    }

    /// The entry of `order`'s total refunded after `attempts` calls.
    pub fn refunded(order: &OrderCreated, attempts: i32) -> Self {
        Self {
            idempotency_key: format!("refund-{}", order.envelope.order_id),
            operation: "refund".into(),
            attempts,
            outcome: Some("refunded".into()),
            amount_minor: order.total_minor,
        }
    }
}

/// The gateway ledger, oldest entry first.
pub async fn ledger(database: &PgPool) -> anyhow::Result<Vec<LedgerEntry>> {
    Ok(sqlx::query_as(
        "SELECT idempotency_key, operation, attempts, outcome, amount_minor FROM gateway_ledger ORDER BY created_at",
    )
    .fetch_all(database)
    .await?)
}
