//! Operator routes every service serves besides its own: the outbox rows the relay parked,
//! listed and redriven (`sagactl outbox parked|redrive`).

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::http::{ApiError, JsonBody};
use crate::outbox::{self, ParkedRow};

/// Routes `GET /admin/outbox/parked` and `POST /admin/outbox/parked/redrive`.
pub fn router(database: PgPool) -> Router {
    Router::new()
        .route("/admin/outbox/parked", get(parked))
        .route("/admin/outbox/parked/redrive", post(redrive))
        .with_state(database)
}

async fn parked(State(database): State<PgPool>) -> Result<Json<Vec<ParkedRow>>, ApiError> {
    Ok(Json(outbox::list_parked(&database).await?))
}

/// Which parked rows to redrive; all of them when `event_ids` is absent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedriveRequest {
    event_ids: Option<Vec<Uuid>>,
}

async fn redrive(
    State(database): State<PgPool>,
    JsonBody(request): JsonBody<RedriveRequest>,
) -> Result<Json<Value>, ApiError> {
    let moved = outbox::redrive_parked(&database, request.event_ids.as_deref()).await?;
    tracing::info!(rows = moved.len(), "parked outbox rows redriven");
    Ok(Json(json!({ "redriven": moved })))
}
