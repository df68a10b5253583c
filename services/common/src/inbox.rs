//! Inbox: the ids of consumed events, recorded in the same transaction as their effect. A
//! redelivered event finds its id already there and changes nothing.

use saga_contracts::EventId;
use sqlx::PgConnection;

use crate::consumer::{ConsumedEvent, HandlerError};

/// Records `event` as processed within the caller's transaction. Returns `false` if it was
/// processed before, in which case the caller must apply no effect.
pub async fn record(tx: &mut PgConnection, consumed: &ConsumedEvent) -> Result<bool, HandlerError> {
    Ok(record_all(tx, &[consumed]).await?.first().copied().unwrap_or(false))
}

/// Records every event of `events` as processed within the caller's transaction, in one
/// statement. Returns, per event, whether it is new: `false` for one processed before, and for
/// a second copy of an event earlier in `events`; the caller must apply no effect for those.
pub async fn record_all(tx: &mut PgConnection, events: &[&ConsumedEvent]) -> Result<Vec<bool>, HandlerError> {
    let event_ids: Vec<uuid::Uuid> = events.iter().map(|consumed| consumed.event.event_id().uuid()).collect();
    let event_types: Vec<&str> = events
        .iter()
        .map(|consumed| consumed.event.event_type().as_str())
        .collect();
    let topics: Vec<&str> = events.iter().map(|consumed| consumed.topic.as_str()).collect();
    let partitions: Vec<i32> = events.iter().map(|consumed| consumed.partition).collect();
    let offsets: Vec<i64> = events.iter().map(|consumed| consumed.offset).collect();
    // ON CONFLICT DO NOTHING also passes over the second of two equal ids in the rows.
    let inserted: Vec<uuid::Uuid> = sqlx::query_scalar(
        "INSERT INTO inbox (event_id, event_type, source_topic, source_partition, source_offset) \
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::int8[]) \
         ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
    )
    .bind(&event_ids)
    .bind(&event_types)
    .bind(&topics)
    .bind(&partitions)
    .bind(&offsets)
    .fetch_all(tx)
    .await?;
    let mut new: std::collections::HashSet<uuid::Uuid> = inserted.into_iter().collect();
    Ok(events
        .iter()
        .zip(&event_ids)
        .map(|(consumed, event_id)| {
            let first_time = new.remove(event_id);
            if !first_time {
                tracing::info!(
                    %event_id,
                    order_id = %consumed.event.order_id().map(|id| id.to_string()).unwrap_or_default(),
                    "duplicate event ignored"
                );
            }
            first_time
        })
        .collect())
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
