//! The payment service's reaction to order events: order.created records a pending payment for
//! the charger, order.failed has a capture refunded, order.confirmed changes nothing (the capture
//! stands).
//!
//! The handler never waits for a charge: order.created commits the pending payment with its inbox
//! entry and hands the order to the [`charger`](crate::charger), which charges many orders at
//! once. Guarantees, with at-least-once delivery:
//! - an order gets at most one payment: a redelivered order.created finds its inbox entry or the
//!   payment and changes nothing, and an order known to have failed gets none;
//! - a capture is refunded at most once: a redelivered order.failed finds the event in the inbox
//!   or the payment refunded, and the refund call is idempotent by `refund-<order_id>`;
//! - order.failed and the charger settling the same payment are ordered by the payment's row
//!   lock, which order.failed takes before it commits the failure: a payment still pending then
//!   is compensated by the charger (which reads the failure under the same lock), and one the
//!   charger captured first is refunded here;
//! - each state change commits in one transaction with its inbox entry and the event it causes
//!   (outbox); a transient gateway or database failure is retried, never turned into a decline.

use std::sync::Arc;

use async_trait::async_trait;
use saga_common::consumer::{ConsumedEvent, EventHandler, HandlerError};
use saga_common::inbox;
use saga_common::outbox::{self, Relay};
use saga_contracts::{OrderCreated, OrderFailed, PaymentRefunded, SagaEvent};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::charger::ChargeQueue;
use crate::gateway::{GatewayError, PaymentGateway, RefundRequest};
use crate::payments::{self, OnOrderFailed, PendingCharge, UnderLock};

/// Applies order events to payments.
pub struct PaymentHandler {
    database: PgPool,
    gateway: Arc<dyn PaymentGateway>,
    relay: Relay,
    charges: ChargeQueue,
}

impl PaymentHandler {
    /// A handler writing to `database`, handing pending payments to `charges`, refunding through
    /// `gateway`, waking `relay` after commits.
    pub fn new(database: PgPool, gateway: Arc<dyn PaymentGateway>, relay: Relay, charges: ChargeQueue) -> Self {
        Self {
            database,
            gateway,
            relay,
            charges,
        }
    }

    #[tracing::instrument(skip_all, fields(order_id = %order.order_id, event_id = %order.event_id))]
    async fn order_created(&self, consumed: &ConsumedEvent, order: &OrderCreated) -> Result<(), HandlerError> {
        let order_id = parse_order_id(&order.order_id)?;
        check_money(order.total_minor, &order.currency)?;
        let causation_id = Uuid::parse_str(&order.event_id)
            .map_err(|error| HandlerError::Invalid(format!("event_id {:?} is not a UUID: {error}", order.event_id)))?;

        let mut tx = self.database.begin().await?;
        if !inbox::record(&mut tx, consumed).await? {
            return Ok(());
        }
        // Read in the transaction but not locked: an order.failed committed concurrently (only
        // possible with two consumers on one partition during a rebalance) is seen by the charger
        // under the row lock when the charge settles, and the capture is given back then.
        if payments::is_failed(&mut *tx, order_id).await? {
            tracing::warn!("order failed before it was charged; not charging it");
            tx.commit().await?;
            return Ok(());
        }
        let charge = PendingCharge {
            order_id,
            payment_id: Uuid::new_v4(),
            token: order.payment_token.clone(),
            amount_minor: order.total_minor,
            currency: order.currency.clone(),
            causation_id,
            traceparent: consumed.traceparent.clone(),
        };
        let inserted = payments::insert_pending(&mut tx, &charge).await?;
        tx.commit().await?;
        if inserted {
            // Handed over only after the commit: the charger charges committed payments only.
            self.charges.submit(order_id);
            tracing::info!(
                payment_id = %charge.payment_id,
                amount_minor = charge.amount_minor,
                "payment pending; handed to the charger"
            );
        } else {
            tracing::info!("order already has a payment; order.created ignored");
        }
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(order_id = %failure.order_id, event_id = %failure.event_id))]
    async fn order_failed(&self, consumed: &ConsumedEvent, failure: &OrderFailed) -> Result<(), HandlerError> {
        let order_id = parse_order_id(&failure.order_id)?;
        let event_id = Uuid::parse_str(&failure.event_id).map_err(|error| {
            HandlerError::Invalid(format!("event_id {:?} is not a UUID: {error}", failure.event_id))
        })?;
        if inbox::seen(&self.database, &failure.event_id).await? {
            tracing::info!("order.failed already processed; ignored");
            return Ok(());
        }
        // First look, unlocked: the refund is a gateway call, made before the transaction.
        let payment = payments::find(&self.database, order_id).await?;
        let decision = payments::on_order_failed(payment.as_ref());
        if let OnOrderFailed::Refund {
            gateway_reference,
            amount_minor,
            currency,
            ..
        } = &decision
        {
            let request = RefundRequest {
                idempotency_key: format!("refund-{order_id}"),
                gateway_reference: gateway_reference.clone(),
                amount_minor: *amount_minor,
                currency: currency.clone(),
            };
            let refund = self
                .gateway
                .refund(request)
                .await
                .map_err(|error| gateway_failure("refund", error))?;
            tracing::debug!(refund_reference = %refund.refund_reference, "gateway refunded");
        }

        let mut tx = self.database.begin().await?;
        if !inbox::record(&mut tx, consumed).await? {
            return Ok(());
        }
        // The row lock, taken before the failure is recorded and held until it commits, orders
        // this with the charger settling a pending payment (which locks the row, then reads the
        // failure): either the charger settled first and the payment is seen captured here, or
        // it waits for this commit and then sees the failure and compensates.
        let locked = payments::lock(&mut tx, order_id).await?;
        payments::record_failed_order(&mut tx, order_id, &failure.reason, event_id).await?;
        let mut refunded = None;
        match payments::on_order_failed_under_lock(&decision, payments::on_order_failed(locked.as_ref())) {
            UnderLock::RecordRefund {
                payment_id,
                amount_minor,
                currency,
            } => {
                if payments::mark_refunded(&mut tx, order_id, amount_minor).await? {
                    let event = SagaEvent::PaymentRefunded(PaymentRefunded {
                        event_id: Uuid::new_v4().to_string(),
                        order_id: failure.order_id.clone(),
                        causation_id: Some(failure.event_id.clone()),
                        occurred_at: now_millis(),
                        payment_id: payment_id.to_string(),
                        amount_minor,
                        currency,
                        reason: failure.reason.clone(),
                    });
                    enqueue(&mut tx, &event, consumed).await?;
                    refunded = Some((payment_id, amount_minor));
                } else {
                    tracing::info!("payment was refunded meanwhile by another consumer");
                }
            }
            UnderLock::Nothing(why) => {
                tracing::info!(?why, reason = %failure.reason, "order failed; nothing to refund here")
            }
            UnderLock::HandleAgain => {
                // The charger captured the payment after the first look: roll back (the inbox
                // entry too) and let the consumer loop handle the event again, which refunds it.
                tracing::info!("payment captured meanwhile; handling order.failed again to refund it");
                return Err(HandlerError::Transient(anyhow::anyhow!(
                    "payment of order {order_id} was captured while order.failed was handled"
                )));
            }
        }
        tx.commit().await?;
        if let Some((payment_id, amount_minor)) = refunded {
            self.relay.notify();
            tracing::info!(%payment_id, amount_minor, reason = %failure.reason, "payment refunded");
        }
        Ok(())
    }
}

#[async_trait]
impl EventHandler for PaymentHandler {
    async fn handle(&self, consumed: &ConsumedEvent) -> Result<(), HandlerError> {
        match &consumed.event {
            SagaEvent::OrderCreated(order) => self.order_created(consumed, order).await,
            SagaEvent::OrderFailed(failure) => self.order_failed(consumed, failure).await,
            // order.confirmed: the capture stands. Other events are not for this service.
            _ => Ok(()),
        }
    }
}

fn parse_order_id(order_id: &str) -> Result<Uuid, HandlerError> {
    Uuid::parse_str(order_id)
        .map_err(|error| HandlerError::Invalid(format!("order_id {order_id:?} is not a UUID: {error}")))
}

/// An order's total must be a non-negative amount in an ISO 4217 alphabetic currency.
fn check_money(amount_minor: i64, currency: &str) -> Result<(), HandlerError> {
    if amount_minor < 0 {
        return Err(HandlerError::Invalid(format!("total_minor {amount_minor} is negative")));
    }
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HandlerError::Invalid(format!(
            "currency {currency:?} is not an ISO 4217 code"
        )));
    }
    Ok(())
}

/// A transient gateway failure is retried; a rejected request never succeeds, so it is
/// dead-lettered for an operator.
fn gateway_failure(operation: &str, error: GatewayError) -> HandlerError {
    match error {
        GatewayError::Transient(_) => {
            tracing::warn!(error = %error, operation, "payment gateway failed transiently; will retry");
            HandlerError::Transient(anyhow::Error::new(error))
        }
        GatewayError::Rejected(_) => {
            tracing::error!(error = %error, operation, "payment gateway rejected the request");
            HandlerError::Invalid(error.to_string())
        }
    }
}

async fn enqueue(tx: &mut PgConnection, event: &SagaEvent, cause: &ConsumedEvent) -> Result<(), HandlerError> {
    outbox::enqueue(tx, event, cause.traceparent.as_deref())
        .await
        .map_err(|error| HandlerError::Transient(anyhow::Error::new(error).context("outbox enqueue")))
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_total_in_an_iso_currency_is_accepted() {
        assert!(check_money(3998, "USD").is_ok());
        assert!(check_money(0, "EUR").is_ok());
    }

    #[test]
    fn a_negative_total_or_a_malformed_currency_is_invalid() {
        assert!(matches!(check_money(-1, "USD"), Err(HandlerError::Invalid(_))));
        assert!(matches!(check_money(100, "usd"), Err(HandlerError::Invalid(_))));
        assert!(matches!(check_money(100, "DOLLAR"), Err(HandlerError::Invalid(_))));
    }

    #[test]
    fn a_transient_gateway_error_is_retried_and_a_rejection_dead_lettered() {
        assert!(matches!(
            gateway_failure("refund", GatewayError::Transient("timeout".into())),
            HandlerError::Transient(_)
        ));
        assert!(matches!(
            gateway_failure("refund", GatewayError::Rejected("no charge".into())),
            HandlerError::Invalid(_)
        ));
    }
}
