//! The inventory's store: what its shared code reads and changes ([`InventoryStore`]), and the
//! SQL that does it, all of it run inside the caller's transaction. Replay does the same to the
//! state it rebuilds in memory ([`crate::rebuilt`]).
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
    /// The SET clause of the stock update; the in-memory state does the same arithmetic
    /// ([`crate::rebuilt`]).
    fn assignments(self) -> &'static str {
        match self {
            Movement::Reserve => "available = stock.available - d.quantity, reserved = stock.reserved + d.quantity",
            Movement::Commit => "reserved = stock.reserved - d.quantity, committed = stock.committed + d.quantity",
            Movement::Release => "reserved = stock.reserved - d.quantity, available = stock.available + d.quantity",
        }
    }
}

/// A reservation decision to insert.
pub(crate) struct NewReservation<'a> {
    pub(crate) order_id: OrderId,
    pub(crate) status: ReservationStatus,
    pub(crate) items: &'a [StockLine],
    pub(crate) created_event_id: Option<EventId>,
    pub(crate) reason: Option<&'a str>,
}

/// What the inventory's shared code (the order handler, stock adjustments) reads and changes.
///
/// Implemented for a [`PgConnection`] inside the caller's transaction (the SQL below), and for
/// the in-memory state a replay rebuilds ([`crate::rebuilt::RebuiltInventory`]), which does to
/// its rows what each statement does to the table's.
pub(crate) trait InventoryStore {
    /// Locks the stock rows of `skus` in sku order and returns their available units. SKUs
    /// without a row are absent from the map (nothing available).
    async fn lock_available(&mut self, skus: &[String]) -> Result<HashMap<String, i64>>;

    /// Moves the quantities of `order_id`'s reservation `lines` between stock columns, locking
    /// the rows in sku order first. A missing row is [`Error::StockRowsMissing`]; a column that
    /// would go below zero violates a CHECK constraint (a permanent error).
    async fn move_units(&mut self, order_id: OrderId, lines: &[StockLine], movement: Movement) -> Result<()> {
        let mut skus: Vec<String> = lines.iter().map(|line| line.sku.clone()).collect();
        skus.sort();
        let locked = self.lock_available(&skus).await?;
        let missing: Vec<String> = skus.iter().filter(|sku| !locked.contains_key(*sku)).cloned().collect();
        if !missing.is_empty() {
            return Err(Error::StockRowsMissing {
                order_id,
                skus: missing,
            });
        }
        self.shift_units(lines, movement).await
    }

    /// Moves the quantities of `lines` between the stock columns of their rows (locked by the
    /// caller; a SKU without a row is passed over). A column that would go below zero violates
    /// a CHECK constraint: nothing moves.
    async fn shift_units(&mut self, lines: &[StockLine], movement: Movement) -> Result<()>;

    /// Reads and locks the reservation of `order_id`, if any.
    async fn lock_reservation(&mut self, order_id: OrderId) -> Result<Option<Reservation>>;

    /// Inserts a reservation unless the order already has one; returns whether it was inserted.
    async fn insert_reservation(&mut self, new: NewReservation<'_>) -> Result<bool>;

    /// Moves a reservation from `from` to `to`, replacing its reason if `reason` is given;
    /// returns whether it was in `from` (and now is `to`).
    async fn transition(
        &mut self,
        order_id: OrderId,
        from: ReservationStatus,
        to: ReservationStatus,
        reason: Option<&str>,
    ) -> Result<bool>;

    /// Records that the order.created `event_id` found the tombstone of `order_id`; returns
    /// whether the tombstone was still unclaimed.
    async fn claim_tombstone(&mut self, order_id: OrderId, event_id: EventId) -> Result<bool>;

    /// The adjustment recorded under `adjustment_id`, if any.
    async fn find_adjustment(&mut self, adjustment_id: Uuid) -> Result<Option<Adjustment>>;

    /// Locks the stock row of `sku`, creating an empty one first if the SKU is new.
    async fn lock_or_create_stock(&mut self, sku: &str) -> Result<StockLevels>;

    /// Adds `delta` to the available units of the locked row of `sku`.
    async fn add_available(&mut self, sku: &str, delta: i64) -> Result<StockLevels>;

    /// Records an applied adjustment; returns `false` if its id was taken meanwhile (a
    /// concurrent retry of the same request won), in which case the caller must roll back.
    async fn insert_adjustment(&mut self, adjustment: &Adjustment) -> Result<bool>;
}

/// Locks, in sku order, the stock rows of `skus` and of the lines reserved for
/// `decided_orders` (a batch's first statement; see
/// `saga_common::consumer::BatchHandler::lock_shared_rows`).
pub(crate) async fn lock_stock_in_order(
    tx: &mut PgConnection,
    skus: &[String],
    decided_orders: &[uuid::Uuid],
) -> Result<()> {
    sqlx::query(
        "SELECT sku FROM stock WHERE sku IN ( \
             SELECT unnest($1::text[]) \
             UNION SELECT line->>'sku' FROM reservations, jsonb_array_elements(items) AS line \
                   WHERE order_id = ANY($2)) \
         ORDER BY sku FOR UPDATE",
    )
    .bind(skus)
    .bind(decided_orders)
    .execute(tx)
    .await?;
    Ok(())
}

impl InventoryStore for PgConnection {
    async fn lock_available(&mut self, skus: &[String]) -> Result<HashMap<String, i64>> {
        let rows = sqlx::query("SELECT sku, available FROM stock WHERE sku = ANY($1) ORDER BY sku FOR UPDATE")
            .bind(skus)
            .fetch_all(self)
            .await?;
        let available = rows
            .iter()
            .map(|row| Ok((row.try_get("sku")?, row.try_get("available")?)))
            .collect::<sqlx::Result<_>>()?;
        Ok(available)
    }

    async fn shift_units(&mut self, lines: &[StockLine], movement: Movement) -> Result<()> {
        let skus: Vec<String> = lines.iter().map(|line| line.sku.clone()).collect();
        let quantities: Vec<i64> = lines.iter().map(|line| i64::from(line.quantity)).collect();
        let statement = format!(
            "UPDATE stock SET {} FROM unnest($1::text[], $2::bigint[]) AS d(sku, quantity) WHERE stock.sku = d.sku",
            movement.assignments()
        );
        sqlx::query(&statement)
            .bind(&skus)
            .bind(&quantities)
            .execute(self)
            .await?;
        Ok(())
    }

    async fn lock_reservation(&mut self, order_id: OrderId) -> Result<Option<Reservation>> {
        let row =
            sqlx::query("SELECT status, items, created_event_id FROM reservations WHERE order_id = $1 FOR UPDATE")
                .bind(order_id)
                .fetch_optional(self)
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

    async fn insert_reservation(&mut self, new: NewReservation<'_>) -> Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO reservations (order_id, status, items, created_event_id, reason) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(new.order_id)
        .bind(new.status.as_str())
        .bind(Json(new.items))
        .bind(new.created_event_id)
        .bind(new.reason)
        .execute(self)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    async fn transition(
        &mut self,
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
        .execute(self)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    async fn claim_tombstone(&mut self, order_id: OrderId, event_id: EventId) -> Result<bool> {
        let updated = sqlx::query(
            "UPDATE reservations SET created_event_id = $2, updated_at = now() \
             WHERE order_id = $1 AND status = 'released' AND created_event_id IS NULL",
        )
        .bind(order_id)
        .bind(event_id)
        .execute(self)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    async fn find_adjustment(&mut self, adjustment_id: Uuid) -> Result<Option<Adjustment>> {
        let row = sqlx::query(
            "SELECT adjustment_id, sku, delta, reason, event_id, available_after, reserved_after, committed_after \
             FROM stock_adjustments WHERE adjustment_id = $1",
        )
        .bind(adjustment_id)
        .fetch_optional(self)
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

    async fn lock_or_create_stock(&mut self, sku: &str) -> Result<StockLevels> {
        sqlx::query("INSERT INTO stock (sku) VALUES ($1) ON CONFLICT (sku) DO NOTHING")
            .bind(sku)
            .execute(&mut *self)
            .await?;
        let row = sqlx::query("SELECT available, reserved, committed FROM stock WHERE sku = $1 FOR UPDATE")
            .bind(sku)
            .fetch_one(self)
            .await?;
        levels_from(&row)
    }

    async fn add_available(&mut self, sku: &str, delta: i64) -> Result<StockLevels> {
        let row = sqlx::query(
            "UPDATE stock SET available = available + $2 WHERE sku = $1 RETURNING available, reserved, committed",
        )
        .bind(sku)
        .bind(delta)
        .fetch_one(self)
        .await?;
        levels_from(&row)
    }

    async fn insert_adjustment(&mut self, adjustment: &Adjustment) -> Result<bool> {
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
        .execute(self)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }
}

/// The stock levels of `sku`, if it was ever stocked (for the HTTP API only).
pub(crate) async fn stock_levels(tx: &mut PgConnection, sku: &str) -> Result<Option<StockLevels>> {
    let row = sqlx::query("SELECT available, reserved, committed FROM stock WHERE sku = $1")
        .bind(sku)
        .fetch_optional(tx)
        .await?;
    row.map(|row| levels_from(&row)).transpose()
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
