//! Reads the four saga topics into the model, as an observer: the consumer is assigned every
//! partition itself and never joins or commits as a group, so the services' groups never see it.
//!
//! Each partition starts at the first record of the window (`now - window`, found with
//! offsets-for-times) or at the beginning. The dashboard counts as caught up once it has read
//! every partition up to the end offset found when it started. A record that cannot be decoded
//! is counted and skipped; a registry that cannot be reached is waited for, so no event is lost
//! to an outage.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{Message, Offset, TopicPartitionList};
use saga_common::codec::{DecodeError, EventCodec, TRACEPARENT_HEADER};
use saga_common::config::KafkaConfig;
use saga_contracts::Topic;
use tokio_util::sync::CancellationToken;

use crate::model::{RecordPosition, RecordedEvent};
use crate::DashboardState;

const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Where each partition's reading starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The first record of this recent span.
    Window(Duration),
    /// The first record kept.
    Beginning,
}

/// The reader of the saga topics.
pub struct SagaReader {
    /// Broker settings (topic prefix included).
    pub kafka: KafkaConfig,
    /// Decoder of the records.
    pub codec: Arc<EventCodec>,
    /// Where the model lives.
    pub state: Arc<DashboardState>,
    /// Where reading starts.
    pub start_at: StartAt,
}

impl SagaReader {
    /// Reads until `shutdown`, setting the state's `caught_up` once the first read is done.
    /// Assignment is retried until the topics exist and the broker answers.
    pub async fn run(self, shutdown: CancellationToken) {
        let started = Instant::now();
        let (consumer, mut behind) = loop {
            match self.assign().await {
                Ok(assigned) => break assigned,
                Err(error) => {
                    tracing::warn!(error = %error, "cannot assign the saga topics yet; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(RETRY_AFTER) => {}
                    }
                }
            }
        };
        let mut check_position = tokio::time::interval(Duration::from_secs(1));
        loop {
            if behind.is_empty() && !self.state.caught_up.load(Ordering::Relaxed) {
                self.state.caught_up.store(true, Ordering::Relaxed);
                let model = self.state.lock_model();
                tracing::info!(
                    events = model.counters().events_added,
                    orders = model.len(),
                    seconds = started.elapsed().as_secs_f64(),
                    "caught up with the saga topics"
                );
            }
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = check_position.tick(), if !behind.is_empty() => {
                    drop_reached(&consumer, &mut behind);
                    continue;
                }
                received = consumer.recv() => match received {
                    Ok(message) => message.detach(),
                    Err(error) => {
                        tracing::warn!(%error, "reading the saga topics failed; retrying");
                        tokio::time::sleep(RETRY_AFTER).await;
                        continue;
                    }
                },
            };
            let key = (message.topic().to_string(), message.partition());
            if behind.get(&key).is_some_and(|end| message.offset() + 1 >= *end) {
                behind.remove(&key);
            }
            if !self.record(&message, &shutdown).await {
                return;
            }
        }
    }

    /// Decodes one record into the model; `false` if shutdown came while waiting for the
    /// registry.
    async fn record(&self, message: &OwnedMessage, shutdown: &CancellationToken) -> bool {
        let position = RecordPosition {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
        };
        let event = loop {
            match self.codec.decode(message.payload()).await {
                Ok(event) => break event,
                Err(DecodeError::Poison(reason)) => {
                    tracing::warn!(topic = %position.topic, partition = position.partition, offset = position.offset, %reason, "skipping an undecodable record");
                    self.state.lock_model().count_undecodable();
                    return true;
                }
                Err(DecodeError::Transient(reason)) => {
                    tracing::warn!(%reason, "schema registry unavailable; retrying the record");
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(RETRY_AFTER) => {}
                    }
                }
            }
        };
        let traceparent = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|header| header.key == TRACEPARENT_HEADER)
                .and_then(|header| header.value)
                .and_then(|value| std::str::from_utf8(value).ok())
        });
        let timestamp = message.timestamp().to_millis();
        let mut model = self.state.lock_model();
        match RecordedEvent::from_event(&event, position, timestamp, traceparent) {
            Some((order_id, recorded)) => {
                model.apply(order_id, recorded);
            }
            None => model.count_without_order(),
        }
        true
    }

    /// Builds the consumer and assigns it every partition of the saga topics at its start
    /// offset; returns it with the end offset of each partition that has records to read.
    async fn assign(&self) -> Result<(StreamConsumer, HashMap<(String, i32), i64>), String> {
        // librdkafka assigns partitions only to a consumer with a group id; this one is never
        // joined (no subscribe) and never committed to, so the broker never holds it.
        let consumer: StreamConsumer = self
            .kafka
            .client_config()
            .set("group.id", self.kafka.prefixed(crate::NAME))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("allow.auto.create.topics", "false")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(|error| format!("creating the consumer: {error}"))?;
        let consumer = Arc::new(consumer);
        let blocking = consumer.clone();
        let kafka = self.kafka.clone();
        let start_at = self.start_at;
        let behind = tokio::task::spawn_blocking(move || assign_blocking(&blocking, &kafka, start_at))
            .await
            .map_err(|join| format!("assignment panicked: {join}"))??;
        let consumer = Arc::try_unwrap(consumer).map_err(|_| "the consumer is still shared".to_string())?;
        Ok((consumer, behind))
    }
}

fn assign_blocking(
    consumer: &StreamConsumer,
    kafka: &KafkaConfig,
    start_at: StartAt,
) -> Result<HashMap<(String, i32), i64>, String> {
    let mut partitions = Vec::new();
    for topic in Topic::ALL {
        let name = kafka.topic(topic);
        let metadata = consumer
            .fetch_metadata(Some(&name), BROKER_TIMEOUT)
            .map_err(|error| format!("metadata of {name}: {error}"))?;
        let listed = metadata
            .topics()
            .iter()
            .find(|listed| listed.name() == name)
            .ok_or_else(|| format!("topic {name} not listed"))?;
        if let Some(error) = listed.error() {
            return Err(format!("topic {name}: {error:?}"));
        }
        if listed.partitions().is_empty() {
            return Err(format!("topic {name} has no partitions yet"));
        }
        for partition in listed.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(&name, partition.id(), BROKER_TIMEOUT)
                .map_err(|error| format!("watermarks of {name}/{}: {error}", partition.id()))?;
            partitions.push((name.clone(), partition.id(), low, high));
        }
    }
    let starts: HashMap<(String, i32), i64> = match start_at {
        StartAt::Beginning => partitions
            .iter()
            .map(|(topic, partition, low, _)| ((topic.clone(), *partition), *low))
            .collect(),
        StartAt::Window(window) => {
            let since = saga_contracts::now_millis() - i64::try_from(window.as_millis()).unwrap_or(i64::MAX / 2);
            let mut query = TopicPartitionList::new();
            for (topic, partition, _, _) in &partitions {
                query
                    .add_partition_offset(topic, *partition, Offset::Offset(since))
                    .map_err(|error| error.to_string())?;
            }
            let found = consumer
                .offsets_for_times(query, BROKER_TIMEOUT)
                .map_err(|error| format!("offsets for times: {error}"))?;
            partitions
                .iter()
                .map(|(topic, partition, low, high)| {
                    let start = match found.find_partition(topic, *partition).map(|element| element.offset()) {
                        Some(Offset::Offset(offset)) => offset,
                        // No record at or after the window's start: nothing to read yet.
                        Some(Offset::End) => *high,
                        _ => *low,
                    };
                    ((topic.clone(), *partition), start)
                })
                .collect()
        }
    };
    let mut assignment = TopicPartitionList::new();
    let mut behind = HashMap::new();
    for (topic, partition, _, high) in &partitions {
        let start = starts[&(topic.clone(), *partition)];
        assignment
            .add_partition_offset(topic, *partition, Offset::Offset(start))
            .map_err(|error| error.to_string())?;
        if start < *high {
            behind.insert((topic.clone(), *partition), *high);
        }
    }
    consumer
        .assign(&assignment)
        .map_err(|error| format!("assigning the saga topics: {error}"))?;
    tracing::info!(
        partitions = partitions.len(),
        to_read = behind.len(),
        ?start_at,
        "assigned the saga topics"
    );
    Ok(behind)
}

/// Forgets the partitions whose position has reached their end offset (the last records may
/// be control records a consumer never receives).
fn drop_reached(consumer: &StreamConsumer, behind: &mut HashMap<(String, i32), i64>) {
    let Ok(positions) = consumer.position() else {
        return;
    };
    for element in positions.elements() {
        if let Offset::Offset(position) = element.offset() {
            let key = (element.topic().to_string(), element.partition());
            if behind.get(&key).is_some_and(|end| position >= *end) {
                behind.remove(&key);
            }
        }
    }
}
