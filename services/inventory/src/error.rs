//! Why an order's content can never be reserved: the inventory service's one error type.

use thiserror::Error;

/// An `order.created` whose lines can never be reserved, whatever the stock. The handler
/// dead-letters such an event (it is poison, not a stock shortage); nothing is reserved.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidOrder {
    /// The order has no lines. Dead-letter.
    #[error("the order has no lines")]
    NoLines,
    /// A line names no SKU. Dead-letter.
    #[error("line {line} has an empty sku")]
    EmptySku {
        /// Index of the line in the order.
        line: usize,
    },
    /// A line asks for fewer than one unit. Dead-letter.
    #[error("line {line} has quantity {quantity}; at least 1 unit is required")]
    NonPositiveQuantity {
        /// Index of the line in the order.
        line: usize,
        /// The quantity it asks for.
        quantity: i32,
    },
    /// The lines of one SKU add up to more units than an event can carry. Dead-letter.
    #[error("the lines of sku {sku} add up to {quantity} units, more than an event can carry")]
    QuantityTooLarge {
        /// The SKU.
        sku: String,
        /// The summed quantity.
        quantity: i64,
    },
}
