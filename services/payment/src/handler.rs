//! The payment service's reaction to order events: order.created records a pending payment,
//! order.failed records the failure (and, for a capture, starts its refund), order.confirmed
//! changes nothing (the capture stands).
//!
//! The state change is one function, [`apply`], which the live [`PaymentHandler`] and replay
//! ([`crate::replay`]) both run: the live handler adds the inbox entry before it and queues the
//! transition's events in the outbox after it, in the same transaction, then hands a payment that
//! waits for a gateway call to the [`charger`](crate::charger). The handler never calls the
//! gateway. Guarantees, with at-least-once delivery:
//! - an order gets at most one payment and a capture at most one refund: a redelivered event
//!   finds its inbox entry, and a new one finds the state it would make (see the state machine);
//! - order.failed and the charger settling the same payment are ordered by the payment's row
//!   lock ([`crate::store::transition`]): whichever commits second decides on the first's result,
//!   so a capture of a failed order is refunded whichever came first;
//! - an order.created that cannot be charged (negative total, malformed currency) is permanent
//!   and dead-lettered; a transient database failure is retried.

use async_trait::async_trait;
use saga_common::consumer::{self, AfterCommit, BatchHandler, ConsumedEvent, EventHandler, HandlerError};
use saga_common::outbox::Relay;
use saga_common::telemetry;
use saga_contracts::{OrderId, SagaEvent};
use sqlx::{PgConnection, PgPool};

use crate::charger::ChargeQueue;
use crate::domain::{self, Input, NewPayment, OrderFailure};
use crate::error::Result;
use crate::store::{self, PaymentStore, Transition};

/// Applies `consumed` to its order's payment in `store` (the live handler's transaction, or
/// replay's tables in memory), without inbox or outbox: the payment's transition, with the events
/// it causes (queued by the live handler, not published by replay); `None` for an event that
/// concerns no payment (order.confirmed, other topics' events).
/// [`crate::error::Error::InvalidOrder`] (permanent) for an order.created that cannot be charged.
pub async fn apply<S: PaymentStore>(store: &mut S, consumed: &ConsumedEvent) -> Result<Option<Transition>> {
    let Some((order_id, input)) = input_for(consumed)? else {
        return Ok(None);
    };
    let transition = store::transition(store, order_id, |state| domain::decide(state, input)).await?;
    Ok(Some(transition))
}

/// What `consumed` asks of its order's payment, if anything.
fn input_for(consumed: &ConsumedEvent) -> Result<Option<(OrderId, Input)>> {
    Ok(match &consumed.event {
        SagaEvent::OrderCreated(order) => {
            let payment =
                NewPayment::for_order(order, telemetry::handed_on_traceparent(consumed.traceparent.as_deref()))?;
            Some((order.envelope.order_id, Input::OrderCreated(payment)))
        }
        SagaEvent::OrderFailed(failed) => {
            Some((failed.envelope.order_id, Input::OrderFailed(OrderFailure::from(failed))))
        }
        // order.confirmed: the capture stands. Other events are not for this service.
        _ => None,
    })
}

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
}

#[async_trait]
impl BatchHandler for PaymentHandler {
    fn database(&self) -> &PgPool {
        &self.database
    }

    fn wants(&self, _consumed: &ConsumedEvent) -> bool {
        true
    }

    /// [`apply`] in the caller's transaction (whose inbox row the caller wrote: every consumed
    /// event gets one, also one that concerns no payment, as replay records them), its events
    /// into the outbox; once committed, the relay is woken and the charger handed the payment.
    #[tracing::instrument(skip_all, fields(
        order_id = %consumed.event.order_id().map(|id| id.to_string()).unwrap_or_default(),
        event_id = %consumed.event.event_id(),
        event_type = consumed.event.event_type().as_str(),
    ))]
    async fn apply(
        &self,
        tx: &mut PgConnection,
        consumed: &ConsumedEvent,
    ) -> Result<Option<AfterCommit>, HandlerError> {
        let Some(transition) = apply(&mut *tx, consumed).await? else {
            return Ok(None);
        };
        store::enqueue(&mut *tx, &transition).await?;
        let (before, after) = (transition.before.name(), transition.after.name());
        if transition.before == transition.after {
            tracing::info!(state = before, "nothing to change");
        } else {
            tracing::info!(from = before, to = after, "payment state changed");
        }
        let relay = self.relay.clone();
        let charges = self.charges.clone();
        Ok(Some(Box::new(move || {
            if !transition.events.is_empty() {
                relay.notify();
            }
            // Handed over only after the commit: the charger works on committed state.
            if transition.after.gateway_call().is_some() {
                charges.submit(transition.order_id);
            }
        })))
    }
}

#[async_trait]
impl EventHandler for PaymentHandler {
    async fn handle(&self, consumed: &ConsumedEvent) -> Result<(), HandlerError> {
        consumer::handle_alone(self, consumed).await
    }

    fn batched(&self) -> Option<&dyn BatchHandler> {
        Some(self)
    }
}
