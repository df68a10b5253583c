//! The payment service's tables, and nothing else: reading an order's [`PaymentState`] from
//! `payments` and `failed_orders`, writing a state change and queueing the events it causes
//! (outbox), and the charger's bookkeeping (which payments wait for the gateway, which it gave up
//! on).
//!
//! Every state change goes through [`transition`]: it locks the order's payment row, applies the
//! caller's pure decision to what is stored, and writes the difference, so two transactions
//! changing one payment (the consumer recording order.failed, the charger settling a charge)
//! are ordered by the row lock and each decides on what the other committed. The live service
//! then queues the transition's events ([`enqueue`]); replay, which publishes nothing, does not.
//!
//! [`transition`] reads and writes through [`PaymentStore`]: a transaction on the payment
//! database for the live service, the tables held in memory for replay
//! ([`crate::rebuilt::RebuiltPayments`]), so both run the same state changes.

use std::future::Future;
use std::time::Duration;

use saga_common::outbox;
use saga_contracts::{EventId, FailureReason, OrderId, PaymentId, SagaEvent};
use sqlx::{PgConnection, PgExecutor};

use crate::domain::{OrderFailure, Payment, PaymentState, PaymentStatus};
use crate::error::{Error, Result};

/// A change of an order's payment, as [`transition`] wrote it to the caller's transaction.
#[derive(Debug)]
pub struct Transition {
    /// The order whose payment it is.
    pub order_id: OrderId,
    /// The state before.
    pub before: PaymentState,
    /// The state after.
    pub after: PaymentState,
    /// The events the change causes, in the order they are published (see [`enqueue`]).
    pub events: Vec<SagaEvent>,
}

/// The payment state a [`transition`] reads and writes: the payment database in a transaction
/// for the live service (the SQL below), memory for replay
/// ([`crate::rebuilt::RebuiltPayments`]). Each operation means what its SQL namesake here does.
pub trait PaymentStore: Send {
    /// The state of `order_id`, its payment row locked for the rest of the transaction (`lock`).
    fn lock(&mut self, order_id: OrderId) -> impl Future<Output = Result<PaymentState>> + Send;
    /// Records the failure of `order_id` unless one is recorded already (`insert_failure`).
    fn insert_failure(&mut self, order_id: OrderId, failure: &OrderFailure) -> impl Future<Output = Result<()>> + Send;
    /// Inserts a new payment; `false` if its order has one already (`insert`).
    fn insert_payment(&mut self, payment: &Payment) -> impl Future<Output = Result<bool>> + Send;
    /// Moves a payment from `old`'s status to `new`'s; `false` if it was not in `old`'s status
    /// any more (`update`).
    fn update_payment(&mut self, old: &Payment, new: &Payment) -> impl Future<Output = Result<bool>> + Send;
}

impl PaymentStore for PgConnection {
    async fn lock(&mut self, order_id: OrderId) -> Result<PaymentState> {
        lock(self, order_id).await
    }
    async fn insert_failure(&mut self, order_id: OrderId, failure: &OrderFailure) -> Result<()> {
        insert_failure(self, order_id, failure).await
    }
    async fn insert_payment(&mut self, payment: &Payment) -> Result<bool> {
        insert(self, payment).await
    }
    async fn update_payment(&mut self, old: &Payment, new: &Payment) -> Result<bool> {
        update(self, old, new).await
    }
}

/// Locks the payment of `order_id` (if it has one) in `store` for the rest of its transaction,
/// applies `decide` to its state and writes what changed; the events `decide` returned are in
/// the result, not yet queued (see [`enqueue`]). [`Error::ChangedMeanwhile`] (transient) if
/// another transaction recorded a payment for the order after it was read: done again, the
/// caller decides on that one.
pub async fn transition<S: PaymentStore>(
    store: &mut S,
    order_id: OrderId,
    decide: impl FnOnce(PaymentState) -> (PaymentState, Vec<SagaEvent>),
) -> Result<Transition> {
    let before = store.lock(order_id).await?;
    let (after, events) = decide(before.clone());
    save(store, order_id, &before, &after).await?;
    Ok(Transition {
        order_id,
        before,
        after,
        events,
    })
}

/// Queues the events of `transition` in the outbox of `tx`, continuing the payment's trace: what
/// the live service does with every transition, in the transaction that wrote it.
pub async fn enqueue(tx: &mut PgConnection, transition: &Transition) -> Result<()> {
    let traceparent = transition
        .after
        .payment
        .as_ref()
        .and_then(|payment| payment.traceparent.as_deref());
    for event in &transition.events {
        outbox::enqueue(tx, event, traceparent).await?;
    }
    Ok(())
}

/// The state of `order_id` as committed (a plain read, for a first look before a gateway call).
pub async fn load(executor: impl PgExecutor<'_> + Copy, order_id: OrderId) -> Result<PaymentState> {
    Ok(PaymentState {
        payment: find(executor, order_id).await?,
        failure: failure(executor, order_id).await?,
    })
}

/// The payment of `order_id`, if it has one.
pub async fn find(executor: impl PgExecutor<'_>, order_id: OrderId) -> Result<Option<Payment>> {
    let row: Option<PaymentRow> =
        sqlx::query_as(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = $1"))
            .bind(order_id)
            .fetch_optional(executor)
            .await?;
    row.map(Payment::try_from).transpose()
}

/// Up to `limit` orders whose payment waits for the gateway (pending or refunding), oldest
/// first, leaving out those the charger gave up on less than `stall_pause` ago.
pub async fn awaiting_gateway(
    executor: impl PgExecutor<'_>,
    limit: i64,
    stall_pause: Duration,
) -> Result<Vec<OrderId>> {
    Ok(sqlx::query_scalar(
        "SELECT order_id FROM payments WHERE status IN ('pending', 'refunding') \
         AND (stalled_at IS NULL OR stalled_at <= now() - make_interval(secs => $2)) \
         ORDER BY created_at LIMIT $1",
    )
    .bind(limit)
    .bind(stall_pause.as_secs_f64())
    .fetch_all(executor)
    .await?)
}

/// Records that the charger gave up on the payment of `order_id` for `reason`; it stays as it
/// is, and [`awaiting_gateway`] leaves it out for a while. Cleared by the payment's next change.
pub async fn stall(executor: impl PgExecutor<'_>, order_id: OrderId, reason: &str) -> Result<()> {
    sqlx::query("UPDATE payments SET stalled_reason = $2, stalled_at = now() WHERE order_id = $1")
        .bind(order_id)
        .bind(reason)
        .execute(executor)
        .await?;
    Ok(())
}

/// The state of `order_id`, its payment row locked for the rest of `tx`. Under READ COMMITTED a
/// row changed by a transaction this one waited for is read as that one committed it, and the
/// failure, read after the lock, includes one committed by a transaction that held it.
async fn lock(tx: &mut PgConnection, order_id: OrderId) -> Result<PaymentState> {
    let row: Option<PaymentRow> = sqlx::query_as(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = $1 FOR UPDATE"
    ))
    .bind(order_id)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(PaymentState {
        payment: row.map(Payment::try_from).transpose()?,
        failure: failure(&mut *tx, order_id).await?,
    })
}

async fn failure(executor: impl PgExecutor<'_>, order_id: OrderId) -> Result<Option<OrderFailure>> {
    let row: Option<(String, Option<EventId>)> =
        sqlx::query_as("SELECT reason, event_id FROM failed_orders WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(executor)
            .await?;
    Ok(row.map(|(reason, event_id)| stored_failure(&reason, event_id)))
}

/// An order failure as `failed_orders` stores it: the reason's symbol (older rows hold the
/// order.failed's free text) and the order.failed's id.
pub(crate) fn stored_failure(reason: &str, event_id: Option<EventId>) -> OrderFailure {
    OrderFailure {
        event_id,
        reason: FailureReason::from_v1_text(reason),
    }
}

/// Writes what changed from `before` to `after`.
async fn save<S: PaymentStore>(
    store: &mut S,
    order_id: OrderId,
    before: &PaymentState,
    after: &PaymentState,
) -> Result<()> {
    if let (None, Some(failure)) = (&before.failure, &after.failure) {
        store.insert_failure(order_id, failure).await?;
    }
    let written = match (&before.payment, &after.payment) {
        (None, Some(payment)) => store.insert_payment(payment).await?,
        (Some(old), Some(new)) if old != new => store.update_payment(old, new).await?,
        _ => true,
    };
    if written {
        Ok(())
    } else {
        Err(Error::ChangedMeanwhile(order_id))
    }
}

/// Records the failure of `order_id`; the first failure is kept, also when another consumer
/// recorded one meanwhile.
async fn insert_failure(tx: &mut PgConnection, order_id: OrderId, failure: &OrderFailure) -> Result<()> {
    sqlx::query(
        "INSERT INTO failed_orders (order_id, reason, event_id) VALUES ($1, $2, $3) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(failure.reason.as_str())
    .bind(failure.event_id)
    .execute(tx)
    .await?;
    Ok(())
}

/// Inserts a new (pending) payment; `false` if the order has one already.
async fn insert(tx: &mut PgConnection, payment: &Payment) -> Result<bool> {
    let columns = StatusColumns::of(payment);
    let inserted = sqlx::query(
        "INSERT INTO payments (order_id, payment_id, status, amount_minor, currency, traceparent, payment_token, \
         causation_id, gateway_reference, decline_reason, refunded_minor) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(payment.order_id)
    .bind(payment.payment_id)
    .bind(payment.status.as_str())
    .bind(payment.amount_minor)
    .bind(&payment.currency)
    .bind(&payment.traceparent)
    .bind(columns.token)
    .bind(columns.requested_by)
    .bind(columns.capture)
    .bind(columns.decline_reason)
    .bind(payment.refunded_minor())
    .execute(tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Moves the payment from `old`'s status to `new`'s, forgetting the token once it is charged and
/// clearing a stall; `false` if it was not in `old`'s status any more.
async fn update(tx: &mut PgConnection, old: &Payment, new: &Payment) -> Result<bool> {
    let columns = StatusColumns::of(new);
    let updated = sqlx::query(
        "UPDATE payments SET status = $3, payment_token = $4, gateway_reference = $5, decline_reason = $6, \
         refunded_minor = $7, stalled_reason = NULL, stalled_at = NULL, updated_at = now() \
         WHERE order_id = $1 AND status = $2",
    )
    .bind(new.order_id)
    .bind(old.status.as_str())
    .bind(new.status.as_str())
    .bind(columns.token)
    .bind(columns.capture)
    .bind(columns.decline_reason)
    .bind(new.refunded_minor())
    .execute(tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// The columns a payment's status fills.
pub(crate) struct StatusColumns<'a> {
    pub(crate) token: Option<&'a str>,
    pub(crate) requested_by: Option<EventId>,
    pub(crate) capture: Option<&'a str>,
    pub(crate) decline_reason: Option<&'a str>,
}

impl<'a> StatusColumns<'a> {
    pub(crate) fn of(payment: &'a Payment) -> Self {
        let mut columns = Self {
            token: None,
            requested_by: None,
            capture: None,
            decline_reason: None,
        };
        match &payment.status {
            PaymentStatus::Pending { token, requested_by } => {
                columns.token = Some(token);
                columns.requested_by = Some(*requested_by);
            }
            PaymentStatus::Captured { capture }
            | PaymentStatus::Refunding { capture }
            | PaymentStatus::Refunded { capture } => columns.capture = Some(capture),
            PaymentStatus::Declined { reason } => columns.decline_reason = Some(reason),
        }
        columns
    }
}

const PAYMENT_COLUMNS: &str = "order_id, payment_id, status, amount_minor, currency, traceparent, payment_token, \
                               causation_id, gateway_reference, decline_reason";

/// One row of `payments`, as stored (the columns a [`Payment`] is read from).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PaymentRow {
    pub(crate) order_id: OrderId,
    pub(crate) payment_id: PaymentId,
    pub(crate) status: String,
    pub(crate) amount_minor: i64,
    pub(crate) currency: String,
    pub(crate) traceparent: Option<String>,
    pub(crate) payment_token: Option<String>,
    pub(crate) causation_id: Option<EventId>,
    pub(crate) gateway_reference: Option<String>,
    pub(crate) decline_reason: Option<String>,
}

impl TryFrom<PaymentRow> for Payment {
    type Error = Error;

    fn try_from(row: PaymentRow) -> Result<Self> {
        let missing = |column: &str| {
            Error::CorruptPayment(format!(
                "{} payment of order {} has no {column}",
                row.status, row.order_id
            ))
        };
        let capture = || {
            row.gateway_reference
                .clone()
                .ok_or_else(|| missing("gateway_reference"))
        };
        let status = match row.status.as_str() {
            "pending" => PaymentStatus::Pending {
                token: row.payment_token.clone().ok_or_else(|| missing("payment_token"))?,
                requested_by: row.causation_id.ok_or_else(|| missing("causation_id"))?,
            },
            "captured" => PaymentStatus::Captured { capture: capture()? },
            "declined" => PaymentStatus::Declined {
                reason: row.decline_reason.clone().ok_or_else(|| missing("decline_reason"))?,
            },
            "refunding" => PaymentStatus::Refunding { capture: capture()? },
            "refunded" => PaymentStatus::Refunded { capture: capture()? },
            other => {
                return Err(Error::CorruptPayment(format!(
                    "payment of order {} has the unknown status {other:?}",
                    row.order_id
                )))
            }
        };
        Ok(Payment {
            order_id: row.order_id,
            payment_id: row.payment_id,
            amount_minor: row.amount_minor,
            currency: row.currency,
            traceparent: row.traceparent,
            status,
        })
    }
}
