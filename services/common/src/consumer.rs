//! The at-least-once consumer loop every service runs.
//!
//! Each partition has a worker; for each record, in partition order: decode it, hand it to the service's handler, and only
//! when the handler's effect is committed store the record's offset (the offset is committed to
//! the broker in the background).
//!
//! Batches: when a partition's worker finds several records in hand and the handler can apply
//! events inside a shared transaction ([`BatchHandler`]), it applies them in partition order in
//! ONE transaction (the inbox rows of all in one statement, the inbox still taking each event
//! once, then each new event's effect, then one commit) and then stores the last offset. Any
//! failure (an event the handler refuses for good, a deadlock, a lost connection) rolls the
//! whole batch back and its records are taken again one by one, with the retries below, where
//! a refused event is dead-lettered alone. Handler failures follow the [`ErrorPolicy`]: a
//! transient one (registry, database, broker) retries the same record with backoff and never
//! skips it; a permanent one, or an unclassified one past the retry budget, and a poison
//! record (undecodable bytes, an unknown schema) go to the service's dead-letter topic with
//! their origin and the reason in headers, counted and logged at error level, and consumption
//! of the partition goes on. On shutdown the loop stops fetching, lets the record in hand finish, and
//! commits the stored offsets synchronously.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use saga_contracts::SagaEvent;
use sqlx::PgConnection;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::codec::{DecodeError, EventCodec, EVENT_ID_HEADER, EVENT_TYPE_HEADER, TRACEPARENT_HEADER};
use crate::error::{Classify, ErrorClass};
use crate::health::HealthState;
use crate::inbox;
use crate::kafka::GroupConsumer;
use crate::metrics::RecordMetrics;
use crate::retry::{retry_until_ok, ErrorPolicy};
use crate::telemetry;

/// Dead-letter header: topic the poison record came from.
pub const DLQ_ORIGIN_TOPIC: &str = "dlq.origin.topic";
/// Dead-letter header: partition the poison record came from.
pub const DLQ_ORIGIN_PARTITION: &str = "dlq.origin.partition";
/// Dead-letter header: offset of the poison record.
pub const DLQ_ORIGIN_OFFSET: &str = "dlq.origin.offset";
/// Dead-letter header: why the record could not be processed.
pub const DLQ_ERROR: &str = "dlq.error";
/// Dead-letter header: the consumer group that gave up on it.
pub const DLQ_CONSUMER_GROUP: &str = "dlq.consumer.group";

/// A decoded event with where it came from.
#[derive(Debug, Clone)]
pub struct ConsumedEvent {
    /// The decoded event.
    pub event: SagaEvent,
    /// Topic it was read from.
    pub topic: String,
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// W3C trace context from its headers, if any.
    pub traceparent: Option<String>,
}

/// What went wrong in a handler; its class decides what the loop does next (see
/// [`ErrorPolicy`]).
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A dependency failed (database, broker, gateway). The loop retries the same event.
    #[error("transient: {0:#}")]
    Transient(anyhow::Error),
    /// The event can never be processed (its content is invalid, a constraint rejects its
    /// effect, a row it needs does not exist). Dead-lettered at once.
    #[error("permanent: {0:#}")]
    Permanent(anyhow::Error),
    /// Nobody judged this failure; retried within the budget, then dead-lettered.
    #[error("unclassified: {0:#}")]
    Unclassified(anyhow::Error),
}

impl HandlerError {
    /// A permanent failure described by `message`.
    pub fn permanent(message: impl std::fmt::Display) -> Self {
        HandlerError::Permanent(anyhow::anyhow!("{message}"))
    }

    /// Wraps `error` in the variant of its class.
    pub fn classified<E>(error: E) -> Self
    where
        E: Classify + std::error::Error + Send + Sync + 'static,
    {
        let class = error.class();
        let error = anyhow::Error::new(error);
        match class {
            ErrorClass::Transient => HandlerError::Transient(error),
            ErrorClass::Permanent => HandlerError::Permanent(error),
            ErrorClass::Unclassified => HandlerError::Unclassified(error),
        }
    }
}

impl Classify for HandlerError {
    fn class(&self) -> ErrorClass {
        match self {
            HandlerError::Transient(_) => ErrorClass::Transient,
            HandlerError::Permanent(_) => ErrorClass::Permanent,
            HandlerError::Unclassified(_) => ErrorClass::Unclassified,
        }
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        HandlerError::classified(crate::Error::from(error))
    }
}

impl From<crate::Error> for HandlerError {
    fn from(error: crate::Error) -> Self {
        HandlerError::classified(error)
    }
}

/// A service's reaction to one event. It must be idempotent: the same event may arrive again
/// after a crash or a rebalance, and must then change nothing.
#[async_trait]
pub trait EventHandler: Send + Sync {
    /// Applies the event and commits its effect.
    async fn handle(&self, event: &ConsumedEvent) -> Result<(), HandlerError>;

    /// The same handler as a [`BatchHandler`], if it can apply events inside a transaction it
    /// shares with others; the loop then batches the records it has in hand.
    fn batched(&self) -> Option<&dyn BatchHandler> {
        None
    }
}

/// What a handler does once the transaction holding an event's effect has committed: wake the
/// relay, hand a payment to the charger, wake the mailer.
pub type AfterCommit = Box<dyn FnOnce() + Send>;

/// A handler whose effects are database writes that can share one transaction with other
/// events' (the inbox row of each is written by the caller, in the same transaction).
#[async_trait]
pub trait BatchHandler: Send + Sync {
    /// The service's database, where the transaction runs.
    fn database(&self) -> &sqlx::PgPool;

    /// Whether the event concerns the service; one that does not changes nothing and gets no
    /// inbox row.
    fn wants(&self, event: &ConsumedEvent) -> bool;

    /// Applies `event` inside `tx`, after the caller recorded it in the inbox (so it is new);
    /// returns what to do after the commit. An error leaves the caller to roll back.
    async fn apply(&self, tx: &mut PgConnection, event: &ConsumedEvent) -> Result<Option<AfterCommit>, HandlerError>;

    /// Locks, at the start of a batch's transaction, the rows that events of other partitions
    /// may lock too (the batches of two partitions run at once), in one fixed order, so that
    /// two batches never wait for each other in a cycle (a deadlock rolls a batch back). The
    /// single-event path locks the same rows in the same order. None by default.
    async fn lock_shared_rows(&self, _tx: &mut PgConnection, _events: &[&ConsumedEvent]) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// Handles one event in a transaction of its own: inbox row, effect, commit, then the
/// after-commit work. What a [`BatchHandler`]'s [`EventHandler::handle`] does.
pub async fn handle_alone(handler: &dyn BatchHandler, event: &ConsumedEvent) -> Result<(), HandlerError> {
    if !handler.wants(event) {
        return Ok(());
    }
    let mut tx = handler.database().begin().await?;
    if !inbox::record(&mut tx, event).await? {
        return Ok(());
    }
    let after = handler.apply(&mut tx, event).await?;
    tx.commit().await?;
    if let Some(after) = after {
        after();
    }
    Ok(())
}

/// Applies `events` in order in one transaction: their inbox rows in one statement, then the
/// effect of each new one, then one commit. Any error rolls everything back and is returned
/// (the caller takes the events again one by one, where a refused one is set aside alone).
pub async fn handle_together(
    handler: &dyn BatchHandler,
    events: &[(ConsumedEvent, tracing::Span)],
) -> Result<(), HandlerError> {
    let wanted: Vec<&(ConsumedEvent, tracing::Span)> =
        events.iter().filter(|(event, _)| handler.wants(event)).collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let wanted_events: Vec<&ConsumedEvent> = wanted.iter().map(|(event, _)| event).collect();
    let mut tx = handler.database().begin().await?;
    handler.lock_shared_rows(&mut tx, &wanted_events).await?;
    let new = inbox::record_all(&mut tx, &wanted_events).await?;
    let mut after_commit = Vec::new();
    for ((event, span), new) in wanted.into_iter().zip(new) {
        if new {
            after_commit.extend(handler.apply(&mut tx, event).instrument(span.clone()).await?);
        }
    }
    tx.commit().await?;
    for after in after_commit {
        after();
    }
    Ok(())
}

/// Everything the loop needs besides the handler.
pub struct ConsumerLoop {
    /// Subscribed consumer (see [`crate::kafka::subscribed_consumer`]).
    pub consumer: GroupConsumer,
    /// Codec for decoding.
    pub codec: Arc<EventCodec>,
    /// Producer for dead letters.
    pub producer: FutureProducer,
    /// Full name of this service's dead-letter topic.
    pub dead_letter_topic: String,
    /// Consumer group, recorded on dead letters.
    pub group_id: String,
    /// What to do when a handler fails.
    pub policy: ErrorPolicy,
    /// Where dead letters are counted.
    pub health: Arc<HealthState>,
    /// The most records of one partition applied in one transaction (1: one at a time).
    pub batch_size: usize,
    /// How long a worker holding fewer than `batch_size` records waits for more before it
    /// applies them; zero takes what is in hand at once.
    pub batch_linger: Duration,
}

/// What happened to one record.
enum Outcome {
    Processed,
    DeadLettered,
    Interrupted,
}

/// Records waiting for a partition's worker; when full, fetching pauses (back-pressure).
const PARTITION_QUEUE: usize = 256;

impl ConsumerLoop {
    /// Runs until `shutdown` is cancelled, then commits stored offsets.
    ///
    /// Records of one partition are handled one after another, in order, by that partition's
    /// worker; partitions proceed independently, so a slow record holds up only its partition.
    pub async fn run(self, handler: Arc<dyn EventHandler>, shutdown: CancellationToken) {
        let consumer_loop = Arc::new(self);
        consumer_loop.clone().consume(handler, &shutdown).await;
        tracing::info!(group = %consumer_loop.group_id, "consumer stopped");
    }

    /// Feeds the consumer's records to per-partition workers until shutdown; then lets the
    /// workers finish the records in hand and commits the stored offsets.
    async fn consume(self: Arc<Self>, handler: Arc<dyn EventHandler>, shutdown: &CancellationToken) {
        let mut workers: HashMap<(String, i32), mpsc::Sender<OwnedMessage>> = HashMap::new();
        let mut running = JoinSet::new();
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break,
                received = self.consumer.recv() => received,
            };
            let message = match message {
                Ok(message) => message.detach(),
                Err(error) => {
                    tracing::warn!(%error, "consumer error; continuing");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let key = (message.topic().to_string(), message.partition());
            let worker = workers.entry(key).or_insert_with(|| {
                let (sender, receiver) = mpsc::channel(PARTITION_QUEUE);
                let metrics = RecordMetrics::new(message.topic(), &self.group_id);
                running.spawn(
                    self.clone()
                        .work_partition(receiver, handler.clone(), shutdown.clone(), metrics),
                );
                sender
            });
            tokio::select! {
                _ = shutdown.cancelled() => break,
                sent = worker.send(message) => if sent.is_err() { break },
            }
        }
        drop(workers);
        while running.join_next().await.is_some() {}
        if let Err(error) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(%error, "final offset commit had nothing to do or failed");
        }
    }

    /// Handles one partition's records in order until the queue closes or shutdown.
    async fn work_partition(
        self: Arc<Self>,
        mut queue: mpsc::Receiver<OwnedMessage>,
        handler: Arc<dyn EventHandler>,
        shutdown: CancellationToken,
        metrics: RecordMetrics,
    ) {
        let mut batch = Vec::with_capacity(self.batch_size.max(1));
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = queue.recv() => match next { Some(message) => message, None => break },
            };
            batch.push(message);
            // The records already in hand join it; more are waited for only up to the linger.
            let linger_until = tokio::time::Instant::now() + self.batch_linger;
            while batch.len() < self.batch_size {
                match queue.try_recv() {
                    Ok(message) => batch.push(message),
                    Err(mpsc::error::TryRecvError::Empty) if !self.batch_linger.is_zero() => {
                        match tokio::time::timeout_at(linger_until, queue.recv()).await {
                            Ok(Some(message)) => batch.push(message),
                            _ => break,
                        }
                    }
                    Err(_) => break,
                }
            }
            let batched = handler.batched().filter(|_| batch.len() > 1);
            let finished = match batched {
                Some(batch_handler) => {
                    self.process_together(&batch, batch_handler, handler.as_ref(), &shutdown, &metrics)
                        .await
                }
                None => self.process_each(&batch, handler.as_ref(), &shutdown, &metrics).await,
            };
            if !finished {
                break;
            }
            batch.clear();
        }
    }

    /// Handles `batch` record by record, storing each one's offset once it is done; `false` if
    /// shutdown interrupted it.
    async fn process_each(
        &self,
        batch: &[OwnedMessage],
        handler: &dyn EventHandler,
        shutdown: &CancellationToken,
        metrics: &RecordMetrics,
    ) -> bool {
        for message in batch {
            // On shutdown the records not started yet stay unstored, to be read again.
            if shutdown.is_cancelled() {
                return false;
            }
            match self.process(message, handler, shutdown, metrics).await {
                Outcome::Processed => {
                    crate::metrics::record_transaction_batch("consumer", 1);
                    self.store_offset(message);
                }
                Outcome::DeadLettered => self.store_offset(message),
                Outcome::Interrupted => return false,
            }
        }
        true
    }

    /// Applies `batch` in one transaction (see the module's documentation), then dead-letters
    /// what cannot be processed and stores the last offset; falls back to
    /// [`Self::process_each`] when the transaction fails. `false` if shutdown interrupted it.
    async fn process_together(
        &self,
        batch: &[OwnedMessage],
        batch_handler: &dyn BatchHandler,
        handler: &dyn EventHandler,
        shutdown: &CancellationToken,
        metrics: &RecordMetrics,
    ) -> bool {
        let started = Instant::now();
        let mut decoded = Vec::with_capacity(batch.len());
        let mut events = Vec::with_capacity(batch.len());
        for message in batch {
            let span = self.record_span(message);
            match self.decode(message, shutdown).instrument(span.clone()).await {
                None => return false,
                Some(Ok(event)) => {
                    span.record("event_type", event.event.event_type().as_str());
                    decoded.push(Ok(()));
                    events.push((event, span));
                }
                Some(Err(error)) => decoded.push(Err(error.to_string())),
            }
        }
        if let Err(error) = handle_together(batch_handler, &events).await {
            // A refused event, a deadlock, a lost connection: the one-by-one path applies the
            // error policy to each record, and sets a refused one aside alone.
            tracing::warn!(
                topic = batch[0].topic(),
                partition = batch[0].partition(),
                records = batch.len(),
                %error,
                "batch rolled back; taking its records one by one"
            );
            return self.process_each(batch, handler, shutdown, metrics).await;
        }
        crate::metrics::record_transaction_batch("consumer", events.len());
        let elapsed = started.elapsed();
        for (message, decoded) in batch.iter().zip(decoded) {
            match decoded {
                Ok(()) => {
                    metrics.handled_in(elapsed);
                    metrics.processed();
                }
                Err(reason) => {
                    if let Outcome::Interrupted = self.dead_letter(message, &reason, shutdown, metrics).await {
                        return false;
                    }
                }
            }
        }
        if let Some(last) = batch.last() {
            self.store_offset(last);
        }
        true
    }

    fn store_offset(&self, message: &OwnedMessage) {
        if let Err(error) = self
            .consumer
            .store_offset(message.topic(), message.partition(), message.offset())
        {
            // Only fails if the partition was revoked meanwhile; its new owner re-reads the
            // record and the handler's idempotence absorbs it.
            tracing::warn!(%error, "could not store offset");
        }
    }

    /// Handles one record inside a consumer span that continues the trace of the record's
    /// `traceparent` (OpenTelemetry messaging conventions), so the spans of the handler's work
    /// and the events it causes belong to the saga's trace.
    async fn process(
        &self,
        message: &OwnedMessage,
        handler: &dyn EventHandler,
        shutdown: &CancellationToken,
        metrics: &RecordMetrics,
    ) -> Outcome {
        let span = self.record_span(message);
        self.decode_and_handle(message, handler, shutdown, metrics)
            .instrument(span)
            .await
    }

    /// The consumer span of one record, continuing the trace of its `traceparent`.
    fn record_span(&self, message: &OwnedMessage) -> tracing::Span {
        let key = message.key().map(String::from_utf8_lossy).unwrap_or_default();
        let span = tracing::info_span!(
            "process",
            otel.name = %format_args!("process {}", message.topic()),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = message.topic(),
            messaging.destination.partition.id = %message.partition(),
            messaging.kafka.offset = message.offset(),
            messaging.consumer.group.name = %self.group_id,
            messaging.kafka.message.key = %key,
            event_type = tracing::field::Empty,
        );
        telemetry::continue_trace(&span, header_value(message, TRACEPARENT_HEADER).as_deref());
        span
    }

    /// Decodes `message` (retrying while the registry is unreachable) with where it came from;
    /// `None` if shutdown interrupted the retries, an error if it can never be decoded.
    async fn decode(
        &self,
        message: &OwnedMessage,
        shutdown: &CancellationToken,
    ) -> Option<Result<ConsumedEvent, DecodeError>> {
        let decoded = retry_until_ok("schema lookup", self.policy.backoff, shutdown, || async {
            match self.codec.decode(message.payload()).await {
                Err(DecodeError::Transient(reason)) => Err(reason),
                other => Ok(other),
            }
        })
        .await?;
        Some(decoded.map(|event| ConsumedEvent {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            traceparent: header_value(message, TRACEPARENT_HEADER),
            event,
        }))
    }

    async fn decode_and_handle(
        &self,
        message: &OwnedMessage,
        handler: &dyn EventHandler,
        shutdown: &CancellationToken,
        metrics: &RecordMetrics,
    ) -> Outcome {
        let consumed = match self.decode(message, shutdown).await {
            None => return Outcome::Interrupted,
            Some(Ok(consumed)) => consumed,
            Some(Err(error)) => return self.dead_letter(message, &error.to_string(), shutdown, metrics).await,
        };
        let order_id = consumed.event.order_id().map(|id| id.to_string()).unwrap_or_default();
        let event_id = consumed.event.event_id().to_string();
        let event_type = consumed.event.event_type().as_str();
        tracing::Span::current().record("event_type", event_type);
        let started = Instant::now();
        let handled = self
            .policy
            .run_reporting_retries(
                "event handler",
                shutdown,
                || metrics.retried(),
                || handler.handle(&consumed),
            )
            .await;
        if handled.is_some() {
            metrics.handled_in(started.elapsed());
        }
        match handled {
            None => Outcome::Interrupted,
            Some(Ok(())) => {
                tracing::debug!(order_id, event_id, event_type, "event processed");
                metrics.processed();
                Outcome::Processed
            }
            Some(Err(gave_up)) => {
                tracing::error!(order_id, event_id, event_type, error = %gave_up, "event handler gave up");
                self.dead_letter(message, &gave_up.to_string(), shutdown, metrics).await
            }
        }
    }

    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        reason: &str,
        shutdown: &CancellationToken,
        metrics: &RecordMetrics,
    ) -> Outcome {
        tracing::error!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            dead_letter_topic = %self.dead_letter_topic,
            reason,
            "dead-lettering record"
        );
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for header in original.iter() {
                headers = headers.insert(Header {
                    key: header.key,
                    value: header.value,
                });
            }
        }
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        headers = headers
            .insert(Header {
                key: DLQ_ORIGIN_TOPIC,
                value: Some(message.topic()),
            })
            .insert(Header {
                key: DLQ_ORIGIN_PARTITION,
                value: Some(&partition),
            })
            .insert(Header {
                key: DLQ_ORIGIN_OFFSET,
                value: Some(&offset),
            })
            .insert(Header {
                key: DLQ_ERROR,
                value: Some(reason),
            })
            .insert(Header {
                key: DLQ_CONSUMER_GROUP,
                value: Some(&self.group_id),
            });
        let sent = retry_until_ok("dead-letter publish", self.policy.backoff, shutdown, || {
            let mut record = FutureRecord::to(&self.dead_letter_topic).headers(headers.clone());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            let send = self.producer.send(record, Duration::from_secs(10));
            async move { send.await.map_err(|(error, _)| error) }
        })
        .await;
        match sent {
            Some(_) => {
                self.health.count_dead_letter();
                metrics.dead_lettered();
                Outcome::DeadLettered
            }
            None => Outcome::Interrupted,
        }
    }
}

/// Reads a UTF-8 header value from a record.
pub fn header_value(message: &impl Message, name: &str) -> Option<String> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Headers every produced event carries: its type, id and trace context.
pub fn event_headers(event_type: &str, event_id: &str, traceparent: &str) -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header {
            key: EVENT_TYPE_HEADER,
            value: Some(event_type),
        })
        .insert(Header {
            key: EVENT_ID_HEADER,
            value: Some(event_id),
        })
        .insert(Header {
            key: TRACEPARENT_HEADER,
            value: Some(traceparent),
        })
}
