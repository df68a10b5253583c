//! Rebuilding the order database from the topics: the orders as order.created recorded them, the
//! saga decision re-run on the payment and inventory outcomes with the live handler's code, and
//! the recorded decisions nothing replayed re-runs (the deadline's, or one whose cause precedes
//! the replayed events) taken as facts. Nothing leaves the database: no event is published.

use std::time::Duration;

use async_trait::async_trait;
use saga_common::consumer::{ConsumedEvent, HandlerError};
use saga_common::replay::{Rebuild, Rebuilding, VerifiedTable};
use saga_contracts::{EventType, OrderId, SagaEvent, Topic};
use sqlx::PgConnection;

use crate::domain::RecordedDecision;
use crate::error::Result;
use crate::{handler, store};

/// The order service's part in replay.
#[derive(Debug, Clone, Copy)]
pub struct Rebuilder {
    /// The deadline of orders whose order.created carries none (written before it did): the
    /// saga deadline the live service was configured with then.
    default_deadline: Duration,
}

impl Rebuilder {
    /// A rebuilder giving orders recorded without a deadline `default_deadline` from when they
    /// were placed (normally [`crate::DEFAULT_SAGA_DEADLINE`]).
    pub fn new(default_deadline: Duration) -> Self {
        Self { default_deadline }
    }

    /// Applies one replayed event; the decision it re-ran, if any.
    async fn apply_event(&self, tx: &mut PgConnection, event: &SagaEvent) -> Result<Option<SagaEvent>> {
        if let SagaEvent::OrderCreated(created) = event {
            // The relay publishes at least once, and replay reads its own topic without an
            // inbox: an order already stored was placed by an earlier copy of this event.
            if store::lock_order(tx, created.envelope.order_id).await?.is_none() {
                handler::apply_created(tx, created, self.default_deadline).await?;
            }
            return Ok(None);
        }
        if let (Some(order_id), Some(decision)) = (event.order_id(), RecordedDecision::of(event)) {
            apply_recorded_decision(tx, order_id, event, decision).await?;
            return Ok(None);
        }
        handler::apply(tx, event).await
    }
}

/// Applies an order.confirmed or order.failed read back from the orders topic. Its timeline
/// entry is always recorded: the decision replay re-ran has an event id of its own, so only the
/// recorded event gives the timeline the entry the live service wrote. An order still pending
/// takes the decision as a fact; a decided one keeps its state. Either way the order is stamped
/// with when the recorded decision was made.
async fn apply_recorded_decision(
    tx: &mut PgConnection,
    order_id: OrderId,
    event: &SagaEvent,
    decision: RecordedDecision,
) -> Result<()> {
    let order = handler::lock_order_of(tx, order_id, event).await?;
    store::record_timeline(tx, event, store::SOURCE).await?;
    if let Some(state) = order.state.decided_as(decision) {
        tracing::debug!(%order_id, event_id = %event.event_id(), ?decision, "recorded decision taken as a fact");
        store::save_state(tx, order_id, &state).await?;
    }
    let decided_at = store::timestamp(order_id, "decided_at", event.occurred_at_millis())?;
    store::set_decided_at(tx, order_id, decided_at).await
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
        // the recorded decision is not on the topic yet.
        ignored: &["created_at", "decided_at"],
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

    #[tracing::instrument(skip_all, fields(order_id = consumed.event.order_id().map(tracing::field::display), event_id = %consumed.event.event_id()))]
    async fn apply(&self, tx: &mut PgConnection, consumed: &ConsumedEvent) -> Result<Vec<SagaEvent>, HandlerError> {
        Ok(self.apply_event(tx, &consumed.event).await?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `CREATE TABLE` statements of the service's migrations: table name and body.
    fn created_tables() -> Vec<(String, String)> {
        crate::MIGRATIONS
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
            .collect()
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
