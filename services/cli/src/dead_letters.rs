//! `sagactl dead-letters`: lists a service's dead letters with their origin and reason, and
//! redrives them — re-produces each to the topic it came from, with its key, value and original
//! headers — once whatever made them fail is fixed. A redriven record that still fails is simply
//! dead-lettered again.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, Offset, TopicPartitionList};
use saga_common::config::KafkaConfig;
use saga_common::consumer::{DLQ_CONSUMER_GROUP, DLQ_ERROR, DLQ_ORIGIN_OFFSET, DLQ_ORIGIN_PARTITION, DLQ_ORIGIN_TOPIC};
use saga_common::kafka;

/// One record of a dead-letter topic.
struct DeadLetter {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
}

impl DeadLetter {
    fn header(&self, name: &str) -> String {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
            .unwrap_or_default()
    }
}

/// Reads every record of `topic` from the beginning to its current end, without a group.
fn read_all(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<Vec<DeadLetter>> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "sagactl-dead-letters")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata.topics().first().map(|t| t.partitions().len()).unwrap_or(0) as i32;
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for partition in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        if high > low {
            assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
            ends.insert(partition, high);
        }
    }
    let mut letters = Vec::new();
    if ends.is_empty() {
        return Ok(letters);
    }
    consumer.assign(&assignment)?;
    while !ends.is_empty() {
        let message = consumer
            .poll(Duration::from_secs(10))
            .context("timed out reading the dead-letter topic")??;
        if ends
            .get(&message.partition())
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            ends.remove(&message.partition());
        }
        letters.push(DeadLetter {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers: message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    Ok(letters)
}

/// Prints every dead letter of `service`.
pub(crate) fn list(kafka: &KafkaConfig, service: &str) -> anyhow::Result<()> {
    let topic = kafka.dead_letter_topic(service);
    let letters = read_all(kafka, &topic)?;
    println!("{} dead letter(s) in {topic}", letters.len());
    for letter in &letters {
        println!(
            "  [{}@{}] from {}[{}]@{} by {}: {}",
            letter.partition,
            letter.offset,
            letter.header(DLQ_ORIGIN_TOPIC),
            letter.header(DLQ_ORIGIN_PARTITION),
            letter.header(DLQ_ORIGIN_OFFSET),
            letter.header(DLQ_CONSUMER_GROUP),
            letter.header(DLQ_ERROR),
        );
    }
    Ok(())
}

/// Re-produces dead letters of `service` to their origin topics: all of them, or only the one at
/// `only` (partition, offset) of the dead-letter topic.
pub(crate) async fn redrive(kafka: &KafkaConfig, service: &str, only: Option<(i32, i64)>) -> anyhow::Result<()> {
    let topic = kafka.dead_letter_topic(service);
    let letters = read_all(kafka, &topic)?;
    let producer = kafka::producer(kafka)?;
    let mut redriven = 0;
    for letter in letters
        .iter()
        .filter(|l| only.is_none_or(|(p, o)| l.partition == p && l.offset == o))
    {
        let origin = letter.header(DLQ_ORIGIN_TOPIC);
        anyhow::ensure!(
            !origin.is_empty(),
            "dead letter {}@{} has no {DLQ_ORIGIN_TOPIC} header",
            letter.partition,
            letter.offset
        );
        let mut headers = OwnedHeaders::new();
        for (key, value) in letter.headers.iter().filter(|(key, _)| !key.starts_with("dlq.")) {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record = FutureRecord::to(&origin).headers(headers);
        if let Some(key) = &letter.key {
            record = record.key(key);
        }
        if let Some(payload) = &letter.payload {
            record = record.payload(payload);
        }
        let delivery = producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(error, _)| error)?;
        println!(
            "  redrove [{}@{}] to {origin}[{}]@{}",
            letter.partition, letter.offset, delivery.partition, delivery.offset
        );
        redriven += 1;
    }
    if redriven == 0 {
        anyhow::bail!("no matching dead letter in {topic}");
    }
    println!("{redriven} dead letter(s) redriven");
    Ok(())
}
