//! HTTP API of the order service: `POST /orders` places an order (answering once the order and
//! its order.created event are committed together), `GET /orders/{id}` shows its status and
//! saga timeline.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use saga_common::http::{ApiError, JsonBody};
use saga_common::outbox::{self, Relay};
use saga_contracts::{Envelope, OrderId, SagaEvent};
use serde_json::json;
use sqlx::PgPool;

use crate::domain::{deadline_after, request_hash, validate, PlaceOrderRequest, Placement};
use crate::{handler, metrics, store};

/// Header that makes a retried POST return the first answer.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// The order database.
    pub database: PgPool,
    /// Woken after an order is committed.
    pub relay: Relay,
    /// How long an order may wait for its outcomes.
    pub saga_deadline: Duration,
}

/// The order routes.
pub fn routes(state: HttpState) -> Router {
    Router::new()
        .route("/orders", post(place_order))
        .route("/orders/{order_id}", get(get_order))
        .with_state(state)
}

/// The answer to a placed order; a retry with the same idempotency key gets the same one,
/// whatever the order's status by then.
fn accepted(order_id: OrderId) -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/orders/{order_id}"))],
        Json(json!({"order_id": order_id, "status": "PENDING"})),
    )
        .into_response()
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get(IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(value) => match value.to_str() {
            Ok(key) if !key.is_empty() && key.len() <= 255 => Ok(Some(key.to_string())),
            _ => Err(ApiError::invalid(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            )),
        },
    }
}

#[tracing::instrument(skip_all, fields(order_id))]
async fn place_order(
    State(state): State<HttpState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<PlaceOrderRequest>,
) -> Result<Response, ApiError> {
    let idempotency_key = idempotency_key(&headers)?;
    let body = serde_json::to_string(&request).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let fingerprint = request_hash(&body);
    let order = validate(request).map_err(|e| ApiError::invalid(e.field, e.message))?;

    let mut tx = state.database.begin().await?;
    if let Some(key) = &idempotency_key {
        if let Some(used) = store::lock_idempotency_key(&mut tx, key).await? {
            // Keys stored before request hashes were hashed hold the body itself.
            if used.request_hash != fingerprint && used.request_hash != body {
                return Err(ApiError::invalid(
                    "Idempotency-Key",
                    "was already used for a different request; use a new key",
                ));
            }
            return Ok(accepted(used.order_id));
        }
    }
    let envelope = Envelope::for_command(OrderId::new());
    let placement = Placement {
        request_hash: idempotency_key.as_ref().map(|_| fingerprint),
        idempotency_key,
        deadline_at: deadline_after(envelope.occurred_at, state.saga_deadline),
    };
    let created = order.created_event(envelope, placement);
    let order_id = created.envelope.order_id;
    tracing::Span::current().record("order_id", tracing::field::display(order_id));
    handler::apply_created(&mut *tx, &created, state.saga_deadline).await?;
    let created = SagaEvent::OrderCreated(created);
    outbox::enqueue(&mut tx, &created, None).await?;
    tx.commit().await?;
    state.relay.notify();
    metrics::count_placed();
    tracing::info!(%order_id, event_id = %created.event_id(), total_minor = order.total_minor, "order placed");
    Ok(accepted(order_id))
}

async fn get_order(State(state): State<HttpState>, Path(order_id): Path<String>) -> Result<Response, ApiError> {
    let order_id: OrderId = order_id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("order id {order_id:?} is not a UUID")))?;
    match store::fetch_view(&state.database, order_id).await? {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(ApiError::NotFound(format!("order {order_id} not found"))),
    }
}
