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

use saga_common::auth::{Authorized, ReadSaga};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use saga_common::http::{ApiError, ErrorBody};
use saga_contracts::{OrderId, PaymentId};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::{OpenApi, ToSchema};

use crate::domain::{Payment, PaymentStatus};
use crate::gateway::circuit::CircuitStatus;
use crate::gateway::GatewayCircuit;
use crate::store;

/// Path of the circuit breaker's status.
pub const CIRCUIT_PATH: &str = "/admin/gateway/circuit";

/// The routes of the payment API.
pub fn routes(database: PgPool, circuit: Arc<GatewayCircuit>) -> Router {
    router()
        .with_state(database)
        .merge(circuit_router().with_state(circuit))
}

fn router() -> Router<PgPool> {
    Router::new().route("/payments/{order_id}", get(get_payment))
}

fn circuit_router() -> Router<Arc<GatewayCircuit>> {
    Router::new().route(CIRCUIT_PATH, get(get_circuit))
}

/// The OpenAPI description of the payment routes; the service serves it merged with the shared
/// routes (`saga_common::openapi::service_document`).
pub fn document() -> utoipa::openapi::OpenApi {
    PaymentApi::openapi()
}

#[derive(OpenApi)]
#[openapi(
    info(description = "Charges orders through the payment gateway and refunds failed ones; shows each order's payment."),
    paths(get_payment, get_circuit),
    tags(
        (name = "payments", description = "The payment taken for each order"),
        (name = "admin", description = "What operators look at and act on")
    )
)]
struct PaymentApi;

/// Where a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PaymentState {
    /// Recorded; the charge has not settled yet.
    Pending,
    /// The gateway captured the amount.
    Captured,
    /// The gateway declined the charge.
    Declined,
    /// Captured, and its order failed: the refund has not settled yet.
    Refunding,
    /// Captured and given back.
    Refunded,
}

impl From<&PaymentStatus> for PaymentState {
    fn from(status: &PaymentStatus) -> Self {
        match status {
            PaymentStatus::Pending { .. } => PaymentState::Pending,
            PaymentStatus::Captured { .. } => PaymentState::Captured,
            PaymentStatus::Declined { .. } => PaymentState::Declined,
            PaymentStatus::Refunding { .. } => PaymentState::Refunding,
            PaymentStatus::Refunded { .. } => PaymentState::Refunded,
        }
    }
}

/// A payment as served over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PaymentView {
    /// The order paid for.
    pub order_id: OrderId,
    /// The payment's id.
    pub payment_id: PaymentId,
    /// `pending`, `captured`, `declined`, `refunding` or `refunded`.
    pub status: PaymentState,
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
            status: PaymentState::from(&payment.status),
            amount_minor: payment.amount_minor,
            refunded_minor: payment.refunded_minor(),
            currency: payment.currency,
            decline_reason,
        }
    }
}

/// The payment taken for an order.
#[utoipa::path(
    get,
    path = "/payments/{order_id}",
    tag = "payments",
    security(("bearer" = ["read"]), ("bearer" = ["admin"])),
    params(("order_id" = OrderId, Path, description = "The id of the order paid for")),
    responses(
        (status = 200, description = "The order's payment", body = PaymentView),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "The order has no payment (yet)", body = ErrorBody),
        (status = 500, description = "The database refused the query", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later", body = ErrorBody),
    )
)]
async fn get_payment(
    _caller: Authorized<ReadSaga>,
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

/// This instance's circuit breaker around the payment gateway.
#[utoipa::path(
    get,
    path = "/admin/gateway/circuit",
    tag = "admin",
    security(("bearer" = ["read"]), ("bearer" = ["admin"])),
    responses((status = 200, description = "The breaker's state, window, probes, transitions and settings", body = CircuitStatus))
)]
async fn get_circuit(_caller: Authorized<ReadSaga>, State(circuit): State<Arc<GatewayCircuit>>) -> Json<CircuitStatus> {
    Json(circuit.status())
}

#[cfg(test)]
mod tests {
    use saga_common::openapi::{routed_operations, service_document};

    use super::*;

    #[test]
    fn the_document_lists_every_route_of_the_router_and_the_shared_ones() {
        let mut routed = routed_operations(&router());
        routed.extend(routed_operations(&circuit_router()));
        saga_common::openapi::assert_documents_exactly(&document(), &routed);
    }

    #[test]
    fn the_document_serialises_and_names_every_payment_status() {
        let json: serde_json::Value =
            serde_json::from_str(&service_document(document()).to_json().expect("serialises")).expect("JSON");
        assert_eq!(json["info"]["title"], "payment-service");
        assert_eq!(
            json["components"]["schemas"]["PaymentState"]["enum"],
            serde_json::json!(["pending", "captured", "declined", "refunding", "refunded"])
        );
        assert_eq!(
            json["paths"]["/payments/{order_id}"]["get"]["responses"]["404"]["content"]["application/json"]["schema"]
                ["$ref"],
            "#/components/schemas/ErrorBody"
        );
    }
}
