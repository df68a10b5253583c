//! What the harness observes of the whole system once it is quiet: the services' databases, the
//! mail the SMTP server received, the dead-letter topics, and what the harness itself injected.
//! Plain data, so the invariant checker is a pure function over it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An order as the order service stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    /// The order's id.
    pub order_id: String,
    /// PENDING, CONFIRMED or FAILED.
    pub status: String,
    /// Why it failed, if it did.
    pub failure_reason: Option<String>,
    /// Total in minor units.
    pub total_minor: i64,
    /// Where its email goes.
    pub customer_email: String,
    /// Its lines: (sku, quantity).
    pub items: Vec<(String, i64)>,
}

/// A payment as the payment service stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct PaymentRecord {
    /// The order it pays for.
    pub order_id: String,
    /// pending, captured, declined, refunding or refunded.
    pub status: String,
    /// Amount charged (or attempted), in minor units.
    pub amount_minor: i64,
    /// Amount refunded so far.
    pub refunded_minor: i64,
}

/// A reservation as the inventory service stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationRecord {
    /// The order it is for.
    pub order_id: String,
    /// reserved, rejected, committed or released.
    pub status: String,
    /// Reserved lines: (sku, quantity); empty for a rejection.
    pub items: Vec<(String, i64)>,
}

/// Stock levels of one SKU, with the sum of every adjustment ever applied to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StockRecord {
    /// Units free to reserve.
    pub available: i64,
    /// Units held for pending orders.
    pub reserved: i64,
    /// Units sold.
    pub committed: i64,
    /// Sum of all stock adjustments (the only way stock enters or leaves).
    pub adjustments: i64,
}

/// One email the SMTP server received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailRecord {
    /// Recipient address.
    pub to: String,
    /// Message-ID header, with angle brackets: `<{order_id}.{outcome}@...>`.
    pub message_id: String,
    /// Subject line.
    pub subject: String,
}

/// Where a record sits in a topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordPosition {
    /// Full topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// A record found in a dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    /// The dead-letter topic it is in.
    pub dead_letter_topic: String,
    /// Where the original record was (from the `dlq.origin.*` headers).
    pub origin: RecordPosition,
    /// Why it was dead-lettered (`dlq.error`).
    pub error: String,
}

/// A poison record the harness produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectedPoison {
    /// What kind of poison: `random_bytes`, `unknown_schema_id`, `invalid_content`.
    pub kind: String,
    /// Where the broker put it.
    pub position: RecordPosition,
}

/// Everything the invariants are checked against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SystemState {
    /// Ids of every order the load generator placed (accepted with 202).
    pub placed_orders: Vec<String>,
    /// The order service's orders, by id.
    pub orders: BTreeMap<String, OrderRecord>,
    /// The payment service's payments, by order id.
    pub payments: BTreeMap<String, PaymentRecord>,
    /// The inventory service's reservations, by order id.
    pub reservations: BTreeMap<String, ReservationRecord>,
    /// Stock per SKU.
    pub stock: BTreeMap<String, StockRecord>,
    /// Emails received for this run's recipients.
    pub emails: Vec<EmailRecord>,
    /// Every record in the services' dead-letter topics.
    pub dead_letters: Vec<DeadLetterRecord>,
    /// Every poison record the harness injected.
    pub injected_poison: Vec<InjectedPoison>,
    /// How often the notification service was SIGKILLed. Each kill may resend the emails it was
    /// sending: the one window the platform cannot close (docs/notification.md).
    #[serde(default)]
    pub notification_kills: usize,
    /// How many emails the notification service sends at once (its mailers).
    #[serde(default)]
    pub mailer_concurrency: usize,
}
