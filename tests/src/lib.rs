//! Shared helpers for the workspace tests: every test gets its own topic prefix, consumer groups
//! and databases, so tests share one broker, registry and PostgreSQL yet run in parallel.
//!
//! The broker and registry are the real local stack (`deploy/local/stack.sh infra`), found through
//! `KAFKA_BOOTSTRAP_SERVERS` and `SCHEMA_REGISTRY_URL`.

use std::time::Duration;

use saga_common::config::{KafkaConfig, RegistryConfig};
use saga_common::kafka::{self, Retention, TopicSpec};
use saga_contracts::Topic;

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
            kafka: KafkaConfig::new(bootstrap).with_topic_prefix(prefix.clone()),
            registry: RegistryConfig::new(registry),
            prefix,
        };
        let topics: Vec<TopicSpec> = Topic::ALL
            .iter()
            .map(|t| TopicSpec { name: env.kafka.topic(*t), partitions: 6, retention: Retention::Unlimited })
            .collect();
        kafka::ensure_topics(&env.kafka, &topics).await?;
        Ok(env)
    }

    /// Creates an extra topic under this test's prefix and returns its full name.
    pub async fn topic(&self, name: &str, partitions: i32) -> anyhow::Result<String> {
        let full = self.kafka.prefixed(name);
        kafka::ensure_topics(
            &self.kafka,
            &[TopicSpec { name: full.clone(), partitions, retention: Retention::For(Duration::from_secs(86_400)) }],
        )
        .await?;
        Ok(full)
    }

    /// A consumer group id unique to this test.
    pub fn group(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
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
