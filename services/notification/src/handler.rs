//! Consumes `orders`: for `order.confirmed` and `order.failed` it records, in one transaction with
//! the inbox entry, the intent to send one email per order outcome, then wakes the mailer. It
//! never talks to SMTP itself, so a redelivered event or a crash anywhere in here can neither
//! lose nor double an email. Every other event is ignored without touching the database.

use std::sync::Arc;

use async_trait::async_trait;
use lettre::Address;
use saga_common::consumer::{ConsumedEvent, EventHandler, HandlerError};
use saga_common::inbox;
use saga_contracts::SagaEvent;
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::email::{OrderOutcome, OutcomeDetail};
use crate::store::{self, NewNotification};

/// The `orders` consumer of the notification service.
pub struct OrderOutcomeHandler {
    database: PgPool,
    mailer_wake: Arc<Notify>,
}

impl OrderOutcomeHandler {
    /// A handler writing to `database` and waking the mailer through `mailer_wake`.
    pub fn new(database: PgPool, mailer_wake: Arc<Notify>) -> Self {
        Self { database, mailer_wake }
    }

    #[tracing::instrument(skip_all, fields(order_id = %notification.order_id, event_id = %notification.source_event_id))]
    async fn record(&self, consumed: &ConsumedEvent, notification: NewNotification) -> Result<(), HandlerError> {
        let mut tx = self.database.begin().await?;
        if !inbox::record(&mut tx, consumed).await? {
            return Ok(());
        }
        let recorded = store::record_intent(&mut tx, &notification).await?;
        tx.commit().await?;
        if recorded {
            tracing::info!(outcome = %notification.outcome, message_id = %notification.message_id, "email queued");
            self.mailer_wake.notify_one();
        } else {
            tracing::info!(outcome = %notification.outcome, "email for this order outcome already queued");
        }
        Ok(())
    }
}

#[async_trait]
impl EventHandler for OrderOutcomeHandler {
    async fn handle(&self, consumed: &ConsumedEvent) -> Result<(), HandlerError> {
        match notification_for(&consumed.event)? {
            Some(notification) => self.record(consumed, notification).await,
            None => Ok(()),
        }
    }
}

/// The email an event asks for, rendered: `None` for events that need no email, an
/// [`HandlerError::Invalid`] (dead-lettered) for an outcome that can never be emailed.
pub fn notification_for(event: &SagaEvent) -> Result<Option<NewNotification>, HandlerError> {
    let (event_id, customer_email, outcome) = match event {
        SagaEvent::OrderConfirmed(confirmed) => (
            &confirmed.event_id,
            &confirmed.customer_email,
            OrderOutcome {
                order_id: &confirmed.order_id,
                total_minor: confirmed.total_minor,
                currency: &confirmed.currency,
                result: OutcomeDetail::Confirmed,
            },
        ),
        SagaEvent::OrderFailed(failed) => (
            &failed.event_id,
            &failed.customer_email,
            OrderOutcome {
                order_id: &failed.order_id,
                total_minor: failed.total_minor,
                currency: &failed.currency,
                result: OutcomeDetail::Failed { reason: &failed.reason },
            },
        ),
        _ => return Ok(None),
    };
    let order_id =
        Uuid::parse_str(outcome.order_id).map_err(|e| HandlerError::Invalid(format!("order_id is not a UUID: {e}")))?;
    let source_event_id =
        Uuid::parse_str(event_id).map_err(|e| HandlerError::Invalid(format!("event_id is not a UUID: {e}")))?;
    let recipient = customer_email.trim().parse::<Address>().map_err(|e| {
        HandlerError::Invalid(format!(
            "customer_email {customer_email:?} is not an email address: {e}"
        ))
    })?;
    let rendered = outcome.render();
    Ok(Some(NewNotification {
        order_id,
        outcome: outcome.outcome(),
        recipient: recipient.to_string(),
        subject: rendered.subject,
        body: rendered.body,
        // From the parsed id, so the same order always gets the same Message-ID whatever the
        // spelling (case) of its id in the event.
        message_id: crate::email::message_id(&order_id.to_string(), outcome.outcome()),
        source_event_id,
    }))
}

#[cfg(test)]
mod tests {
    use saga_contracts::{OrderConfirmed, OrderCreated, OrderFailed};

    use super::*;
    use crate::email::Outcome;

    const ORDER_ID: &str = "0f8e2c4a-1b2c-4d5e-8f90-123456789abc";
    const EVENT_ID: &str = "6a1f5a43-55a0-4c1e-9a4e-4f4c5d6e7f80";

    fn confirmed(email: &str) -> SagaEvent {
        SagaEvent::OrderConfirmed(OrderConfirmed {
            event_id: EVENT_ID.into(),
            order_id: ORDER_ID.into(),
            causation_id: None,
            occurred_at: 1_763_700_000_000,
            customer_email: email.into(),
            total_minor: 3998,
            currency: "USD".into(),
        })
    }

    #[test]
    fn a_confirmed_order_asks_for_a_confirmation_email() -> Result<(), HandlerError> {
        let notification =
            notification_for(&confirmed("ada@example.com"))?.ok_or(HandlerError::Invalid("none".into()))?;
        assert_eq!(notification.outcome, Outcome::Confirmed);
        assert_eq!(notification.recipient, "ada@example.com");
        assert_eq!(notification.subject, "Order 0f8e2c4a confirmed");
        assert_eq!(
            notification.message_id,
            format!("<{ORDER_ID}.confirmed@saga-platform.local>")
        );
        assert_eq!(notification.source_event_id.to_string(), EVENT_ID);
        Ok(())
    }

    #[test]
    fn a_failed_order_asks_for_a_failure_email_with_the_reason() -> Result<(), HandlerError> {
        let event = SagaEvent::OrderFailed(OrderFailed {
            event_id: EVENT_ID.into(),
            order_id: ORDER_ID.to_uppercase(),
            causation_id: None,
            occurred_at: 1_763_700_000_000,
            reason: "out_of_stock".into(),
            customer_email: "ada@example.com".into(),
            total_minor: 1500,
            currency: "JPY".into(),
        });
        let notification = notification_for(&event)?.ok_or(HandlerError::Invalid("none".into()))?;
        assert_eq!(notification.outcome, Outcome::Failed);
        assert!(
            notification.body.contains("an item is out of stock"),
            "{}",
            notification.body
        );
        assert!(notification.body.contains("1500 JPY"), "{}", notification.body);
        assert_eq!(
            notification.message_id,
            format!("<{ORDER_ID}.failed@saga-platform.local>")
        );
        Ok(())
    }

    #[test]
    fn a_created_order_needs_no_email() -> Result<(), HandlerError> {
        let event = SagaEvent::OrderCreated(OrderCreated {
            event_id: EVENT_ID.into(),
            order_id: ORDER_ID.into(),
            causation_id: None,
            occurred_at: 1_763_700_000_000,
            customer_id: "c-1".into(),
            customer_email: "ada@example.com".into(),
            payment_token: "tok_ok".into(),
            total_minor: 3998,
            currency: "USD".into(),
            items: Vec::new(),
            sales_channel: "api".into(),
        });
        assert!(notification_for(&event)?.is_none());
        Ok(())
    }

    #[test]
    fn an_outcome_without_a_valid_address_is_rejected_as_invalid() {
        assert!(matches!(
            notification_for(&confirmed("not an address")),
            Err(HandlerError::Invalid(_))
        ));
    }
}
