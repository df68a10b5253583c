//! The inventory's tables as a replay rebuilds them: rows in memory, read and changed by the
//! live handler and adjustment code through [`InventoryStore`].
//!
//! Each operation does to the rows what its SQL ([`crate::store`]) does to the table, with the
//! migration's defaults and constraints: a stock column that would go below zero or beyond a
//! bigint, a malformed SKU, an adjustment of zero units or without a reason, and a second
//! adjustment for one event are refused as PostgreSQL refuses them, so the event fails and the
//! replay undoes what it changed. `created_at` and `updated_at` are left to the database's
//! default: live they are stamped with `now()`, and verify ignores them.

use std::collections::HashMap;

use saga_common::replay::memory::{MemoryTable, RebuiltTable, Row, Statement};
use saga_contracts::{EventId, OrderId, StockLine};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::domain::{self, Reservation, ReservationStatus};
use crate::error::{Error, Result};
use crate::store::{Adjustment, InventoryStore, Movement, NewReservation, StockLevels};

/// A row of `stock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StockRow {
    sku: String,
    available: i64,
    reserved: i64,
    committed: i64,
}

impl Row for StockRow {
    type Key = String;
    const TABLE: &'static str = "stock";
    const KEY_COLUMNS: &'static [&'static str] = &["sku"];
    fn key(&self) -> String {
        self.sku.clone()
    }
}

impl StockRow {
    fn levels(&self) -> StockLevels {
        StockLevels {
            available: self.available,
            reserved: self.reserved,
            committed: self.committed,
        }
    }

    /// The row after `movement` of `quantity` units, as `UPDATE stock SET ...` computes it
    /// (see `Movement::assignments`), refused where the statement would fail.
    fn moved(&self, movement: Movement, quantity: i32) -> Result<Self> {
        let quantity = i64::from(quantity);
        let mut after = self.clone();
        match movement {
            Movement::Reserve => {
                after.available = bigint(self.available.checked_sub(quantity))?;
                after.reserved = bigint(self.reserved.checked_add(quantity))?;
            }
            Movement::Commit => {
                after.reserved = bigint(self.reserved.checked_sub(quantity))?;
                after.committed = bigint(self.committed.checked_add(quantity))?;
            }
            Movement::Release => {
                after.reserved = bigint(self.reserved.checked_sub(quantity))?;
                after.available = bigint(self.available.checked_add(quantity))?;
            }
        }
        after.checked()
    }

    /// The row if it passes the table's CHECK constraints, which PostgreSQL evaluates on every
    /// row it inserts or updates.
    fn checked(self) -> Result<Self> {
        if !domain::is_well_formed_sku(&self.sku) {
            return Err(check_violation("stock", "stock_sku_check"));
        }
        for (column, value) in [
            ("available", self.available),
            ("reserved", self.reserved),
            ("committed", self.committed),
        ] {
            if value < 0 {
                return Err(check_violation("stock", &format!("stock_{column}_check")));
            }
        }
        Ok(self)
    }
}

/// A row of `reservations` (`created_at` and `updated_at` take the database's default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReservationRow {
    order_id: OrderId,
    status: ReservationStatus,
    /// The `items` jsonb: the lines held, as the SQL writes them (`Json(items)`).
    items: Vec<StockLine>,
    created_event_id: Option<EventId>,
    reason: Option<String>,
}

impl Row for ReservationRow {
    type Key = OrderId;
    const TABLE: &'static str = "reservations";
    const KEY_COLUMNS: &'static [&'static str] = &["order_id"];
    fn key(&self) -> OrderId {
        self.order_id
    }
}

/// A row of `stock_adjustments` (`created_at` takes the database's default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AdjustmentRow {
    adjustment_id: Uuid,
    sku: String,
    delta: i64,
    reason: String,
    event_id: EventId,
    available_after: i64,
    reserved_after: i64,
    committed_after: i64,
}

impl Row for AdjustmentRow {
    type Key = Uuid;
    const TABLE: &'static str = "stock_adjustments";
    const KEY_COLUMNS: &'static [&'static str] = &["adjustment_id"];
    fn key(&self) -> Uuid {
        self.adjustment_id
    }
}

impl From<&AdjustmentRow> for Adjustment {
    fn from(row: &AdjustmentRow) -> Self {
        Adjustment {
            adjustment_id: row.adjustment_id,
            sku: row.sku.clone(),
            delta: row.delta,
            reason: row.reason.clone(),
            event_id: row.event_id,
            levels_after: StockLevels {
                available: row.available_after,
                reserved: row.reserved_after,
                committed: row.committed_after,
            },
        }
    }
}

/// `stock_adjustments` with an index of its second unique column, `event_id`.
#[derive(Debug, Default)]
struct AdjustmentTable {
    rows: MemoryTable<AdjustmentRow>,
    /// The adjustment id recorded per event id. Rows are only ever inserted, so the only stale
    /// entries are those of rows a refused event inserted and the undo took away: a lookup
    /// checks the row.
    by_event: HashMap<EventId, Uuid>,
}

impl AdjustmentTable {
    fn recorded_for(&self, event_id: EventId) -> Option<&AdjustmentRow> {
        let adjustment_id = self.by_event.get(&event_id)?;
        self.rows.get(adjustment_id).filter(|row| row.event_id == event_id)
    }

    fn insert_new(&mut self, row: AdjustmentRow) -> bool {
        let (event_id, adjustment_id) = (row.event_id, row.adjustment_id);
        let inserted = self.rows.insert_new(row);
        if inserted {
            self.by_event.insert(event_id, adjustment_id);
        }
        inserted
    }
}

impl RebuiltTable for AdjustmentTable {
    fn name(&self) -> &'static str {
        self.rows.name()
    }

    fn clear(&mut self) {
        self.rows.clear();
        self.by_event.clear();
    }

    fn load(&mut self, rows: Vec<Value>) -> saga_common::Result<()> {
        self.rows.load(rows)?;
        self.by_event = self.rows.rows().map(|row| (row.event_id, row.adjustment_id)).collect();
        Ok(())
    }

    fn end_event(&mut self, keep: bool) {
        self.rows.end_event(keep);
    }

    fn take_changes(&mut self) -> saga_common::Result<Vec<Statement>> {
        self.rows.take_changes()
    }
}

/// The inventory's state as a replay rebuilds it.
#[derive(Debug, Default)]
pub(crate) struct RebuiltInventory {
    stock: MemoryTable<StockRow>,
    reservations: MemoryTable<ReservationRow>,
    adjustments: AdjustmentTable,
}

impl RebuiltInventory {
    /// Its tables, for the replay runner (none refers to another).
    pub(crate) fn tables(&mut self) -> Vec<&mut dyn RebuiltTable> {
        vec![&mut self.stock, &mut self.reservations, &mut self.adjustments]
    }
}

impl InventoryStore for RebuiltInventory {
    async fn lock_available(&mut self, skus: &[String]) -> Result<HashMap<String, i64>> {
        Ok(skus
            .iter()
            .filter_map(|sku| self.stock.get(sku).map(|row| (sku.clone(), row.available)))
            .collect())
    }

    async fn shift_units(&mut self, lines: &[StockLine], movement: Movement) -> Result<()> {
        // One statement: every row is computed and checked before any changes. A row joined to
        // several lines is updated once, by one of them, as PostgreSQL does (by the first here).
        let mut moved: Vec<StockRow> = Vec::with_capacity(lines.len());
        for line in lines {
            let Some(row) = self.stock.get(&line.sku) else {
                continue;
            };
            if moved.iter().any(|done| done.sku == line.sku) {
                continue;
            }
            moved.push(row.moved(movement, line.quantity)?);
        }
        for row in moved {
            self.stock.upsert(row);
        }
        Ok(())
    }

    async fn lock_reservation(&mut self, order_id: OrderId) -> Result<Option<Reservation>> {
        Ok(self.reservations.get(&order_id).map(|row| Reservation {
            status: row.status,
            items: row.items.clone(),
            created_event_id: row.created_event_id,
        }))
    }

    async fn insert_reservation(&mut self, new: NewReservation<'_>) -> Result<bool> {
        Ok(self.reservations.insert_new(ReservationRow {
            order_id: new.order_id,
            status: new.status,
            items: new.items.to_vec(),
            created_event_id: new.created_event_id,
            reason: new.reason.map(str::to_owned),
        }))
    }

    async fn transition(
        &mut self,
        order_id: OrderId,
        from: ReservationStatus,
        to: ReservationStatus,
        reason: Option<&str>,
    ) -> Result<bool> {
        if self.reservations.get(&order_id).is_none_or(|row| row.status != from) {
            return Ok(false);
        }
        Ok(self.reservations.update(&order_id, |row| {
            row.status = to;
            if let Some(reason) = reason {
                row.reason = Some(reason.to_owned());
            }
        }))
    }

    async fn claim_tombstone(&mut self, order_id: OrderId, event_id: EventId) -> Result<bool> {
        let unclaimed = self
            .reservations
            .get(&order_id)
            .is_some_and(|row| row.status == ReservationStatus::Released && row.created_event_id.is_none());
        if !unclaimed {
            return Ok(false);
        }
        Ok(self.reservations.update(&order_id, |row| {
            row.created_event_id = Some(event_id);
        }))
    }

    async fn find_adjustment(&mut self, adjustment_id: Uuid) -> Result<Option<Adjustment>> {
        Ok(self.adjustments.rows.get(&adjustment_id).map(Adjustment::from))
    }

    async fn lock_or_create_stock(&mut self, sku: &str) -> Result<StockLevels> {
        // The CHECK constraints hold for the proposed row even when the sku exists already.
        let empty = StockRow {
            sku: sku.to_owned(),
            available: 0,
            reserved: 0,
            committed: 0,
        }
        .checked()?;
        self.stock.insert_new(empty);
        let row = self.stock.get(&sku.to_owned()).ok_or(sqlx::Error::RowNotFound)?;
        Ok(row.levels())
    }

    async fn add_available(&mut self, sku: &str, delta: i64) -> Result<StockLevels> {
        let key = sku.to_owned();
        let row = self.stock.get(&key).ok_or(sqlx::Error::RowNotFound)?;
        let after = StockRow {
            available: bigint(row.available.checked_add(delta))?,
            ..row.clone()
        }
        .checked()?;
        let levels = after.levels();
        self.stock.upsert(after);
        Ok(levels)
    }

    async fn insert_adjustment(&mut self, adjustment: &Adjustment) -> Result<bool> {
        if adjustment.delta == 0 {
            return Err(check_violation("stock_adjustments", "stock_adjustments_delta_check"));
        }
        if adjustment.reason.is_empty() {
            return Err(check_violation("stock_adjustments", "stock_adjustments_reason_check"));
        }
        // ON CONFLICT (adjustment_id) covers that key only: a taken event id is an error.
        if self.adjustments.rows.contains(&adjustment.adjustment_id) {
            return Ok(false);
        }
        if self.adjustments.recorded_for(adjustment.event_id).is_some() {
            return Err(Error::ConstraintViolated {
                table: "stock_adjustments",
                violation: "duplicate key value violates unique constraint \"stock_adjustments_event_id_key\"".into(),
            });
        }
        let levels = adjustment.levels_after;
        Ok(self.adjustments.insert_new(AdjustmentRow {
            adjustment_id: adjustment.adjustment_id,
            sku: adjustment.sku.clone(),
            delta: adjustment.delta,
            reason: adjustment.reason.clone(),
            event_id: adjustment.event_id,
            available_after: levels.available,
            reserved_after: levels.reserved,
            committed_after: levels.committed,
        }))
    }
}

/// The result of bigint arithmetic, or PostgreSQL's error when it leaves the type's range.
fn bigint(value: Option<i64>) -> Result<i64> {
    value.ok_or_else(|| Error::ConstraintViolated {
        table: "stock",
        violation: "bigint out of range".into(),
    })
}

fn check_violation(table: &'static str, constraint: &str) -> Error {
    Error::ConstraintViolated {
        table,
        violation: format!("new row for relation \"{table}\" violates check constraint \"{constraint}\""),
    }
}

#[cfg(test)]
mod tests {
    use saga_contracts::{
        Envelope, FailureReason, InventoryReservationFailed, OrderConfirmed, OrderCreated, OrderFailed, OrderLine,
        SagaEvent,
    };
    use serde_json::json;

    use super::*;
    use crate::adjustments::{self, Adjusted, AdjustmentRequest};
    use crate::handler;

    fn created(order_id: OrderId, lines: &[(&str, i32)]) -> SagaEvent {
        OrderCreated {
            envelope: Envelope::for_command(order_id),
            customer_id: "c-1".into(),
            customer_email: "a@example.com".into(),
            payment_token: "tok_ok".into(),
            total_minor: 100,
            currency: "EUR".into(),
            items: lines
                .iter()
                .map(|(sku, quantity)| OrderLine {
                    sku: (*sku).into(),
                    quantity: *quantity,
                    unit_price_minor: 100,
                })
                .collect(),
            sales_channel: "api".into(),
            idempotency_key: None,
            request_hash: None,
            deadline_at: None,
        }
        .into()
    }

    fn confirmed(order_id: OrderId) -> SagaEvent {
        OrderConfirmed {
            envelope: Envelope::for_command(order_id),
            customer_email: "a@example.com".into(),
            total_minor: 100,
            currency: "EUR".into(),
        }
        .into()
    }

    fn failed(order_id: OrderId, reason: FailureReason) -> SagaEvent {
        OrderFailed {
            envelope: Envelope::for_command(order_id),
            reason: reason.to_string(),
            failure_reason: reason,
            customer_email: "a@example.com".into(),
            total_minor: 100,
            currency: "EUR".into(),
        }
        .into()
    }

    async fn restock(state: &mut RebuiltInventory, sku: &str, delta: i64) -> Result<Adjusted> {
        let request = AdjustmentRequest {
            adjustment_id: Uuid::new_v4(),
            sku,
            delta,
            reason: "restock",
            event_id: EventId::new(),
        };
        adjustments::apply(state, request).await
    }

    fn stock(state: &RebuiltInventory, sku: &str) -> Option<(i64, i64, i64)> {
        let row = state.stock.get(&sku.to_owned())?;
        Some((row.available, row.reserved, row.committed))
    }

    fn status(state: &RebuiltInventory, order_id: OrderId) -> Option<ReservationStatus> {
        state.reservations.get(&order_id).map(|row| row.status)
    }

    /// Applies `event` as the replay runner does: its changes are kept if it succeeds and
    /// undone if it fails.
    async fn apply_or_undo(state: &mut RebuiltInventory, event: &SagaEvent) -> Result<Vec<SagaEvent>> {
        let applied = handler::apply(state, event).await;
        for table in state.tables() {
            table.end_event(applied.is_ok());
        }
        applied
    }

    #[tokio::test]
    async fn a_restocked_order_is_reserved_then_committed_moving_its_units_column_by_column() {
        let mut state = RebuiltInventory::default();
        restock(&mut state, "A", 5).await.expect("restocked");
        restock(&mut state, "B", 1).await.expect("restocked");
        let order = OrderId::new();

        let reserved = apply_or_undo(&mut state, &created(order, &[("A", 2), ("B", 1), ("A", 1)]))
            .await
            .expect("reserved");
        assert!(matches!(reserved.as_slice(), [SagaEvent::InventoryReserved(_)]));
        assert_eq!(stock(&state, "A"), Some((2, 3, 0)));
        assert_eq!(stock(&state, "B"), Some((0, 1, 0)));
        assert_eq!(status(&state, order), Some(ReservationStatus::Reserved));

        apply_or_undo(&mut state, &confirmed(order)).await.expect("committed");
        assert_eq!(stock(&state, "A"), Some((2, 0, 3)));
        assert_eq!(stock(&state, "B"), Some((0, 0, 1)));
        assert_eq!(status(&state, order), Some(ReservationStatus::Committed));
        assert!(
            apply_or_undo(&mut state, &confirmed(order))
                .await
                .expect("nothing")
                .is_empty(),
            "a second confirmation commits nothing more"
        );
        assert_eq!(stock(&state, "A"), Some((2, 0, 3)));
    }

    #[tokio::test]
    async fn many_orders_on_one_sku_take_exactly_the_units_there_are() {
        let mut state = RebuiltInventory::default();
        restock(&mut state, "A", 3).await.expect("restocked");
        let orders: Vec<OrderId> = (0..5).map(|_| OrderId::new()).collect();
        for order in &orders {
            apply_or_undo(&mut state, &created(*order, &[("A", 1)]))
                .await
                .expect("decided");
        }
        let statuses: Vec<_> = orders.iter().map(|order| status(&state, *order)).collect();
        assert_eq!(statuses[..3], [Some(ReservationStatus::Reserved); 3]);
        assert_eq!(statuses[3..], [Some(ReservationStatus::Rejected); 2]);
        assert_eq!(stock(&state, "A"), Some((0, 3, 0)));

        apply_or_undo(&mut state, &failed(orders[0], FailureReason::PaymentDeclined))
            .await
            .expect("released");
        assert_eq!(stock(&state, "A"), Some((1, 2, 0)));
        let released = state.reservations.get(&orders[0]).expect("kept");
        assert_eq!(released.status, ReservationStatus::Released);
        assert_eq!(released.reason.as_deref(), Some("payment_declined"));
    }

    #[tokio::test]
    async fn an_order_out_of_stock_is_rejected_with_its_demand_and_reason_and_moves_nothing() {
        let mut state = RebuiltInventory::default();
        restock(&mut state, "A", 1).await.expect("restocked");
        let order = OrderId::new();
        let caused = apply_or_undo(&mut state, &created(order, &[("A", 2)]))
            .await
            .expect("decided");
        assert!(
            matches!(caused.as_slice(), [SagaEvent::InventoryReservationFailed(failed)]
            if failed.failure_reason == FailureReason::OutOfStock && failed.unavailable_skus == ["A"])
        );
        let row = state.reservations.get(&order).expect("recorded");
        assert_eq!(row.status, ReservationStatus::Rejected);
        assert_eq!(row.reason.as_deref(), Some("out_of_stock"));
        assert_eq!(
            row.items,
            [StockLine {
                sku: "A".into(),
                quantity: 2
            }]
        );
        assert_eq!(stock(&state, "A"), Some((1, 0, 0)));
    }

    #[tokio::test]
    async fn an_order_failed_before_it_was_created_leaves_a_tombstone_its_creation_claims() {
        let mut state = RebuiltInventory::default();
        restock(&mut state, "A", 5).await.expect("restocked");
        let order = OrderId::new();
        apply_or_undo(&mut state, &failed(order, FailureReason::DeadlineExceeded))
            .await
            .expect("tombstone");
        let tombstone = state.reservations.get(&order).expect("tombstone").clone();
        assert_eq!(
            (tombstone.status, tombstone.items.len(), tombstone.created_event_id),
            (ReservationStatus::Released, 0, None)
        );

        let creation = created(order, &[("A", 1)]);
        let caused = apply_or_undo(&mut state, &creation).await.expect("claimed");
        assert!(matches!(
            caused.as_slice(),
            [SagaEvent::InventoryReservationFailed(InventoryReservationFailed {
                failure_reason: FailureReason::OrderAlreadyFailed,
                ..
            })]
        ));
        let claimed = state.reservations.get(&order).expect("kept");
        assert_eq!(claimed.created_event_id, Some(creation.event_id()));
        assert_eq!(claimed.reason.as_deref(), Some("deadline_exceeded"));
        assert_eq!(stock(&state, "A"), Some((5, 0, 0)), "nothing reserved");
    }

    #[tokio::test]
    async fn a_movement_a_check_constraint_refuses_fails_the_event_and_is_undone_whole() {
        let mut state = RebuiltInventory::default();
        let order = OrderId::new();
        // Read back as a resumed replay reads its rows (to_jsonb, with the columns it leaves
        // to their defaults): B holds fewer reserved units than the reservation says.
        state
            .stock
            .load(vec![
                json!({"sku": "A", "available": 0, "reserved": 2, "committed": 0}),
                json!({"sku": "B", "available": 0, "reserved": 0, "committed": 0}),
            ])
            .expect("stock reads back");
        state
            .reservations
            .load(vec![json!({
                "order_id": order,
                "status": "reserved",
                "items": [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}],
                "created_event_id": EventId::new(),
                "reason": null,
                "created_at": "2026-12-02T06:04:20.288882+00:00",
                "updated_at": "2026-12-02T06:04:20.288882+00:00"
            })])
            .expect("reservations read back");

        let refused = apply_or_undo(&mut state, &confirmed(order)).await;
        assert!(
            matches!(&refused, Err(Error::ConstraintViolated { table: "stock", violation })
                if violation.contains("stock_reserved_check")),
            "{refused:?}"
        );
        assert_eq!(
            status(&state, order),
            Some(ReservationStatus::Reserved),
            "the transition is undone"
        );
        assert_eq!(stock(&state, "A"), Some((0, 2, 0)), "no row of the statement moved");
        let written: usize = state
            .tables()
            .into_iter()
            .map(|table| table.take_changes().expect("changes").len())
            .sum();
        assert_eq!(written, 0, "nothing to write");
    }

    #[tokio::test]
    async fn stock_columns_overflowing_a_bigint_are_refused_as_postgresql_refuses_them() {
        let mut state = RebuiltInventory::default();
        restock(&mut state, "A", i64::MAX).await.expect("restocked");
        let overflow = state.add_available("A", 1).await;
        assert!(
            matches!(&overflow, Err(Error::ConstraintViolated { violation, .. }) if violation == "bigint out of range"),
            "{overflow:?}"
        );
        let below_zero = state.add_available("A", i64::MIN).await;
        assert!(matches!(below_zero, Err(Error::ConstraintViolated { .. })));
        assert_eq!(stock(&state, "A"), Some((i64::MAX, 0, 0)));
    }

    #[tokio::test]
    async fn adding_to_a_sku_without_a_row_finds_no_row() {
        let mut state = RebuiltInventory::default();
        assert!(matches!(
            state.add_available("A", 1).await,
            Err(Error::Database(sqlx::Error::RowNotFound))
        ));
    }

    #[tokio::test]
    async fn a_malformed_sku_gets_no_stock_row() {
        let mut state = RebuiltInventory::default();
        for bad in ["", "a b", &"x".repeat(65)] {
            let refused = restock(&mut state, bad, 1).await;
            assert!(
                matches!(&refused, Err(Error::ConstraintViolated { violation, .. }) if violation.contains("stock_sku_check")),
                "{bad:?}: {refused:?}"
            );
        }
        assert!(state.stock.is_empty());
    }

    #[tokio::test]
    async fn an_adjustment_is_recorded_once_per_id_and_once_per_event() {
        let mut state = RebuiltInventory::default();
        let Adjusted::Applied(first) = restock(&mut state, "A", 5).await.expect("applied") else {
            panic!("not applied");
        };
        assert_eq!(
            first.levels_after,
            StockLevels {
                available: 5,
                reserved: 0,
                committed: 0
            }
        );

        let same_id = Adjustment {
            delta: 7,
            event_id: EventId::new(),
            ..first.clone()
        };
        assert!(
            !state.insert_adjustment(&same_id).await.expect("conflict"),
            "ON CONFLICT DO NOTHING"
        );

        let same_event = Adjustment {
            adjustment_id: Uuid::new_v4(),
            ..first.clone()
        };
        let refused = state.insert_adjustment(&same_event).await;
        assert!(
            matches!(&refused, Err(Error::ConstraintViolated { violation, .. }) if violation.contains("event_id")),
            "{refused:?}"
        );
        let zero = Adjustment {
            adjustment_id: Uuid::new_v4(),
            delta: 0,
            event_id: EventId::new(),
            ..first
        };
        assert!(matches!(
            state.insert_adjustment(&zero).await,
            Err(Error::ConstraintViolated { .. })
        ));
        assert_eq!(state.adjustments.rows.len(), 1);
    }

    #[tokio::test]
    async fn an_event_id_whose_adjustment_was_undone_may_be_recorded_again() {
        let mut state = RebuiltInventory::default();
        let event_id = EventId::new();
        let adjustment = |adjustment_id| Adjustment {
            adjustment_id,
            sku: "A".into(),
            delta: 1,
            reason: "restock".into(),
            event_id,
            levels_after: StockLevels {
                available: 1,
                reserved: 0,
                committed: 0,
            },
        };
        assert!(state
            .insert_adjustment(&adjustment(Uuid::new_v4()))
            .await
            .expect("inserted"));
        state.adjustments.end_event(false);
        assert!(state.adjustments.rows.is_empty());
        assert!(state
            .insert_adjustment(&adjustment(Uuid::new_v4()))
            .await
            .expect("inserted again"));
    }

    #[tokio::test]
    async fn loaded_adjustments_are_indexed_by_their_event() {
        let mut state = RebuiltInventory::default();
        let event_id = EventId::new();
        state
            .adjustments
            .load(vec![json!({
                "adjustment_id": Uuid::new_v4(), "sku": "A", "delta": 5, "reason": "restock",
                "event_id": event_id, "available_after": 5, "reserved_after": 0, "committed_after": 0,
                "created_at": "2026-12-02T06:04:20.288882+00:00"
            })])
            .expect("reads back");
        let again = Adjustment {
            adjustment_id: Uuid::new_v4(),
            sku: "A".into(),
            delta: 5,
            reason: "restock".into(),
            event_id,
            levels_after: StockLevels {
                available: 10,
                reserved: 0,
                committed: 0,
            },
        };
        assert!(state.insert_adjustment(&again).await.is_err());
    }

    #[test]
    fn every_row_names_its_table_columns_and_nothing_else() {
        let columns = |row: Value| -> Vec<String> {
            let mut names: Vec<String> = row.as_object().expect("an object").keys().cloned().collect();
            names.sort();
            names
        };
        let stock = StockRow {
            sku: "A".into(),
            available: 1,
            reserved: 0,
            committed: 0,
        };
        assert_eq!(
            columns(serde_json::to_value(stock).expect("writes")),
            ["available", "committed", "reserved", "sku"]
        );
        let reservation = ReservationRow {
            order_id: OrderId::new(),
            status: ReservationStatus::Released,
            items: Vec::new(),
            created_event_id: None,
            reason: None,
        };
        let written = serde_json::to_value(reservation).expect("writes");
        assert_eq!(written["status"], "released");
        assert_eq!(written["items"], json!([]));
        assert_eq!(
            columns(written),
            ["created_event_id", "items", "order_id", "reason", "status"]
        );
        let adjustment = AdjustmentRow {
            adjustment_id: Uuid::new_v4(),
            sku: "A".into(),
            delta: 1,
            reason: "restock".into(),
            event_id: EventId::new(),
            available_after: 1,
            reserved_after: 0,
            committed_after: 0,
        };
        assert_eq!(
            columns(serde_json::to_value(adjustment).expect("writes")),
            [
                "adjustment_id",
                "available_after",
                "committed_after",
                "delta",
                "event_id",
                "reason",
                "reserved_after",
                "sku"
            ]
        );
    }
}
