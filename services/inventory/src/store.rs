//! The inventory's SQL, all of it run inside the caller's transaction.
//!
//! Deadlock and oversell freedom rest on one rule: a transaction that touches stock rows locks
//! all of them first, in sku order (`SELECT ... ORDER BY sku FOR UPDATE`), and only then reads
//! and changes them. State transitions of reservations are guarded in SQL (`WHERE status = ...`),
//! so committing or releasing twice changes nothing.

use std::collections::HashMap;

use saga_contracts::{EventId, OrderId, StockLine};
use sqlx::types::Json;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::domain::{Reservation, ReservationStatus};
use crate::error::{Error, Result};

/// Stock levels of one SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StockLevels {
    pub(crate) available: i64,
    pub(crate) reserved: i64,
    pub(crate) committed: i64,
}

/// Where units move between the stock columns.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Movement {
    /// available → reserved (an order is reserved).
    Reserve,
    /// reserved → committed (a confirmed order's reservation becomes a sale).
    Commit,
    /// reserved → available (a failed order's reservation is given back).
    Release,
}

impl Movement {
    fn assignments(self) -> &'static str {
        match self {
            Movement::Reserve => "available = stock.available - d.quantity, reserved = stock.reserved + d.quantity",
            Movement::Commit => "reserved = stock.reserved - d.quantity, committed = stock.committed + d.quantity",
            Movement::Release => "reserved = stock.reserved - d.quantity, available = stock.available + d.quantity",
        }
    }
}

/// Locks the stock rows of `skus` in sku order and returns their available units. SKUs
/// without a row are absent from the map (nothing available).
pub(crate) async fn lock_available(tx: &mut PgConnection, skus: &[String]) -> Result<HashMap<String, i64>> {
    let rows = sqlx::query("SELECT sku, available FROM stock WHERE sku = ANY($1) ORDER BY sku FOR UPDATE")
        .bind(skus)
        .fetch_all(tx)
        .await?;
    let available = rows
        .iter()
        .map(|row| Ok((row.try_get("sku")?, row.try_get("available")?)))
        .collect::<sqlx::Result<_>>()?;
    Ok(available)
}

/// Moves the quantities of `order_id`'s reservation `lines` between stock columns, locking the
/// rows in sku order first. A missing row is [`Error::StockRowsMissing`]; a column that would go
/// below zero violates a CHECK constraint (a permanent database error).
pub(crate) async fn move_units(
    tx: &mut PgConnection,
    order_id: OrderId,
    lines: &[StockLine],
    movement: Movement,
) -> Result<()> {
    let mut skus: Vec<String> = lines.iter().map(|line| line.sku.clone()).collect();
    skus.sort();
    let locked = lock_available(tx, &skus).await?;
    let missing: Vec<String> = skus.iter().filter(|sku| !locked.contains_key(*sku)).cloned().collect();
    if !missing.is_empty() {
        return Err(Error::StockRowsMissing {
            order_id,
            skus: missing,
        });
    }
    let skus: Vec<String> = lines.iter().map(|line| line.sku.clone()).collect();
    let quantities: Vec<i64> = lines.iter().map(|line| i64::from(line.quantity)).collect();
    let statement = format!(
        "UPDATE stock SET {} FROM unnest($1::text[], $2::bigint[]) AS d(sku, quantity) WHERE stock.sku = d.sku",
        movement.assignments()
    );
    sqlx::query(&statement)
        .bind(&skus)
        .bind(&quantities)
        .execute(tx)
        .await?;
    Ok(())
}

/// Reads and locks the reservation of `order_id`, if any.
pub(crate) async fn lock_reservation(tx: &mut PgConnection, order_id: OrderId) -> Result<Option<Reservation>> {
    let row = sqlx::query("SELECT status, items, created_event_id FROM reservations WHERE order_id = $1 FOR UPDATE")
        .bind(order_id)
        .fetch_optional(tx)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let Json(items): Json<Vec<StockLine>> = row.try_get("items")?;
    Ok(Some(Reservation {
        status: row
            .try_get::<&str, _>("status")?
            .parse()
            .map_err(Error::UnknownStatus)?,
        items,
        created_event_id: row.try_get("created_event_id")?,
    }))
}

/// A reservation decision to insert.
pub(crate) struct NewReservation<'a> {
    pub(crate) order_id: OrderId,
    pub(crate) status: ReservationStatus,
    pub(crate) items: &'a [StockLine],
    pub(crate) created_event_id: Option<EventId>,
    pub(crate) reason: Option<&'a str>,
}

/// Inserts a reservation unless the order already has one; returns whether it was inserted.
pub(crate) async fn insert_reservation(tx: &mut PgConnection, new: NewReservation<'_>) -> Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO reservations (order_id, status, items, created_event_id, reason) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(new.order_id)
    .bind(new.status.as_str())
    .bind(Json(new.items))
    .bind(new.created_event_id)
    .bind(new.reason)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Moves a reservation from `from` to `to`; returns whether it was in `from` (and now is `to`).
pub(crate) async fn transition(
    tx: &mut PgConnection,
    order_id: OrderId,
    from: ReservationStatus,
    to: ReservationStatus,
    reason: Option<&str>,
) -> Result<bool> {
    let updated = sqlx::query(
        "UPDATE reservations SET status = $3, reason = COALESCE($4, reason), updated_at = now() \
         WHERE order_id = $1 AND status = $2",
    )
    .bind(order_id)
    .bind(from.as_str())
    .bind(to.as_str())
    .bind(reason)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Records that the order.created `event_id` found the tombstone of `order_id`; returns whether
/// the tombstone was still unclaimed.
pub(crate) async fn claim_tombstone(tx: &mut PgConnection, order_id: OrderId, event_id: EventId) -> Result<bool> {
    let updated = sqlx::query(
        "UPDATE reservations SET created_event_id = $2, updated_at = now() \
         WHERE order_id = $1 AND status = 'released' AND created_event_id IS NULL",
    )
    .bind(order_id)
    .bind(event_id)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// The stock levels of `sku`, if it was ever stocked.
pub(crate) async fn stock_levels(tx: &mut PgConnection, sku: &str) -> Result<Option<StockLevels>> {
    let row = sqlx::query("SELECT available, reserved, committed FROM stock WHERE sku = $1")
        .bind(sku)
        .fetch_optional(tx)
        .await?;
    row.map(|row| levels_from(&row)).transpose()
}

/// Locks the stock row of `sku`, creating an empty one first if the SKU is new.
pub(crate) async fn lock_or_create_stock(tx: &mut PgConnection, sku: &str) -> Result<StockLevels> {
    sqlx::query("INSERT INTO stock (sku) VALUES ($1) ON CONFLICT (sku) DO NOTHING")
        .bind(sku)
        .execute(&mut *tx)
        .await?;
    let row = sqlx::query("SELECT available, reserved, committed FROM stock WHERE sku = $1 FOR UPDATE")
        .bind(sku)
        .fetch_one(tx)
        .await?;
    levels_from(&row)
}

/// Adds `delta` to the available units of the locked row of `sku`.
pub(crate) async fn add_available(tx: &mut PgConnection, sku: &str, delta: i64) -> Result<StockLevels> {
    let row = sqlx::query(
        "UPDATE stock SET available = available + $2 WHERE sku = $1 RETURNING available, reserved, committed",
    )
    .bind(sku)
    .bind(delta)
    .fetch_one(tx)
    .await?;
    levels_from(&row)
}

fn levels_from(row: &sqlx::postgres::PgRow) -> Result<StockLevels> {
    Ok(StockLevels {
        available: row.try_get("available")?,
        reserved: row.try_get("reserved")?,
        committed: row.try_get("committed")?,
    })
}

/// An applied stock adjustment with the levels it left behind.
#[derive(Debug, Clone)]
pub(crate) struct Adjustment {
    pub(crate) adjustment_id: Uuid,
    pub(crate) sku: String,
    pub(crate) delta: i64,
    pub(crate) reason: String,
    pub(crate) event_id: EventId,
    pub(crate) levels_after: StockLevels,
}

/// The adjustment recorded under `adjustment_id`, if any.
pub(crate) async fn find_adjustment(tx: &mut PgConnection, adjustment_id: Uuid) -> Result<Option<Adjustment>> {
    let row = sqlx::query(
        "SELECT adjustment_id, sku, delta, reason, event_id, available_after, reserved_after, committed_after \
         FROM stock_adjustments WHERE adjustment_id = $1",
    )
    .bind(adjustment_id)
    .fetch_optional(tx)
    .await?;
    row.map(|row| -> Result<Adjustment> {
        Ok(Adjustment {
            adjustment_id: row.try_get("adjustment_id")?,
            sku: row.try_get("sku")?,
            delta: row.try_get("delta")?,
            reason: row.try_get("reason")?,
            event_id: row.try_get("event_id")?,
            levels_after: StockLevels {
                available: row.try_get("available_after")?,
                reserved: row.try_get("reserved_after")?,
                committed: row.try_get("committed_after")?,
            },
        })
    })
    .transpose()
}

/// Records an applied adjustment; returns `false` if its id was taken meanwhile (a concurrent
/// retry of the same request won), in which case the caller must roll back.
pub(crate) async fn insert_adjustment(tx: &mut PgConnection, adjustment: &Adjustment) -> Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO stock_adjustments \
         (adjustment_id, sku, delta, reason, event_id, available_after, reserved_after, committed_after) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (adjustment_id) DO NOTHING",
    )
    .bind(adjustment.adjustment_id)
    .bind(&adjustment.sku)
    .bind(adjustment.delta)
    .bind(&adjustment.reason)
    .bind(adjustment.event_id)
    .bind(adjustment.levels_after.available)
    .bind(adjustment.levels_after.reserved)
    .bind(adjustment.levels_after.committed)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}
