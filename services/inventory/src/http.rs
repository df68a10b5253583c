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
use saga_common::http::{ApiError, JsonBody};
use saga_common::outbox::{self, Relay};
use saga_contracts::{AdjustmentId, Envelope, SagaEvent, StockAdjusted};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
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
    Router::new()
        .route("/stock/{sku}", get(get_stock))
        .route("/stock/{sku}/adjustments", post(post_adjustment))
        .with_state(state)
}

/// Body of `POST /stock/{sku}/adjustments`.
#[derive(Debug, Deserialize)]
struct AdjustmentBody {
    /// Units added (positive) or removed (negative); never zero.
    delta: i64,
    /// Why (restock, count correction, ...); not empty.
    reason: String,
    /// Idempotency key: a retry with the same id is applied once and gets the same answer.
    #[serde(default)]
    adjustment_id: Option<Uuid>,
}

/// Stock levels of one SKU.
#[derive(Debug, Serialize)]
struct StockResponse {
    sku: String,
    available: i64,
    reserved: i64,
    committed: i64,
}

/// The answer to an applied adjustment.
#[derive(Debug, Serialize)]
struct AdjustmentResponse {
    adjustment_id: Uuid,
    sku: String,
    available: i64,
    reserved: i64,
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

#[tracing::instrument(skip_all, fields(sku))]
async fn get_stock(
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

#[tracing::instrument(skip_all, fields(sku, adjustment_id))]
async fn post_adjustment(
    State(state): State<HttpState>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody<AdjustmentBody>,
) -> Result<(StatusCode, Json<AdjustmentResponse>), ApiError> {
    let sku = valid_sku(path)?;
    let delta = valid_delta(body.delta)?;
    let reason = valid_reason(&body.reason)?;
    let adjustment_id = body.adjustment_id.unwrap_or_else(Uuid::new_v4);
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

fn valid_reason(reason: &str) -> Result<&str, ApiError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(ApiError::invalid("reason", "must not be empty"));
    }
    if reason.chars().count() > MAX_REASON_LENGTH {
        return Err(ApiError::invalid(
            "reason",
            format!("must be at most {MAX_REASON_LENGTH} characters"),
        ));
    }
    Ok(reason)
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
}
