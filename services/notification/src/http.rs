//! HTTP routes of the notification service besides health: what was emailed for an order, and
//! the emails set aside as failed, listed and redriven by operators.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use saga_common::http::{ApiError, JsonBody};
use saga_contracts::OrderId;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::store::{self, NotificationView};

/// `GET /notifications/{order_id}`, `GET /admin/notifications/failed` and
/// `POST /admin/notifications/failed/redrive`.
pub fn routes(database: PgPool) -> Router {
    Router::new()
        .route("/notifications/{order_id}", get(notifications_of_order))
        .route("/admin/notifications/failed", get(failed_notifications))
        .route("/admin/notifications/failed/redrive", post(redrive_failed))
        .with_state(database)
}

/// Lists the order's emails (outcome, recipient, subject, Message-ID, status, attempts, last
/// error); 404 if none was recorded, 400 if the id is not a UUID.
async fn notifications_of_order(
    State(database): State<PgPool>,
    Path(order_id): Path<String>,
) -> Result<Json<Vec<NotificationView>>, ApiError> {
    let order_id: OrderId = order_id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("order id {order_id:?} is not a UUID")))?;
    let notifications = store::list_for_order(&database, order_id).await?;
    if notifications.is_empty() {
        return Err(ApiError::NotFound(format!("no email recorded for order {order_id}")));
    }
    Ok(Json(notifications))
}

/// Every email set aside as failed, with the error that set it aside.
async fn failed_notifications(State(database): State<PgPool>) -> Result<Json<Vec<NotificationView>>, ApiError> {
    Ok(Json(store::list_failed(&database).await?))
}

/// Which failed emails to send again: those of `order_ids`, or all when it is absent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedriveRequest {
    order_ids: Option<Vec<OrderId>>,
}

/// Makes failed emails pending again (once their cause is fixed); answers their Message-IDs.
async fn redrive_failed(
    State(database): State<PgPool>,
    JsonBody(request): JsonBody<RedriveRequest>,
) -> Result<Json<Value>, ApiError> {
    let redriven = store::redrive_failed(&database, request.order_ids.as_deref()).await?;
    tracing::info!(emails = redriven.len(), "failed emails redriven");
    Ok(Json(json!({ "redriven": redriven })))
}
