//! The service's payment records and what to do with them when their order fails.
//!
//! One payment per order (the order id is the key): captured, declined, or refunded after its
//! order failed. The decision on order.failed is a pure function of the payment's state
//! ([`on_order_failed`]); the queries here only read and write rows.

use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// Where a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    /// The order total was taken.
    Captured,
    /// The gateway declined; nothing was taken.
    Declined,
    /// The capture was given back because the order failed.
    Refunded,
}

impl PaymentStatus {
    /// The status as stored and served: `captured`, `declined`, `refunded`.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Captured => "captured",
            PaymentStatus::Declined => "declined",
            PaymentStatus::Refunded => "refunded",
        }
    }

    fn parse(text: &str) -> Result<Self, sqlx::Error> {
        match text {
            "captured" => Ok(PaymentStatus::Captured),
            "declined" => Ok(PaymentStatus::Declined),
            "refunded" => Ok(PaymentStatus::Refunded),
            other => Err(sqlx::Error::Decode(format!("unknown payment status {other:?}").into())),
        }
    }
}

/// One order's payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// The order paid for.
    pub order_id: Uuid,
    /// The payment's own id, as in payment.success / payment.refunded.
    pub payment_id: Uuid,
    /// Where it stands.
    pub status: PaymentStatus,
    /// The amount charged (or attempted), in minor units.
    pub amount_minor: i64,
    /// How much of it was refunded, in minor units.
    pub refunded_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// The gateway's id of the capture; `None` for a declined payment.
    pub gateway_reference: Option<String>,
    /// Why the gateway declined, for a declined payment.
    pub decline_reason: Option<String>,
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for Payment {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(Self {
            order_id: row.try_get("order_id")?,
            payment_id: row.try_get("payment_id")?,
            status: PaymentStatus::parse(row.try_get("status")?)?,
            amount_minor: row.try_get("amount_minor")?,
            refunded_minor: row.try_get("refunded_minor")?,
            currency: row.try_get("currency")?,
            gateway_reference: row.try_get("gateway_reference")?,
            decline_reason: row.try_get("decline_reason")?,
        })
    }
}

/// What the service does about a payment when its order fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnOrderFailed {
    /// Give back `amount_minor` of the capture `gateway_reference`.
    Refund {
        /// The payment being refunded.
        payment_id: Uuid,
        /// The capture to refund.
        gateway_reference: String,
        /// What is still captured, in minor units.
        amount_minor: i64,
        /// ISO 4217 code.
        currency: String,
    },
    /// No money is held for the order.
    NothingToRefund(NothingToRefund),
}

/// Why a failed order needs no refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NothingToRefund {
    /// The order was never charged.
    NoPayment,
    /// Nothing was captured: the charge was declined.
    Declined,
    /// The capture was refunded already (order.failed delivered again).
    AlreadyRefunded,
}

/// The decision on order.failed given the order's payment, if any.
pub fn on_order_failed(payment: Option<&Payment>) -> OnOrderFailed {
    let Some(payment) = payment else {
        return OnOrderFailed::NothingToRefund(NothingToRefund::NoPayment);
    };
    let outstanding = payment.amount_minor - payment.refunded_minor;
    match (payment.status, &payment.gateway_reference) {
        (PaymentStatus::Declined, _) => OnOrderFailed::NothingToRefund(NothingToRefund::Declined),
        (PaymentStatus::Refunded, _) => OnOrderFailed::NothingToRefund(NothingToRefund::AlreadyRefunded),
        (PaymentStatus::Captured, _) if outstanding <= 0 => {
            OnOrderFailed::NothingToRefund(NothingToRefund::AlreadyRefunded)
        }
        // Cannot happen: the table requires a capture to carry its gateway reference.
        (PaymentStatus::Captured, None) => OnOrderFailed::NothingToRefund(NothingToRefund::Declined),
        (PaymentStatus::Captured, Some(reference)) => OnOrderFailed::Refund {
            payment_id: payment.payment_id,
            gateway_reference: reference.clone(),
            amount_minor: outstanding,
            currency: payment.currency.clone(),
        },
    }
}

const PAYMENT_COLUMNS: &str = "order_id, payment_id, status, amount_minor, refunded_minor, currency, \
                               gateway_reference, decline_reason";

/// The payment of `order_id`, if it has one.
pub async fn find(executor: impl PgExecutor<'_>, order_id: Uuid) -> Result<Option<Payment>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = $1"))
        .bind(order_id)
        .fetch_optional(executor)
        .await
}

/// Inserts a new payment; `false` if the order has one already (the row is left as it was).
pub async fn insert(tx: &mut PgConnection, payment: &Payment) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO payments (order_id, payment_id, status, amount_minor, refunded_minor, currency, \
         gateway_reference, decline_reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(payment.order_id)
    .bind(payment.payment_id)
    .bind(payment.status.as_str())
    .bind(payment.amount_minor)
    .bind(payment.refunded_minor)
    .bind(&payment.currency)
    .bind(&payment.gateway_reference)
    .bind(&payment.decline_reason)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Marks the captured payment of `order_id` refunded by `amount_minor` more; `false` if it is
/// not captured any more (refunded meanwhile), in which case nothing changed.
pub async fn mark_refunded(tx: &mut PgConnection, order_id: Uuid, amount_minor: i64) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE payments SET status = 'refunded', refunded_minor = refunded_minor + $2, updated_at = now() \
         WHERE order_id = $1 AND status = 'captured' AND refunded_minor + $2 <= amount_minor",
    )
    .bind(order_id)
    .bind(amount_minor)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Records that `order_id` failed for `reason` (the first reason is kept).
pub async fn record_failed_order(tx: &mut PgConnection, order_id: Uuid, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO failed_orders (order_id, reason) VALUES ($1, $2) ON CONFLICT (order_id) DO NOTHING")
        .bind(order_id)
        .bind(reason)
        .execute(tx)
        .await?;
    Ok(())
}

/// Whether `order_id` is known to have failed.
pub async fn is_failed(executor: impl PgExecutor<'_>, order_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM failed_orders WHERE order_id = $1)")
        .bind(order_id)
        .fetch_one(executor)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(status: PaymentStatus) -> Payment {
        Payment {
            order_id: Uuid::new_v4(),
            payment_id: Uuid::new_v4(),
            status,
            amount_minor: 3998,
            refunded_minor: 0,
            currency: "USD".into(),
            gateway_reference: (status != PaymentStatus::Declined).then(|| "sim_ch_1".to_string()),
            decline_reason: (status == PaymentStatus::Declined).then(|| "card_declined".to_string()),
        }
    }

    #[test]
    fn a_captured_payment_is_refunded_in_full() {
        let captured = payment(PaymentStatus::Captured);
        assert_eq!(
            on_order_failed(Some(&captured)),
            OnOrderFailed::Refund {
                payment_id: captured.payment_id,
                gateway_reference: "sim_ch_1".into(),
                amount_minor: 3998,
                currency: "USD".into(),
            }
        );
    }

    #[test]
    fn a_partly_refunded_capture_is_refunded_only_by_what_is_still_held() {
        let captured = Payment {
            refunded_minor: 1000,
            ..payment(PaymentStatus::Captured)
        };
        assert!(matches!(
            on_order_failed(Some(&captured)),
            OnOrderFailed::Refund { amount_minor: 2998, .. }
        ));
    }

    #[test]
    fn a_declined_payment_has_nothing_to_refund() {
        assert_eq!(
            on_order_failed(Some(&payment(PaymentStatus::Declined))),
            OnOrderFailed::NothingToRefund(NothingToRefund::Declined)
        );
    }

    #[test]
    fn a_refunded_payment_is_not_refunded_again() {
        let refunded = Payment {
            refunded_minor: 3998,
            ..payment(PaymentStatus::Refunded)
        };
        assert_eq!(
            on_order_failed(Some(&refunded)),
            OnOrderFailed::NothingToRefund(NothingToRefund::AlreadyRefunded)
        );
    }

    #[test]
    fn a_capture_whose_whole_amount_was_given_back_is_not_refunded_again() {
        let captured = Payment {
            refunded_minor: 3998,
            ..payment(PaymentStatus::Captured)
        };
        assert_eq!(
            on_order_failed(Some(&captured)),
            OnOrderFailed::NothingToRefund(NothingToRefund::AlreadyRefunded)
        );
    }

    #[test]
    fn an_order_without_a_payment_has_nothing_to_refund() {
        assert_eq!(
            on_order_failed(None),
            OnOrderFailed::NothingToRefund(NothingToRefund::NoPayment)
        );
    }
}
