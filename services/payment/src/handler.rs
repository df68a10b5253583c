//! The payment service's reaction to order events: order.created records a pending payment,
//! order.failed records the failure (and, for a capture, starts its refund), order.confirmed
//! changes nothing (the capture stands).
//!
//! The handler never calls the gateway: it commits the state change ([`crate::domain::decide`])
//! with the event's inbox entry in one transaction, then hands a payment that waits for a gateway
//! call to the [`charger`](crate::charger). Guarantees, with at-least-once delivery:
//! - an order gets at most one payment and a capture at most one refund: a redelivered event
//!   finds its inbox entry, and a new one finds the state it would make (see the state machine);
//! - order.failed and the charger settling the same payment are ordered by the payment's row
//!   lock ([`crate::store::transition`]): whichever commits second decides on the first's result,
//!   so a capture of a failed order is refunded whichever came first;
//! - an order.created that cannot be charged (negative total, malformed currency) is permanent
//!   and dead-lettered; a transient database failure is retried.

use async_trait::async_trait;
use saga_common::consumer::{ConsumedEvent, EventHandler, HandlerError};
use saga_common::inbox;
use saga_common::outbox::Relay;
use saga_contracts::{OrderId, SagaEvent};
use sqlx::PgPool;

use crate::charger::ChargeQueue;
use crate::domain::{self, Input, NewPayment, OrderFailure};
use crate::store;

/// Applies order events to payments.
pub struct PaymentHandler {
    database: PgPool,
    relay: Relay,
    charges: ChargeQueue,
}

impl PaymentHandler {
    /// A handler writing to `database`, handing payments that wait for the gateway to
    /// `charges`, waking `relay` after commits that queued events.
    pub fn new(database: PgPool, relay: Relay, charges: ChargeQueue) -> Self {
        Self {
            database,
            relay,
            charges,
        }
    }

    /// Applies `input` about `order_id` to its payment, in one transaction with the inbox entry
    /// of `consumed`.
    #[tracing::instrument(skip_all, fields(%order_id, event_id = %consumed.event.event_id(), event_type = consumed.event.event_type().as_str()))]
    async fn apply(&self, consumed: &ConsumedEvent, order_id: OrderId, input: Input) -> Result<(), HandlerError> {
        let mut tx = self.database.begin().await?;
        if !inbox::record(&mut tx, consumed).await? {
            return Ok(());
        }
        let transition = store::transition(&mut tx, order_id, |state| domain::decide(state, input)).await?;
        tx.commit().await?;
        if !transition.events.is_empty() {
            self.relay.notify();
        }
        let (before, after) = (transition.before.name(), transition.after.name());
        if transition.before == transition.after {
            tracing::info!(state = before, "nothing to change");
        } else {
            tracing::info!(from = before, to = after, "payment state changed");
        }
        // Handed over only after the commit: the charger works on committed state.
        if transition.after.gateway_call().is_some() {
            self.charges.submit(order_id);
        }
        Ok(())
    }
}

#[async_trait]
impl EventHandler for PaymentHandler {
    async fn handle(&self, consumed: &ConsumedEvent) -> Result<(), HandlerError> {
        match &consumed.event {
            SagaEvent::OrderCreated(order) => {
                let payment = NewPayment::for_order(order, consumed.traceparent.clone())?;
                self.apply(consumed, order.envelope.order_id, Input::OrderCreated(payment))
                    .await
            }
            SagaEvent::OrderFailed(failed) => {
                let failure = OrderFailure::from(failed);
                self.apply(consumed, failed.envelope.order_id, Input::OrderFailed(failure))
                    .await
            }
            // order.confirmed: the capture stands. Other events are not for this service.
            _ => Ok(()),
        }
    }
}
