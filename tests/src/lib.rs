//! Shared helpers for the workspace tests: every test gets its own topic prefix, consumer groups
//! and databases, so tests share one broker, registry and PostgreSQL yet run in parallel.
//!
//! The broker and registry are the real local stack (`deploy/local/stack.sh infra`), found through
//! `KAFKA_BOOTSTRAP_SERVERS` and `SCHEMA_REGISTRY_URL`, with the registry credentials of
//! `SCHEMA_REGISTRY_USER_INFO` (`user:password`, from `.local/secrets.env`) if it is set.

pub mod fixtures;
pub mod harness;
pub mod otlp;
pub mod platform;
pub mod prometheus;
pub mod services;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use rdkafka::{Offset, TopicPartitionList};
use saga_common::auth::{ApiKeys, AuthConfig, Secret};
use saga_common::codec::EventCodec;
use saga_common::config::{KafkaConfig, RegistryConfig, RegistryUserInfo, TelemetryConfig};
use saga_common::consumer::event_headers;
use saga_common::kafka::{self, Retention, TopicSpec};
use saga_common::service::ServiceConfig;
use saga_contracts::{SagaEvent, Topic};

/// The replication factor tests create topics with: `TOPIC_REPLICATION_FACTOR` as the local
/// stack sets it (3 on a three-node cluster), 1 when unset.
fn env_replication_factor() -> i32 {
    std::env::var("TOPIC_REPLICATION_FACTOR")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1)
}

/// The credentials of the services tests start: one key per scope (generated per test process),
/// and the key of a client holding every scope, which [`http`] sends.
pub struct TestCredentials {
    /// The `orders`, `read` and `admin` keys, for tests of who may do what.
    pub scope_keys: ApiKeys,
    every_scope: Secret,
    keys_file: PathBuf,
}

impl TestCredentials {
    fn generate() -> Self {
        let every_scope = Secret::new(format!("test-client-{}", uuid::Uuid::new_v4().simple()));
        let keys_file = std::env::temp_dir().join(format!("saga-test-api-keys-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(
            &keys_file,
            format!(
                "# the test client\ntest-client orders,read,admin {}\n",
                every_scope.expose()
            ),
        )
        .expect("the test keys file is written");
        Self {
            scope_keys: ApiKeys::generate(),
            every_scope,
            keys_file,
        }
    }

    /// What services started by tests accept: the scope keys and the test client's key.
    pub fn service_auth(&self) -> AuthConfig {
        AuthConfig {
            api_keys_file: Some(self.keys_file.clone()),
            ..AuthConfig::with_keys(&self.scope_keys)
        }
    }

    /// The test client's key, good for every scope.
    pub fn every_scope(&self) -> &Secret {
        &self.every_scope
    }
}

/// This test process's credentials.
pub fn credentials() -> &'static TestCredentials {
    static CREDENTIALS: OnceLock<TestCredentials> = OnceLock::new();
    CREDENTIALS.get_or_init(TestCredentials::generate)
}

/// An HTTP client sending the test client's key (every scope) with each request.
pub fn http() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", credentials().every_scope.expose()))
        .expect("a key is a valid header value");
    bearer.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, bearer);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("an HTTP client")
}

/// `GET url` with the test client's key.
pub async fn get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http().get(url).send().await
}

/// A test's private slice of the shared stack.
#[derive(Debug, Clone)]
pub struct TestEnv {
    /// Unique prefix of every topic this test uses.
    pub prefix: String,
    /// Broker settings with the prefix applied.
    pub kafka: KafkaConfig,
    /// Registry settings.
    pub registry: RegistryConfig,
}

impl TestEnv {
    /// A fresh environment whose saga topics exist (6 partitions each).
    pub async fn new() -> anyhow::Result<Self> {
        let prefix = format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let bootstrap = std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
        let registry = std::env::var("SCHEMA_REGISTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into());
        let env = Self {
            // Tests watch commits happen; commit often so they need not wait long.
            kafka: KafkaConfig {
                commit_interval_ms: 500,
                topic_replication_factor: env_replication_factor(),
                // KAFKA_SECURITY_PROTOCOL and the rest, as the stack's clients get them.
                security: kafka_security::KafkaSecurity::from_env()?,
                ..KafkaConfig::new(bootstrap).with_topic_prefix(prefix.clone())
            },
            registry: RegistryConfig::new(registry)
                .with_user_info(RegistryUserInfo::from_env().map_err(anyhow::Error::msg)?),
            prefix,
        };
        let topics: Vec<TopicSpec> = Topic::ALL
            .iter()
            .map(|t| TopicSpec {
                name: env.kafka.topic(*t),
                partitions: 6,
                retention: Retention::Unlimited,
            })
            .collect();
        kafka::ensure_topics(&env.kafka, &topics).await?;
        Ok(env)
    }

    /// Creates an extra topic under this test's prefix and returns its full name.
    pub async fn topic(&self, name: &str, partitions: i32) -> anyhow::Result<String> {
        let full = self.kafka.prefixed(name);
        kafka::ensure_topics(
            &self.kafka,
            &[TopicSpec {
                name: full.clone(),
                partitions,
                retention: Retention::For(Duration::from_secs(86_400)),
            }],
        )
        .await?;
        Ok(full)
    }

    /// A database URL unique to this test and service (the service creates the database).
    pub fn database_url(&self, service: &str) -> String {
        let server = std::env::var("POSTGRES_SERVER_URL")
            .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432".into());
        let name = format!("{}_{service}", self.prefix.trim_end_matches('.')).replace(['.', '-'], "_");
        format!("{server}/{name}")
    }

    /// Service settings for this test: its topics, its own database, HTTP on a free port.
    pub fn service_config(&self, service: &str) -> ServiceConfig {
        ServiceConfig {
            kafka: self.kafka.clone(),
            registry: self.registry.clone(),
            telemetry: TelemetryConfig {
                log_format: "pretty".into(),
                otlp_endpoint: None,
            },
            auth: credentials().service_auth(),
            database_url: Some(self.database_url(service)),
            http_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            database_max_connections: 5,
            unclassified_error_attempts: 3,
            consumer_batch_size: 64,
            consumer_batch_linger_ms: 0,
            outbox_batch_size: saga_common::outbox::DEFAULT_BATCH_SIZE,
            outbox_linger_ms: 0,
        }
    }

    /// A codec for this test's topics.
    pub fn codec(&self) -> anyhow::Result<EventCodec> {
        Ok(EventCodec::new(&self.registry, &self.kafka)?)
    }

    /// Produces `event` to its topic, keyed as the services key it, with the usual headers.
    pub async fn produce(&self, event: &SagaEvent) -> anyhow::Result<()> {
        self.produce_all(std::slice::from_ref(event)).await
    }

    /// Produces `events` in this order through one producer, each to its topic, keyed as the
    /// services key it, with the usual headers.
    pub async fn produce_all(&self, events: &[SagaEvent]) -> anyhow::Result<()> {
        self.produce_timed(events.iter().map(|event| (event, None))).await
    }

    /// Produces `events` in this order through one producer, each with the record timestamp
    /// (milliseconds since the epoch) given beside it, or the time of sending.
    pub async fn produce_timed<'a>(
        &self,
        events: impl IntoIterator<Item = (&'a SagaEvent, Option<i64>)>,
    ) -> anyhow::Result<()> {
        let codec = self.codec()?;
        let producer = kafka::producer(&self.kafka)?;
        for (event, timestamp) in events {
            let encoded = codec.encode(event).await?;
            let headers = event_headers(
                encoded.event_type.as_str(),
                &encoded.event_id.to_string(),
                &saga_common::codec::traceparent_for(&encoded.key),
            );
            let record = FutureRecord::to(&encoded.topic)
                .key(&encoded.key)
                .payload(&encoded.payload)
                .headers(headers);
            let record = match timestamp {
                Some(timestamp) => record.timestamp(timestamp),
                None => record,
            };
            producer
                .send(record, Duration::from_secs(10))
                .await
                .map_err(|(error, _)| anyhow::anyhow!("produce failed: {error}"))?;
        }
        Ok(())
    }

    /// Produces raw bytes to one of this test's saga topics.
    pub async fn produce_raw(&self, topic: Topic, key: &str, payload: &[u8]) -> anyhow::Result<()> {
        let name = self.kafka.topic(topic);
        let record = FutureRecord::to(&name).key(key).payload(payload);
        kafka::producer(&self.kafka)?
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(error, _)| anyhow::anyhow!("produce failed: {error}"))?;
        Ok(())
    }

    /// A reader of everything on `topic` (full name) from the beginning.
    pub fn reader(&self, topic: &str) -> anyhow::Result<TopicReader> {
        TopicReader::new(&self.kafka, &self.registry, topic)
    }

    /// Waits until the outbox of `service`'s database is empty: everything it committed is
    /// published.
    pub async fn outbox_drained(&self, service: &str) -> anyhow::Result<()> {
        let pool = sqlx::PgPool::connect(&self.database_url(service)).await?;
        let result = eventually(
            &format!("{service} outbox drained"),
            Duration::from_secs(30),
            || async {
                let pending = saga_common::outbox::pending(&pool).await.ok()?;
                (pending == 0).then_some(())
            },
        )
        .await;
        pool.close().await;
        result
    }

    /// A consumer group id unique to this test.
    pub fn group(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs the workspace's `sagactl` binary (built by `cargo build --bins`) on this test's
    /// topics, registry and database server; returns its standard output, or fails with both
    /// outputs if it exits non-zero.
    pub fn sagactl(&self, args: &[&str]) -> anyhow::Result<String> {
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
        let binary = target.join("debug/sagactl");
        anyhow::ensure!(
            binary.exists(),
            "{} missing: build the platform first (cargo build --bins)",
            binary.display()
        );
        let mut command = std::process::Command::new(binary);
        command
            .args(args)
            .env("KAFKA_BOOTSTRAP_SERVERS", &self.kafka.bootstrap_servers)
            .env("TOPIC_PREFIX", &self.prefix)
            .env("SCHEMA_REGISTRY_URL", &self.registry.url)
            .envs(credentials().scope_keys.to_env());
        match &self.registry.user_info {
            Some(user_info) => command.env(RegistryUserInfo::ENV, user_info.expose_secret()),
            None => command.env_remove(RegistryUserInfo::ENV),
        };
        let output = command.output()?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        anyhow::ensure!(
            output.status.success(),
            "sagactl {args:?} failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(text)
    }

    /// Whether consumer group `group` (full id) has consumed all of `topic` (full name) as it is
    /// now: for every partition holding records, the group's committed offset reached the end.
    /// An empty partition counts as consumed whatever the group committed for it (nothing, or
    /// an offset from before a retention cut).
    pub async fn group_caught_up(&self, group: &str, topic: &str) -> anyhow::Result<bool> {
        let probe = kafka::consumer(&self.kafka, group)?;
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
            let wait = Duration::from_secs(10);
            let metadata = probe.fetch_metadata(Some(&topic), wait)?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
            let mut list = TopicPartitionList::new();
            for partition in &partitions {
                list.add_partition(&topic, *partition);
            }
            let committed = probe.committed_offsets(list, wait)?;
            for partition in partitions {
                let (low, high) = probe.fetch_watermarks(&topic, partition, wait)?;
                if high == low {
                    continue;
                }
                match committed.find_partition(&topic, partition).map(|entry| entry.offset()) {
                    Some(Offset::Offset(offset)) if offset >= high => {}
                    _ => return Ok(false),
                }
            }
            Ok(true)
        })
        .await?
    }

    /// Waits until group `group` (full id) has consumed all of `topic` (full name); see
    /// [`TestEnv::group_caught_up`].
    pub async fn wait_until_consumed(&self, group: &str, topic: &str, timeout: Duration) -> anyhow::Result<()> {
        eventually(&format!("group {group} consumed all of {topic}"), timeout, || async {
            self.group_caught_up(group, topic).await.ok()?.then_some(())
        })
        .await
    }
}

/// Polls `check` every 100 ms until it returns `Some`, failing after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads and decodes a topic from the beginning, for assertions about what services emitted.
pub struct TopicReader {
    consumer: StreamConsumer,
    codec: EventCodec,
}

/// One undecoded record read by a [`TopicReader`].
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Topic it is in.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value.
    pub payload: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// One record read by a [`TopicReader`].
#[derive(Debug)]
pub struct ReadRecord {
    /// Decoded event, or the decode error.
    pub event: Result<SagaEvent, String>,
    /// Record headers as UTF-8 pairs.
    pub headers: Vec<(String, String)>,
    /// Record key.
    pub key: Option<String>,
}

impl RawRecord {
    /// The value of header `name`, if it is there and UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }
}

impl ReadRecord {
    /// The value of header `name`, if it is there.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

impl TopicReader {
    /// A reader of everything on `topic` (full name) from the beginning, in a consumer group of
    /// its own.
    pub fn new(kafka: &KafkaConfig, registry: &RegistryConfig, topic: &str) -> anyhow::Result<Self> {
        let group = format!("{}reader-{}", kafka.topic_prefix, uuid::Uuid::new_v4().simple());
        let consumer = kafka::consumer(kafka, &group)?;
        consumer.subscribe(&[topic])?;
        Ok(Self {
            consumer,
            codec: EventCodec::new(registry, kafka)?,
        })
    }

    /// Reads every record present on the topic now (up to each partition's high watermark).
    pub async fn read_to_end(&self, timeout: Duration) -> anyhow::Result<Vec<ReadRecord>> {
        let mut records = Vec::new();
        for raw in self.read_raw_to_end(timeout).await? {
            records.push(ReadRecord {
                event: self
                    .codec
                    .decode(raw.payload.as_deref())
                    .await
                    .map_err(|e| e.to_string()),
                headers: raw
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                    .collect(),
                key: raw.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
            });
        }
        Ok(records)
    }

    /// Like [`TopicReader::read_to_end`], but returns the records as raw bytes with where they
    /// are, without decoding them.
    pub async fn read_raw_to_end(&self, timeout: Duration) -> anyhow::Result<Vec<RawRecord>> {
        let topic = self
            .consumer
            .subscription()?
            .elements()
            .first()
            .map(|e| e.topic().to_string())
            .ok_or_else(|| anyhow::anyhow!("reader has no topic"))?;
        let metadata = self.consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let partitions = metadata.topics().first().map(|t| t.partitions().len()).unwrap_or(0) as i32;
        let mut remaining: std::collections::HashMap<i32, i64> = std::collections::HashMap::new();
        for partition in 0..partitions {
            let (low, high) = self
                .consumer
                .fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
            if high > low {
                remaining.insert(partition, high);
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut records = Vec::new();
        while !remaining.is_empty() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = match tokio::time::timeout(left, self.consumer.recv()).await {
                Ok(message) => message?,
                Err(_) => anyhow::bail!("timed out after {timeout:?} reading {topic} to its end"),
            };
            if remaining
                .get(&message.partition())
                .is_some_and(|high| message.offset() + 1 >= *high)
            {
                remaining.remove(&message.partition());
            }
            let headers = match message.headers() {
                Some(headers) => rdkafka::message::Headers::iter(headers)
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect(),
                None => Vec::new(),
            };
            records.push(RawRecord {
                topic: topic.clone(),
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
                headers,
            });
        }
        Ok(records)
    }

    async fn to_record(&self, message: &rdkafka::message::BorrowedMessage<'_>) -> ReadRecord {
        let headers = match message.headers() {
            Some(headers) => rdkafka::message::Headers::iter(headers)
                .map(|h| {
                    (
                        h.key.to_string(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect(),
            None => Vec::new(),
        };
        ReadRecord {
            event: self.codec.decode(message.payload()).await.map_err(|e| e.to_string()),
            headers,
            key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        }
    }

    /// Reads records until `done` says the collected ones suffice, failing after `timeout`.
    pub async fn read_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[ReadRecord]) -> bool,
    ) -> anyhow::Result<Vec<ReadRecord>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut records = Vec::new();
        while !done(&records) {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = match tokio::time::timeout(remaining, self.consumer.recv()).await {
                Ok(message) => message?,
                Err(_) => anyhow::bail!(
                    "timed out after {timeout:?}; read {} records: {records:#?}",
                    records.len()
                ),
            };
            records.push(self.to_record(&message).await);
        }
        Ok(records)
    }
}
