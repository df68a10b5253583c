//! The service's payment records and what to do with them when their order fails.
//!
//! One payment per order (the order id is the key): pending while the charger charges it, then
//! captured, declined, or refunded after its order failed. A pending payment only ever leaves
//! `pending` through the charger, under its row lock ([`lock_pending`]); every other change is to a
//! settled payment. The decisions on order.failed are pure functions of the payment's state
//! ([`on_order_failed`], [`on_order_failed_under_lock`]); the queries here only read and write rows.

use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// Where a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    /// order.created was recorded and the charge is in progress (or waits to be resumed after a
    /// restart); nothing is known to be taken yet.
    Pending,
    /// The order total was taken.
    Captured,
    /// The gateway declined; nothing was taken.
    Declined,
    /// The capture was given back because the order failed.
    Refunded,
}

impl PaymentStatus {
    /// The status as stored and served: `pending`, `captured`, `declined`, `refunded`.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Captured => "captured",
            PaymentStatus::Declined => "declined",
            PaymentStatus::Refunded => "refunded",
        }
    }

    fn parse(text: &str) -> Result<Self, sqlx::Error> {
        match text {
            "pending" => Ok(PaymentStatus::Pending),
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
    /// The gateway's id of the capture; `None` for a pending or declined payment.
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
    /// There is nothing to refund here (now): no money is held, or the charger will see to it.
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
    /// The charge is still in progress. The charger settles it under the row lock after the
    /// order's failure is recorded, so it sees the failure and gives the capture back itself.
    StillCharging,
}

/// The decision on order.failed given the order's payment, if any.
pub fn on_order_failed(payment: Option<&Payment>) -> OnOrderFailed {
    let Some(payment) = payment else {
        return OnOrderFailed::NothingToRefund(NothingToRefund::NoPayment);
    };
    let outstanding = payment.amount_minor - payment.refunded_minor;
    match (payment.status, &payment.gateway_reference) {
        (PaymentStatus::Pending, _) => OnOrderFailed::NothingToRefund(NothingToRefund::StillCharging),
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

/// What the order.failed handler does once it holds the payment's row lock, given what it
/// decided (and did at the gateway) before taking it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnderLock {
    /// The refund made at the gateway before the transaction is still the right one: record it.
    RecordRefund {
        /// The payment refunded.
        payment_id: Uuid,
        /// What was given back, in minor units.
        amount_minor: i64,
        /// ISO 4217 code.
        currency: String,
    },
    /// Nothing to record about the payment.
    Nothing(NothingToRefund),
    /// The payment was captured since it was first read (the charger settled it in between), so
    /// no refund was made for it: abandon the transaction and handle the event again, which then
    /// refunds the capture.
    HandleAgain,
}

/// The order.failed decision re-checked under the row lock: `before` is [`on_order_failed`] of
/// the payment as first read (and acted on at the gateway), `locked` of the payment as locked.
pub fn on_order_failed_under_lock(before: &OnOrderFailed, locked: OnOrderFailed) -> UnderLock {
    // The gateway refund was made for `before`; it is the right one only if nothing changed.
    let refund_made = *before == locked;
    match locked {
        OnOrderFailed::NothingToRefund(why) => UnderLock::Nothing(why),
        OnOrderFailed::Refund {
            payment_id,
            amount_minor,
            currency,
            ..
        } if refund_made => UnderLock::RecordRefund {
            payment_id,
            amount_minor,
            currency,
        },
        OnOrderFailed::Refund { .. } => UnderLock::HandleAgain,
    }
}

/// A payment whose charge is pending, with what charging it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCharge {
    /// The order to charge; also the charge's idempotency key.
    pub order_id: Uuid,
    /// The payment's own id.
    pub payment_id: Uuid,
    /// The customer's payment token.
    pub token: String,
    /// The order total, in minor units.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// The order.created event that asked for the charge.
    pub causation_id: Uuid,
    /// Its W3C trace context, if it had one.
    pub traceparent: Option<String>,
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for PendingCharge {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(Self {
            order_id: row.try_get("order_id")?,
            payment_id: row.try_get("payment_id")?,
            token: row.try_get("payment_token")?,
            amount_minor: row.try_get("amount_minor")?,
            currency: row.try_get("currency")?,
            causation_id: row.try_get("causation_id")?,
            traceparent: row.try_get("traceparent")?,
        })
    }
}

/// How a pending payment is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The charge was captured and stands.
    Captured {
        /// The gateway's id of the capture.
        gateway_reference: String,
    },
    /// The gateway declined the charge.
    Declined {
        /// Why.
        reason: String,
    },
    /// The charge was captured and, its order having failed meanwhile, refunded in full.
    Refunded {
        /// The gateway's id of the capture.
        gateway_reference: String,
    },
}

/// An order known to have failed.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FailedOrder {
    /// The order service's reason.
    pub reason: String,
    /// The order.failed event first seen for it (`None` if recorded before that was kept).
    pub event_id: Option<Uuid>,
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

/// Inserts a pending payment; `false` if the order has a payment already (left as it was).
pub async fn insert_pending(tx: &mut PgConnection, charge: &PendingCharge) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO payments (order_id, payment_id, status, amount_minor, currency, payment_token, causation_id, \
         traceparent) VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(charge.order_id)
    .bind(charge.payment_id)
    .bind(charge.amount_minor)
    .bind(&charge.currency)
    .bind(&charge.token)
    .bind(charge.causation_id)
    .bind(&charge.traceparent)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

const PENDING_COLUMNS: &str = "order_id, payment_id, payment_token, amount_minor, currency, causation_id, traceparent";

/// The charge of `order_id` if its payment is still pending (a plain read).
pub async fn pending_charge(
    executor: impl PgExecutor<'_>,
    order_id: Uuid,
) -> Result<Option<PendingCharge>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {PENDING_COLUMNS} FROM payments WHERE order_id = $1 AND status = 'pending'"
    ))
    .bind(order_id)
    .fetch_optional(executor)
    .await
}

/// Locks the payment of `order_id` for the rest of `tx` if it is still pending, and returns its
/// charge; `None` if it was settled (by another instance) meanwhile. Under READ COMMITTED a row
/// settled by a transaction this one waited for is re-checked after the wait and not returned.
pub async fn lock_pending(tx: &mut PgConnection, order_id: Uuid) -> Result<Option<PendingCharge>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {PENDING_COLUMNS} FROM payments WHERE order_id = $1 AND status = 'pending' FOR UPDATE"
    ))
    .bind(order_id)
    .fetch_optional(tx)
    .await
}

/// Locks the payment of `order_id`, whatever its state, for the rest of `tx`.
pub async fn lock(tx: &mut PgConnection, order_id: Uuid) -> Result<Option<Payment>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = $1 FOR UPDATE"
    ))
    .bind(order_id)
    .fetch_optional(tx)
    .await
}

/// Up to `limit` orders whose payment is pending, oldest first.
pub async fn pending_orders(executor: impl PgExecutor<'_>, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT order_id FROM payments WHERE status = 'pending' ORDER BY created_at LIMIT $1")
        .bind(limit)
        .fetch_all(executor)
        .await
}

/// Settles the pending payment of `order_id` as `settled` and forgets its token; `false` if it
/// was not pending any more, in which case nothing changed.
pub async fn settle(tx: &mut PgConnection, order_id: Uuid, settled: &Settled) -> Result<bool, sqlx::Error> {
    let (status, reference, reason, refunded_in_full) = match settled {
        Settled::Captured { gateway_reference } => ("captured", Some(gateway_reference.as_str()), None, false),
        Settled::Declined { reason } => ("declined", None, Some(reason.as_str()), false),
        Settled::Refunded { gateway_reference } => ("refunded", Some(gateway_reference.as_str()), None, true),
    };
    let updated = sqlx::query(
        "UPDATE payments SET status = $2, gateway_reference = $3, decline_reason = $4, \
         refunded_minor = CASE WHEN $5 THEN amount_minor ELSE 0 END, payment_token = NULL, updated_at = now() \
         WHERE order_id = $1 AND status = 'pending'",
    )
    .bind(order_id)
    .bind(status)
    .bind(reference)
    .bind(reason)
    .bind(refunded_in_full)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
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

/// Records that `order_id` failed for `reason`, as said by the order.failed `event_id` (the first
/// one is kept).
pub async fn record_failed_order(
    tx: &mut PgConnection,
    order_id: Uuid,
    reason: &str,
    event_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO failed_orders (order_id, reason, event_id) VALUES ($1, $2, $3) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(reason)
    .bind(event_id)
    .execute(tx)
    .await?;
    Ok(())
}

/// How `order_id` failed, if it is known to have failed.
pub async fn failure(executor: impl PgExecutor<'_>, order_id: Uuid) -> Result<Option<FailedOrder>, sqlx::Error> {
    sqlx::query_as("SELECT reason, event_id FROM failed_orders WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(executor)
        .await
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
            gateway_reference: matches!(status, PaymentStatus::Captured | PaymentStatus::Refunded)
                .then(|| "sim_ch_1".to_string()),
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

    #[test]
    fn a_pending_payment_is_left_to_the_charger() {
        assert_eq!(
            on_order_failed(Some(&payment(PaymentStatus::Pending))),
            OnOrderFailed::NothingToRefund(NothingToRefund::StillCharging)
        );
    }

    #[test]
    fn a_refund_made_for_the_payment_as_locked_is_recorded() {
        let captured = payment(PaymentStatus::Captured);
        let before = on_order_failed(Some(&captured));
        assert_eq!(
            on_order_failed_under_lock(&before, on_order_failed(Some(&captured))),
            UnderLock::RecordRefund {
                payment_id: captured.payment_id,
                amount_minor: 3998,
                currency: "USD".into(),
            }
        );
    }

    #[test]
    fn a_payment_captured_after_it_was_first_read_as_pending_is_handled_again_to_refund_it() {
        let pending = payment(PaymentStatus::Pending);
        let captured = Payment {
            status: PaymentStatus::Captured,
            gateway_reference: Some("sim_ch_1".into()),
            ..pending.clone()
        };
        assert_eq!(
            on_order_failed_under_lock(&on_order_failed(Some(&pending)), on_order_failed(Some(&captured))),
            UnderLock::HandleAgain
        );
    }

    #[test]
    fn a_payment_created_after_the_first_read_and_captured_is_handled_again_to_refund_it() {
        let captured = payment(PaymentStatus::Captured);
        assert_eq!(
            on_order_failed_under_lock(&on_order_failed(None), on_order_failed(Some(&captured))),
            UnderLock::HandleAgain
        );
    }

    #[test]
    fn a_payment_still_pending_under_the_lock_is_left_to_the_charger() {
        let pending = payment(PaymentStatus::Pending);
        assert_eq!(
            on_order_failed_under_lock(&on_order_failed(None), on_order_failed(Some(&pending))),
            UnderLock::Nothing(NothingToRefund::StillCharging)
        );
    }

    #[test]
    fn a_capture_refunded_meanwhile_by_another_consumer_is_not_recorded_again() {
        let captured = payment(PaymentStatus::Captured);
        let refunded = Payment {
            status: PaymentStatus::Refunded,
            refunded_minor: 3998,
            ..captured.clone()
        };
        assert_eq!(
            on_order_failed_under_lock(&on_order_failed(Some(&captured)), on_order_failed(Some(&refunded))),
            UnderLock::Nothing(NothingToRefund::AlreadyRefunded)
        );
    }
}
