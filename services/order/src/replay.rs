//! Rebuilding the order database from the topics: the orders as order.created recorded them, the
//! saga decision re-run on the payment and inventory outcomes with the live handler's code, and
//! the recorded decisions nothing replayed re-runs (the deadline's, or one whose cause precedes
//! the replayed events) taken as facts. The state is held in memory ([`RebuiltOrders`], an
//! [`OrderStore`]) and written in bulk by the replay runner. Nothing leaves the database: no
//! event is published.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use saga_common::consumer::{ConsumedEvent, HandlerError};
use saga_common::replay::memory::{MemoryTable, RebuiltTable, Row};
use saga_common::replay::{Rebuild, Rebuilding, VerifiedTable};
use saga_contracts::{EventId, EventType, OrderId, SagaEvent, Topic};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{Order, OrderStatus, RecordedDecision, SagaState, ValidOrder};
use crate::error::{Error, Result};
use crate::handler;
use crate::store::{self, OrderStore, StoredSagaState};

/// The order service's part in replay.
#[derive(Debug)]
pub struct Rebuilder {
    /// The deadline of orders whose order.created carries none (written before it did): the
    /// saga deadline the live service was configured with then.
    default_deadline: Duration,
    /// The rebuilt state.
    orders: RebuiltOrders,
}

impl Rebuilder {
    /// A rebuilder giving orders recorded without a deadline `default_deadline` from when they
    /// were placed (normally [`crate::DEFAULT_SAGA_DEADLINE`]).
    pub fn new(default_deadline: Duration) -> Self {
        Self {
            default_deadline,
            orders: RebuiltOrders::default(),
        }
    }

    /// Applies one replayed event; the decision it re-ran, if any.
    async fn apply_event(&mut self, event: &SagaEvent) -> Result<Option<SagaEvent>> {
        let orders = &mut self.orders;
        if let SagaEvent::OrderCreated(created) = event {
            // The relay publishes at least once, and replay reads its own topic without an
            // inbox: an order already stored was placed by an earlier copy of this event.
            if orders.lock_order(created.envelope.order_id).await?.is_none() {
                handler::apply_created(orders, created, self.default_deadline).await?;
            }
            return Ok(None);
        }
        if let (Some(order_id), Some(decision)) = (event.order_id(), RecordedDecision::of(event)) {
            apply_recorded_decision(orders, order_id, event, decision).await?;
            return Ok(None);
        }
        handler::apply(orders, event).await
    }
}

/// Applies an order.confirmed or order.failed read back from the orders topic. Its timeline
/// entry is always recorded: the decision replay re-ran has an event id of its own, so only the
/// recorded event gives the timeline the entry the live service wrote. An order still pending
/// takes the decision as a fact; a decided one keeps its state. Either way the order is stamped
/// with when the recorded decision was made.
async fn apply_recorded_decision(
    orders: &mut RebuiltOrders,
    order_id: OrderId,
    event: &SagaEvent,
    decision: RecordedDecision,
) -> Result<()> {
    let order = handler::lock_order_of(orders, order_id, event).await?;
    orders.record_timeline(event, store::SOURCE).await?;
    if let Some(state) = order.state.decided_as(decision) {
        tracing::debug!(%order_id, event_id = %event.event_id(), ?decision, "recorded decision taken as a fact");
        orders.save_state(order_id, &state).await?;
    }
    let decided_at = store::timestamp(order_id, "decided_at", event.occurred_at_millis())?;
    orders.set_decided_at(order_id, decided_at).await
}

/// The order database as replay rebuilds it, in memory.
#[derive(Debug)]
pub struct RebuiltOrders {
    orders: MemoryTable<OrderRow>,
    /// Only ever inserted: once written, only the keys stay in memory.
    timeline: MemoryTable<TimelineRow>,
    idempotency_keys: MemoryTable<IdempotencyKeyRow>,
}

impl Default for RebuiltOrders {
    fn default() -> Self {
        Self {
            orders: MemoryTable::default(),
            timeline: MemoryTable::insert_only(),
            idempotency_keys: MemoryTable::default(),
        }
    }
}

/// A row of `orders`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderRow {
    order_id: OrderId,
    customer_id: String,
    customer_email: String,
    currency: String,
    total_minor: i64,
    payment_token: String,
    items: Value,
    status: String,
    failure_reason: Option<String>,
    payment_outcome: Option<String>,
    inventory_outcome: Option<String>,
    deadline_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    decided_at: Option<DateTime<Utc>>,
}

impl Row for OrderRow {
    type Key = OrderId;
    const TABLE: &'static str = "orders";
    const KEY_COLUMNS: &'static [&'static str] = &["order_id"];
    fn key(&self) -> OrderId {
        self.order_id
    }
}

/// A row of `order_timeline` (`recorded_at` takes its default when written).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TimelineRow {
    event_id: EventId,
    order_id: OrderId,
    event_type: String,
    source: String,
    occurred_at: DateTime<Utc>,
}

impl Row for TimelineRow {
    type Key = EventId;
    const TABLE: &'static str = "order_timeline";
    const KEY_COLUMNS: &'static [&'static str] = &["event_id"];
    fn key(&self) -> EventId {
        self.event_id
    }
}

/// A row of `idempotency_keys` (`created_at` takes its default when written).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IdempotencyKeyRow {
    idempotency_key: String,
    request_hash: String,
    order_id: OrderId,
}

impl Row for IdempotencyKeyRow {
    type Key = String;
    const TABLE: &'static str = "idempotency_keys";
    const KEY_COLUMNS: &'static [&'static str] = &["idempotency_key"];
    fn key(&self) -> String {
        self.idempotency_key.clone()
    }
}

impl RebuiltOrders {
    /// Stamps a decided order with when its recorded decision says it was decided (replay
    /// decides later than the live service did); only replay knows that time, from the record.
    async fn set_decided_at(&mut self, order_id: OrderId, decided_at: DateTime<Utc>) -> Result<()> {
        if self
            .orders
            .get(&order_id)
            .is_some_and(|row| row.status != OrderStatus::Pending.as_str())
        {
            self.orders.update(&order_id, |row| row.decided_at = Some(decided_at));
        }
        Ok(())
    }
}

impl OrderStore for RebuiltOrders {
    async fn insert_order(
        &mut self,
        order_id: OrderId,
        order: &ValidOrder,
        created_at: DateTime<Utc>,
        deadline_at: DateTime<Utc>,
    ) -> Result<()> {
        let request = &order.request;
        let inserted = self.orders.insert_new(OrderRow {
            order_id,
            customer_id: request.customer_id.clone(),
            customer_email: request.customer_email.clone(),
            currency: request.currency.clone(),
            total_minor: order.total_minor,
            payment_token: request.payment_token.clone(),
            items: serde_json::to_value(&request.items)?,
            status: OrderStatus::Pending.as_str().to_owned(),
            failure_reason: None,
            payment_outcome: None,
            inventory_outcome: None,
            deadline_at,
            created_at,
            decided_at: None,
        });
        if inserted {
            Ok(())
        } else {
            Err(Error::DuplicateKey {
                table: "orders",
                key: order_id.to_string(),
            })
        }
    }

    async fn record_timeline(&mut self, event: &SagaEvent, source: &str) -> Result<()> {
        let Some(order_id) = event.order_id().filter(|order_id| self.orders.contains(order_id)) else {
            return Ok(());
        };
        let occurred_at = DateTime::from_timestamp_millis(event.occurred_at_millis()).unwrap_or_else(Utc::now);
        self.timeline.insert_new(TimelineRow {
            event_id: event.event_id(),
            order_id,
            event_type: event.event_type().as_str().to_owned(),
            source: source.to_owned(),
            occurred_at,
        });
        Ok(())
    }

    async fn lock_order(&mut self, order_id: OrderId) -> Result<Option<Order>> {
        let Some(row) = self.orders.get(&order_id) else {
            return Ok(None);
        };
        let stored = StoredSagaState {
            status: row.status.clone(),
            failure_reason: row.failure_reason.clone(),
            payment_outcome: row.payment_outcome.clone(),
            inventory_outcome: row.inventory_outcome.clone(),
        };
        Ok(Some(Order {
            order_id,
            customer_email: row.customer_email.clone(),
            total_minor: row.total_minor,
            currency: row.currency.clone(),
            state: stored.read(order_id)?,
        }))
    }

    async fn save_state(&mut self, order_id: OrderId, state: &SagaState) -> Result<()> {
        let stored = StoredSagaState::of(state);
        self.orders.update(&order_id, |row| {
            if stored.status != OrderStatus::Pending.as_str() && row.decided_at.is_none() {
                row.decided_at = Some(Utc::now());
            }
            row.status = stored.status;
            row.failure_reason = stored.failure_reason;
            row.payment_outcome = stored.payment_outcome;
            row.inventory_outcome = stored.inventory_outcome;
        });
        Ok(())
    }

    async fn remember_idempotency_key(&mut self, key: &str, request_hash: &str, order_id: OrderId) -> Result<()> {
        let inserted = self.idempotency_keys.insert_new(IdempotencyKeyRow {
            idempotency_key: key.to_owned(),
            request_hash: request_hash.to_owned(),
            order_id,
        });
        if inserted {
            Ok(())
        } else {
            Err(Error::DuplicateKey {
                table: "idempotency_keys",
                key: key.to_owned(),
            })
        }
    }
}

/// The business tables and the columns that legitimately differ from the live database.
const TABLES: &[VerifiedTable] = &[
    VerifiedTable {
        name: "orders",
        key: &["order_id"],
        // Rebuilt, both are the times the recorded events carry. created_at equals the live one
        // except for orders placed before the service stored order.created's time (it took its
        // clock then, milliseconds later). decided_at is the live service's clock when it
        // decided, milliseconds after the time its decision carries, and replay's clock while
        // the recorded decision is not on the topic yet. traceparent names the live request's
        // span, which no event records.
        ignored: &["created_at", "decided_at", "traceparent"],
    },
    VerifiedTable {
        name: "order_timeline",
        key: &["event_id"],
        // When the entry was written, not when its event happened.
        ignored: &["recorded_at"],
    },
    VerifiedTable {
        name: "idempotency_keys",
        key: &["idempotency_key"],
        // When the key was written: the placing transaction's time live, replay's time rebuilt.
        ignored: &["created_at"],
    },
];

/// What the rebuild reads, re-runs and compares.
static REBUILDING: Rebuilding = Rebuilding {
    service: crate::SPEC,
    migrations: &crate::MIGRATIONS,
    consumes: handler::CONSUMED_TOPICS,
    records_on: &[Topic::Orders],
    decisions: &[EventType::OrderConfirmed, EventType::OrderFailed],
    tables: TABLES,
};

#[async_trait]
impl Rebuild for Rebuilder {
    fn rebuilding(&self) -> &'static Rebuilding {
        &REBUILDING
    }

    async fn apply(&mut self, consumed: &ConsumedEvent) -> Result<Vec<SagaEvent>, HandlerError> {
        Ok(self.apply_event(&consumed.event).await?.into_iter().collect())
    }

    fn rebuilt_tables(&mut self) -> Vec<&mut dyn RebuiltTable> {
        let orders = &mut self.orders;
        vec![&mut orders.orders, &mut orders.timeline, &mut orders.idempotency_keys]
    }
}

#[cfg(test)]
mod tests {
    use saga_contracts::{Envelope, InventoryReserved, OrderCreated, PaymentSucceeded, StockLine};

    use super::*;
    use crate::domain::{validate, OrderLineRequest, PlaceOrderRequest, Placement};

    fn created() -> OrderCreated {
        let request = PlaceOrderRequest {
            customer_id: "c-1".into(),
            customer_email: "a@example.com".into(),
            currency: "USD".into(),
            payment_token: "tok_ok".into(),
            items: vec![OrderLineRequest {
                sku: "SKU-1".into(),
                quantity: 2,
                unit_price_minor: 1999,
            }],
        };
        let placement = Placement {
            idempotency_key: Some("key-1".into()),
            request_hash: Some("hash-1".into()),
            deadline_at: 1_700_000_060_000,
        };
        validate(request)
            .expect("valid")
            .created_event(Envelope::for_command(OrderId::new()).at(1_700_000_000_000), placement)
    }

    fn consumed(event: SagaEvent) -> ConsumedEvent {
        ConsumedEvent {
            event,
            topic: "payments".into(),
            partition: 0,
            offset: 0,
            traceparent: None,
        }
    }

    #[tokio::test]
    async fn the_in_memory_orders_take_an_order_and_decide_it_as_the_database_would() {
        let mut rebuilder = Rebuilder::new(crate::DEFAULT_SAGA_DEADLINE);
        let created = created();
        let order_id = created.envelope.order_id;
        assert_eq!(
            rebuilder.apply(&consumed(created.clone().into())).await.ok(),
            Some(vec![])
        );
        // A second copy of order.created (the relay publishes at least once) changes nothing.
        assert_eq!(
            rebuilder.apply(&consumed(created.clone().into())).await.ok(),
            Some(vec![])
        );
        let paid = PaymentSucceeded {
            envelope: Envelope::caused_by(&created),
            payment_id: saga_contracts::PaymentId::new(),
            amount_minor: 3998,
            currency: "USD".into(),
            gateway_reference: None,
        };
        assert_eq!(rebuilder.apply(&consumed(paid.into())).await.ok(), Some(vec![]));
        let reserved = InventoryReserved {
            envelope: Envelope::caused_by(&created),
            items: vec![StockLine {
                sku: "SKU-1".into(),
                quantity: 2,
            }],
        };
        let decided = rebuilder.apply(&consumed(reserved.into())).await.expect("applied");
        assert_eq!(
            decided.iter().map(SagaEvent::event_type).collect::<Vec<_>>(),
            [EventType::OrderConfirmed]
        );

        let orders = &rebuilder.orders;
        let row = orders.orders.get(&order_id).expect("the order");
        assert_eq!(
            (
                row.status.as_str(),
                row.payment_outcome.as_deref(),
                row.inventory_outcome.as_deref()
            ),
            ("CONFIRMED", Some("captured"), Some("reserved"))
        );
        assert_eq!(row.created_at.timestamp_millis(), 1_700_000_000_000);
        assert_eq!(row.deadline_at.timestamp_millis(), 1_700_000_060_000);
        assert!(row.decided_at.is_some());
        // order.created, payment.success and inventory.reserved; the re-run decision is not an
        // entry: the recorded order.confirmed gives the timeline its entry.
        assert_eq!(orders.timeline.len(), 3);
        assert_eq!(
            orders.idempotency_keys.get(&"key-1".to_owned()).map(|key| key.order_id),
            Some(order_id)
        );
    }

    #[tokio::test]
    async fn an_outcome_of_an_order_never_placed_is_refused() {
        let mut rebuilder = Rebuilder::new(crate::DEFAULT_SAGA_DEADLINE);
        let paid = PaymentSucceeded {
            envelope: Envelope::for_command(OrderId::new()),
            payment_id: saga_contracts::PaymentId::new(),
            amount_minor: 1,
            currency: "USD".into(),
            gateway_reference: None,
        };
        let refused = rebuilder.apply(&consumed(paid.into())).await;
        assert!(matches!(refused, Err(HandlerError::Permanent(_))), "{refused:?}");
        assert!(rebuilder.orders.timeline.is_empty());
    }

    /// The `CREATE TABLE` statements of the service's migrations: table name and body.
    /// Each table the migrations create, with its column lines, including the columns later
    /// migrations add (`ALTER TABLE <name> ADD COLUMN <column> ...`).
    fn created_tables() -> Vec<(String, String)> {
        let mut tables: Vec<(String, String)> = crate::MIGRATIONS
            .iter()
            .flat_map(|migration| {
                migration
                    .sql
                    .split("CREATE TABLE ")
                    .skip(1)
                    .map(|statement| {
                        let (name, rest) = statement.split_once(' ').expect("a table name");
                        let body = rest.split(");").next().expect("a body");
                        (name.to_string(), body.to_string())
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        for migration in crate::MIGRATIONS.iter() {
            for statement in migration.sql.split("ALTER TABLE ").skip(1) {
                let mut words = statement.split_whitespace();
                let (Some(name), Some("ADD"), Some("COLUMN"), Some(column)) =
                    (words.next(), words.next(), words.next(), words.next())
                else {
                    continue;
                };
                if let Some((_, body)) = tables.iter_mut().find(|(table, _)| table == name) {
                    body.push_str(&format!("\n{column}"));
                }
            }
        }
        tables
    }

    #[test]
    fn every_table_the_migrations_create_is_verified() {
        let created: Vec<String> = created_tables().into_iter().map(|(name, _)| name).collect();
        let verified: Vec<&str> = TABLES.iter().map(|table| table.name).collect();
        assert_eq!(created, verified);
    }

    #[test]
    fn every_key_and_ignored_column_is_a_column_of_its_table() {
        let created = created_tables();
        for table in TABLES {
            let (_, body) = created
                .iter()
                .find(|(name, _)| name == table.name)
                .expect("a created table");
            let columns: Vec<&str> = body
                .lines()
                .filter_map(|line| line.split_whitespace().next())
                .filter(|word| !word.starts_with("--"))
                .collect();
            for column in table.key.iter().chain(table.ignored) {
                assert!(columns.contains(column), "{}.{column} in {columns:?}", table.name);
            }
        }
    }

    #[test]
    fn replay_decides_on_the_topics_the_live_service_consumes_and_reads_its_own_decisions_back() {
        let rebuilder = Rebuilder::new(crate::DEFAULT_SAGA_DEADLINE);
        assert_eq!(rebuilder.consumes(), &[Topic::Payments, Topic::Inventory]);
        assert_eq!(rebuilder.records_on(), &[Topic::Orders]);
        for decision in rebuilder.decisions() {
            assert_eq!(decision.topic(), Topic::Orders, "{decision}");
        }
    }
}
