//! HTTP routes of the notification service besides health: what was emailed for an order, and
//! the emails set aside as failed, listed and redriven by operators.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use saga_common::auth::{Authorized, Operate, ReadSaga};
use saga_common::http::{ApiError, ErrorBody, JsonBody};
use saga_contracts::OrderId;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{OpenApi, ToSchema};

use crate::store::{self, NotificationView};

/// `GET /notifications/{order_id}`, `GET /admin/notifications/failed` and
/// `POST /admin/notifications/failed/redrive`.
pub fn routes(database: PgPool) -> Router {
    router().with_state(database)
}

fn router() -> Router<PgPool> {
    Router::new()
        .route("/notifications/{order_id}", get(notifications_of_order))
        .route("/admin/notifications/failed", get(failed_notifications))
        .route("/admin/notifications/failed/redrive", post(redrive_failed))
}

/// The OpenAPI description of the notification routes; the service serves it merged with the
/// shared routes (`saga_common::openapi::service_document`).
pub fn document() -> utoipa::openapi::OpenApi {
    NotificationApi::openapi()
}

#[derive(OpenApi)]
#[openapi(
    info(description = "Emails each order's outcome to its customer, once; shows what was emailed and lets operators send failed emails again."),
    paths(notifications_of_order, failed_notifications, redrive_failed),
    tags(
        (name = "notifications", description = "The emails sent for each order"),
        (name = "operations", description = "Operator routes"),
    )
)]
struct NotificationApi;

/// Lists the order's emails (outcome, recipient, subject, Message-ID, status, attempts, last
/// error); 404 if none was recorded, 400 if the id is not a UUID.
#[utoipa::path(
    get,
    path = "/notifications/{order_id}",
    tag = "notifications",
    security(("bearer" = ["read"]), ("bearer" = ["admin"])),
    params(("order_id" = OrderId, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order's emails", body = Vec<NotificationView>),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No email was recorded for the order", body = ErrorBody),
        (status = 500, description = "The database refused the query", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later", body = ErrorBody),
    )
)]
async fn notifications_of_order(
    _caller: Authorized<ReadSaga>,
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
#[utoipa::path(
    get,
    path = "/admin/notifications/failed",
    tag = "operations",
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The emails set aside as failed", body = Vec<NotificationView>),
        (status = 500, description = "The database refused the query", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later", body = ErrorBody),
    )
)]
async fn failed_notifications(
    _caller: Authorized<Operate>,
    State(database): State<PgPool>,
) -> Result<Json<Vec<NotificationView>>, ApiError> {
    Ok(Json(store::list_failed(&database).await?))
}

/// Which failed emails to send again: those of `order_ids`, or all when it is absent or null.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RedriveFailedRequest {
    /// The orders whose failed emails to send again.
    #[serde(default)]
    order_ids: Option<Vec<OrderId>>,
}

/// The emails made pending again.
#[derive(Debug, Serialize, ToSchema)]
struct EmailsRedriven {
    /// Their Message-IDs.
    redriven: Vec<String>,
}

/// Makes failed emails pending again (once their cause is fixed); answers their Message-IDs.
#[utoipa::path(
    post,
    path = "/admin/notifications/failed/redrive",
    tag = "operations",
    security(("bearer" = ["admin"])),
    request_body = RedriveFailedRequest,
    responses(
        (status = 200, description = "The emails made pending again, by Message-ID", body = EmailsRedriven),
        (status = 400, description = "The body is not JSON, is too large, or was not sent as application/json", body = ErrorBody),
        (status = 422, description = "A field is unknown or of the wrong type; `field` names it", body = ErrorBody),
        (status = 500, description = "The database refused the change", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later", body = ErrorBody),
    )
)]
async fn redrive_failed(
    _caller: Authorized<Operate>,
    State(database): State<PgPool>,
    JsonBody(request): JsonBody<RedriveFailedRequest>,
) -> Result<Json<EmailsRedriven>, ApiError> {
    let redriven = store::redrive_failed(&database, request.order_ids.as_deref()).await?;
    tracing::info!(emails = redriven.len(), "failed emails redriven");
    Ok(Json(EmailsRedriven { redriven }))
}

#[cfg(test)]
mod tests {
    use saga_common::openapi::{routed_operations, service_document};

    use super::*;

    #[test]
    fn the_document_lists_every_route_of_the_router_and_the_shared_ones() {
        saga_common::openapi::assert_documents_exactly(&document(), &routed_operations(&router()));
    }

    #[test]
    fn the_document_serialises_and_refuses_unknown_redrive_fields() {
        let json: serde_json::Value =
            serde_json::from_str(&service_document(document()).to_json().expect("serialises")).expect("JSON");
        assert_eq!(json["info"]["title"], "notification-service");
        assert_eq!(
            json["components"]["schemas"]["RedriveFailedRequest"]["additionalProperties"],
            false
        );
        assert!(json["components"]["schemas"]["NotificationView"]["properties"]["order_id"].is_object());
    }
}
