//! HTTP routes of the notification service besides health: what was emailed for an order, for
//! operators and tests.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use saga_common::http::ApiError;
use sqlx::PgPool;
use uuid::Uuid;

use crate::store::{self, NotificationView};

/// `GET /notifications/{order_id}`: the emails recorded for an order.
pub fn routes(database: PgPool) -> Router {
    Router::new()
        .route("/notifications/{order_id}", get(notifications_of_order))
        .with_state(database)
}

/// Lists the order's emails (outcome, recipient, subject, Message-ID, status, attempts); 404 if
/// none was recorded, 400 if the id is not a UUID.
async fn notifications_of_order(
    State(database): State<PgPool>,
    Path(order_id): Path<String>,
) -> Result<Json<Vec<NotificationView>>, ApiError> {
    let order_id =
        Uuid::parse_str(&order_id).map_err(|_| ApiError::BadRequest(format!("order id {order_id:?} is not a UUID")))?;
    let notifications = store::list_for_order(&database, order_id).await?;
    if notifications.is_empty() {
        return Err(ApiError::NotFound(format!("no email recorded for order {order_id}")));
    }
    Ok(Json(notifications))
}
