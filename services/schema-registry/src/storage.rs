//! Durable storage of the registry: its [`Record`]s in a one-partition Kafka topic.
//!
//! As Confluent Schema Registry does with its `_schemas` topic, every change is produced to the
//! topic (idempotent producer, `acks=all`, delivery awaited) before it is applied in memory and
//! answered, and a starting registry reads the topic from the beginning up to its high watermark
//! to rebuild its state. The topic is created if missing (1 partition, `retention.ms=-1`); the
//! broker is not expected to auto-create it.
//!
//! One registry instance is the only writer of a topic. Nothing stops a second one, but two
//! writers would hand out the same ids. To stay equal to what a replay would rebuild even when a
//! write's outcome is unknown (a delivery timeout), the storage remembers the offset after the
//! last record it returned: after a failed write it reads whatever reached the log before writing
//! again, and a write that lands after records it has not seen returns those records first.

use std::time::{Duration, Instant};

use kafka_security::KafkaSecurity;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::error::{Error, Result};
use crate::record::Record;

/// How long a write may wait for the broker's acknowledgement.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long reading the topic to its end may take.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long topic creation and metadata calls may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the log lives.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Kafka bootstrap servers, e.g. `127.0.0.1:9092`.
    pub bootstrap_servers: String,
    /// The topic, e.g. `_schemas`.
    pub topic: String,
    /// Replication factor used if the topic has to be created.
    pub replication_factor: i32,
    /// How its Kafka clients authenticate and encrypt.
    pub security: KafkaSecurity,
}

/// The registry's log in Kafka. See the module docs.
pub struct KafkaStorage {
    config: StorageConfig,
    producer: FutureProducer,
    /// The offset after the last record handed to the caller.
    next_offset: i64,
    /// A write failed: the log may hold records the caller has not seen.
    needs_catch_up: bool,
}

impl std::fmt::Debug for KafkaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaStorage")
            .field("config", &self.config)
            .field("next_offset", &self.next_offset)
            .field("needs_catch_up", &self.needs_catch_up)
            .finish_non_exhaustive()
    }
}

impl KafkaStorage {
    /// Creates the topic if it is missing and reads every record in it, oldest first.
    pub async fn open(config: StorageConfig) -> Result<(KafkaStorage, Vec<Record>)> {
        ensure_topic(&config).await?;
        let producer: FutureProducer = client_config(&config)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .set("message.timeout.ms", WRITE_TIMEOUT.as_millis().to_string())
            .create()
            .map_err(Error::kafka("creating the producer"))?;
        let mut storage = KafkaStorage {
            config,
            producer,
            next_offset: 0,
            needs_catch_up: false,
        };
        let records = storage.read_to_end().await?;
        tracing::info!(
            topic = %storage.config.topic,
            records = records.len(),
            next_offset = storage.next_offset,
            "read the schemas topic"
        );
        Ok((storage, records))
    }

    /// The topic name.
    pub fn topic(&self) -> &str {
        &self.config.topic
    }

    /// After a failed write: the records that reached the log since the last one returned.
    /// Empty (and free) otherwise.
    pub async fn catch_up(&mut self) -> Result<Vec<Record>> {
        if !self.needs_catch_up {
            return Ok(Vec::new());
        }
        let records = self.read_to_end().await?;
        self.needs_catch_up = false;
        if !records.is_empty() {
            tracing::warn!(
                count = records.len(),
                "caught up with records written by a write that had reported failure"
            );
        }
        Ok(records)
    }

    /// Appends `record` and waits until the broker has it. Returns the records to apply, in log
    /// order: normally just `record`, preceded by any record the log got in between that this
    /// storage had not returned yet.
    pub async fn append(&mut self, record: &Record) -> Result<Vec<Record>> {
        let payload = record.to_bytes();
        let delivery = self
            .producer
            .send(
                FutureRecord::to(&self.config.topic)
                    .partition(0)
                    .key(record.key())
                    .payload(&payload),
                WRITE_TIMEOUT,
            )
            .await;
        let delivery = match delivery {
            Ok(delivery) => delivery,
            Err((source, _)) => {
                self.needs_catch_up = true;
                return Err(Error::Kafka {
                    context: format!("writing to '{}'", self.config.topic),
                    source,
                });
            }
        };
        if delivery.offset == self.next_offset {
            self.next_offset += 1;
            return Ok(vec![record.clone()]);
        }
        if delivery.offset < self.next_offset {
            tracing::error!(
                expected = self.next_offset,
                got = delivery.offset,
                "the schemas topic went back in time (was it recreated?)"
            );
            return Ok(vec![record.clone()]);
        }
        // Someone (a write we reported as failed, or another writer) got records in before ours:
        // return everything up to and including ours, in log order.
        tracing::warn!(
            expected = self.next_offset,
            got = delivery.offset,
            "the schemas topic has records this registry did not write in order"
        );
        let records = self.read_to_end().await?;
        Ok(records)
    }

    /// Reads from `next_offset` to the current end of the topic and advances `next_offset`.
    async fn read_to_end(&mut self) -> Result<Vec<Record>> {
        let config = self.config.clone();
        let start = self.next_offset;
        let (records, next) = tokio::task::spawn_blocking(move || read_range(&config, start))
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
        self.next_offset = next;
        Ok(records)
    }
}

fn client_config(config: &StorageConfig) -> ClientConfig {
    config.security.client_config(&config.bootstrap_servers)
}

/// Creates the topic if it does not exist, then checks it has exactly one partition.
async fn ensure_topic(config: &StorageConfig) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(config)
        .create()
        .map_err(Error::kafka("creating the admin client"))?;
    // Like the saga's topics: with 3 replicas a write needs 2, so one broker may be down.
    let min_insync_replicas = (config.replication_factor - 1).max(1).to_string();
    let topic = NewTopic::new(&config.topic, 1, TopicReplication::Fixed(config.replication_factor))
        .set("retention.ms", "-1")
        .set("min.insync.replicas", &min_insync_replicas);
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let results = admin
        .create_topics([&topic], &options)
        .await
        .map_err(Error::kafka(format!("creating topic '{}'", config.topic)))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created the schemas topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(Error::Topic {
                    topic: name,
                    reason: format!("could not be created: {code}"),
                })
            }
        }
    }
    let config = config.clone();
    tokio::task::spawn_blocking(move || wait_for_single_partition(&admin, &config))
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

/// Waits until the topic shows up in the metadata and checks its partition count.
fn wait_for_single_partition(admin: &AdminClient<DefaultClientContext>, config: &StorageConfig) -> Result<()> {
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    loop {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(&config.topic), ADMIN_TIMEOUT)
            .map_err(Error::kafka("fetching the topic's metadata"))?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == config.topic && t.error().is_none())
            .map(|t| t.partitions().len());
        match partitions {
            Some(1) => return Ok(()),
            Some(n) if n > 1 => {
                return Err(Error::Topic {
                    topic: config.topic.clone(),
                    reason: format!("has {n} partitions, the registry needs exactly 1"),
                })
            }
            _ if Instant::now() >= deadline => {
                return Err(Error::Topic {
                    topic: config.topic.clone(),
                    reason: "does not appear in the broker's metadata".to_owned(),
                })
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Reads the records at offsets `start..high watermark` (blocking). Returns them and the offset
/// after the last one read.
fn read_range(config: &StorageConfig, start: i64) -> Result<(Vec<Record>, i64)> {
    let read_error = |reason: String| Error::Read {
        topic: config.topic.clone(),
        reason,
    };
    // A group id is needed to assign partitions; nothing is ever committed under it.
    let consumer: BaseConsumer = client_config(config)
        .set("group.id", format!("schema-registry-reader-{}", config.topic))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(Error::kafka("creating the reader"))?;
    let deadline = Instant::now() + READ_TIMEOUT;
    let (low, high) = fetch_watermarks(&consumer, &config.topic, deadline)?;
    let start = start.max(low);
    if start >= high {
        return Ok((Vec::new(), start.max(high)));
    }
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&config.topic, 0, Offset::Offset(start))
        .map_err(Error::kafka("assigning the partition"))?;
    consumer
        .assign(&assignment)
        .map_err(Error::kafka("assigning the partition"))?;

    let mut records = Vec::new();
    let mut next = start;
    while next < high {
        if Instant::now() >= deadline {
            return Err(read_error(format!(
                "stopped at offset {next} of {high} after {READ_TIMEOUT:?}"
            )));
        }
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.map_err(Error::kafka("reading the topic"))?;
        if message.offset() < next {
            continue;
        }
        next = message.offset() + 1;
        match message.payload().map(Record::from_bytes) {
            Some(Ok(record)) => records.push(record),
            Some(Err(error)) => tracing::error!(
                offset = message.offset(),
                %error,
                "skipping a record of the schemas topic that is not a registry record"
            ),
            None => tracing::warn!(offset = message.offset(), "skipping an empty record"),
        }
    }
    Ok((records, next))
}

fn fetch_watermarks(consumer: &BaseConsumer, topic: &str, deadline: Instant) -> Result<(i64, i64)> {
    loop {
        match consumer.fetch_watermarks(topic, 0, ADMIN_TIMEOUT) {
            Ok(watermarks) => return Ok(watermarks),
            Err(error) if Instant::now() < deadline && is_transient(&error) => {
                tracing::debug!(%error, "retrying fetching the watermarks");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(source) => {
                return Err(Error::Kafka {
                    context: format!("fetching the watermarks of '{topic}'"),
                    source,
                })
            }
        }
    }
}

fn is_transient(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
        )
    )
}
