//! Rebuilding the inventory's state from its topics: the order events re-run the live handler's
//! reservation decisions ([`crate::handler::apply`]), and the recorded stock adjustments are
//! applied as the HTTP API applied them ([`crate::adjustments::apply`]). Both run on the state
//! the rebuild holds in memory ([`crate::rebuilt`]), the same code the live service runs on its
//! transaction.
//!
//! The inventory's own decision events (reserved, reservation_failed, committed, released) are
//! not applied: re-running the order event that caused each one already changed the state, and
//! the runner compares the re-run decision with the recorded one. Nothing here publishes.

use async_trait::async_trait;
use saga_common::consumer::{ConsumedEvent, HandlerError};
use saga_common::replay::memory::RebuiltTable;
use saga_common::replay::{Rebuild, Rebuilding, VerifiedTable};
use saga_contracts::{EventType, SagaEvent, StockAdjusted, Topic};
use uuid::Uuid;

use crate::adjustments::{self, Adjusted, AdjustmentRequest};
use crate::error::Result;
use crate::handler;
use crate::rebuilt::RebuiltInventory;
use crate::store::InventoryStore;

/// Namespace of the adjustment ids derived for stock adjustments recorded without one
/// (inventory.stock_adjusted v1): the version 5 UUID of the event id in this namespace.
const DERIVED_ADJUSTMENT_IDS: Uuid = Uuid::from_u128(0xc226_6b0e_ccba_42a1_b106_7a59_25fd_65b9);

/// The inventory service's part in replay: the state it rebuilds.
#[derive(Debug, Default)]
pub struct Rebuilder {
    state: RebuiltInventory,
}

/// The inventory service's [`Rebuild`].
pub fn rebuilder() -> Rebuilder {
    Rebuilder::default()
}

/// What the rebuild reads, re-runs and compares.
static REBUILDING: Rebuilding = Rebuilding {
    service: crate::SPEC,
    migrations: &crate::MIGRATIONS,
    consumes: &[Topic::Orders],
    records_on: &[Topic::Inventory],
    decisions: &[
        EventType::InventoryReserved,
        EventType::InventoryReservationFailed,
        EventType::InventoryCommitted,
        EventType::InventoryReleased,
    ],
    tables: &[
        VerifiedTable {
            name: "stock",
            key: &["sku"],
            ignored: &[],
        },
        VerifiedTable {
            name: "reservations",
            key: &["order_id"],
            // Stamped with now() when the live service decided or changed the reservation.
            ignored: &["created_at", "updated_at"],
        },
        VerifiedTable {
            name: "stock_adjustments",
            key: &["adjustment_id"],
            // Stamped with now() when the live service recorded the adjustment.
            ignored: &["created_at"],
        },
    ],
};

#[async_trait]
impl Rebuild for Rebuilder {
    fn rebuilding(&self) -> &'static Rebuilding {
        &REBUILDING
    }

    async fn apply(&mut self, event: &ConsumedEvent) -> Result<Vec<SagaEvent>, HandlerError> {
        match &event.event {
            SagaEvent::OrderCreated(_) | SagaEvent::OrderConfirmed(_) | SagaEvent::OrderFailed(_) => {
                Ok(handler::apply(&mut self.state, &event.event).await?)
            }
            SagaEvent::StockAdjusted(adjusted) => {
                apply_recorded_adjustment(&mut self.state, adjusted).await?;
                Ok(Vec::new())
            }
            // The inventory's own decisions: re-running their order events already changed the
            // state, and the runner compares them.
            _ => Ok(Vec::new()),
        }
    }

    fn rebuilt_tables(&mut self) -> Vec<&mut dyn RebuiltTable> {
        self.state.tables()
    }
}

/// Applies a recorded stock adjustment as the HTTP API applied it live. The same event read
/// twice (the outbox publishes at least once) finds its adjustment id recorded and changes
/// nothing.
#[tracing::instrument(skip_all, fields(sku = %adjusted.sku, event_id = %adjusted.envelope.event_id))]
async fn apply_recorded_adjustment<S: InventoryStore>(store: &mut S, adjusted: &StockAdjusted) -> Result<()> {
    let event_id = adjusted.envelope.event_id;
    let request = AdjustmentRequest {
        adjustment_id: recorded_adjustment_id(adjusted),
        sku: &adjusted.sku,
        delta: i64::from(adjusted.delta),
        reason: &adjusted.reason,
        event_id,
    };
    match adjustments::apply(store, request).await? {
        Adjusted::Applied(_) => {}
        Adjusted::AlreadyRecorded(earlier) if earlier.event_id == event_id => {
            tracing::debug!("stock adjustment read again; applied once");
        }
        Adjusted::AlreadyRecorded(earlier) => {
            // Live answers a reused id from its record and records no second event, so two
            // events with one id contradict the live service; the first one stands, as live.
            tracing::warn!(
                adjustment_id = %earlier.adjustment_id,
                earlier_event_id = %earlier.event_id,
                "a second inventory.stock_adjusted with a recorded adjustment id; ignored"
            );
        }
    }
    Ok(())
}

/// The adjustment id of a recorded adjustment: the one it carries, or for events written
/// before adjustment ids were recorded (v1), one derived from its event id, so that the same
/// event always yields the same id (and a duplicate of it is applied once).
fn recorded_adjustment_id(adjusted: &StockAdjusted) -> Uuid {
    match adjusted.adjustment_id {
        Some(adjustment_id) => adjustment_id.uuid(),
        None => Uuid::new_v5(&DERIVED_ADJUSTMENT_IDS, adjusted.envelope.event_id.uuid().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use saga_contracts::{AdjustmentId, Envelope};

    use super::*;

    fn adjusted(adjustment_id: Option<AdjustmentId>) -> StockAdjusted {
        StockAdjusted {
            envelope: Envelope::for_command_without_order(),
            sku: "A".into(),
            delta: 5,
            reason: "restock".into(),
            adjustment_id,
        }
    }

    #[test]
    fn a_recorded_adjustment_id_is_used_as_recorded() {
        let adjustment_id = AdjustmentId::new();
        assert_eq!(
            recorded_adjustment_id(&adjusted(Some(adjustment_id))),
            adjustment_id.uuid()
        );
    }

    #[test]
    fn an_adjustment_recorded_without_an_id_gets_the_same_derived_id_every_time() {
        let v1 = adjusted(None);
        let derived = recorded_adjustment_id(&v1);
        assert_eq!(recorded_adjustment_id(&v1.clone()), derived);
        assert_eq!(derived.get_version_num(), 5);
        assert_ne!(derived, v1.envelope.event_id.uuid());
    }

    #[test]
    fn adjustments_recorded_without_an_id_get_different_ids_per_event() {
        assert_ne!(
            recorded_adjustment_id(&adjusted(None)),
            recorded_adjustment_id(&adjusted(None))
        );
    }

    fn consumed(event: impl Into<SagaEvent>) -> ConsumedEvent {
        ConsumedEvent {
            event: event.into(),
            topic: "inventory".into(),
            partition: 0,
            offset: 0,
            traceparent: None,
        }
    }

    /// The rows each table would write now, by table name.
    fn written_rows(rebuilder: &mut Rebuilder) -> Vec<(&'static str, Vec<serde_json::Value>)> {
        rebuilder
            .rebuilt_tables()
            .into_iter()
            .map(|table| {
                let rows = table
                    .take_changes()
                    .expect("changes")
                    .into_iter()
                    .flat_map(|statement| statement.parsed_rows())
                    .collect();
                (table.name(), rows)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_recorded_adjustment_read_twice_is_applied_once() {
        let mut rebuilder = rebuilder();
        let restock = adjusted(Some(AdjustmentId::new()));
        for _ in 0..2 {
            let emitted = rebuilder.apply(&consumed(restock.clone())).await.expect("applied");
            assert!(emitted.is_empty(), "an adjustment is a fact, not a decision");
        }
        let written = written_rows(&mut rebuilder);
        assert_eq!(written[0].0, "stock");
        assert_eq!(
            written[0].1,
            [serde_json::json!({"sku": "A", "available": 5, "reserved": 0, "committed": 0})]
        );
        assert_eq!(written[2].0, "stock_adjustments");
        assert_eq!(written[2].1.len(), 1);
        assert_eq!(written[2].1[0]["event_id"], restock.envelope.event_id.to_string());
    }

    #[test]
    fn the_rebuilt_tables_are_the_verified_ones() {
        let mut rebuilder = rebuilder();
        let verified: Vec<&str> = rebuilder.tables().iter().map(|table| table.name).collect();
        let rebuilt: Vec<&str> = rebuilder.rebuilt_tables().iter().map(|table| table.name()).collect();
        assert_eq!(rebuilt, verified);
    }

    #[test]
    fn the_inventory_replays_the_orders_it_consumes_and_compares_its_own_decisions() {
        let rebuilder = rebuilder();
        assert_eq!(rebuilder.consumes(), &[Topic::Orders]);
        assert_eq!(rebuilder.records_on(), &[Topic::Inventory]);
        for decision in rebuilder.decisions() {
            assert_eq!(decision.topic(), Topic::Inventory, "{decision}");
        }
        assert!(!rebuilder.decisions().contains(&EventType::StockAdjusted));
    }

    #[test]
    fn every_business_table_is_verified_without_its_bookkeeping() {
        let tables = rebuilder().tables();
        let names: Vec<&str> = tables.iter().map(|table| table.name).collect();
        assert_eq!(names, ["stock", "reservations", "stock_adjustments"]);
        for table in tables {
            assert!(!table.key.is_empty(), "{} has a key", table.name);
            for ignored in table.ignored {
                assert!(!table.key.contains(ignored), "{}.{ignored} is not both", table.name);
            }
        }
    }
}
