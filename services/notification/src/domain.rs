//! The service's decisions, as pure functions (no I/O): which email an event asks for, and what
//! becomes of an email whose sending failed. The handler and the mailer carry them out.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::Address;
use saga_common::retry::ErrorPolicy;
use saga_common::ErrorClass;
use saga_contracts::{Envelope, EventId, NotificationFailed, NotificationSent, OrderId, SagaEvent};

use crate::email::{OrderOutcome, Outcome, OutcomeDetail};
use crate::error::{Error, Result};

/// An email to send, as the handler records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    /// The order.
    pub order_id: OrderId,
    /// Which outcome the email reports.
    pub outcome: Outcome,
    /// The customer's address.
    pub recipient: String,
    /// Rendered subject.
    pub subject: String,
    /// Rendered plain-text body.
    pub body: String,
    /// Deterministic Message-ID.
    pub message_id: String,
    /// The event that asked for the email.
    pub source_event_id: EventId,
}

/// What the mailer recorded about one email when it was sent or set aside: what the event that
/// tells it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// The order.
    pub order_id: OrderId,
    /// `confirmed` or `failed`, as stored.
    pub outcome: String,
    /// The customer's address.
    pub recipient: String,
    /// Subject.
    pub subject: String,
    /// Message-ID.
    pub message_id: String,
    /// Attempts so far, the one just made included.
    pub attempts: i32,
    /// The order event that asked for the email.
    pub source_event_id: EventId,
    /// When it was sent or set aside, as stored (to the millisecond): the event's occurred_at,
    /// so a rebuilt row holds the same instant as the live one.
    pub at: DateTime<Utc>,
}

/// notification.sent for an email the SMTP server accepted: the fact a rebuilt notification
/// service needs to know the email went out, and not send it again.
pub fn sent_event(record: &DeliveryRecord) -> SagaEvent {
    SagaEvent::NotificationSent(NotificationSent {
        envelope: Envelope::caused_by_recorded(record.order_id, record.source_event_id)
            .at(record.at.timestamp_millis()),
        order_outcome: order_outcome(&record.outcome),
        recipient: record.recipient.clone(),
        subject: record.subject.clone(),
        message_id: record.message_id.clone(),
        attempts: record.attempts,
    })
}

/// notification.failed for an email set aside with `error`.
pub fn set_aside_event(record: &DeliveryRecord, error: &str) -> SagaEvent {
    SagaEvent::NotificationFailed(NotificationFailed {
        envelope: Envelope::caused_by_recorded(record.order_id, record.source_event_id)
            .at(record.at.timestamp_millis()),
        order_outcome: order_outcome(&record.outcome),
        recipient: record.recipient.clone(),
        message_id: record.message_id.clone(),
        attempts: record.attempts,
        error: error.to_owned(),
    })
}

fn order_outcome(stored: &str) -> saga_contracts::OrderOutcome {
    if stored == Outcome::Confirmed.as_str() {
        saga_contracts::OrderOutcome::Confirmed
    } else {
        saga_contracts::OrderOutcome::Failed
    }
}

/// Whether `event` asks for an email: an order's outcome does, every other event does not.
/// [`email_for`] renders it.
pub fn asks_for_email(event: &SagaEvent) -> bool {
    matches!(event, SagaEvent::OrderConfirmed(_) | SagaEvent::OrderFailed(_))
}

/// The email `event` asks for, rendered: one for `order.confirmed` and `order.failed`, `None`
/// for every other event. An outcome whose customer email is not an address can never be
/// emailed: [`Error::Undeliverable`].
pub fn email_for(event: &SagaEvent) -> Result<Option<NewNotification>> {
    let (envelope, customer_email, outcome) = match event {
        SagaEvent::OrderConfirmed(confirmed) => (
            confirmed.envelope,
            &confirmed.customer_email,
            OrderOutcome {
                order_id: confirmed.envelope.order_id,
                total_minor: confirmed.total_minor,
                currency: &confirmed.currency,
                result: OutcomeDetail::Confirmed,
            },
        ),
        SagaEvent::OrderFailed(failed) => (
            failed.envelope,
            &failed.customer_email,
            OrderOutcome {
                order_id: failed.envelope.order_id,
                total_minor: failed.total_minor,
                currency: &failed.currency,
                result: OutcomeDetail::Failed {
                    reason: failed.reason(),
                },
            },
        ),
        _ => return Ok(None),
    };
    let recipient = customer_email.trim().parse::<Address>().map_err(|error| {
        Error::Undeliverable(format!(
            "customer_email {customer_email:?} is not an email address: {error}"
        ))
    })?;
    let rendered = outcome.render();
    Ok(Some(NewNotification {
        order_id: outcome.order_id,
        outcome: outcome.outcome(),
        recipient: recipient.to_string(),
        subject: rendered.subject,
        body: rendered.body,
        message_id: outcome.message_id(),
        source_event_id: envelope.event_id,
    }))
}

/// What becomes of an email whose SMTP attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailedSend {
    /// It stays pending and is tried again after this delay.
    RetryAfter(Duration),
    /// Retrying cannot help: it is set aside as `failed`, with the error, for an operator to
    /// see and redrive; the emails behind it go on.
    SetAside,
}

/// The shared error policy applied to one email: a transient failure is retried, forever, with
/// `policy.backoff` over all its attempts; a permanent one sets it aside at once; an
/// unclassified one is retried until the email has failed `policy.unclassified_attempts` times
/// that way. `earlier_failures` and `earlier_unclassified` count the attempts before this one.
pub fn after_failed_send(
    policy: &ErrorPolicy,
    class: ErrorClass,
    earlier_failures: u32,
    earlier_unclassified: u32,
) -> AfterFailedSend {
    let retry = AfterFailedSend::RetryAfter(policy.backoff.delay(earlier_failures.saturating_add(1)));
    match class {
        ErrorClass::Transient => retry,
        ErrorClass::Permanent => AfterFailedSend::SetAside,
        ErrorClass::Unclassified if earlier_unclassified.saturating_add(1) >= policy.unclassified_attempts => {
            AfterFailedSend::SetAside
        }
        ErrorClass::Unclassified => retry,
    }
}

#[cfg(test)]
mod tests {
    use saga_common::retry::Backoff;
    use saga_contracts::{Envelope, FailureReason, OrderConfirmed, OrderCreated, OrderFailed};

    use super::*;

    const ORDER_ID: &str = "0f8e2c4a-1b2c-4d5e-8f90-123456789abc";

    fn order_id() -> OrderId {
        ORDER_ID.parse().expect("a UUID")
    }

    fn confirmed(email: &str) -> OrderConfirmed {
        OrderConfirmed {
            envelope: Envelope::for_command(order_id()),
            customer_email: email.into(),
            total_minor: 3998,
            currency: "USD".into(),
        }
    }

    fn failed(reason: FailureReason, reason_text: &str) -> OrderFailed {
        OrderFailed {
            envelope: Envelope::for_command(order_id()),
            reason: reason_text.into(),
            failure_reason: reason,
            customer_email: "ada@example.com".into(),
            total_minor: 1500,
            currency: "JPY".into(),
        }
    }

    fn email(event: SagaEvent) -> NewNotification {
        assert!(asks_for_email(&event), "{event:?}");
        match email_for(&event) {
            Ok(Some(notification)) => notification,
            other => panic!("expected an email for {event:?}, got {other:?}"),
        }
    }

    #[test]
    fn a_confirmed_order_asks_for_a_confirmation_email() {
        let event = confirmed("ada@example.com");
        let notification = email(SagaEvent::OrderConfirmed(event.clone()));
        assert_eq!(notification.order_id, order_id());
        assert_eq!(notification.outcome, Outcome::Confirmed);
        assert_eq!(notification.recipient, "ada@example.com");
        assert_eq!(notification.subject, "Order 0f8e2c4a confirmed");
        assert_eq!(
            notification.message_id,
            format!("<{ORDER_ID}.confirmed@saga-platform.local>")
        );
        assert_eq!(notification.source_event_id, event.envelope.event_id);
    }

    #[test]
    fn a_failed_order_asks_for_a_failure_email_naming_the_reason() {
        let notification = email(SagaEvent::OrderFailed(failed(
            FailureReason::OutOfStock,
            "out_of_stock",
        )));
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
    }

    #[test]
    fn a_failure_written_by_a_v1_writer_is_explained_from_its_reason_text() {
        let notification = email(SagaEvent::OrderFailed(failed(
            FailureReason::Unknown,
            "payment_declined",
        )));
        assert!(
            notification.body.contains("your payment was declined"),
            "{}",
            notification.body
        );
    }

    #[test]
    fn the_address_is_trimmed_before_it_is_used() {
        let notification = email(SagaEvent::OrderConfirmed(confirmed("  ada@example.com ")));
        assert_eq!(notification.recipient, "ada@example.com");
    }

    #[test]
    fn a_created_order_needs_no_email() {
        let event = SagaEvent::OrderCreated(OrderCreated {
            envelope: Envelope::for_command(order_id()),
            customer_id: "c-1".into(),
            customer_email: "ada@example.com".into(),
            payment_token: "tok_ok".into(),
            total_minor: 3998,
            currency: "USD".into(),
            items: Vec::new(),
            sales_channel: "api".into(),
            idempotency_key: None,
            request_hash: None,
            deadline_at: None,
        });
        assert!(!asks_for_email(&event));
        assert!(matches!(email_for(&event), Ok(None)));
    }

    #[test]
    fn an_outcome_without_a_valid_address_can_never_be_emailed() {
        let outcome = email_for(&SagaEvent::OrderConfirmed(confirmed("not an address")));
        assert!(matches!(outcome, Err(Error::Undeliverable(_))), "{outcome:?}");
    }

    fn delivery_record() -> DeliveryRecord {
        DeliveryRecord {
            order_id: order_id(),
            outcome: "failed".into(),
            recipient: "ada@example.com".into(),
            subject: "Order 0f8e2c4a failed".into(),
            message_id: format!("<{ORDER_ID}.failed@saga-platform.local>"),
            attempts: 3,
            source_event_id: EventId::new(),
            at: DateTime::from_timestamp_millis(1_700_000_000_123).expect("a valid instant"),
        }
    }

    #[test]
    fn a_sent_email_is_told_as_of_the_instant_its_row_was_marked_sent() {
        let record = delivery_record();
        let SagaEvent::NotificationSent(sent) = sent_event(&record) else {
            panic!("expected notification.sent");
        };
        assert_eq!(sent.envelope.occurred_at, 1_700_000_000_123);
        assert_eq!(sent.envelope.causation_id, Some(record.source_event_id));
        assert_eq!(sent.order_outcome, saga_contracts::OrderOutcome::Failed);
        assert_eq!(sent.attempts, 3);
        assert_eq!(sent.subject, record.subject);
    }

    #[test]
    fn an_email_set_aside_is_told_as_of_the_instant_its_row_was_set_aside() {
        let record = delivery_record();
        let SagaEvent::NotificationFailed(failed) = set_aside_event(&record, "550 no such user") else {
            panic!("expected notification.failed");
        };
        assert_eq!(failed.envelope.occurred_at, 1_700_000_000_123);
        assert_eq!(failed.error, "550 no such user");
        assert_eq!(failed.attempts, 3);
        assert_eq!(failed.message_id, record.message_id);
    }

    fn policy() -> ErrorPolicy {
        ErrorPolicy {
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
            unclassified_attempts: 3,
        }
    }

    #[test]
    fn a_transient_failure_retries_with_growing_delays_however_often_it_failed() {
        let policy = policy();
        assert_eq!(
            after_failed_send(&policy, ErrorClass::Transient, 0, 0),
            AfterFailedSend::RetryAfter(Duration::from_secs(1))
        );
        assert_eq!(
            after_failed_send(&policy, ErrorClass::Transient, 2, 0),
            AfterFailedSend::RetryAfter(Duration::from_secs(4))
        );
        assert_eq!(
            after_failed_send(&policy, ErrorClass::Transient, 10_000, 2),
            AfterFailedSend::RetryAfter(Duration::from_secs(60))
        );
    }

    #[test]
    fn a_permanent_failure_sets_the_email_aside_at_once() {
        assert_eq!(
            after_failed_send(&policy(), ErrorClass::Permanent, 0, 0),
            AfterFailedSend::SetAside
        );
    }

    #[test]
    fn unclassified_failures_retry_within_the_budget_then_set_the_email_aside() {
        let policy = policy();
        assert_eq!(
            after_failed_send(&policy, ErrorClass::Unclassified, 0, 0),
            AfterFailedSend::RetryAfter(Duration::from_secs(1))
        );
        // Transient failures in between do not use up the budget.
        assert_eq!(
            after_failed_send(&policy, ErrorClass::Unclassified, 7, 1),
            AfterFailedSend::RetryAfter(Duration::from_secs(60))
        );
        assert_eq!(
            after_failed_send(&policy, ErrorClass::Unclassified, 8, 2),
            AfterFailedSend::SetAside
        );
    }
}
