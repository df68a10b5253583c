//! Operator routes every service serves besides its own: the outbox rows the relay parked,
//! listed and redriven (`sagactl outbox parked|redrive`).

use crate::auth::{Authorized, Operate};
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use saga_contracts::EventId;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::http::{ApiError, ErrorBody, JsonBody};
use crate::outbox::{self, ParkedRow};

/// Routes `GET /admin/outbox/parked` and `POST /admin/outbox/parked/redrive`, for callers
/// `authenticator` grants the `admin` scope.
pub fn router(database: PgPool, authenticator: std::sync::Arc<crate::auth::Authenticator>) -> Router {
    crate::auth::install(routes().with_state(database), authenticator)
}

pub(crate) fn routes() -> Router<PgPool> {
    Router::new()
        .route("/admin/outbox/parked", get(parked))
        .route("/admin/outbox/parked/redrive", post(redrive))
}

/// The OpenAPI description of the operator routes.
pub(crate) fn document() -> utoipa::openapi::OpenApi {
    #[derive(OpenApi)]
    #[openapi(paths(parked, redrive))]
    struct AdminApi;
    AdminApi::openapi()
}

/// Every outbox row the relay parked (set aside as unpublishable), oldest first.
#[utoipa::path(
    get,
    path = "/admin/outbox/parked",
    tag = "operations",
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The parked rows, oldest first", body = Vec<ParkedRow>),
        (status = 500, description = "The database refused the query", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later", body = ErrorBody),
    )
)]
async fn parked(
    _caller: Authorized<Operate>,
    State(database): State<PgPool>,
) -> Result<Json<Vec<ParkedRow>>, ApiError> {
    Ok(Json(outbox::list_parked(&database).await?))
}

/// Which parked rows to redrive; all of them when `event_ids` is absent or null.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RedriveParkedRequest {
    /// The events to publish again.
    #[serde(default)]
    event_ids: Option<Vec<EventId>>,
}

/// The rows moved back to the outbox.
#[derive(Debug, Serialize, ToSchema)]
struct ParkedRedriven {
    /// The event ids of the rows moved back, to be published again.
    redriven: Vec<Uuid>,
}

/// Moves parked rows back to the outbox (once their cause is fixed); the relay publishes them
/// again.
#[utoipa::path(
    post,
    path = "/admin/outbox/parked/redrive",
    tag = "operations",
    security(("bearer" = ["admin"])),
    request_body = RedriveParkedRequest,
    responses(
        (status = 200, description = "The rows moved back to the outbox", body = ParkedRedriven),
        (status = 400, description = "The body is not JSON, or not sent as application/json", body = ErrorBody),
        (status = 422, description = "A field is missing, unknown or of the wrong type; `field` names it", body = ErrorBody),
        (status = 500, description = "The database refused the change", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later", body = ErrorBody),
    )
)]
async fn redrive(
    _caller: Authorized<Operate>,
    State(database): State<PgPool>,
    JsonBody(request): JsonBody<RedriveParkedRequest>,
) -> Result<Json<ParkedRedriven>, ApiError> {
    let event_ids: Option<Vec<Uuid>> = request
        .event_ids
        .map(|ids| ids.into_iter().map(EventId::uuid).collect());
    let moved = outbox::redrive_parked(&database, event_ids.as_deref()).await?;
    tracing::info!(rows = moved.len(), "parked outbox rows redriven");
    Ok(Json(ParkedRedriven { redriven: moved }))
}
