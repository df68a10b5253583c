//! Transactional outbox: events are written to the `outbox` table in the same transaction as
//! the state change that causes them, and the relay publishes them afterwards, so there is no
//! dual write. The relay publishes rows in commit-position order with the idempotent producer
//! and deletes them once the broker acknowledged them; a crash in between publishes them again
//! (consumers deduplicate by event id). A transaction-scoped advisory lock makes sure only one
//! relay per database publishes at a time, which keeps the order per key.

use std::sync::Arc;
use std::time::Duration;

use futures::future::try_join_all;
use rdkafka::producer::{FutureProducer, FutureRecord};
use saga_contracts::SagaEvent;
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::codec::{partition_key, traceparent_for, EventCodec};
use crate::consumer::event_headers;
use crate::retry::Backoff;
use crate::{Error, Result};

/// Advisory lock key held by the relay while it publishes a batch.
const RELAY_LOCK_KEY: i64 = 0x5A6A_0B0C;
/// Most rows published per batch.
const BATCH_SIZE: i64 = 200;
/// How often an idle relay looks for rows written by another process.
const IDLE_POLL: Duration = Duration::from_millis(200);

/// Appends `event` to the outbox within the caller's transaction. The trace context continues
/// `traceparent` when given (the trace of the event that caused this one).
pub async fn enqueue(tx: &mut PgConnection, event: &SagaEvent, traceparent: Option<&str>) -> Result<()> {
    let payload = serde_json::to_value(event).map_err(|e| Error::Encode(e.to_string()))?;
    let event_id = Uuid::parse_str(event.event_id()).map_err(|e| Error::Encode(format!("event_id: {e}")))?;
    let key = partition_key(event);
    let trace = traceparent.map(str::to_string).unwrap_or_else(|| traceparent_for(&key));
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, partition_key, payload, traceparent) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(event_id)
    .bind(event.event_type().as_str())
    .bind(&key)
    .bind(payload)
    .bind(trace)
    .execute(tx)
    .await?;
    Ok(())
}

/// Number of events written but not yet published.
pub async fn pending(pool: &PgPool) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await?)
}

/// Publishes outbox rows to Kafka.
#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    producer: FutureProducer,
    codec: Arc<EventCodec>,
    wake: Arc<Notify>,
}

impl Relay {
    /// A relay for the service's database.
    pub fn new(pool: PgPool, producer: FutureProducer, codec: Arc<EventCodec>) -> Self {
        Self {
            pool,
            producer,
            codec,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Tells the relay that new rows were committed, so it publishes without waiting to poll.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// Publishes until `shutdown` is cancelled; failures are retried with backoff.
    pub async fn run(self, shutdown: CancellationToken) {
        let backoff = Backoff::default();
        let mut failures = 0;
        loop {
            match self.publish_batch().await {
                Ok(published) => {
                    failures = 0;
                    if published > 0 {
                        continue;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                    }
                }
                Err(error) => {
                    failures += 1;
                    let delay = backoff.delay(failures);
                    tracing::warn!(%error, attempt = failures, "outbox relay failed, retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        tracing::info!("outbox relay stopped");
    }

    /// Publishes one batch; returns how many rows it published.
    pub async fn publish_batch(&self) -> Result<usize> {
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RELAY_LOCK_KEY)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(0);
        }
        let rows = sqlx::query(
            "SELECT position, event_id, partition_key, payload, traceparent FROM outbox ORDER BY position LIMIT $1",
        )
        .bind(BATCH_SIZE)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut encoded = Vec::with_capacity(rows.len());
        let mut positions = Vec::with_capacity(rows.len());
        for row in &rows {
            let payload: serde_json::Value = row.try_get("payload")?;
            let event: SagaEvent = serde_json::from_value(payload)
                .map_err(|e| Error::Encode(format!("outbox row {}: {e}", row.get::<i64, _>("position"))))?;
            encoded.push((
                self.codec.encode(&event).await?,
                row.try_get::<String, _>("traceparent")?,
            ));
            positions.push(row.try_get::<i64, _>("position")?);
        }
        // Sends are enqueued in position order; the idempotent producer keeps that order per
        // partition even with several requests in flight.
        let deliveries = encoded.iter().map(|(event, traceparent)| {
            let headers = event_headers(event.event_type.as_str(), &event.event_id, traceparent);
            let record = FutureRecord::to(&event.topic)
                .key(&event.key)
                .payload(&event.payload)
                .headers(headers);
            let send = self.producer.send(record, Duration::from_secs(30));
            async move { send.await.map_err(|(error, _)| Error::Kafka(error)) }
        });
        try_join_all(deliveries).await?;
        sqlx::query("DELETE FROM outbox WHERE position = ANY($1)")
            .bind(&positions)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        for (event, _) in &encoded {
            tracing::debug!(event_id = %event.event_id, event_type = event.event_type.as_str(), order_id = %event.key, "published");
        }
        Ok(positions.len())
    }
}
