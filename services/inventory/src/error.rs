//! The inventory service's errors, each saying whether retrying can help ([`Classify`]): the
//! consumer retries transient ones, dead-letters permanent ones and gives unclassified ones a
//! bounded budget; over HTTP every one is a 503 whose detail goes to the log, but for the ones
//! the stock API answers itself (an adjustment the stock cannot cover is a 409).

use saga_common::error::{Classify, ErrorClass};
use saga_contracts::OrderId;
use thiserror::Error;
use uuid::Uuid;

/// Result with the inventory service's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an inventory operation failed.
#[derive(Debug, Error)]
pub enum Error {
    /// The order's lines can never be reserved, whatever the stock. Permanent: dead-letter the
    /// order.created (it is poison, not a stock shortage); nothing is reserved.
    #[error("invalid order: {0}")]
    InvalidOrder(#[from] InvalidOrder),
    /// A reservation holds units of SKUs that have no stock row (the row was deleted under it):
    /// the rows that must exist do not. Permanent: dead-letter; an operator restores the stock
    /// and redrives the event.
    #[error("no stock row for skus {skus:?} held by the reservation of order {order_id}")]
    StockRowsMissing {
        /// The order whose reservation names them.
        order_id: OrderId,
        /// The SKUs without a row.
        skus: Vec<String>,
    },
    /// An order.confirmed for an order that was never reserved, though the order service
    /// confirms only reserved orders: the reservation that must exist does not. Permanent:
    /// dead-letter.
    #[error("order {order_id} was confirmed but never reserved: there is no reservation to commit")]
    NeverReserved {
        /// The confirmed order.
        order_id: OrderId,
    },
    /// A stored reservation has a status this build does not know: the code and the data
    /// disagree. Permanent: dead-letter.
    #[error("{0}")]
    UnknownStatus(String),
    /// The order's reservation was decided or changed by another instance between this one's
    /// read and its write. Transient: the retry rolls back and reads the other decision.
    #[error("the reservation of order {order_id} was decided concurrently")]
    DecidedConcurrently {
        /// The order.
        order_id: OrderId,
    },
    /// A stock adjustment would remove more units than the SKU has available. Over HTTP a 409
    /// (nothing changed). In replay, a recorded adjustment the rebuilt stock cannot cover: the
    /// rebuilt history interleaved orders and adjustments differently from live. Permanent.
    #[error("cannot remove {removing} units of sku {sku}: only {available} available")]
    InsufficientStock {
        /// The SKU.
        sku: String,
        /// The units the adjustment removes.
        removing: i64,
        /// The units available before it.
        available: i64,
    },
    /// Another request recorded the same adjustment id between this one's check and its
    /// insert. Transient: roll back; the retry finds the other's record and answers with it.
    #[error("adjustment {adjustment_id} was recorded concurrently")]
    AdjustedConcurrently {
        /// The adjustment id both used.
        adjustment_id: Uuid,
    },
    /// A change the inventory tables' constraints forbid (a stock column below zero or beyond
    /// a bigint, a malformed SKU, a second adjustment recorded for one event), found by the state
    /// a replay rebuilds in memory, which checks what the tables' constraints check; live,
    /// PostgreSQL refuses the same change as a permanent [`Error::Database`]. Permanent:
    /// the event is not applied (live, it is dead-lettered).
    #[error("{table}: {violation}")]
    ConstraintViolated {
        /// The table whose constraint forbids the change.
        table: &'static str,
        /// What the constraint forbids, as PostgreSQL words it.
        violation: String,
    },
    /// The database failed. Classed by SQLSTATE: a lost connection or a deadlock is transient
    /// (retry), a violated constraint or a missing row permanent (dead-letter).
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The shared machinery (outbox, inbox) failed; classed by its own error.
    #[error(transparent)]
    Shared(#[from] saga_common::Error),
}

impl Classify for Error {
    fn class(&self) -> ErrorClass {
        match self {
            Error::InvalidOrder(_)
            | Error::StockRowsMissing { .. }
            | Error::NeverReserved { .. }
            | Error::UnknownStatus(_)
            | Error::InsufficientStock { .. }
            | Error::ConstraintViolated { .. } => ErrorClass::Permanent,
            Error::DecidedConcurrently { .. } | Error::AdjustedConcurrently { .. } => ErrorClass::Transient,
            Error::Database(error) => error.class(),
            Error::Shared(error) => error.class(),
        }
    }
}

saga_common::classified_error!(Error);

/// An `order.created` whose lines can never be reserved, whatever the stock.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidOrder {
    /// The order has no lines.
    #[error("the order has no lines")]
    NoLines,
    /// A line names no SKU.
    #[error("line {line} has an empty sku")]
    EmptySku {
        /// Index of the line in the order.
        line: usize,
    },
    /// A line asks for fewer than one unit.
    #[error("line {line} has quantity {quantity}; at least 1 unit is required")]
    NonPositiveQuantity {
        /// Index of the line in the order.
        line: usize,
        /// The quantity it asks for.
        quantity: i32,
    },
    /// The lines of one SKU add up to more units than an event can carry.
    #[error("the lines of sku {sku} add up to {quantity} units, more than an event can carry")]
    QuantityTooLarge {
        /// The SKU.
        sku: String,
        /// The summed quantity.
        quantity: i64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use saga_common::consumer::HandlerError;

    #[test]
    fn content_missing_rows_uncovered_adjustments_and_violated_constraints_are_permanent() {
        let order_id = OrderId::new();
        for error in [
            Error::InvalidOrder(InvalidOrder::NoLines),
            Error::StockRowsMissing {
                order_id,
                skus: vec!["A".into()],
            },
            Error::NeverReserved { order_id },
            Error::UnknownStatus("pending".into()),
            Error::InsufficientStock {
                sku: "A".into(),
                removing: 3,
                available: 2,
            },
            Error::ConstraintViolated {
                table: "stock",
                violation: "new row violates check constraint \"stock_available_check\"".into(),
            },
            Error::Database(sqlx::Error::RowNotFound),
        ] {
            assert_eq!(error.class(), ErrorClass::Permanent, "{error}");
            assert!(matches!(HandlerError::from(error), HandlerError::Permanent(_)));
        }
    }

    #[test]
    fn a_concurrent_decision_or_adjustment_and_a_lost_connection_are_transient() {
        for error in [
            Error::DecidedConcurrently {
                order_id: OrderId::new(),
            },
            Error::AdjustedConcurrently {
                adjustment_id: Uuid::new_v4(),
            },
            Error::Database(sqlx::Error::PoolTimedOut),
            Error::Shared(saga_common::Error::RegistryUnavailable("down".into())),
        ] {
            assert_eq!(error.class(), ErrorClass::Transient, "{error}");
            assert!(matches!(HandlerError::from(error), HandlerError::Transient(_)));
        }
    }
}
