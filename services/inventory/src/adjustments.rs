//! Stock adjustments (restock, count corrections): a change of one SKU's available units,
//! applied once per adjustment id. The HTTP API applies them live; replay applies the recorded
//! inventory.stock_adjusted events with the same function.
//!
//! An applied adjustment creates the SKU's stock row if it is new, adds the delta to the
//! available units and records itself with the stock levels it left behind, all in the
//! caller's store (live its transaction). Available stock never goes below zero.

use saga_contracts::EventId;
use uuid::Uuid;

use crate::domain;
use crate::error::{Error, Result};
use crate::store::{Adjustment, InventoryStore};

/// An adjustment to apply.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdjustmentRequest<'a> {
    /// Its idempotency key: an adjustment with an id already recorded is not applied again.
    pub(crate) adjustment_id: Uuid,
    /// The SKU adjusted.
    pub(crate) sku: &'a str,
    /// Units added (positive) or removed (negative); never zero.
    pub(crate) delta: i64,
    /// Why; not empty.
    pub(crate) reason: &'a str,
    /// The id of the inventory.stock_adjusted event that records it.
    pub(crate) event_id: EventId,
}

/// What applying an adjustment did.
#[derive(Debug, Clone)]
pub(crate) enum Adjusted {
    /// It was applied now; the record, with the levels it left.
    Applied(Adjustment),
    /// Its id was recorded before (a retried request, or the same event read twice): nothing
    /// changed. The earlier record, which may describe a different adjustment.
    AlreadyRecorded(Adjustment),
}

/// Applies `request` unless its id was recorded before.
///
/// Fails with [`Error::InsufficientStock`] if it removes more units than are available, and
/// with [`Error::AdjustedConcurrently`] if another transaction recorded the same id meanwhile;
/// either way the caller must roll back (the stock row may have been created or changed).
pub(crate) async fn apply<S: InventoryStore>(store: &mut S, request: AdjustmentRequest<'_>) -> Result<Adjusted> {
    if let Some(earlier) = store.find_adjustment(request.adjustment_id).await? {
        return Ok(Adjusted::AlreadyRecorded(earlier));
    }
    let before = store.lock_or_create_stock(request.sku).await?;
    if domain::available_after_adjustment(before.available, request.delta).is_none() {
        return Err(Error::InsufficientStock {
            sku: request.sku.to_string(),
            removing: -request.delta,
            available: before.available,
        });
    }
    let levels_after = store.add_available(request.sku, request.delta).await?;
    let adjustment = Adjustment {
        adjustment_id: request.adjustment_id,
        sku: request.sku.to_string(),
        delta: request.delta,
        reason: request.reason.to_string(),
        event_id: request.event_id,
        levels_after,
    };
    if !store.insert_adjustment(&adjustment).await? {
        return Err(Error::AdjustedConcurrently {
            adjustment_id: request.adjustment_id,
        });
    }
    Ok(Adjusted::Applied(adjustment))
}
