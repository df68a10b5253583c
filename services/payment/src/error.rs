//! The payment service's error type. Every variant says whether retrying can help
//! ([`Classify`]), and that is all the consumer loop and the charger need to know: a transient
//! error is retried with backoff, a permanent one dead-letters the event (consumer) or stalls the
//! payment for an operator (charger), an unclassified one is retried within the policy's budget.

use saga_common::{Classify, ErrorClass};
use saga_contracts::{OrderId, PaymentId};

use crate::gateway::GatewayError;

/// Result with the payment service's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while the service records, charges or refunds a payment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed. Classed by SQLSTATE: a lost connection or a deadlock is retried, a
    /// violated constraint is permanent.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Writing an event to the outbox failed: permanent if the event cannot be encoded, else as
    /// the database error behind it.
    #[error("outbox: {0}")]
    Outbox(#[from] saga_common::Error),
    /// The payment gateway failed (transient: retry with the same idempotency key) or refused the
    /// request (permanent: an operator must look).
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// order.created asks for a charge that cannot be made (a negative total, a currency that is
    /// not an ISO 4217 code). Permanent: the event is dead-lettered.
    #[error("order cannot be charged: {0}")]
    InvalidOrder(String),
    /// A stored payment the service cannot read (an unknown status, a capture without its
    /// reference). Permanent: the schema's checks should make it impossible.
    #[error("stored payment is corrupt: {0}")]
    CorruptPayment(String),
    /// Another transaction recorded the payment of this order between this one's read and its
    /// write (two consumers of one partition during a rebalance). Transient: done again, the
    /// work sees the other's result.
    #[error("the payment of order {0} changed meanwhile")]
    ChangedMeanwhile(OrderId),
    /// A payment was to get an id another order's payment has: replay's form of the unique
    /// violation on `payments.payment_id` the database raises live. Permanent: the event is not
    /// applied, as the live service dead-letters it.
    #[error("payment id {payment_id} belongs to another order's payment, not to order {order_id}'s")]
    PaymentIdTaken {
        /// The id asked for.
        payment_id: PaymentId,
        /// The order whose payment was to get it.
        order_id: OrderId,
    },
}

impl Classify for Error {
    fn class(&self) -> ErrorClass {
        match self {
            Error::Database(error) => error.class(),
            Error::Outbox(error) => error.class(),
            Error::Gateway(error) => error.class(),
            Error::InvalidOrder(_) | Error::CorruptPayment(_) | Error::PaymentIdTaken { .. } => ErrorClass::Permanent,
            Error::ChangedMeanwhile(_) => ErrorClass::Transient,
        }
    }
}

impl Classify for GatewayError {
    fn class(&self) -> ErrorClass {
        match self {
            GatewayError::Transient(_) => ErrorClass::Transient,
            GatewayError::Rejected(_) => ErrorClass::Permanent,
        }
    }
}

saga_common::classified_error!(Error);

#[cfg(test)]
mod tests {
    use super::*;
    use saga_common::consumer::HandlerError;

    #[test]
    fn an_uncharged_order_and_a_corrupt_row_are_permanent() {
        assert_eq!(Error::InvalidOrder("negative".into()).class(), ErrorClass::Permanent);
        assert_eq!(Error::CorruptPayment("status".into()).class(), ErrorClass::Permanent);
    }

    #[test]
    fn a_payment_id_another_order_has_is_permanent() {
        let taken = Error::PaymentIdTaken {
            payment_id: PaymentId::new(),
            order_id: OrderId::new(),
        };
        assert_eq!(taken.class(), ErrorClass::Permanent);
    }

    #[test]
    fn a_payment_changed_meanwhile_is_transient() {
        assert_eq!(Error::ChangedMeanwhile(OrderId::new()).class(), ErrorClass::Transient);
    }

    #[test]
    fn a_gateway_outage_is_transient_and_a_rejection_permanent() {
        let outage = Error::from(GatewayError::Transient("timeout".into()));
        let rejection = Error::from(GatewayError::Rejected("key reused".into()));
        assert_eq!(outage.class(), ErrorClass::Transient);
        assert_eq!(rejection.class(), ErrorClass::Permanent);
    }

    #[test]
    fn database_errors_keep_their_class_and_reach_the_consumer_as_it() {
        assert_eq!(Error::from(sqlx::Error::PoolTimedOut).class(), ErrorClass::Transient);
        assert!(matches!(
            HandlerError::from(Error::from(sqlx::Error::PoolTimedOut)),
            HandlerError::Transient(_)
        ));
        assert!(matches!(
            HandlerError::from(Error::InvalidOrder("negative".into())),
            HandlerError::Permanent(_)
        ));
    }
}
