//! Transactional outbox: events are written to the `outbox` table in the same transaction as
//! the state change that causes them, and the relay publishes them afterwards, so there is no
//! dual write. The relay publishes rows in commit-position order with the idempotent producer
//! and deletes them once the broker acknowledged them; a crash in between publishes them again
//! (consumers deduplicate by event id). A transaction-scoped advisory lock makes sure only one
//! relay per database publishes at a time, which keeps the order per key.
//!
//! A row that can never be published (its event cannot be encoded, the registry refuses its
//! schema, the broker refuses the record) does not block the rows behind it: following the
//! [`ErrorPolicy`], it is moved to `outbox_parked` with the reason, counted and logged at error
//! level, and later rows publish. [`list_parked`] and [`redrive_parked`] are what an operator
//! uses (through `sagactl outbox`); a redriven row goes back to the end of the outbox.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::producer::{FutureProducer, FutureRecord};
use saga_contracts::SagaEvent;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::codec::{partition_key, traceparent_for, EncodedEvent, EventCodec};
use crate::consumer::event_headers;
use crate::error::{Classify, ErrorClass};
use crate::health::HealthState;
use crate::metrics;
use crate::retry::ErrorPolicy;
use crate::telemetry;
use crate::{Error, Result};

/// Advisory lock key held by the relay while it publishes a batch.
const RELAY_LOCK_KEY: i64 = 0x5A6A_0B0C;
/// Most rows published per batch, unless set otherwise ([`RelaySettings`]).
pub const DEFAULT_BATCH_SIZE: i64 = 500;
/// How often an idle relay looks for rows written by another process.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// Least time between two refreshes of the pending-rows gauges (each counts the outbox).
const GAUGE_REFRESH: Duration = Duration::from_secs(1);

/// Appends `event` to the outbox within the caller's transaction. Its trace context is the
/// current span's when traces are exported (the request or record that caused the event), else
/// `traceparent` when given (the trace of the event that caused this one), else a new trace
/// named after the event's key.
pub async fn enqueue(tx: &mut PgConnection, event: &SagaEvent, traceparent: Option<&str>) -> Result<()> {
    let payload = serde_json::to_value(event).map_err(|e| Error::Encode(e.to_string()))?;
    let event_id = event.event_id().uuid();
    let key = partition_key(event);
    let trace = telemetry::handed_on_traceparent(traceparent).unwrap_or_else(|| traceparent_for(&key));
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

/// How the relay gathers rows into batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelaySettings {
    /// Most rows published in one batch (one transaction, one wait for the broker).
    pub batch_size: i64,
    /// How long the relay, woken by a commit, waits for more commits before it reads the
    /// outbox: larger batches for a little latency. Zero publishes at once.
    pub linger: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: DEFAULT_BATCH_SIZE,
            linger: Duration::ZERO,
        }
    }
}

/// Publishes outbox rows to Kafka.
#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    producer: FutureProducer,
    codec: Arc<EventCodec>,
    wake: Arc<Notify>,
    policy: ErrorPolicy,
    health: Arc<HealthState>,
    /// Unclassified failures per outbox position, for the policy's retry budget.
    unclassified_failures: Arc<Mutex<HashMap<i64, u32>>>,
    /// The service whose outbox this is, as its metrics name it.
    service: &'static str,
    settings: RelaySettings,
}

/// One outbox row as the relay reads it.
#[derive(sqlx::FromRow)]
struct OutboxRow {
    position: i64,
    event_id: Uuid,
    payload: serde_json::Value,
    traceparent: String,
}

/// What became of one row in a batch.
enum RowOutcome {
    Published,
    Park(String),
    /// A transient failure (or an unclassified one within budget): the batch is retried.
    Retry(Error),
}

impl Relay {
    /// A relay for the service's database.
    pub fn new(
        pool: PgPool,
        producer: FutureProducer,
        codec: Arc<EventCodec>,
        policy: ErrorPolicy,
        health: Arc<HealthState>,
    ) -> Self {
        Self {
            pool,
            producer,
            codec,
            wake: Arc::new(Notify::new()),
            policy,
            health,
            unclassified_failures: Arc::default(),
            service: "unnamed",
            settings: RelaySettings::default(),
        }
    }

    /// The same relay, batching as `settings` say.
    pub fn with_settings(self, settings: RelaySettings) -> Self {
        Self {
            settings: RelaySettings {
                batch_size: settings.batch_size.max(1),
                ..settings
            },
            ..self
        }
    }

    /// The same relay, its metrics labelled with `service`.
    pub fn for_service(self, service: &'static str) -> Self {
        Self { service, ..self }
    }

    /// Tells the relay that new rows were committed, so it publishes without waiting to poll.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// Publishes until `shutdown` is cancelled; failures are retried with backoff.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0;
        let mut gauges_refreshed: Option<Instant> = None;
        loop {
            let published = self.publish_batch().await;
            if gauges_refreshed.is_none_or(|at| at.elapsed() >= GAUGE_REFRESH) {
                self.refresh_gauges().await;
                gauges_refreshed = Some(Instant::now());
            }
            match published {
                Ok(published) => {
                    failures = 0;
                    if published > 0 {
                        continue;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = self.wake.notified() => {
                            if !self.settings.linger.is_zero() {
                                tokio::time::sleep(self.settings.linger).await;
                            }
                        }
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                    }
                }
                Err(error) => {
                    failures += 1;
                    let delay = self.policy.backoff.delay(failures);
                    tracing::warn!(%error, class = %error.class(), attempt = failures, "outbox relay failed, retrying");
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

    /// Publishes one batch; returns how many rows it took out of the outbox (published or
    /// parked). Rows that fail permanently are parked and the rest of the batch is committed;
    /// any other failure leaves the whole batch in place for the next attempt (rows already
    /// sent are sent again then, and consumers deduplicate them).
    pub async fn publish_batch(&self) -> Result<usize> {
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RELAY_LOCK_KEY)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(0);
        }
        let rows: Vec<OutboxRow> =
            sqlx::query_as("SELECT position, event_id, payload, traceparent FROM outbox ORDER BY position LIMIT $1")
                .bind(self.settings.batch_size)
                .fetch_all(&mut *tx)
                .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut outcomes = Vec::with_capacity(rows.len());
        let mut sends = Vec::new();
        for row in &rows {
            match self.encode_row(row).await {
                Ok(encoded) => {
                    outcomes.push(RowOutcome::Published);
                    sends.push((outcomes.len() - 1, encoded, row));
                }
                Err(error) => outcomes.push(self.judge(row, error)),
            }
        }
        // Sends are enqueued in position order; the idempotent producer keeps that order per
        // partition even with several requests in flight.
        let service = self.service;
        let deliveries = sends.iter().map(|(_, event, row)| {
            let span = publish_span(event, &row.traceparent);
            // The record carries the publish span's context when traces are exported, so the
            // consumer's span becomes its child; else the row's, unchanged.
            let traceparent = telemetry::traceparent_of(&span).unwrap_or_else(|| row.traceparent.clone());
            let headers = event_headers(event.event_type.as_str(), &event.event_id.to_string(), &traceparent);
            let record = FutureRecord::to(&event.topic)
                .key(&event.key)
                .payload(&event.payload)
                .headers(headers);
            let send = self.producer.send(record, Duration::from_secs(30));
            async move {
                let sent_at = Instant::now();
                let delivered = send.await.map_err(|(error, _)| Error::Kafka(error));
                match &delivered {
                    Ok(delivery) => {
                        metrics::record_outbox_publish(service, &event.topic, sent_at.elapsed());
                        span.record(
                            "messaging.destination.partition.id",
                            tracing::field::display(delivery.partition),
                        );
                        span.record("messaging.kafka.offset", delivery.offset);
                    }
                    Err(error) => {
                        span.record("error.type", tracing::field::display(error));
                    }
                }
                delivered
            }
        });
        let mut delivered_per_topic: HashMap<&str, u64> = HashMap::new();
        for ((index, event, row), delivered) in sends.iter().zip(join_all(deliveries).await) {
            match delivered {
                Ok(_) => *delivered_per_topic.entry(event.topic.as_str()).or_default() += 1,
                Err(error) => outcomes[*index] = self.judge(row, error),
            }
        }
        let mut published = Vec::new();
        let mut parked = Vec::new();
        for (row, outcome) in rows.iter().zip(outcomes) {
            match outcome {
                RowOutcome::Published => published.push(row.position),
                RowOutcome::Park(reason) => parked.push((row, reason)),
                RowOutcome::Retry(error) => return Err(error),
            }
        }
        for (row, reason) in &parked {
            park(&mut tx, row.position, reason).await?;
        }
        sqlx::query("DELETE FROM outbox WHERE position = ANY($1)")
            .bind(&published)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        metrics::record_transaction_batch("outbox", rows.len());
        let mut failures = self.unclassified_failures.lock().unwrap_or_else(|e| e.into_inner());
        for (row, reason) in &parked {
            failures.remove(&row.position);
            tracing::error!(event_id = %row.event_id, position = row.position, reason, "outbox row parked; later rows go on");
        }
        drop(failures);
        self.health.count_parked(parked.len() as u64);
        metrics::count_outbox_parked(self.service, parked.len() as u64);
        for (topic, rows) in delivered_per_topic {
            metrics::count_outbox_published(self.service, topic, rows);
        }
        for (_, event, _) in &sends {
            tracing::debug!(event_id = %event.event_id, event_type = event.event_type.as_str(), order_id = %event.key, "published");
        }
        Ok(rows.len())
    }

    /// Sets the pending-rows gauges from the outbox; a failure leaves them as they were.
    async fn refresh_gauges(&self) {
        let counted: std::result::Result<(i64, Option<f64>), sqlx::Error> =
            sqlx::query_as("SELECT count(*), EXTRACT(EPOCH FROM now() - min(created_at))::float8 FROM outbox")
                .fetch_one(&self.pool)
                .await;
        match counted {
            Ok((rows, oldest_age)) => metrics::set_outbox_pending(
                self.service,
                rows,
                oldest_age.map(|secs| Duration::from_secs_f64(secs.max(0.0))),
            ),
            Err(error) => tracing::debug!(%error, "could not count the outbox for its gauges"),
        }
    }

    async fn encode_row(&self, row: &OutboxRow) -> Result<EncodedEvent> {
        let event: SagaEvent = serde_json::from_value(row.payload.clone())
            .map_err(|e| Error::Encode(format!("the outbox payload is not a saga event of this build: {e}")))?;
        self.codec.encode(&event).await
    }

    /// Applies the error policy to a row's failure.
    fn judge(&self, row: &OutboxRow, error: Error) -> RowOutcome {
        match error.class() {
            ErrorClass::Transient => RowOutcome::Retry(error),
            ErrorClass::Permanent => RowOutcome::Park(format!("permanent error: {error}")),
            ErrorClass::Unclassified => {
                let mut failures = self.unclassified_failures.lock().unwrap_or_else(|e| e.into_inner());
                let count = failures.entry(row.position).or_default();
                *count += 1;
                if *count >= self.policy.unclassified_attempts {
                    RowOutcome::Park(format!("unclassified error after {count} attempt(s): {error}"))
                } else {
                    RowOutcome::Retry(error)
                }
            }
        }
    }
}

/// Moves the outbox row at `position` to `outbox_parked`, within the relay's transaction.
async fn park(tx: &mut PgConnection, position: i64, reason: &str) -> Result<()> {
    sqlx::query(
        "WITH taken AS (DELETE FROM outbox WHERE position = $1 \
             RETURNING position, event_id, event_type, partition_key, payload, traceparent, created_at) \
         INSERT INTO outbox_parked (position, event_id, event_type, partition_key, payload, traceparent, created_at, reason) \
         SELECT position, event_id, event_type, partition_key, payload, traceparent, created_at, $2 FROM taken",
    )
    .bind(position)
    .bind(reason)
    .execute(tx)
    .await?;
    Ok(())
}

/// An outbox row set aside, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ParkedRow {
    /// The event's id.
    pub event_id: Uuid,
    /// Its type, e.g. `order.created`.
    pub event_type: String,
    /// Its record key (the order id).
    pub partition_key: String,
    /// Why it was parked.
    pub reason: String,
    /// When it was written to the outbox.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When it was parked.
    pub parked_at: chrono::DateTime<chrono::Utc>,
    /// The event as the outbox stored it.
    pub payload: serde_json::Value,
}

/// Every parked row, oldest first.
pub async fn list_parked(pool: &PgPool) -> Result<Vec<ParkedRow>> {
    Ok(sqlx::query_as(
        "SELECT event_id, event_type, partition_key, reason, created_at, parked_at, payload \
         FROM outbox_parked ORDER BY position",
    )
    .fetch_all(pool)
    .await?)
}

/// Moves parked rows back to the end of the outbox so the relay tries them again: the ones in
/// `event_ids`, or all of them when it is `None`. Returns the ids moved.
pub async fn redrive_parked(pool: &PgPool, event_ids: Option<&[Uuid]>) -> Result<Vec<Uuid>> {
    let moved = sqlx::query_scalar(
        "WITH taken AS (DELETE FROM outbox_parked WHERE $1::uuid[] IS NULL OR event_id = ANY($1) \
             RETURNING position, event_id, event_type, partition_key, payload, traceparent, created_at) \
         INSERT INTO outbox (event_id, event_type, partition_key, payload, traceparent, created_at) \
         SELECT event_id, event_type, partition_key, payload, traceparent, created_at FROM taken ORDER BY position \
         RETURNING event_id",
    )
    .bind(event_ids)
    .fetch_all(pool)
    .await?;
    Ok(moved)
}

/// The producer span of one record the relay publishes (OpenTelemetry messaging conventions),
/// a child of the span that wrote the outbox row.
fn publish_span(event: &EncodedEvent, row_traceparent: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "send",
        otel.name = %format_args!("send {}", event.topic),
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.destination.name = %event.topic,
        messaging.destination.partition.id = tracing::field::Empty,
        messaging.kafka.offset = tracing::field::Empty,
        messaging.kafka.message.key = %event.key,
        messaging.message.id = %event.event_id,
        event_type = event.event_type.as_str(),
        error.type = tracing::field::Empty,
    );
    telemetry::continue_trace(&span, Some(row_traceparent));
    span
}
