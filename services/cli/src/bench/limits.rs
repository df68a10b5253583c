//! `sagactl bench-limits`: what this machine's PostgreSQL and Kafka can do at most, measured
//! the same way on every run, so the platform's figures can be read as fractions of them.
//!
//! - PostgreSQL: `pgbench` with one small INSERT per transaction, 8 clients on 2 threads, into a
//!   scratch database on the services' server, whose durability settings are left as they are
//!   (and reported); the database is dropped afterwards.
//! - Kafka: records produced with the services' producer settings (idempotent, `acks=all`) to a
//!   scratch topic of 6 partitions and consumed back, a bounded window of them in flight; round
//!   trips per second and their latency; the topic is deleted afterwards.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use saga_common::config::{redact_url, KafkaConfig};
use saga_common::kafka::{self, Retention, TopicSpec};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::stats::{self, fmt_ms, Percentiles};

/// pgbench clients (connections) and threads.
const PGBENCH_CLIENTS: u32 = 8;
const PGBENCH_THREADS: u32 = 2;
/// Partitions of the scratch topic, as many as the saga topics have by default.
const KAFKA_PARTITIONS: i32 = 6;
/// Bytes of each scratch record: about a saga event's Avro payload.
const KAFKA_RECORD_BYTES: usize = 256;
/// Records produced before the measured window opens (connections set up, leaders found).
const KAFKA_WARM_UP: Duration = Duration::from_secs(1);

/// What to measure.
#[derive(Debug, Clone)]
pub(crate) struct LimitsRequest<'a> {
    /// The PostgreSQL server of the service databases (no database name).
    pub(crate) server_url: &'a str,
    /// How long each measurement runs.
    pub(crate) duration: Duration,
    /// Kafka records in flight at most (produced, not yet consumed back).
    pub(crate) kafka_window: usize,
}

/// Measures both limits and prints them.
pub(crate) async fn run(kafka: &KafkaConfig, request: &LimitsRequest<'_>, output: super::Output) -> anyhow::Result<()> {
    output.progress(format_args!(
        "PostgreSQL: pgbench, one INSERT per transaction, {PGBENCH_CLIENTS} clients, {PGBENCH_THREADS} threads, {} s ...",
        request.duration.as_secs()
    ));
    let postgres = postgres_commits(request.server_url, request.duration).await?;
    output.progress(format_args!(
        "Kafka: produce (acks=all, idempotent) and consume back, {} records in flight, {} s ...",
        request.kafka_window,
        request.duration.as_secs()
    ));
    let kafka_limit = kafka_round_trips(kafka, request.duration, request.kafka_window).await?;
    let object = json!({"postgres": postgres.to_json(), "kafka": kafka_limit.to_json()});
    output.result(
        &object,
        &[
            format!(
                "PostgreSQL commits/s:            {:.0} (fsync {}, synchronous_commit {})",
                postgres.commits_per_sec, postgres.fsync, postgres.synchronous_commit
            ),
            format!(
                "Kafka round trips/s:             {:.0} (produced {:.0}/s; {} partitions, replication factor {})",
                kafka_limit.round_trips_per_sec,
                kafka_limit.produced_per_sec,
                KAFKA_PARTITIONS,
                kafka_limit.replication_factor
            ),
            format!(
                "Kafka round trip at that load:   p50 {}  p99 {}",
                fmt_ms(kafka_limit.latency.p50),
                fmt_ms(kafka_limit.latency.p99)
            ),
        ],
    );
    Ok(())
}

/// PostgreSQL's measured limit.
#[derive(Debug)]
struct PostgresLimit {
    commits_per_sec: f64,
    fsync: String,
    synchronous_commit: String,
    seconds: u64,
}

impl PostgresLimit {
    fn to_json(&self) -> Value {
        json!({
            "commits_per_sec": self.commits_per_sec,
            "fsync": self.fsync,
            "synchronous_commit": self.synchronous_commit,
            "clients": PGBENCH_CLIENTS,
            "threads": PGBENCH_THREADS,
            "seconds": self.seconds,
        })
    }
}

/// Runs pgbench against a scratch database, then drops it whatever happened.
async fn postgres_commits(server_url: &str, duration: Duration) -> anyhow::Result<PostgresLimit> {
    let pgbench = find_pgbench()?;
    let server = reqwest::Url::parse(server_url)
        .with_context(|| format!("POSTGRES_SERVER_URL {} is not a URL", redact_url(server_url)))?;
    let redacted = redact_url(server_url);
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{}/postgres", server_url.trim_end_matches('/')))
        .await
        .with_context(|| format!("connecting to PostgreSQL at {redacted}"))?;
    let fsync = show_setting(&admin, "fsync", &redacted).await?;
    let synchronous_commit = show_setting(&admin, "synchronous_commit", &redacted).await?;
    let scratch = format!("saga_bench_limits_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    sqlx::query(&format!("CREATE DATABASE {scratch}"))
        .execute(&admin)
        .await
        .with_context(|| format!("creating the scratch database {scratch} on {redacted}"))?;
    let script = std::env::temp_dir().join(format!("{scratch}.sql"));
    let measured = run_pgbench(&pgbench, &server, server_url, &scratch, &script, duration).await;
    let _ = std::fs::remove_file(&script);
    let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS {scratch} WITH (FORCE)"))
        .execute(&admin)
        .await
        .with_context(|| format!("dropping the scratch database {scratch} on {redacted}"));
    admin.close().await;
    let commits_per_sec = measured?;
    dropped?;
    Ok(PostgresLimit {
        commits_per_sec,
        fsync,
        synchronous_commit,
        seconds: duration.as_secs(),
    })
}

/// The value of a server setting (`SHOW <setting>`).
async fn show_setting(pool: &sqlx::PgPool, setting: &str, server: &str) -> anyhow::Result<String> {
    sqlx::query_scalar::<_, String>(&format!("SHOW {setting}"))
        .fetch_one(pool)
        .await
        .with_context(|| format!("SHOW {setting} on {server}"))
}

/// Creates the scratch table, writes the one-INSERT script and runs pgbench on it; returns its
/// transactions per second.
async fn run_pgbench(
    pgbench: &Path,
    server: &reqwest::Url,
    server_url: &str,
    scratch: &str,
    script: &Path,
    duration: Duration,
) -> anyhow::Result<f64> {
    let scratch_url = format!("{}/{scratch}", server_url.trim_end_matches('/'));
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&scratch_url)
        .await
        .with_context(|| format!("connecting to the scratch database {scratch}"))?;
    sqlx::query("CREATE TABLE bench_insert (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), payload text NOT NULL)")
        .execute(&pool)
        .await
        .context("creating the scratch table")?;
    pool.close().await;
    std::fs::write(
        script,
        "INSERT INTO bench_insert (payload) VALUES ('saga benchmark row');\n",
    )
    .with_context(|| format!("writing the pgbench script {}", script.display()))?;
    let user = if server.username().is_empty() {
        "postgres"
    } else {
        server.username()
    };
    let mut command = tokio::process::Command::new(pgbench);
    command
        .args(["--no-vacuum", "--client", &PGBENCH_CLIENTS.to_string()])
        .args(["--jobs", &PGBENCH_THREADS.to_string()])
        .args(["--time", &duration.as_secs().max(1).to_string()])
        .arg("--file")
        .arg(script)
        .args(["--host", server.host_str().unwrap_or("127.0.0.1")])
        .args(["--port", &server.port().unwrap_or(5432).to_string()])
        .args(["--username", user])
        .arg(scratch)
        .kill_on_drop(true);
    // The password goes by the environment, not on a command line others can read.
    if let Some(password) = server.password() {
        command.env("PGPASSWORD", password);
    }
    let finished = command
        .output()
        .await
        .with_context(|| format!("running {}", pgbench.display()))?;
    let stdout = String::from_utf8_lossy(&finished.stdout);
    if !finished.status.success() {
        bail!(
            "pgbench failed ({}): {}{}",
            finished.status,
            stdout.trim(),
            String::from_utf8_lossy(&finished.stderr).trim()
        );
    }
    pgbench_tps(&stdout).with_context(|| format!("pgbench printed no `tps = ...` line:\n{stdout}"))
}

/// `pgbench` on PATH, else the newest under /usr/lib/postgresql/<version>/bin (Debian's layout).
fn find_pgbench() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("pgbench"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if let Some(found) = on_path.into_iter().find(|candidate| candidate.is_file()) {
        return Ok(found);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let candidate = entry.path().join("bin/pgbench");
            candidate.is_file().then_some((version, candidate))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, path)| path).context(
        "pgbench not found on PATH nor in /usr/lib/postgresql/<version>/bin; install it \
         (Debian: apt-get install postgresql-client, or postgresql-contrib on older releases)",
    )
}

/// The figure of pgbench's `tps = 1234.567890 (without initial connection time)` line.
fn pgbench_tps(stdout: &str) -> Option<f64> {
    stdout.lines().find_map(|line| {
        line.trim()
            .strip_prefix("tps = ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|figure| figure.parse().ok())
    })
}

/// Kafka's measured limit.
#[derive(Debug)]
struct KafkaLimit {
    round_trips_per_sec: f64,
    produced_per_sec: f64,
    latency: Percentiles,
    replication_factor: i32,
    window: usize,
    seconds: u64,
}

impl KafkaLimit {
    fn to_json(&self) -> Value {
        json!({
            "round_trips_per_sec": self.round_trips_per_sec,
            "produced_per_sec": self.produced_per_sec,
            "round_trip": self.latency.to_json(),
            "partitions": KAFKA_PARTITIONS,
            "replication_factor": self.replication_factor,
            "record_bytes": KAFKA_RECORD_BYTES,
            "window": self.window,
            "seconds": self.seconds,
        })
    }
}

/// Makes a scratch topic, measures round trips through it, and deletes it whatever happened.
async fn kafka_round_trips(kafka: &KafkaConfig, duration: Duration, window: usize) -> anyhow::Result<KafkaLimit> {
    let topic = TopicSpec {
        name: kafka.prefixed(&format!(
            "bench-limits-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )),
        partitions: KAFKA_PARTITIONS,
        retention: Retention::For(Duration::from_secs(3600)),
    };
    kafka::ensure_topics(kafka, std::slice::from_ref(&topic))
        .await
        .with_context(|| format!("creating the scratch topic {}", topic.name))?;
    let measured = measure_round_trips(kafka, &topic.name, duration, window.max(1)).await;
    let deleted = crate::replay_bench::delete_topics(kafka, std::slice::from_ref(&topic))
        .await
        .with_context(|| format!("deleting the scratch topic {}", topic.name));
    let limit = measured?;
    deleted?;
    Ok(limit)
}

/// Produces for warm-up + `duration`, never more than `window` records unconsumed, and counts
/// what was acknowledged and consumed back within the measured `duration`.
async fn measure_round_trips(
    kafka: &KafkaConfig,
    topic: &str,
    duration: Duration,
    window: usize,
) -> anyhow::Result<KafkaLimit> {
    let consumer = kafka::consumer(
        kafka,
        &format!("sagactl-bench-limits-{}", uuid::Uuid::new_v4().simple()),
    )
    .context("creating the Kafka consumer")?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..KAFKA_PARTITIONS {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment).context("assigning the scratch topic")?;
    let producer = kafka::producer(kafka).context("creating the Kafka producer")?;

    let clock = Instant::now();
    let opens = clock + KAFKA_WARM_UP;
    let closes = opens + duration;
    let in_window = move |at: Instant| at >= opens && at < closes;
    let permits = Arc::new(Semaphore::new(window));
    let acknowledged = Arc::new(AtomicU64::new(0));

    let reader = {
        let permits = Arc::clone(&permits);
        tokio::spawn(async move {
            let mut consumed = 0u64;
            let mut latencies = Vec::new();
            loop {
                let message = match tokio::time::timeout_at(closes, consumer.recv()).await {
                    Err(_) => break,
                    Ok(received) => received.context("consuming the scratch topic")?,
                };
                let now = Instant::now();
                permits.add_permits(1);
                let sent_nanos = message
                    .payload()
                    .and_then(|payload| payload.get(..8))
                    .and_then(|bytes| bytes.try_into().ok())
                    .map(u64::from_be_bytes)
                    .context("a scratch record without its send time")?;
                if in_window(now) {
                    consumed += 1;
                    let sent = clock + Duration::from_nanos(sent_nanos);
                    latencies.push(now.saturating_duration_since(sent));
                }
            }
            anyhow::Ok((consumed, latencies))
        })
    };

    let mut payload = vec![0u8; KAFKA_RECORD_BYTES];
    let mut index = 0u64;
    let mut failure = None;
    while Instant::now() < closes && failure.is_none() {
        let Ok(Ok(permit)) = tokio::time::timeout_at(closes, permits.acquire()).await else {
            break;
        };
        permit.forget();
        let sent = Instant::now().saturating_duration_since(clock);
        payload[..8].copy_from_slice(&(sent.as_nanos() as u64).to_be_bytes());
        let key = index.to_string();
        index += 1;
        let mut record = FutureRecord::to(topic).key(&key).payload(&payload);
        let delivery = loop {
            match producer.send_result(record) {
                Ok(delivery) => break Some(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((error, _)) => {
                    failure = Some(anyhow::anyhow!("producing to {topic}: {error}"));
                    break None;
                }
            }
        };
        if let Some(delivery) = delivery {
            let acknowledged = Arc::clone(&acknowledged);
            let permits = Arc::clone(&permits);
            tokio::spawn(async move {
                match delivery.await {
                    Ok(Ok(_)) if in_window(Instant::now()) => {
                        acknowledged.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(_)) => {}
                    // Never consumed back: give its place in the window to another record.
                    _ => permits.add_permits(1),
                }
            });
        }
    }
    let (consumed, mut latencies) = reader.await.context("the Kafka consumer task failed")??;
    if let Some(error) = failure {
        return Err(error);
    }
    if consumed == 0 {
        bail!(
            "no record produced to {topic} was consumed back within {} s",
            duration.as_secs()
        );
    }
    Ok(KafkaLimit {
        round_trips_per_sec: stats::per_second(consumed as usize, duration),
        produced_per_sec: stats::per_second(acknowledged.load(Ordering::Relaxed) as usize, duration),
        latency: Percentiles::of(&mut latencies),
        replication_factor: kafka.topic_replication_factor,
        window,
        seconds: duration.as_secs(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_tps_is_read_from_its_tps_line() {
        let output = "transaction type: insert.sql\nscaling factor: 1\nnumber of clients: 8\n\
                      latency average = 3.1 ms\n\
                      initial connection time = 12.345 ms\n\
                      tps = 2571.864230 (without initial connection time)\n";
        assert_eq!(pgbench_tps(output), Some(2571.864230));
        assert_eq!(pgbench_tps("pgbench: error: connection failed"), None);
    }
}
