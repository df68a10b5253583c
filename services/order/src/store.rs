//! The order database: orders with their saga state, their timeline, and idempotency keys.
//! Every function takes the caller's transaction, so a state change, its timeline entries and
//! the events it emits (outbox) commit together.

use chrono::{DateTime, TimeZone, Utc};
use saga_common::outbox;
use saga_contracts::{OrderConfirmed, OrderCreated, OrderFailed, OrderLine, SagaEvent};
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::placement::{OrderLineRequest, ValidOrder};
use crate::saga::{decide, Decision, InventoryOutcome, PaymentOutcome, SagaInput, SagaState};

/// Name under which this service appears in timelines.
pub const SOURCE: &str = "order-service";

/// What the saga needs of a stored order.
#[derive(Debug, Clone)]
pub struct StoredOrder {
    /// The order's id.
    pub order_id: Uuid,
    /// Recipient of the outcome email.
    pub customer_email: String,
    /// Order total in minor units.
    pub total_minor: i64,
    /// Currency of the total.
    pub currency: String,
    /// Saga state.
    pub state: SagaState,
}

fn millis_to_time(millis: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(millis).single().unwrap_or_else(Utc::now)
}

/// Inserts a new order with its order.created event (timeline and outbox). Returns the event.
pub async fn insert_order(
    tx: &mut PgConnection,
    order_id: Uuid,
    order: &ValidOrder,
    deadline_at: DateTime<Utc>,
) -> anyhow::Result<SagaEvent> {
    let request = &order.request;
    sqlx::query(
        "INSERT INTO orders (order_id, customer_id, customer_email, currency, total_minor, payment_token, items, status, deadline_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'PENDING', $8)",
    )
    .bind(order_id)
    .bind(&request.customer_id)
    .bind(&request.customer_email)
    .bind(&request.currency)
    .bind(order.total_minor)
    .bind(&request.payment_token)
    .bind(serde_json::to_value(&request.items)?)
    .bind(deadline_at)
    .execute(&mut *tx)
    .await?;
    let created = SagaEvent::OrderCreated(OrderCreated {
        event_id: Uuid::new_v4().to_string(),
        order_id: order_id.to_string(),
        causation_id: None,
        occurred_at: Utc::now().timestamp_millis(),
        customer_id: request.customer_id.clone(),
        customer_email: request.customer_email.clone(),
        payment_token: request.payment_token.clone(),
        total_minor: order.total_minor,
        currency: request.currency.clone(),
        items: request
            .items
            .iter()
            .map(|line| OrderLine {
                sku: line.sku.clone(),
                // validated to be at most 1,000,000
                quantity: i32::try_from(line.quantity).unwrap_or(i32::MAX),
                unit_price_minor: line.unit_price_minor,
            })
            .collect(),
        sales_channel: "api".into(),
    });
    emit(tx, &created, None).await?;
    Ok(created)
}

/// Writes `event` to the outbox and the order's timeline.
pub async fn emit(tx: &mut PgConnection, event: &SagaEvent, traceparent: Option<&str>) -> anyhow::Result<()> {
    outbox::enqueue(tx, event, traceparent).await?;
    record_timeline(tx, event, SOURCE).await
}

/// Adds an event to its order's timeline (once per event id). Events of unknown orders are
/// ignored.
pub async fn record_timeline(tx: &mut PgConnection, event: &SagaEvent, source: &str) -> anyhow::Result<()> {
    let Some(order_id) = event.order_id().and_then(|id| Uuid::parse_str(id).ok()) else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO order_timeline (event_id, order_id, event_type, source, occurred_at) \
         SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM orders WHERE order_id = $2) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(Uuid::parse_str(event.event_id())?)
    .bind(order_id)
    .bind(event.event_type().as_str())
    .bind(source)
    .bind(millis_to_time(event.occurred_at_millis()))
    .execute(tx)
    .await?;
    Ok(())
}

/// Loads an order and locks it for the rest of the transaction.
pub async fn lock_order(tx: &mut PgConnection, order_id: Uuid) -> anyhow::Result<Option<StoredOrder>> {
    let row = sqlx::query(
        "SELECT order_id, customer_email, total_minor, currency, status, failure_reason, payment_outcome, inventory_outcome \
         FROM orders WHERE order_id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let status: String = row.try_get("status")?;
    let failure_reason: Option<String> = row.try_get("failure_reason")?;
    let payment: Option<String> = row.try_get("payment_outcome")?;
    let inventory: Option<String> = row.try_get("inventory_outcome")?;
    Ok(Some(StoredOrder {
        order_id: row.try_get("order_id")?,
        customer_email: row.try_get("customer_email")?,
        total_minor: row.try_get("total_minor")?,
        currency: row.try_get("currency")?,
        state: SagaState {
            status: status.parse().map_err(anyhow::Error::msg)?,
            failure_reason: failure_reason.as_deref().and_then(parse_reason),
            payment: payment.as_deref().and_then(PaymentOutcome::parse),
            inventory: inventory.as_deref().and_then(InventoryOutcome::parse),
        },
    }))
}

fn parse_reason(text: &str) -> Option<crate::saga::FailureReason> {
    use crate::saga::FailureReason::*;
    [PaymentDeclined, OutOfStock, DeadlineExceeded]
        .into_iter()
        .find(|r| r.as_str() == text)
}

/// Applies a fact to a locked order: stores the new state and, if the order is decided now,
/// emits order.confirmed or order.failed caused by `causation_id`.
pub async fn apply_fact(
    tx: &mut PgConnection,
    order: &StoredOrder,
    input: SagaInput,
    causation_id: Option<&str>,
    traceparent: Option<&str>,
) -> anyhow::Result<Decision> {
    let (next, decision) = decide(order.state, input);
    sqlx::query(
        "UPDATE orders SET status = $2, failure_reason = $3, payment_outcome = $4, inventory_outcome = $5, \
         decided_at = CASE WHEN $2 <> 'PENDING' AND decided_at IS NULL THEN now() ELSE decided_at END \
         WHERE order_id = $1",
    )
    .bind(order.order_id)
    .bind(next.status.as_str())
    .bind(next.failure_reason.map(|r| r.as_str()))
    .bind(next.payment.map(|p| p.as_str()))
    .bind(next.inventory.map(|i| i.as_str()))
    .execute(&mut *tx)
    .await?;
    let common = (
        Uuid::new_v4().to_string(),
        order.order_id.to_string(),
        causation_id.map(str::to_string),
        Utc::now().timestamp_millis(),
    );
    let event = match decision {
        Decision::Wait => None,
        Decision::Confirm => Some(SagaEvent::OrderConfirmed(OrderConfirmed {
            event_id: common.0,
            order_id: common.1,
            causation_id: common.2,
            occurred_at: common.3,
            customer_email: order.customer_email.clone(),
            total_minor: order.total_minor,
            currency: order.currency.clone(),
        })),
        Decision::Fail(reason) => Some(SagaEvent::OrderFailed(OrderFailed {
            event_id: common.0,
            order_id: common.1,
            causation_id: common.2,
            occurred_at: common.3,
            reason: reason.as_str().to_string(),
            customer_email: order.customer_email.clone(),
            total_minor: order.total_minor,
            currency: order.currency.clone(),
        })),
    };
    if let Some(event) = event {
        emit(tx, &event, traceparent).await?;
        tracing::info!(order_id = %order.order_id, event_id = event.event_id(), decision = ?decision, "order decided");
    }
    Ok(decision)
}

/// One entry of an order's timeline.
#[derive(Debug, Serialize)]
pub struct TimelineEntry {
    /// The event's id.
    pub event_id: Uuid,
    /// Its type, e.g. `payment.success`.
    pub event_type: String,
    /// The service that emitted it.
    pub source: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
}

/// An order as `GET /orders/{id}` shows it.
#[derive(Debug, Serialize)]
pub struct OrderView {
    /// The order's id.
    pub order_id: Uuid,
    /// PENDING, CONFIRMED or FAILED.
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
pub async fn fetch_view(pool: &PgPool, order_id: Uuid) -> anyhow::Result<Option<OrderView>> {
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
