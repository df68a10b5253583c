//! The order service's one error type. Each variant says whether retrying can help
//! ([`Classify`]): the consumer loop retries transient errors and dead-letters permanent ones,
//! the deadline scanner retries or tries again at its next scan, and HTTP answers 503 (retry later) for transient errors, 500 for the others.

use saga_common::{Classify, ErrorClass};
use saga_contracts::{EventId, EventType, OrderId};
use thiserror::Error;

/// Errors of the order service.
#[derive(Debug, Error)]
pub enum Error {
    /// The database failed; classed by its SQLSTATE or kind. Transient (connection lost,
    /// serialization failure, deadlock): retry. Permanent (a constraint rejects the change):
    /// dead-letter.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The shared machinery failed (an event written to the outbox); classed by the shared
    /// library: retry when transient, dead-letter when permanent.
    #[error(transparent)]
    Shared(#[from] saga_common::Error),
    /// An outcome names an order this service never stored. Permanent: the order row is
    /// committed before its order.created is published, so no retry makes it appear;
    /// dead-letter.
    #[error("{event_type} {event_id} for unknown order {order_id}")]
    UnknownOrder {
        /// The order the event names.
        order_id: OrderId,
        /// The event's type.
        event_type: EventType,
        /// The event's id.
        event_id: EventId,
    },
    /// A stored order holds a value this code does not know. Permanent: dead-letter the event
    /// that needed it; an operator fixes the row.
    #[error("order {order_id}: stored {column} {value:?} is not a value this service knows")]
    UnknownStoredValue {
        /// The order.
        order_id: OrderId,
        /// The column.
        column: &'static str,
        /// What it holds.
        value: String,
    },
    /// A row with this key exists already (what a unique constraint rejects). Permanent.
    #[error("{table}: a row with key {key} exists already")]
    DuplicateKey {
        /// The table.
        table: &'static str,
        /// The key.
        key: String,
    },
    /// An order's lines cannot be written as or read from their stored JSON. Permanent.
    #[error("order lines as JSON: {0}")]
    Lines(#[from] serde_json::Error),
    /// A time an order's event carries (or a deadline computed from it) is outside the range a
    /// timestamp can hold. Permanent: the same event gives the same time; dead-letter it, or
    /// reject the request that made it.
    #[error("order {order_id}: {column} {millis} ms since the epoch is out of range")]
    TimestampOutOfRange {
        /// The order.
        order_id: OrderId,
        /// The column the time was for.
        column: &'static str,
        /// The time, in milliseconds since the Unix epoch.
        millis: i64,
    },
}

/// Result with the order service's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Classify for Error {
    fn class(&self) -> ErrorClass {
        match self {
            Error::Database(error) => error.class(),
            Error::Shared(error) => error.class(),
            Error::UnknownOrder { .. }
            | Error::UnknownStoredValue { .. }
            | Error::DuplicateKey { .. }
            | Error::Lines(_)
            | Error::TimestampOutOfRange { .. } => ErrorClass::Permanent,
        }
    }
}

saga_common::classified_error!(Error);

#[cfg(test)]
mod tests {
    use super::*;
    use saga_common::consumer::HandlerError;

    fn unknown_order() -> Error {
        Error::UnknownOrder {
            order_id: OrderId::new(),
            event_type: EventType::PaymentSucceeded,
            event_id: EventId::new(),
        }
    }

    #[test]
    fn an_outcome_for_an_unknown_order_is_dead_lettered_at_once() {
        assert_eq!(unknown_order().class(), ErrorClass::Permanent);
        assert!(matches!(
            HandlerError::from(unknown_order()),
            HandlerError::Permanent(_)
        ));
    }

    #[test]
    fn a_lost_database_connection_is_retried() {
        let lost = Error::Database(sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()));
        assert_eq!(lost.class(), ErrorClass::Transient);
        assert!(matches!(HandlerError::from(lost), HandlerError::Transient(_)));
    }

    #[test]
    fn an_unencodable_event_is_permanent_and_an_unreachable_registry_transient() {
        assert_eq!(
            Error::Shared(saga_common::Error::Encode("bad".into())).class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            Error::Shared(saga_common::Error::RegistryUnavailable("down".into())).class(),
            ErrorClass::Transient
        );
    }

    #[test]
    fn the_message_names_the_event_and_the_order() {
        let text = unknown_order().to_string();
        assert!(text.starts_with("payment.success "), "{text}");
        assert!(text.contains("for unknown order "), "{text}");
    }
}
