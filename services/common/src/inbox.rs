//! Inbox: the ids of consumed events, recorded in the same transaction as their effect. A
//! redelivered event finds its id already there and changes nothing.

use saga_contracts::EventId;
use sqlx::PgConnection;

use crate::consumer::{ConsumedEvent, HandlerError};

/// Records `event` as processed within the caller's transaction. Returns `false` if it was
/// processed before, in which case the caller must apply no effect.
pub async fn record(tx: &mut PgConnection, consumed: &ConsumedEvent) -> Result<bool, HandlerError> {
    let event_id = consumed.event.event_id();
    let inserted = sqlx::query(
        "INSERT INTO inbox (event_id, event_type, source_topic, source_partition, source_offset) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id.uuid())
    .bind(consumed.event.event_type().as_str())
    .bind(&consumed.topic)
    .bind(consumed.partition)
    .bind(consumed.offset)
    .execute(tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        tracing::info!(
            %event_id,
            order_id = %consumed.event.order_id().map(|id| id.to_string()).unwrap_or_default(),
            "duplicate event ignored"
        );
    }
    Ok(inserted == 1)
}

/// Whether `event_id` was processed already (a read outside any transaction, for handlers that
/// must decide before calling an external system).
pub async fn seen(pool: &sqlx::PgPool, event_id: EventId) -> Result<bool, HandlerError> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM inbox WHERE event_id = $1)")
            .bind(event_id.uuid())
            .fetch_one(pool)
            .await?,
    )
}
