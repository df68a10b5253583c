//! Applies the participants' outcomes to orders: payment and inventory results feed the saga
//! decision; compensations and commits only extend the timeline. Each event is applied once
//! (inbox) in the same transaction as its effect and the events it causes.

use async_trait::async_trait;
use saga_common::consumer::{ConsumedEvent, EventHandler, HandlerError};
use saga_common::inbox;
use saga_common::outbox::Relay;
use saga_contracts::SagaEvent;
use sqlx::PgPool;
use uuid::Uuid;

use crate::saga::{InventoryOutcome, PaymentOutcome, SagaInput};
use crate::store;

/// Consumes the payments and inventory topics.
pub struct OutcomeHandler {
    /// The order database.
    pub database: PgPool,
    /// Woken after events are committed.
    pub relay: Relay,
}

fn saga_input(event: &SagaEvent) -> Option<SagaInput> {
    match event {
        SagaEvent::PaymentSucceeded(_) => Some(SagaInput::Payment(PaymentOutcome::Captured)),
        SagaEvent::PaymentFailed(_) => Some(SagaInput::Payment(PaymentOutcome::Declined)),
        SagaEvent::InventoryReserved(_) => Some(SagaInput::Inventory(InventoryOutcome::Reserved)),
        SagaEvent::InventoryReservationFailed(_) => Some(SagaInput::Inventory(InventoryOutcome::Unavailable)),
        _ => None,
    }
}

fn source_of(event: &SagaEvent) -> &'static str {
    match event.event_type().topic() {
        saga_contracts::Topic::Payments => "payment-service",
        saga_contracts::Topic::Inventory => "inventory-service",
        saga_contracts::Topic::Orders => store::SOURCE,
    }
}

#[async_trait]
impl EventHandler for OutcomeHandler {
    #[tracing::instrument(skip_all, fields(order_id = consumed.event.order_id().unwrap_or_default(), event_id = consumed.event.event_id()))]
    async fn handle(&self, consumed: &ConsumedEvent) -> Result<(), HandlerError> {
        let event = &consumed.event;
        let Some(order_id) = event.order_id() else {
            return Ok(()); // stock adjustments belong to no order
        };
        let order_id =
            Uuid::parse_str(order_id).map_err(|e| HandlerError::Invalid(format!("order_id is not a UUID: {e}")))?;
        let mut tx = self.database.begin().await?;
        if !inbox::record(&mut tx, consumed).await? {
            return Ok(());
        }
        let Some(order) = store::lock_order(&mut tx, order_id)
            .await
            .map_err(HandlerError::Transient)?
        else {
            return Err(HandlerError::Invalid(format!(
                "{} for unknown order {order_id}",
                event.event_type()
            )));
        };
        store::record_timeline(&mut tx, event, source_of(event))
            .await
            .map_err(HandlerError::Transient)?;
        if let Some(input) = saga_input(event) {
            store::apply_fact(
                &mut tx,
                &order,
                input,
                Some(event.event_id()),
                consumed.traceparent.as_deref(),
            )
            .await
            .map_err(HandlerError::Transient)?;
        }
        tx.commit().await?;
        self.relay.notify();
        Ok(())
    }
}
