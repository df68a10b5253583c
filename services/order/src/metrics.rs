//! The order service's metrics (named in [`saga_common::metrics`]): orders placed, and orders
//! decided with how long their saga took. Only the live paths record them (`POST /orders`, the
//! consumer's handler, the deadline scanner), each after its transaction committed, so a rolled
//! back transaction counts nothing; replay, which runs the same decision code, records nothing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use saga_common::metrics::{label, ORDERS_DECIDED, ORDERS_PLACED, SAGA_DURATION};
use saga_contracts::SagaEvent;

/// Counts an order `POST /orders` accepted (not an idempotent replay of one).
pub fn count_placed() {
    ::metrics::counter!(ORDERS_PLACED).increment(1);
}

/// A committed decision, as the metrics count it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRecord {
    /// `confirmed` or `failed`.
    pub outcome: &'static str,
    /// The failure reason, `none` for a confirmed order.
    pub reason: &'static str,
    /// From the order's creation to the decision.
    pub saga_duration: Duration,
}

impl DecisionRecord {
    /// The record of `decided` (an order.confirmed or order.failed) for an order created at
    /// `created_at`; `None` for any other event.
    pub fn of(decided: &SagaEvent, created_at: DateTime<Utc>) -> Option<Self> {
        let (outcome, reason) = match decided {
            SagaEvent::OrderConfirmed(_) => ("confirmed", "none"),
            SagaEvent::OrderFailed(failed) => ("failed", failed.reason().as_str()),
            _ => return None,
        };
        let millis = decided.occurred_at_millis() - created_at.timestamp_millis();
        Some(Self {
            outcome,
            reason,
            saga_duration: Duration::from_millis(u64::try_from(millis).unwrap_or(0)),
        })
    }

    /// Counts the decision and records its saga duration.
    pub fn record(&self) {
        ::metrics::counter!(ORDERS_DECIDED, label::OUTCOME => self.outcome, label::REASON => self.reason).increment(1);
        ::metrics::histogram!(SAGA_DURATION, label::OUTCOME => self.outcome).record(self.saga_duration);
    }
}

#[cfg(test)]
mod tests {
    use saga_contracts::{Envelope, FailureReason, OrderConfirmed, OrderFailed, OrderId};

    use super::*;

    fn created_at(millis: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(millis).expect("a valid time")
    }

    fn envelope_at(occurred_at: i64) -> Envelope {
        Envelope {
            occurred_at,
            ..Envelope::for_command(OrderId::new())
        }
    }

    #[test]
    fn a_confirmation_is_counted_without_a_reason_and_timed_from_the_order_creation() {
        let confirmed = SagaEvent::OrderConfirmed(OrderConfirmed {
            envelope: envelope_at(1_000_250),
            customer_email: "a@example.com".into(),
            total_minor: 100,
            currency: "EUR".into(),
        });
        assert_eq!(
            DecisionRecord::of(&confirmed, created_at(1_000_000)),
            Some(DecisionRecord {
                outcome: "confirmed",
                reason: "none",
                saga_duration: Duration::from_millis(250),
            })
        );
    }

    #[test]
    fn a_failure_is_counted_with_its_reason() {
        let failed = SagaEvent::OrderFailed(OrderFailed {
            envelope: envelope_at(2_000),
            reason: "out_of_stock".into(),
            failure_reason: FailureReason::OutOfStock,
            customer_email: "a@example.com".into(),
            total_minor: 100,
            currency: "EUR".into(),
        });
        let record = DecisionRecord::of(&failed, created_at(0)).expect("a decision");
        assert_eq!((record.outcome, record.reason), ("failed", "out_of_stock"));
        assert_eq!(record.saga_duration, Duration::from_secs(2));
    }

    #[test]
    fn a_decision_stamped_before_its_order_by_a_skewed_clock_took_no_time() {
        let confirmed = SagaEvent::OrderConfirmed(OrderConfirmed {
            envelope: envelope_at(500),
            customer_email: "a@example.com".into(),
            total_minor: 100,
            currency: "EUR".into(),
        });
        let record = DecisionRecord::of(&confirmed, created_at(900)).expect("a decision");
        assert_eq!(record.saga_duration, Duration::ZERO);
    }
}
