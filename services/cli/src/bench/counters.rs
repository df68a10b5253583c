//! `sagactl bench-counters`: the two counters the benchmark reads before and after a run to
//! cost a saga: PostgreSQL transactions committed in the four service databases
//! (`pg_stat_database.xact_commit`, read-only ones included, as the server counts them) and
//! records on the saga topics (the sum of every partition's end offset).

use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use saga_common::config::KafkaConfig;
use saga_contracts::Topic;
use serde_json::{json, Value};

use crate::SERVICES;

/// How long a broker may take to answer a metadata or offsets request.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// The counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Transactions committed in the service databases since the server's statistics began.
    pub(crate) pg_xact_commit: i64,
    /// Records ever written to the saga topics.
    pub(crate) kafka_records: i64,
}

impl Counters {
    /// `{"pg_xact_commit": .., "kafka_records": ..}`.
    pub(crate) fn to_json(self) -> Value {
        json!({"pg_xact_commit": self.pg_xact_commit, "kafka_records": self.kafka_records})
    }

    /// Reads counters back from [`Counters::to_json`]'s object.
    pub(crate) fn from_json(value: &Value) -> anyhow::Result<Self> {
        let field = |name: &str| {
            value[name]
                .as_i64()
                .with_context(|| format!("counters without an integer {name:?}: {value}"))
        };
        Ok(Counters {
            pg_xact_commit: field("pg_xact_commit")?,
            kafka_records: field("kafka_records")?,
        })
    }
}

/// Reads both counters.
pub(crate) async fn read(kafka: &KafkaConfig, server_url: &str) -> anyhow::Result<Counters> {
    Ok(Counters {
        pg_xact_commit: service_commits(server_url).await?,
        kafka_records: saga_records(kafka).await?,
    })
}

/// How often [`read_settled`] reads the counters.
const SETTLE_INTERVAL: Duration = Duration::from_secs(3);

/// Reads both counters once the saga topics have stopped growing: the last follow-up events of
/// a run (reservations committed, emails sent) land after the orders are decided, and the
/// servers' statistics of the last transactions reach `pg_stat_database` about a second after
/// a backend goes idle. Two readings [`SETTLE_INTERVAL`] apart with the same record count end
/// the wait; fails after `timeout`.
pub(crate) async fn read_settled(kafka: &KafkaConfig, server_url: &str, timeout: Duration) -> anyhow::Result<Counters> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut previous = read(kafka, server_url).await?;
    loop {
        tokio::time::sleep(SETTLE_INTERVAL).await;
        let current = read(kafka, server_url).await?;
        if current.kafka_records == previous.kafka_records {
            return Ok(current);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "the saga topics were still growing after {} s ({} records, {} more in the last {} s)",
                timeout.as_secs(),
                current.kafka_records,
                current.kafka_records - previous.kafka_records,
                SETTLE_INTERVAL.as_secs()
            );
        }
        previous = current;
    }
}

/// The sum of `xact_commit` over the four service databases.
async fn service_commits(server_url: &str) -> anyhow::Result<i64> {
    let url = format!("{}/postgres", server_url.trim_end_matches('/'));
    let redacted = saga_common::config::redact_url(server_url);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {redacted}"))?;
    let databases: Vec<String> = SERVICES.iter().map(|(_, database)| database.to_string()).collect();
    let commits: Option<i64> =
        sqlx::query_scalar("SELECT sum(xact_commit)::bigint FROM pg_stat_database WHERE datname = ANY($1)")
            .bind(&databases)
            .fetch_one(&pool)
            .await
            .with_context(|| format!("reading pg_stat_database on {redacted}"))?;
    pool.close().await;
    Ok(commits.unwrap_or(0))
}

/// The sum of the end offsets of every partition of the saga topics.
async fn saga_records(kafka: &KafkaConfig) -> anyhow::Result<i64> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = kafka
            .client_config()
            .set("group.id", "sagactl-bench-counters")
            .set("enable.auto.commit", "false")
            .create()
            .context("creating a Kafka client")?;
        let mut records = 0;
        for topic in Topic::ALL {
            let name = kafka.topic(topic);
            let metadata = consumer
                .fetch_metadata(Some(&name), BROKER_TIMEOUT)
                .with_context(|| format!("reading the metadata of topic {name}"))?;
            let partitions = metadata.topics().first().map_or(0, |t| t.partitions().len()) as i32;
            for partition in 0..partitions {
                let (_, high) = consumer
                    .fetch_watermarks(&name, partition, BROKER_TIMEOUT)
                    .with_context(|| format!("reading the end offset of {name}/{partition}"))?;
                records += high;
            }
        }
        Ok(records)
    })
    .await
    .context("the Kafka offsets task failed")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_read_back_what_they_printed() {
        let counters = Counters {
            pg_xact_commit: 12,
            kafka_records: 34,
        };
        assert_eq!(
            Counters::from_json(&counters.to_json()).expect("valid counters"),
            counters
        );
        assert!(Counters::from_json(&json!({"pg_xact_commit": 1})).is_err());
    }
}
