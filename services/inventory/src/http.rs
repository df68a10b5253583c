//! The stock HTTP API: operator adjustments (idempotent by adjustment id) and stock levels.
//!
//! An adjustment changes available stock and records itself ([`crate::adjustments`]) and
//! enqueues its inventory.stock_adjusted event in one transaction, so every unit of stock is
//! explained by an event (replay applies it again from there) and the conservation law holds:
//! sum of adjustments = available + reserved + committed.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use saga_common::auth::{Authorized, Operate, ReadSaga};
use saga_common::http::{ApiError, ErrorBody, JsonBody};
use saga_common::outbox::{self, Relay};
use saga_contracts::{AdjustmentId, Envelope, SagaEvent, StockAdjusted};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::adjustments::{self, Adjusted, AdjustmentRequest};
use crate::domain::{self, MAX_SKU_LENGTH};
use crate::error::Error;
use crate::store::{self, Adjustment, InventoryStore, StockLevels};

/// Longest accepted adjustment reason.
const MAX_REASON_LENGTH: usize = 500;

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct HttpState {
    pub(crate) database: PgPool,
    pub(crate) relay: Relay,
}

/// The stock routes.
pub(crate) fn routes(state: HttpState) -> Router {
    router().with_state(state)
}

fn router() -> Router<HttpState> {
    Router::new()
        .route("/stock/{sku}", get(get_stock))
        .route("/stock/{sku}/adjustments", post(post_adjustment))
}

/// The OpenAPI description of the stock routes; the service serves it merged with the shared
/// routes (`saga_common::openapi::service_document`).
pub(crate) fn document() -> utoipa::openapi::OpenApi {
    InventoryApi::openapi()
}

#[derive(OpenApi)]
#[openapi(
    info(description = "Reserves stock for orders, commits or releases it, and takes operators' stock adjustments."),
    paths(get_stock, post_adjustment),
    tags((name = "stock", description = "Stock levels and operator adjustments"))
)]
struct InventoryApi;

/// Body of `POST /stock/{sku}/adjustments`.
#[derive(Debug, Deserialize, ToSchema)]
struct AdjustmentBody {
    /// Units added (positive) or removed (negative); never zero, within a 32-bit integer.
    #[schema(schema_with = delta_schema)]
    #[serde(deserialize_with = "saga_common::http::whole_number")]
    delta: i64,
    /// Why (restock, count correction, ...): at most 500 characters, not blank, no control
    /// characters.
    #[schema(
        max_length = 500,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    reason: String,
    /// Idempotency key: a retry with the same id is applied once and gets the same answer;
    /// one is made up when absent.
    #[serde(default)]
    adjustment_id: Option<AdjustmentId>,
}

/// `delta`: a non-zero 32-bit integer (JSON Schema has no "not zero" for integers but two ranges).
fn delta_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
    let range = |minimum: i32, maximum: i32, description: &str| {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(minimum))
            .maximum(Some(maximum))
            .description(Some(description))
    };
    OneOfBuilder::new()
        .item(range(1, i32::MAX, "Units added"))
        .item(range(i32::MIN, -1, "Units removed"))
        .description(Some("Units added (positive) or removed (negative); never zero"))
        .build()
        .into()
}

/// Stock levels of one SKU.
#[derive(Debug, Serialize, ToSchema)]
struct StockResponse {
    /// The SKU.
    sku: String,
    /// Units that can be reserved.
    available: i64,
    /// Units held for orders not decided yet.
    reserved: i64,
    /// Units sold to confirmed orders.
    committed: i64,
}

/// The answer to an applied adjustment: the levels right after it.
#[derive(Debug, Serialize, ToSchema)]
struct AdjustmentResponse {
    /// The adjustment's id (given, or made up).
    adjustment_id: Uuid,
    /// The SKU.
    sku: String,
    /// Units that can be reserved.
    available: i64,
    /// Units held for orders not decided yet.
    reserved: i64,
    /// Units sold to confirmed orders.
    committed: i64,
}

impl AdjustmentResponse {
    fn of(adjustment: &Adjustment) -> Self {
        let StockLevels {
            available,
            reserved,
            committed,
        } = adjustment.levels_after;
        Self {
            adjustment_id: adjustment.adjustment_id,
            sku: adjustment.sku.clone(),
            available,
            reserved,
            committed,
        }
    }
}

/// The stock levels of a SKU.
#[utoipa::path(
    get,
    path = "/stock/{sku}",
    tag = "stock",
    security(("bearer" = ["read"]), ("bearer" = ["admin"])),
    params(("sku" = String, Path, description = "The SKU: 1 to 64 characters of `A-Z a-z 0-9 . _ -`", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    responses(
        (status = 200, description = "The SKU's stock levels", body = StockResponse),
        (status = 400, description = "The SKU is malformed", body = ErrorBody),
        (status = 404, description = "No stock was ever recorded for the SKU", body = ErrorBody),
        (status = 500, description = "The database refused the query", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(sku))]
async fn get_stock(
    _caller: Authorized<ReadSaga>,
    State(state): State<HttpState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<StockResponse>, ApiError> {
    let sku = valid_sku(path)?;
    tracing::Span::current().record("sku", sku.as_str());
    let mut connection = state.database.acquire().await?;
    let Some(levels) = store::stock_levels(&mut connection, &sku).await? else {
        return Err(ApiError::NotFound(format!("no stock recorded for sku {sku}")));
    };
    Ok(Json(StockResponse {
        sku,
        available: levels.available,
        reserved: levels.reserved,
        committed: levels.committed,
    }))
}

/// Adjusts a SKU's available stock (a restock, a count correction) and announces it
/// (inventory.stock_adjusted) in one transaction; idempotent by `adjustment_id`.
#[utoipa::path(
    post,
    path = "/stock/{sku}/adjustments",
    tag = "stock",
    security(("bearer" = ["admin"])),
    params(("sku" = String, Path, description = "The SKU: 1 to 64 characters of `A-Z a-z 0-9 . _ -`", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    request_body = AdjustmentBody,
    responses(
        (status = 201, description = "Applied (or, for a retry with the same adjustment_id, applied before): the levels right after it", body = AdjustmentResponse),
        (status = 400, description = "The SKU is malformed, or the body is not JSON, is too large, or was not sent as application/json", body = ErrorBody),
        (status = 409, description = "The removal would take available stock below zero, or the adjustment_id was used for a different adjustment", body = ErrorBody),
        (status = 422, description = "A field is missing, of the wrong type or out of its range; `field` names it", body = ErrorBody),
        (status = 500, description = "The database refused the adjustment", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later, with the same adjustment_id", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(sku, adjustment_id))]
async fn post_adjustment(
    _caller: Authorized<Operate>,
    State(state): State<HttpState>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody<AdjustmentBody>,
) -> Result<(StatusCode, Json<AdjustmentResponse>), ApiError> {
    let sku = valid_sku(path)?;
    let delta = valid_delta(body.delta)?;
    let reason = valid_reason(&body.reason)?;
    let adjustment_id = body.adjustment_id.map_or_else(Uuid::new_v4, Uuid::from);
    let span = tracing::Span::current();
    span.record("sku", sku.as_str());
    span.record("adjustment_id", tracing::field::display(adjustment_id));

    let envelope = Envelope::for_command_without_order();
    let request = AdjustmentRequest {
        adjustment_id,
        sku: &sku,
        delta: i64::from(delta),
        reason,
        event_id: envelope.event_id,
    };
    let mut tx = state.database.begin().await?;
    let adjustment = match adjustments::apply(&mut *tx, request).await {
        Ok(Adjusted::Applied(adjustment)) => adjustment,
        Ok(Adjusted::AlreadyRecorded(earlier)) => return answer_retry(&earlier, request),
        Err(uncovered @ Error::InsufficientStock { .. }) => return Err(ApiError::Conflict(uncovered.to_string())),
        Err(Error::AdjustedConcurrently { .. }) => {
            // A concurrent retry of the same request committed first: undo ours, answer with its.
            tx.rollback().await?;
            let mut connection = state.database.acquire().await?;
            let Some(earlier) = connection.find_adjustment(adjustment_id).await? else {
                return Err(ApiError::Unavailable(anyhow::anyhow!(
                    "adjustment {adjustment_id} vanished after a conflict"
                )));
            };
            return answer_retry(&earlier, request);
        }
        Err(error) => return Err(error.into()),
    };
    let event = SagaEvent::StockAdjusted(StockAdjusted {
        envelope,
        sku: sku.clone(),
        delta,
        reason: adjustment.reason.clone(),
        adjustment_id: Some(AdjustmentId::from(adjustment_id)),
    });
    outbox::enqueue(&mut tx, &event, None).await?;
    tx.commit().await?;
    state.relay.notify();
    tracing::info!(delta, available = adjustment.levels_after.available, "stock adjusted");
    Ok((StatusCode::CREATED, Json(AdjustmentResponse::of(&adjustment))))
}

/// The answer to a retried adjustment: the original answer if it is the same request, a
/// conflict if the id was used for a different one.
fn answer_retry(
    earlier: &Adjustment,
    request: AdjustmentRequest<'_>,
) -> Result<(StatusCode, Json<AdjustmentResponse>), ApiError> {
    if earlier.sku != request.sku || earlier.delta != request.delta || earlier.reason != request.reason {
        return Err(ApiError::Conflict(format!(
            "adjustment_id {} was already used for a different adjustment ({} units of sku {}, reason {:?})",
            earlier.adjustment_id, earlier.delta, earlier.sku, earlier.reason
        )));
    }
    tracing::info!("retried adjustment answered from its record");
    Ok((StatusCode::CREATED, Json(AdjustmentResponse::of(earlier))))
}

/// A SKU is 1 to 64 characters of `A-Z a-z 0-9 . _ -`; a malformed one in the path is a 400,
/// like a malformed id.
fn valid_sku(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(sku) = path.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    if domain::is_well_formed_sku(&sku) {
        Ok(sku)
    } else {
        Err(ApiError::BadRequest(format!(
            "sku must be 1 to {MAX_SKU_LENGTH} characters of A-Z, a-z, 0-9, '.', '_' or '-'"
        )))
    }
}

fn valid_delta(delta: i64) -> Result<i32, ApiError> {
    match i32::try_from(delta) {
        Ok(0) => Err(ApiError::invalid("delta", "must not be zero")),
        Ok(delta) => Ok(delta),
        Err(_) => Err(ApiError::invalid(
            "delta",
            format!("must be between {} and {}", i32::MIN, i32::MAX),
        )),
    }
}

/// A reason is a line of text ([`saga_common::http::is_text_line`]) of at most
/// [`MAX_REASON_LENGTH`] characters; it is stored trimmed.
fn valid_reason(reason: &str) -> Result<&str, ApiError> {
    if !saga_common::http::is_text_line(reason) {
        return Err(ApiError::invalid(
            "reason",
            "must not be blank or hold control characters",
        ));
    }
    if reason.chars().count() > MAX_REASON_LENGTH {
        return Err(ApiError::invalid(
            "reason",
            format!("must be at most {MAX_REASON_LENGTH} characters"),
        ));
    }
    Ok(reason.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sku(text: &str) -> Result<String, ApiError> {
        valid_sku(Ok(Path(text.to_string())))
    }

    #[test]
    fn a_sku_of_letters_digits_dots_underscores_and_dashes_is_accepted() {
        assert_eq!(sku("SKU-1.a_b").ok().as_deref(), Some("SKU-1.a_b"));
        assert!(sku(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn an_empty_long_or_odd_sku_is_refused() {
        for bad in ["", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(
                matches!(sku(bad), Err(ApiError::BadRequest(_))),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn a_zero_or_oversized_delta_is_invalid_and_names_the_field() {
        for bad in [0, i64::from(i32::MAX) + 1, i64::from(i32::MIN) - 1] {
            assert!(matches!(valid_delta(bad), Err(ApiError::Invalid { field, .. }) if field == "delta"));
        }
        assert_eq!(valid_delta(-3).ok(), Some(-3));
    }

    #[test]
    fn a_blank_reason_is_invalid_and_names_the_field() {
        assert!(matches!(valid_reason("  "), Err(ApiError::Invalid { field, .. }) if field == "reason"));
        assert_eq!(valid_reason(" restock ").ok(), Some("restock"));
    }

    #[test]
    fn a_reason_with_a_control_character_or_over_500_characters_is_invalid() {
        for bad in ["re\0stock".to_string(), format!("{} ", "x".repeat(MAX_REASON_LENGTH))] {
            assert!(
                matches!(valid_reason(&bad), Err(ApiError::Invalid { field, .. }) if field == "reason"),
                "{bad:?}"
            );
        }
        assert!(valid_reason(&"ü".repeat(MAX_REASON_LENGTH)).is_ok());
    }

    #[test]
    fn the_document_lists_every_route_of_the_router_and_the_shared_ones() {
        use saga_common::openapi::{assert_documents_exactly, routed_operations};
        assert_documents_exactly(&document(), &routed_operations(&router()));
    }

    #[test]
    fn the_document_serialises_with_the_rules_validation_applies() {
        let json: serde_json::Value = serde_json::from_str(
            &saga_common::openapi::service_document(document())
                .to_json()
                .expect("serialises"),
        )
        .expect("JSON");
        assert_eq!(json["info"]["title"], "inventory-service");
        let body = &json["components"]["schemas"]["AdjustmentBody"]["properties"];
        assert_eq!(body["reason"]["pattern"], saga_common::http::TEXT_LINE_PATTERN);
        assert_eq!(body["delta"]["oneOf"][0]["minimum"], 1);
        assert_eq!(body["delta"]["oneOf"][1]["maximum"], -1);
        let sku = &json["paths"]["/stock/{sku}"]["get"]["parameters"][0]["schema"];
        assert_eq!(sku["pattern"], "^[A-Za-z0-9._-]{1,64}$");
    }
}
