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
use saga_common::outbox::Relay;
use serde_json::json;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::placement::{validate, PlaceOrderRequest};
use crate::store;

/// Header that makes a retried POST return the first answer.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The order database.
    pub database: PgPool,
    /// Woken after an order is committed.
    pub relay: Relay,
    /// How long an order may wait for its outcomes.
    pub saga_deadline: Duration,
}

/// The order routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/orders", post(place_order))
        .route("/orders/{order_id}", get(get_order))
        .with_state(state)
}

fn accepted(order_id: Uuid, status: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/orders/{order_id}"))],
        Json(json!({"order_id": order_id, "status": status})),
    )
        .into_response()
}

#[tracing::instrument(skip_all, fields(order_id))]
async fn place_order(
    State(state): State<ApiState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<PlaceOrderRequest>,
) -> Result<Response, ApiError> {
    let idempotency_key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => match value.to_str() {
            Ok(key) if !key.is_empty() && key.len() <= 255 => Some(key.to_string()),
            _ => {
                return Err(ApiError::invalid(
                    "Idempotency-Key",
                    "must be 1 to 255 visible ASCII characters",
                ))
            }
        },
    };
    let fingerprint = serde_json::to_string(&request).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let order = validate(request).map_err(|e| ApiError::invalid(e.field, e.message))?;

    let mut tx = state.database.begin().await?;
    if let Some(key) = &idempotency_key {
        // Serialises concurrent requests with the same key until this transaction ends.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(key)
            .execute(&mut *tx)
            .await?;
        if let Some(previous) = previous_answer(&mut tx, key, &fingerprint).await? {
            return previous;
        }
    }
    let order_id = Uuid::new_v4();
    tracing::Span::current().record("order_id", tracing::field::display(order_id));
    let deadline = chrono::Utc::now()
        + chrono::Duration::from_std(state.saga_deadline).unwrap_or_else(|_| chrono::Duration::seconds(30));
    let created = store::insert_order(&mut tx, order_id, &order, deadline)
        .await
        .map_err(ApiError::Unavailable)?;
    if let Some(key) = &idempotency_key {
        sqlx::query("INSERT INTO idempotency_keys (idempotency_key, request_hash, order_id) VALUES ($1, $2, $3)")
            .bind(key)
            .bind(&fingerprint)
            .bind(order_id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    state.relay.notify();
    tracing::info!(order_id = %order_id, event_id = created.event_id(), total_minor = order.total_minor, "order placed");
    Ok(accepted(order_id, "PENDING"))
}

/// The answer to an earlier request with the same key, or a conflict if the key was used for a
/// different request.
async fn previous_answer(
    tx: &mut sqlx::PgConnection,
    key: &str,
    fingerprint: &str,
) -> Result<Option<Result<Response, ApiError>>, ApiError> {
    let row = sqlx::query("SELECT request_hash, order_id FROM idempotency_keys WHERE idempotency_key = $1")
        .bind(key)
        .fetch_optional(tx)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let stored: String = row.try_get("request_hash")?;
    if stored != fingerprint {
        return Ok(Some(Err(ApiError::invalid(
            "Idempotency-Key",
            "was already used for a different request; use a new key",
        ))));
    }
    let order_id: Uuid = row.try_get("order_id")?;
    // The first answer was 202 PENDING; the same answer is returned whatever the order's status now.
    Ok(Some(Ok(accepted(order_id, "PENDING"))))
}

async fn get_order(State(state): State<ApiState>, Path(order_id): Path<String>) -> Result<Response, ApiError> {
    let order_id =
        Uuid::parse_str(&order_id).map_err(|_| ApiError::BadRequest(format!("order id {order_id:?} is not a UUID")))?;
    match store::fetch_view(&state.database, order_id)
        .await
        .map_err(ApiError::Unavailable)?
    {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(ApiError::NotFound(format!("order {order_id} not found"))),
    }
}
