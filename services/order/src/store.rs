//! The order database: orders with their saga state, their timeline, and idempotency keys.
//! Every write takes the caller's transaction, so a state change, its timeline entries and the
//! events it emits (outbox) commit together. [`OrderStore`] is what the code shared by the live
//! service and replay needs of it; replay keeps the same state in memory.

use std::future::Future;

use chrono::{DateTime, Utc};
use saga_common::{outbox, telemetry};
use saga_contracts::{EventId, FailureReason, OrderId, SagaEvent};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::domain::{InventoryOutcome, Order, OrderLineRequest, OrderStatus, PaymentOutcome, SagaState, ValidOrder};
use crate::error::{Error, Result};

/// Name under which this service appears in timelines.
pub const SOURCE: &str = "order-service";

/// The order state that applying an event reads and changes: the order database in a
/// transaction for the live service (its functions below), memory for replay
/// ([`crate::replay`]). Each operation means what its SQL namesake does.
pub trait OrderStore: Send {
    /// Inserts a new pending order ([`insert_order`]).
    fn insert_order(
        &mut self,
        order_id: OrderId,
        order: &ValidOrder,
        created_at: DateTime<Utc>,
        deadline_at: DateTime<Utc>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Adds an event to its order's timeline once ([`record_timeline`]).
    fn record_timeline(&mut self, event: &SagaEvent, source: &str) -> impl Future<Output = Result<()>> + Send;
    /// Loads an order for a change ([`lock_order`]).
    fn lock_order(&mut self, order_id: OrderId) -> impl Future<Output = Result<Option<Order>>> + Send;
    /// Stores an order's new saga state ([`save_state`]).
    fn save_state(&mut self, order_id: OrderId, state: &SagaState) -> impl Future<Output = Result<()>> + Send;
    /// Records the idempotency key that placed an order ([`remember_idempotency_key`]).
    fn remember_idempotency_key(
        &mut self,
        key: &str,
        request_hash: &str,
        order_id: OrderId,
    ) -> impl Future<Output = Result<()>> + Send;
}

impl OrderStore for PgConnection {
    async fn insert_order(
        &mut self,
        order_id: OrderId,
        order: &ValidOrder,
        created_at: DateTime<Utc>,
        deadline_at: DateTime<Utc>,
    ) -> Result<()> {
        insert_order(self, order_id, order, created_at, deadline_at).await
    }
    async fn record_timeline(&mut self, event: &SagaEvent, source: &str) -> Result<()> {
        record_timeline(self, event, source).await
    }
    async fn lock_order(&mut self, order_id: OrderId) -> Result<Option<Order>> {
        lock_order(self, order_id).await
    }
    async fn save_state(&mut self, order_id: OrderId, state: &SagaState) -> Result<()> {
        save_state(self, order_id, state).await
    }
    async fn remember_idempotency_key(&mut self, key: &str, request_hash: &str, order_id: OrderId) -> Result<()> {
        remember_idempotency_key(self, key, request_hash, order_id).await
    }
}

/// Inserts a new pending order, placed at `created_at`, that must be decided by `deadline_at`.
pub async fn insert_order(
    tx: &mut PgConnection,
    order_id: OrderId,
    order: &ValidOrder,
    created_at: DateTime<Utc>,
    deadline_at: DateTime<Utc>,
) -> Result<()> {
    let request = &order.request;
    sqlx::query(
        "INSERT INTO orders (order_id, customer_id, customer_email, currency, total_minor, payment_token, items, status, created_at, deadline_at, traceparent) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(order_id)
    .bind(&request.customer_id)
    .bind(&request.customer_email)
    .bind(&request.currency)
    .bind(order.total_minor)
    .bind(&request.payment_token)
    .bind(serde_json::to_value(&request.items)?)
    .bind(OrderStatus::Pending.as_str())
    .bind(created_at)
    .bind(deadline_at)
    .bind(telemetry::traceparent_of(&tracing::Span::current()))
    .execute(tx)
    .await?;
    Ok(())
}

/// `millis` since the Unix epoch as the timestamp to store in `column` of `order_id`.
pub fn timestamp(order_id: OrderId, column: &'static str, millis: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(millis).ok_or(Error::TimestampOutOfRange {
        order_id,
        column,
        millis,
    })
}

/// Writes `event`, emitted by this service, to the outbox and to its order's timeline.
pub async fn emit(tx: &mut PgConnection, event: &SagaEvent, traceparent: Option<&str>) -> Result<()> {
    outbox::enqueue(tx, event, traceparent).await?;
    record_timeline(tx, event, SOURCE).await
}

/// Adds an event to its order's timeline (once per event id). Events of no order, or of an
/// order not stored here, are left out.
pub async fn record_timeline(tx: &mut PgConnection, event: &SagaEvent, source: &str) -> Result<()> {
    let Some(order_id) = event.order_id() else {
        return Ok(());
    };
    let occurred_at = DateTime::from_timestamp_millis(event.occurred_at_millis()).unwrap_or_else(Utc::now);
    sqlx::query(
        "INSERT INTO order_timeline (event_id, order_id, event_type, source, occurred_at) \
         SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM orders WHERE order_id = $2) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event.event_id())
    .bind(order_id)
    .bind(event.event_type().as_str())
    .bind(source)
    .bind(occurred_at)
    .execute(tx)
    .await?;
    Ok(())
}

const ORDER_COLUMNS: &str =
    "order_id, customer_email, total_minor, currency, status, failure_reason, payment_outcome, inventory_outcome";

/// Loads an order and locks it for the rest of the transaction.
pub async fn lock_order(tx: &mut PgConnection, order_id: OrderId) -> Result<Option<Order>> {
    sqlx::query(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = $1 FOR UPDATE"
    ))
    .bind(order_id)
    .fetch_optional(tx)
    .await?
    .map(|row| order_from(&row))
    .transpose()
}

/// Locks up to `limit` pending orders whose deadline has passed, oldest deadline first. Orders
/// another transaction holds (an outcome deciding them right now) are skipped: that
/// transaction decides them.
pub async fn lock_overdue(tx: &mut PgConnection, limit: i64) -> Result<Vec<(Order, Option<String>)>> {
    sqlx::query(&format!(
        "SELECT {ORDER_COLUMNS}, traceparent FROM orders WHERE status = $1 AND deadline_at <= now() \
         ORDER BY deadline_at LIMIT $2 FOR UPDATE SKIP LOCKED"
    ))
    .bind(OrderStatus::Pending.as_str())
    .bind(limit)
    .fetch_all(tx)
    .await?
    .iter()
    .map(|row| Ok((order_from(row)?, row.try_get("traceparent")?)))
    .collect()
}

fn order_from(row: &PgRow) -> Result<Order> {
    let stored = StoredSagaState {
        status: row.try_get("status")?,
        failure_reason: row.try_get("failure_reason")?,
        payment_outcome: row.try_get("payment_outcome")?,
        inventory_outcome: row.try_get("inventory_outcome")?,
    };
    let order_id: OrderId = row.try_get("order_id")?;
    Ok(Order {
        order_id,
        customer_email: row.try_get("customer_email")?,
        total_minor: row.try_get("total_minor")?,
        currency: row.try_get("currency")?,
        state: stored.read(order_id)?,
    })
}

/// An order's saga state as its columns hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSagaState {
    /// `status`.
    pub status: String,
    /// `failure_reason`.
    pub failure_reason: Option<String>,
    /// `payment_outcome`.
    pub payment_outcome: Option<String>,
    /// `inventory_outcome`.
    pub inventory_outcome: Option<String>,
}

impl StoredSagaState {
    /// The columns for `state`.
    pub fn of(state: &SagaState) -> Self {
        Self {
            status: state.status.as_str().to_owned(),
            failure_reason: state.failure_reason.map(|reason| reason.as_str().to_owned()),
            payment_outcome: state.payment.map(|outcome| outcome.as_str().to_owned()),
            inventory_outcome: state.inventory.map(|outcome| outcome.as_str().to_owned()),
        }
    }

    /// The state the columns hold; a value this code does not know is an error.
    pub fn read(&self, order_id: OrderId) -> Result<SagaState> {
        let known = |column: &'static str, value: &str| Error::UnknownStoredValue {
            order_id,
            column,
            value: value.to_owned(),
        };
        Ok(SagaState {
            status: OrderStatus::parse(&self.status).ok_or_else(|| known("status", &self.status))?,
            failure_reason: self
                .failure_reason
                .as_deref()
                .map(|text| {
                    FailureReason::ALL
                        .into_iter()
                        .find(|reason| reason.as_str() == text)
                        .ok_or_else(|| known("failure_reason", text))
                })
                .transpose()?,
            payment: self
                .payment_outcome
                .as_deref()
                .map(|text| PaymentOutcome::parse(text).ok_or_else(|| known("payment_outcome", text)))
                .transpose()?,
            inventory: self
                .inventory_outcome
                .as_deref()
                .map(|text| InventoryOutcome::parse(text).ok_or_else(|| known("inventory_outcome", text)))
                .transpose()?,
        })
    }
}

/// Stores the state applying a fact to a locked order gave; an order decided now is stamped
/// with the time of deciding.
pub async fn save_state(tx: &mut PgConnection, order_id: OrderId, state: &SagaState) -> Result<()> {
    sqlx::query(
        "UPDATE orders SET status = $2, failure_reason = $3, payment_outcome = $4, inventory_outcome = $5, \
         decided_at = CASE WHEN $2 <> 'PENDING' AND decided_at IS NULL THEN now() ELSE decided_at END \
         WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(state.status.as_str())
    .bind(state.failure_reason.map(FailureReason::as_str))
    .bind(state.payment.map(PaymentOutcome::as_str))
    .bind(state.inventory.map(InventoryOutcome::as_str))
    .execute(tx)
    .await?;
    Ok(())
}

/// Emits the order.confirmed or order.failed that just decided its order (outbox and timeline).
pub async fn emit_decision(tx: &mut PgConnection, decided: &SagaEvent, traceparent: Option<&str>) -> Result<()> {
    emit(tx, decided, traceparent).await?;
    tracing::info!(
        order_id = decided.order_id().map(tracing::field::display),
        event_id = %decided.event_id(),
        event_type = %decided.event_type(),
        "order decided"
    );
    Ok(())
}

/// Locks the orders of `order_ids` that exist, in id order (a batch's first statement; see
/// `saga_common::consumer::BatchHandler::lock_shared_rows`).
pub async fn lock_orders_in_order(tx: &mut PgConnection, order_ids: &[uuid::Uuid]) -> Result<()> {
    sqlx::query("SELECT order_id FROM orders WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE")
        .bind(order_ids)
        .execute(tx)
        .await?;
    Ok(())
}

/// When the order of a decision was placed, for the saga duration; the live service only.
pub async fn created_at(tx: &mut PgConnection, order_id: OrderId) -> Result<DateTime<Utc>> {
    Ok(sqlx::query_scalar("SELECT created_at FROM orders WHERE order_id = $1")
        .bind(order_id)
        .fetch_one(tx)
        .await?)
}

/// An idempotency key already used, and what it was used for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedKey {
    /// Fingerprint of the request that first used the key.
    pub request_hash: String,
    /// The order that request placed.
    pub order_id: OrderId,
}

/// Looks up an idempotency key, first making concurrent requests with the same key wait for
/// each other until this transaction ends.
pub async fn lock_idempotency_key(tx: &mut PgConnection, key: &str) -> Result<Option<UsedKey>> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    let row = sqlx::query("SELECT request_hash, order_id FROM idempotency_keys WHERE idempotency_key = $1")
        .bind(key)
        .fetch_optional(tx)
        .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(UsedKey {
        request_hash: row.try_get("request_hash")?,
        order_id: row.try_get("order_id")?,
    }))
}

/// Records that `key` placed `order_id` for the request with fingerprint `request_hash`.
pub async fn remember_idempotency_key(
    tx: &mut PgConnection,
    key: &str,
    request_hash: &str,
    order_id: OrderId,
) -> Result<()> {
    sqlx::query("INSERT INTO idempotency_keys (idempotency_key, request_hash, order_id) VALUES ($1, $2, $3)")
        .bind(key)
        .bind(request_hash)
        .bind(order_id)
        .execute(tx)
        .await?;
    Ok(())
}

/// One entry of an order's timeline.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TimelineEntry {
    /// The event's id.
    pub event_id: EventId,
    /// Its type, e.g. `payment.success`.
    pub event_type: String,
    /// The service that emitted it.
    pub source: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
}

/// An order as `GET /orders/{id}` shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    /// The order's id.
    pub order_id: OrderId,
    /// PENDING, CONFIRMED or FAILED.
    #[schema(value_type = crate::domain::OrderStatus)]
    pub status: String,
    /// Why it failed, if it did.
    pub failure_reason: Option<String>,
    /// The customer.
    pub customer_id: String,
    /// The customer's email.
    pub customer_email: String,
    /// Total in minor units.
    pub total_minor: i64,
    /// Currency of the total.
    pub currency: String,
    /// The ordered lines.
    pub items: Vec<OrderLineRequest>,
    /// When it was placed.
    pub created_at: DateTime<Utc>,
    /// When it was decided.
    pub decided_at: Option<DateTime<Utc>>,
    /// Every event of the order, oldest first.
    pub timeline: Vec<TimelineEntry>,
}

/// Reads an order with its timeline.
pub async fn fetch_view(pool: &PgPool, order_id: OrderId) -> Result<Option<OrderView>> {
    let row = sqlx::query(
        "SELECT order_id, status, failure_reason, customer_id, customer_email, total_minor, currency, items, created_at, decided_at \
         FROM orders WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let timeline = sqlx::query(
        "SELECT event_id, event_type, source, occurred_at FROM order_timeline WHERE order_id = $1 ORDER BY occurred_at, recorded_at",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|entry| {
        Ok(TimelineEntry {
            event_id: entry.try_get("event_id")?,
            event_type: entry.try_get("event_type")?,
            source: entry.try_get("source")?,
            occurred_at: entry.try_get("occurred_at")?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some(OrderView {
        order_id: row.try_get("order_id")?,
        status: row.try_get("status")?,
        failure_reason: row.try_get("failure_reason")?,
        customer_id: row.try_get("customer_id")?,
        customer_email: row.try_get("customer_email")?,
        total_minor: row.try_get("total_minor")?,
        currency: row.try_get("currency")?,
        items: serde_json::from_value(row.try_get("items")?)?,
        created_at: row.try_get("created_at")?,
        decided_at: row.try_get("decided_at")?,
        timeline,
    }))
}
