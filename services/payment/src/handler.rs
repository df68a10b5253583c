//! The payment service's reaction to order events: order.created is charged, order.failed has
//! its capture refunded, order.confirmed changes nothing (the capture stands).
//!
//! Guarantees, with at-least-once delivery:
//! - an order is charged at most once: a redelivered order.created finds the payment and stops,
//!   and the gateway call made before the commit is idempotent by order id, so a crash between
//!   the call and the commit repeats the call and gets the first result back;
//! - a capture is refunded at most once: a redelivered order.failed finds the event in the inbox
//!   or the payment refunded, and the refund call is idempotent by `refund-<order_id>`;
//! - each state change commits in one transaction with its inbox entry and the event it causes
//!   (outbox); a transient gateway or database failure is retried, never turned into a decline.

use std::sync::Arc;

use async_trait::async_trait;
use saga_common::consumer::{ConsumedEvent, EventHandler, HandlerError};
use saga_common::inbox;
use saga_common::outbox::{self, Relay};
use saga_contracts::{OrderCreated, OrderFailed, PaymentFailed, PaymentRefunded, PaymentSucceeded, SagaEvent};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::gateway::{ChargeOutcome, ChargeRequest, GatewayError, PaymentGateway, RefundRequest};
use crate::payments::{self, OnOrderFailed, Payment, PaymentStatus};

/// Applies order events to payments.
pub struct PaymentHandler {
    database: PgPool,
    gateway: Arc<dyn PaymentGateway>,
    relay: Relay,
}

impl PaymentHandler {
    /// A handler writing to `database`, charging through `gateway`, waking `relay` after commits.
    pub fn new(database: PgPool, gateway: Arc<dyn PaymentGateway>, relay: Relay) -> Self {
        Self {
            database,
            gateway,
            relay,
        }
    }

    #[tracing::instrument(skip_all, fields(order_id = %order.order_id, event_id = %order.event_id))]
    async fn order_created(&self, consumed: &ConsumedEvent, order: &OrderCreated) -> Result<(), HandlerError> {
        let order_id = parse_order_id(&order.order_id)?;
        check_money(order.total_minor, &order.currency)?;
        if let Some(payment) = payments::find(&self.database, order_id).await? {
            tracing::info!(
                payment_id = %payment.payment_id,
                status = payment.status.as_str(),
                "order already has a payment; order.created ignored"
            );
            return self.record_without_effect(consumed).await;
        }
        if payments::is_failed(&self.database, order_id).await? {
            tracing::warn!("order failed before it was charged; not charging it");
            return self.record_without_effect(consumed).await;
        }

        let request = ChargeRequest {
            idempotency_key: order_id.to_string(),
            token: order.payment_token.clone(),
            amount_minor: order.total_minor,
            currency: order.currency.clone(),
        };
        let outcome = self
            .gateway
            .charge(request)
            .await
            .map_err(|error| gateway_failure("charge", error))?;

        let payment_id = Uuid::new_v4();
        let (payment, caused) = match outcome {
            ChargeOutcome::Captured { gateway_reference } => (
                Payment {
                    order_id,
                    payment_id,
                    status: PaymentStatus::Captured,
                    amount_minor: order.total_minor,
                    refunded_minor: 0,
                    currency: order.currency.clone(),
                    gateway_reference: Some(gateway_reference),
                    decline_reason: None,
                },
                SagaEvent::PaymentSucceeded(PaymentSucceeded {
                    event_id: Uuid::new_v4().to_string(),
                    order_id: order.order_id.clone(),
                    causation_id: Some(order.event_id.clone()),
                    occurred_at: now_millis(),
                    payment_id: payment_id.to_string(),
                    amount_minor: order.total_minor,
                    currency: order.currency.clone(),
                }),
            ),
            ChargeOutcome::Declined { reason } => (
                Payment {
                    order_id,
                    payment_id,
                    status: PaymentStatus::Declined,
                    amount_minor: order.total_minor,
                    refunded_minor: 0,
                    currency: order.currency.clone(),
                    gateway_reference: None,
                    decline_reason: Some(reason.clone()),
                },
                SagaEvent::PaymentFailed(PaymentFailed {
                    event_id: Uuid::new_v4().to_string(),
                    order_id: order.order_id.clone(),
                    causation_id: Some(order.event_id.clone()),
                    occurred_at: now_millis(),
                    reason,
                    amount_minor: order.total_minor,
                    currency: order.currency.clone(),
                }),
            ),
        };

        let mut tx = self.database.begin().await?;
        if !inbox::record(&mut tx, consumed).await? {
            return Ok(());
        }
        if !payments::insert(&mut tx, &payment).await? {
            tracing::info!("another consumer recorded this order's payment first");
            tx.commit().await?;
            return Ok(());
        }
        enqueue(&mut tx, &caused, consumed).await?;
        tx.commit().await?;
        self.relay.notify();
        match &payment.decline_reason {
            None => {
                tracing::info!(payment_id = %payment_id, amount_minor = payment.amount_minor, "payment captured")
            }
            Some(reason) => tracing::info!(payment_id = %payment_id, reason, "payment declined"),
        }
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(order_id = %failure.order_id, event_id = %failure.event_id))]
    async fn order_failed(&self, consumed: &ConsumedEvent, failure: &OrderFailed) -> Result<(), HandlerError> {
        let order_id = parse_order_id(&failure.order_id)?;
        if inbox::seen(&self.database, &failure.event_id).await? {
            tracing::info!("order.failed already processed; ignored");
            return Ok(());
        }
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
        payments::record_failed_order(&mut tx, order_id, &failure.reason).await?;
        let mut refunded = None;
        match decision {
            OnOrderFailed::Refund {
                payment_id,
                amount_minor,
                currency,
                ..
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
            OnOrderFailed::NothingToRefund(why) => {
                tracing::info!(?why, reason = %failure.reason, "order failed; nothing to refund")
            }
        }
        tx.commit().await?;
        if let Some((payment_id, amount_minor)) = refunded {
            self.relay.notify();
            tracing::info!(%payment_id, amount_minor, reason = %failure.reason, "payment refunded");
        }
        Ok(())
    }

    /// Records a consumed event that changes nothing, so its redelivery is recognised.
    async fn record_without_effect(&self, consumed: &ConsumedEvent) -> Result<(), HandlerError> {
        let mut tx = self.database.begin().await?;
        inbox::record(&mut tx, consumed).await?;
        tx.commit().await?;
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
            gateway_failure("charge", GatewayError::Transient("timeout".into())),
            HandlerError::Transient(_)
        ));
        assert!(matches!(
            gateway_failure("refund", GatewayError::Rejected("no charge".into())),
            HandlerError::Invalid(_)
        ));
    }
}
