//! Kafka client construction with the settings the saga depends on, and topic creation.
//!
//! Producers are idempotent with `acks=all`, so a retried send never duplicates or reorders
//! records of one key. Consumers never auto-store offsets: the consumer loop stores an offset
//! only after the record's effect is committed (at-least-once). Nothing here depends on Kafka
//! transactions or on any one broker implementation.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::metrics::ConsumerLagContext;
use crate::{Error, Result};

/// Builds the producer every service publishes with: idempotent, every record acknowledged by
/// all in-sync replicas, retried until `message.timeout.ms`, never duplicated or reordered
/// within a partition (the broker deduplicates retried batches by producer id and sequence).
pub fn producer(config: &KafkaConfig) -> Result<FutureProducer> {
    Ok(config
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("message.timeout.ms", "30000")
        .set("linger.ms", config.producer_linger_ms.to_string())
        .create()?)
}

/// Builds a group consumer that starts from the earliest offset for a new group and only
/// commits offsets the application stored explicitly.
///
/// `cooperative-sticky` assignment and a short session timeout let a surviving member take
/// over a dead member's partitions within seconds.
pub fn consumer(config: &KafkaConfig, group_id: &str) -> Result<StreamConsumer> {
    Ok(consumer_config(config, group_id).create()?)
}

fn consumer_config(config: &KafkaConfig, group_id: &str) -> ClientConfig {
    let mut client = config.client_config();
    if let Some(contexts) = &config.debug {
        client.set("debug", contexts);
    }
    client
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", config.commit_interval_ms.to_string())
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", config.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (config.session_timeout_ms / 3).max(100).to_string(),
        )
        .set("enable.partition.eof", "false");
    client
}

/// The consumer a service's consumer loop reads with: a [`consumer`] whose statistics set the
/// consumer lag gauge of each partition it is assigned (see [`ConsumerLagContext`]).
pub type GroupConsumer = StreamConsumer<ConsumerLagContext>;

/// A [`GroupConsumer`] subscribed to `topics`.
pub fn subscribed_consumer(config: &KafkaConfig, group_id: &str, topics: &[String]) -> Result<GroupConsumer> {
    let consumer: GroupConsumer = consumer_config(config, group_id)
        .set("statistics.interval.ms", config.statistics_interval_ms.to_string())
        .create_with_context(ConsumerLagContext::new(group_id))?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;
    Ok(consumer)
}

/// Retention for a topic the platform creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Kept forever: replay rebuilds state from these topics.
    Unlimited,
    /// Kept for the given duration.
    For(Duration),
}

impl Retention {
    fn as_retention_ms(self) -> String {
        match self {
            Retention::Unlimited => "-1".to_string(),
            Retention::For(duration) => duration.as_millis().to_string(),
        }
    }
}

/// A topic the platform needs.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    /// Full topic name (prefix applied).
    pub name: String,
    /// Number of partitions.
    pub partitions: i32,
    /// How long records are kept.
    pub retention: Retention,
}

/// Creates the topics that do not exist yet, with the configured replication factor and
/// `min.insync.replicas` one below it (at least 1); existing topics are left as they are.
/// Brokers need not auto-create topics: every service calls this at startup.
pub async fn ensure_topics(config: &KafkaConfig, topics: &[TopicSpec]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = config.client_config().create()?;
    let retention: Vec<String> = topics.iter().map(|t| t.retention.as_retention_ms()).collect();
    let min_insync_replicas = (config.topic_replication_factor - 1).max(1).to_string();
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .zip(&retention)
        .map(|(topic, retention_ms)| {
            NewTopic::new(
                &topic.name,
                topic.partitions,
                TopicReplication::Fixed(config.topic_replication_factor),
            )
            .set("retention.ms", retention_ms)
            .set("min.insync.replicas", &min_insync_replicas)
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for outcome in admin.create_topics(&new_topics, &options).await? {
        match outcome {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(Error::Kafka(KafkaError::AdminOp(code))).inspect_err(|_| {
                    tracing::error!(topic = %name, ?code, "could not create topic");
                })
            }
        }
    }
    let names: Vec<String> = topics.iter().map(|topic| topic.name.clone()).collect();
    wait_until_listed(config, &names, TOPIC_PROPAGATION_TIMEOUT).await
}

/// How long a created topic may take to appear in the brokers' metadata.
const TOPIC_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until the cluster's metadata lists every topic in `names` with a leader for each of
/// its partitions. A broker learns of a new topic from the controller a little after the
/// creation is acknowledged; a consumer that subscribes before its broker knows the topic gets
/// no partitions of it until its next periodic metadata refresh (minutes).
async fn wait_until_listed(config: &KafkaConfig, names: &[String], timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let metadata = cluster_metadata(config, Duration::from_secs(5)).await?;
        let missing: Vec<&String> = names
            .iter()
            .filter(|name| {
                let mut partitions = metadata.partitions.iter().filter(|p| p.topic == **name).peekable();
                partitions.peek().is_none() || partitions.any(|partition| partition.leader < 0)
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::TopicsNotListed(format!(
                "{missing:?} after {} s",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A broker of the cluster as its metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// The broker's node id.
    pub id: i32,
    /// The address it advertises, `host:port`.
    pub address: String,
}

/// A partition as the cluster's metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// Broker id of its leader (-1 if it has none).
    pub leader: i32,
    /// Broker ids of its replicas.
    pub replicas: Vec<i32>,
    /// Broker ids of its in-sync replicas.
    pub isr: Vec<i32>,
}

impl PartitionInfo {
    /// Whether fewer replicas are in sync than it has.
    pub fn under_replicated(&self) -> bool {
        self.isr.len() < self.replicas.len()
    }
}

/// What the cluster's metadata says now.
#[derive(Debug, Clone, Default)]
pub struct ClusterMetadata {
    /// The brokers it lists (registered and not fenced), by node id.
    pub brokers: Vec<BrokerInfo>,
    /// Every partition of every topic.
    pub partitions: Vec<PartitionInfo>,
}

/// Asks the cluster for its metadata with a client of its own; an error if no broker answers
/// within `timeout`.
pub async fn cluster_metadata(config: &KafkaConfig, timeout: Duration) -> Result<ClusterMetadata> {
    let client_config = config.client_config();
    tokio::task::spawn_blocking(move || {
        let client: rdkafka::consumer::BaseConsumer = client_config.create()?;
        let metadata = client.fetch_metadata(None, timeout)?;
        let mut brokers: Vec<BrokerInfo> = metadata
            .brokers()
            .iter()
            .map(|broker| BrokerInfo {
                id: broker.id(),
                address: format!("{}:{}", broker.host(), broker.port()),
            })
            .collect();
        brokers.sort_by_key(|broker| broker.id);
        let partitions = metadata
            .topics()
            .iter()
            .flat_map(|topic| {
                topic.partitions().iter().map(|partition| PartitionInfo {
                    topic: topic.name().to_string(),
                    partition: partition.id(),
                    leader: partition.leader(),
                    replicas: partition.replicas().to_vec(),
                    isr: partition.isr().to_vec(),
                })
            })
            .collect();
        Ok::<_, Error>(ClusterMetadata { brokers, partitions })
    })
    .await
    .map_err(|join| Error::Config(format!("cluster metadata request panicked: {join}")))?
}

/// The brokers the cluster's metadata lists (those registered and not fenced), by node id;
/// an error if no broker answers within `timeout`.
pub async fn cluster_brokers(config: &KafkaConfig, timeout: Duration) -> Result<Vec<BrokerInfo>> {
    Ok(cluster_metadata(config, timeout).await?.brokers)
}
