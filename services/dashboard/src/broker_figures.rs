//! Consumer lag of each service's group and the messages in each dead-letter topic, read from
//! the broker every few seconds.
//!
//! Lag is, over every partition a group consumes, the high watermark minus the offset the group
//! committed (minus the low watermark where it committed nothing yet: a new group starts from
//! the earliest offset). Committed offsets are fetched under each group's id without joining the
//! group, so the services' consumers never see the dashboard. Dead letters are the high minus
//! the low watermark of each `<service>.dead-letter` topic.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use saga_common::config::KafkaConfig;
use saga_contracts::Topic;
use tokio_util::sync::CancellationToken;

use crate::view::{DeadLetterView, GroupLagView};

/// Each service that consumes and the topics it consumes (docs/architecture.md, Topics).
pub const CONSUMERS: [(&str, &[Topic]); 4] = [
    ("order-service", &[Topic::Payments, Topic::Inventory]),
    ("payment-service", &[Topic::Orders]),
    ("inventory-service", &[Topic::Orders]),
    ("notification-service", &[Topic::Orders]),
];

const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// The last figures read.
#[derive(Debug, Clone, Default)]
pub struct BrokerFigures {
    /// When they were read, Unix milliseconds; `None` before the first read.
    pub measured_at_ms: Option<i64>,
    /// Lag per service group.
    pub consumer_lag: Vec<GroupLagView>,
    /// Dead letters per service.
    pub dead_letters: Vec<DeadLetterView>,
    /// Why the last read failed, if it did (the figures are then those of the read before).
    pub error: Option<String>,
}

/// Reads the figures every `interval` into `figures` until `shutdown`.
pub async fn poll(
    kafka: KafkaConfig,
    interval: Duration,
    figures: Arc<RwLock<BrokerFigures>>,
    shutdown: CancellationToken,
) {
    let mut clients: Option<Arc<Clients>> = None;
    loop {
        let result = match &clients {
            Some(clients) => Ok(clients.clone()),
            None => Clients::new(&kafka).map(Arc::new),
        };
        let measured = match result {
            Ok(ready) => {
                clients = Some(ready.clone());
                let kafka = kafka.clone();
                tokio::task::spawn_blocking(move || ready.measure(&kafka))
                    .await
                    .unwrap_or_else(|join| Err(format!("measuring panicked: {join}")))
            }
            Err(error) => Err(error),
        };
        {
            let mut shared = figures.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            match measured {
                Ok(fresh) => *shared = fresh,
                Err(error) => {
                    tracing::warn!(%error, "could not read consumer lag and dead letters");
                    shared.error = Some(error);
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// A client for metadata and watermarks, and one per service group for its committed offsets.
struct Clients {
    metadata: BaseConsumer,
    groups: Vec<(&'static str, BaseConsumer)>,
}

impl Clients {
    fn new(kafka: &KafkaConfig) -> Result<Self, String> {
        let client = |group: Option<&str>| {
            let mut config = kafka.client_config();
            config
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("allow.auto.create.topics", "false");
            if let Some(group) = group {
                config.set("group.id", group);
            }
            config
                .create::<BaseConsumer>()
                .map_err(|error| format!("creating a Kafka client: {error}"))
        };
        let mut groups = Vec::new();
        for (service, _) in CONSUMERS {
            groups.push((service, client(Some(&kafka.prefixed(service)))?));
        }
        Ok(Self {
            metadata: client(None)?,
            groups,
        })
    }

    /// Partition ids of `topic`, or `None` if the cluster does not know it.
    fn partitions(&self, topic: &str) -> Result<Option<Vec<i32>>, String> {
        let metadata = self
            .metadata
            .fetch_metadata(Some(topic), BROKER_TIMEOUT)
            .map_err(|error| format!("metadata of {topic}: {error}"))?;
        Ok(metadata
            .topics()
            .iter()
            .find(|listed| listed.name() == topic && listed.error().is_none())
            .map(|listed| listed.partitions().iter().map(|p| p.id()).collect()))
    }

    fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), String> {
        self.metadata
            .fetch_watermarks(topic, partition, BROKER_TIMEOUT)
            .map_err(|error| format!("watermarks of {topic}/{partition}: {error}"))
    }

    fn measure(&self, kafka: &KafkaConfig) -> Result<BrokerFigures, String> {
        let mut watermarks: HashMap<(String, i32), (i64, i64)> = HashMap::new();
        for topic in Topic::ALL {
            let name = kafka.topic(topic);
            for partition in self.partitions(&name)?.unwrap_or_default() {
                watermarks.insert((name.clone(), partition), self.watermarks(&name, partition)?);
            }
        }
        let mut consumer_lag = Vec::new();
        for ((service, consumed), (_, group_client)) in CONSUMERS.iter().zip(&self.groups) {
            let topics: Vec<String> = consumed.iter().map(|topic| kafka.topic(*topic)).collect();
            let mut list = TopicPartitionList::new();
            for ((topic, partition), _) in watermarks.iter().filter(|((topic, _), _)| topics.contains(topic)) {
                list.add_partition(topic, *partition);
            }
            let committed = group_client
                .committed_offsets(list, BROKER_TIMEOUT)
                .map_err(|error| format!("committed offsets of {service}: {error}"))?;
            let mut lag = 0;
            let mut partitions_without_commit = 0;
            for element in committed.elements() {
                let (low, high) = watermarks[&(element.topic().to_string(), element.partition())];
                lag += match element.offset() {
                    Offset::Offset(offset) => (high - offset).max(0),
                    _ => {
                        partitions_without_commit += 1;
                        high - low
                    }
                };
            }
            consumer_lag.push(GroupLagView {
                service: service.to_string(),
                group: kafka.prefixed(service),
                topics,
                lag,
                partitions_without_commit,
            });
        }
        let mut dead_letters = Vec::new();
        for (service, _) in CONSUMERS {
            let topic = kafka.dead_letter_topic(service);
            let messages = match self.partitions(&topic)? {
                None => None,
                Some(partitions) => {
                    let mut total = 0;
                    for partition in partitions {
                        let (low, high) = self.watermarks(&topic, partition)?;
                        total += high - low;
                    }
                    Some(total)
                }
            };
            dead_letters.push(DeadLetterView {
                service: service.to_string(),
                topic,
                messages,
            });
        }
        Ok(BrokerFigures {
            measured_at_ms: Some(saga_contracts::now_millis()),
            consumer_lag,
            dead_letters,
            error: None,
        })
    }
}
