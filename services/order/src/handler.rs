//! Applying events to the order state, the one code path the live service and replay share: an
//! order.created stores its order; a payment or inventory outcome extends its order's timeline
//! and feeds the saga decision; compensations and commits only extend the timeline. The live
//! consumer ([`OrderHandler`]) applies each consumed event once (inbox) in the same transaction
//! as its effect and the decision it emits (outbox); replay applies the same events and only
//! compares the decisions.

use std::time::Duration;

use async_trait::async_trait;
use saga_common::consumer::{self, AfterCommit, BatchHandler, ConsumedEvent, EventHandler, HandlerError};
use saga_common::outbox::Relay;
use saga_contracts::{Envelope, OrderCreated, OrderId, SagaEvent, Topic};
use sqlx::{PgConnection, PgPool};

use crate::domain::{InventoryOutcome, Order, PaymentOutcome, Placement, SagaInput, ValidOrder};
use crate::error::{Error, Result};
use crate::metrics::DecisionRecord;
use crate::store::{self, OrderStore};

/// The topics the order service consumes: the participants' outcomes and compensations.
pub const CONSUMED_TOPICS: &[Topic] = &[Topic::Payments, Topic::Inventory];

/// Consumes the payments and inventory topics.
pub struct OrderHandler {
    /// The order database.
    pub database: PgPool,
    /// Woken after events are committed.
    pub relay: Relay,
}

/// The saga fact an event reports, with the envelope of the order.confirmed or order.failed it
/// may cause; `None` for events that decide nothing.
fn saga_input(event: &SagaEvent) -> Option<(SagaInput, Envelope)> {
    use InventoryOutcome::{Reserved, Unavailable};
    use PaymentOutcome::{Captured, Declined};
    match event {
        SagaEvent::PaymentSucceeded(e) => Some((SagaInput::Payment(Captured), Envelope::caused_by(e))),
        SagaEvent::PaymentFailed(e) => Some((SagaInput::Payment(Declined), Envelope::caused_by(e))),
        SagaEvent::InventoryReserved(e) => Some((SagaInput::Inventory(Reserved), Envelope::caused_by(e))),
        SagaEvent::InventoryReservationFailed(e) => Some((SagaInput::Inventory(Unavailable), Envelope::caused_by(e))),
        _ => None,
    }
}

/// The service an event came from, as the timeline names it.
fn source_of(event: &SagaEvent) -> &'static str {
    match event.event_type().topic() {
        Topic::Payments => "payment-service",
        Topic::Inventory => "inventory-service",
        Topic::Orders => store::SOURCE,
        Topic::Notifications => "notification-service",
    }
}

/// Stores the order `created` announces: pending, due by its deadline (for events that carry
/// none, `default_deadline` after it was placed), its idempotency key if the request had one,
/// and order.created as the first entry of its timeline. `POST /orders` calls it for the order
/// it places (and writes the event to the outbox); replay for each recorded order.created.
pub async fn apply_created(
    store: &mut impl OrderStore,
    created: &OrderCreated,
    default_deadline: Duration,
) -> Result<()> {
    let order_id = created.envelope.order_id;
    let placement = Placement::of(created, default_deadline);
    store
        .insert_order(
            order_id,
            &ValidOrder::announced_by(created),
            store::timestamp(order_id, "created_at", created.envelope.occurred_at)?,
            store::timestamp(order_id, "deadline_at", placement.deadline_at)?,
        )
        .await?;
    store
        .record_timeline(&SagaEvent::OrderCreated(created.clone()), store::SOURCE)
        .await?;
    if let (Some(key), Some(request_hash)) = (&placement.idempotency_key, &placement.request_hash) {
        store.remember_idempotency_key(key, request_hash, order_id).await?;
    }
    Ok(())
}

/// Locks the order `event` belongs to; an event of an order never placed is
/// [`Error::UnknownOrder`] (permanent: the live service dead-letters it).
pub(crate) async fn lock_order_of(store: &mut impl OrderStore, order_id: OrderId, event: &SagaEvent) -> Result<Order> {
    store.lock_order(order_id).await?.ok_or_else(|| Error::UnknownOrder {
        order_id,
        event_type: event.event_type(),
        event_id: event.event_id(),
    })
}

/// Applies a consumed event to its order: records it on the order's timeline and, for a payment
/// or inventory outcome, runs the saga decision and stores the order's new state. Returns the
/// order.confirmed or order.failed the event decided, written nowhere yet: the live handler
/// emits it, replay compares it with the recorded one. Events of no order (stock adjustments)
/// change nothing.
pub async fn apply(store: &mut impl OrderStore, event: &SagaEvent) -> Result<Option<SagaEvent>> {
    let Some(order_id) = event.order_id() else {
        return Ok(None);
    };
    let order = lock_order_of(store, order_id, event).await?;
    store.record_timeline(event, source_of(event)).await?;
    let Some((input, envelope)) = saga_input(event) else {
        return Ok(None);
    };
    let (state, decided) = order.apply(input, envelope);
    store.save_state(order_id, &state).await?;
    Ok(decided)
}

#[async_trait]
impl EventHandler for OrderHandler {
    async fn handle(&self, consumed: &ConsumedEvent) -> Result<(), HandlerError> {
        consumer::handle_alone(self, consumed).await
    }

    fn batched(&self) -> Option<&dyn BatchHandler> {
        Some(self)
    }
}

#[async_trait]
impl BatchHandler for OrderHandler {
    fn database(&self) -> &PgPool {
        &self.database
    }

    /// Stock adjustments belong to no order.
    fn wants(&self, consumed: &ConsumedEvent) -> bool {
        consumed.event.order_id().is_some()
    }

    /// An order's outcomes come from two topics, whose batches run at once: lock the batch's
    /// orders in id order first.
    async fn lock_shared_rows(&self, tx: &mut PgConnection, events: &[&ConsumedEvent]) -> Result<(), HandlerError> {
        let order_ids: Vec<uuid::Uuid> = events
            .iter()
            .filter_map(|consumed| consumed.event.order_id())
            .map(|order_id| order_id.uuid())
            .collect();
        store::lock_orders_in_order(tx, &order_ids).await?;
        Ok(())
    }

    /// [`apply`] in the caller's transaction, a decision into the outbox; once committed, the
    /// relay is woken and the decision counted.
    #[tracing::instrument(skip_all, fields(order_id = consumed.event.order_id().map(tracing::field::display), event_id = %consumed.event.event_id()))]
    async fn apply(
        &self,
        tx: &mut PgConnection,
        consumed: &ConsumedEvent,
    ) -> Result<Option<AfterCommit>, HandlerError> {
        let mut decision = None;
        if let Some(decided) = apply(&mut *tx, &consumed.event).await? {
            store::emit_decision(&mut *tx, &decided, consumed.traceparent.as_deref()).await?;
            if let Some(order_id) = decided.order_id() {
                decision = DecisionRecord::of(&decided, store::created_at(&mut *tx, order_id).await?);
            }
        }
        let relay = self.relay.clone();
        Ok(Some(Box::new(move || {
            relay.notify();
            if let Some(decision) = decision {
                decision.record();
            }
        })))
    }
}

#[cfg(test)]
mod tests {
    use saga_contracts::{
        FailureReason, InventoryReleased, OrderId, PaymentFailed, PaymentSucceeded, SagaEvent, StockLine,
    };

    use super::*;

    fn payment_succeeded() -> PaymentSucceeded {
        PaymentSucceeded {
            envelope: Envelope::for_command(OrderId::new()),
            payment_id: saga_contracts::PaymentId::new(),
            amount_minor: 100,
            currency: "EUR".into(),
            gateway_reference: None,
        }
    }

    #[test]
    fn an_outcome_is_a_saga_fact_whose_decision_is_caused_by_it() {
        let success = payment_succeeded();
        let (input, envelope) = saga_input(&SagaEvent::PaymentSucceeded(success.clone())).expect("a fact");
        assert_eq!(input, SagaInput::Payment(PaymentOutcome::Captured));
        assert_eq!(envelope.order_id, success.envelope.order_id);
        assert_eq!(envelope.causation_id, Some(success.envelope.event_id));
        assert_ne!(envelope.event_id, success.envelope.event_id);

        let declined = SagaEvent::PaymentFailed(PaymentFailed {
            envelope: Envelope::for_command(OrderId::new()),
            reason: "card_declined".into(),
            failure_reason: FailureReason::PaymentDeclined,
            amount_minor: 100,
            currency: "EUR".into(),
        });
        assert_eq!(
            saga_input(&declined).map(|(input, _)| input),
            Some(SagaInput::Payment(PaymentOutcome::Declined))
        );
    }

    #[test]
    fn a_compensation_decides_nothing_and_is_attributed_to_its_service() {
        let released = SagaEvent::InventoryReleased(InventoryReleased {
            envelope: Envelope::for_command(OrderId::new()),
            items: vec![StockLine {
                sku: "SKU-1".into(),
                quantity: 1,
            }],
            reason: "order_failed".into(),
        });
        assert!(saga_input(&released).is_none());
        assert_eq!(source_of(&released), "inventory-service");
        assert_eq!(
            source_of(&SagaEvent::PaymentSucceeded(payment_succeeded())),
            "payment-service"
        );
    }
}
