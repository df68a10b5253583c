//! The payment service's HTTP API: read-only views of payments and of the gateway's circuit
//! breaker.
//!
//! `GET /payments/{order_id}` → 200 with the order's payment, 404 if the order has none,
//! 400 if the id is not a UUID, 503 if the database is unavailable.
//!
//! `GET /admin/gateway/circuit` → 200 with this instance's circuit breaker: its state
//! (`closed`, `half_open`, `open`), window, probes, transitions since start and settings (see
//! [`GatewayCircuit::status`]).
//!
//! A payment's `status` is `pending` from the moment order.created is recorded until the charge
//! settles (the gateway may take seconds; a charge interrupted by a restart stays `pending` until
//! it is resumed), then `captured` or `declined`; a capture whose order failed is `refunding`
//! until the gateway gave it back, then `refunded`. `refunded_minor` is 0 until then, and
//! `decline_reason` is `null` unless declined.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use saga_common::http::ApiError;
use saga_contracts::{OrderId, PaymentId};
use serde::Serialize;
use sqlx::PgPool;

use crate::domain::{Payment, PaymentStatus};
use crate::gateway::circuit::CircuitStatus;
use crate::gateway::GatewayCircuit;
use crate::store;

/// Path of the circuit breaker's status.
pub const CIRCUIT_PATH: &str = "/admin/gateway/circuit";

/// The routes of the payment API.
pub fn routes(database: PgPool, circuit: Arc<GatewayCircuit>) -> Router {
    let circuit_routes = Router::new().route(CIRCUIT_PATH, get(get_circuit)).with_state(circuit);
    Router::new()
        .route("/payments/{order_id}", get(get_payment))
        .with_state(database)
        .merge(circuit_routes)
}

/// A payment as served over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PaymentView {
    /// The order paid for.
    pub order_id: OrderId,
    /// The payment's id.
    pub payment_id: PaymentId,
    /// `pending`, `captured`, `declined`, `refunding` or `refunded`.
    pub status: &'static str,
    /// The amount charged (or attempted), in minor units.
    pub amount_minor: i64,
    /// How much was given back, in minor units.
    pub refunded_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Why the gateway declined; `null` unless declined.
    pub decline_reason: Option<String>,
}

impl From<Payment> for PaymentView {
    fn from(payment: Payment) -> Self {
        let decline_reason = match &payment.status {
            PaymentStatus::Declined { reason } => Some(reason.clone()),
            _ => None,
        };
        Self {
            order_id: payment.order_id,
            payment_id: payment.payment_id,
            status: payment.status.as_str(),
            amount_minor: payment.amount_minor,
            refunded_minor: payment.refunded_minor(),
            currency: payment.currency,
            decline_reason,
        }
    }
}

async fn get_payment(
    State(database): State<PgPool>,
    Path(order_id): Path<String>,
) -> Result<Json<PaymentView>, ApiError> {
    let order_id: OrderId = order_id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("order id {order_id:?} is not a UUID")))?;
    let payment = store::find(&database, order_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no payment for order {order_id}")))?;
    Ok(Json(payment.into()))
}

async fn get_circuit(State(circuit): State<Arc<GatewayCircuit>>) -> Json<CircuitStatus> {
    Json(circuit.status())
}
