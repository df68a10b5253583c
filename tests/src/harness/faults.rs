//! Fault injection: a schedule derived from the seed (every enabled kind at least once, plus
//! optional faults at a fixed interval for long runs) and the executor that carries it out
//! against the cluster while the load runs. Broker faults hit the nodes of the harness's own
//! Kafka cluster: a SIGKILL of the busiest partition leader, a pause longer than the broker's
//! session, a rolling restart, and a network isolation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::types::Value;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use saga_common::codec::EventCodec;
use saga_common::kafka;
use saga_contracts::{EventType, OrderId, SagaEvent, Topic};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::cluster::{instance_name, Cluster, NODE_START_TIMEOUT, SERVICES};
use super::isolation::IsolationRules;
use super::kafka_nodes::{busiest_leader, listed_brokers, partitions, wait_for_brokers, wait_fully_replicated};
use super::state::{InjectedPoison, RecordPosition};
use crate::{fixtures, TopicReader};

/// How long a restarted node may take to have every partition fully replicated again before a
/// rolling restart goes on to the next node anyway (and says so).
const REPLICATION_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a node may take to shut down gracefully before it is killed.
const NODE_SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

/// The kinds of fault the harness injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum FaultKind {
    /// SIGKILL a service, restart it after a random delay.
    KillService,
    /// SIGSTOP a service longer than its session timeout, then SIGCONT.
    PauseService,
    /// SIGKILL the broker leading the most saga-topic partitions, restart it a few seconds later.
    KillPartitionLeader,
    /// SIGSTOP a broker longer than its KRaft session (9 s), then SIGCONT.
    PauseBroker,
    /// Restart every broker, one after another, each once the previous one is back in sync.
    RollingRestart,
    /// Cut a broker off the network (its ports, and what it sends) for some seconds.
    IsolateBroker,
    /// Restart the schema registry (its schemas live in Kafka).
    RestartRegistry,
    /// Terminate every connection of a service to its database.
    KillDatabaseConnections,
    /// Re-produce a random sample of records already on the topics.
    Duplicates,
    /// Produce poison records: random bytes, an unknown schema id, valid Avro with invalid content.
    Poison,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 10] = [
        FaultKind::KillService,
        FaultKind::PauseService,
        FaultKind::KillPartitionLeader,
        FaultKind::PauseBroker,
        FaultKind::RollingRestart,
        FaultKind::IsolateBroker,
        FaultKind::RestartRegistry,
        FaultKind::KillDatabaseConnections,
        FaultKind::Duplicates,
        FaultKind::Poison,
    ];

    /// Name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::KillService => "kill_service",
            FaultKind::PauseService => "pause_service",
            FaultKind::KillPartitionLeader => "kill_partition_leader",
            FaultKind::PauseBroker => "pause_broker",
            FaultKind::RollingRestart => "rolling_restart",
            FaultKind::IsolateBroker => "isolate_broker",
            FaultKind::RestartRegistry => "restart_registry",
            FaultKind::KillDatabaseConnections => "kill_database_connections",
            FaultKind::Duplicates => "duplicates",
            FaultKind::Poison => "poison",
        }
    }

    /// Whether the kind needs the Kafka cluster and registry the harness started itself (it
    /// signals their processes or firewalls their ports).
    pub fn needs_own_cluster(self) -> bool {
        matches!(
            self,
            FaultKind::KillPartitionLeader
                | FaultKind::PauseBroker
                | FaultKind::RollingRestart
                | FaultKind::IsolateBroker
                | FaultKind::RestartRegistry
        )
    }
}

/// One fault at a point of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledFault {
    /// When, from the start of the load.
    pub at: Duration,
    /// What.
    pub kind: FaultKind,
    /// What it targets: a service, a Kafka node (`kafka-<id>`), a topic (base name), or what the
    /// executor picks when the time comes.
    pub target: String,
    /// How long the target stays down, paused or cut off, in milliseconds; the sample size for
    /// duplicates.
    pub amount: u64,
}

/// Plans the faults of a load lasting `load_duration` on a cluster of `kafka_nodes` nodes and
/// `instances` instances of every service (a kill or a pause hits one instance): every
/// kind in `kinds` once at a random point between 10% and 80% of the load, then, if `interval` is
/// set, a random kind every `interval`. The same seed gives the same schedule.
pub fn schedule(
    seed: u64,
    kinds: &[FaultKind],
    load_duration: Duration,
    interval: Option<Duration>,
    kafka_nodes: usize,
    instances: usize,
) -> Vec<ScheduledFault> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_fa17);
    let mut faults = Vec::new();
    if kinds.is_empty() {
        return faults;
    }
    let window = load_duration.as_millis().max(1000) as u64;
    for kind in kinds {
        let at = Duration::from_millis(rng.gen_range(window / 10..=window * 8 / 10));
        faults.push(fault(&mut rng, *kind, at, kafka_nodes, instances));
    }
    if let Some(interval) = interval.filter(|i| !i.is_zero()) {
        let mut at = interval;
        while at < load_duration {
            let kind = kinds[rng.gen_range(0..kinds.len())];
            faults.push(fault(&mut rng, kind, at, kafka_nodes, instances));
            at += interval;
        }
    }
    faults.sort_by_key(|f| f.at);
    faults
}

/// The topics the services consume, which duplicates and poison records are aimed at.
const CONSUMED_TOPICS: [Topic; 3] = [Topic::Orders, Topic::Payments, Topic::Inventory];

fn fault(rng: &mut StdRng, kind: FaultKind, at: Duration, kafka_nodes: usize, instances: usize) -> ScheduledFault {
    let service = SERVICES[rng.gen_range(0..SERVICES.len())];
    // One instance of the service (drawn only when there are several: one instance keeps the
    // schedules of earlier runs).
    let instance = if instances > 1 {
        instance_name(service, rng.gen_range(1..=instances))
    } else {
        service.to_string()
    };
    let service = service.to_string();
    // Only topics a service consumes: a duplicate or a poison record nobody reads tests nothing,
    // and a poison record on the notifications topic could never be dead-lettered.
    let topic = CONSUMED_TOPICS[rng.gen_range(0..CONSUMED_TOPICS.len())]
        .base_name()
        .to_string();
    let node = format!("kafka-{}", rng.gen_range(1..=kafka_nodes.max(1)));
    let (target, amount) = match kind {
        FaultKind::KillService => (instance, rng.gen_range(500..4_000)),
        // longer than the 6 s session timeout: the paused member loses its partitions
        FaultKind::PauseService => (instance, rng.gen_range(8_000..10_000)),
        FaultKind::KillPartitionLeader => ("busiest partition leader".to_string(), rng.gen_range(2_000..6_000)),
        // longer than KRaft's broker.session.timeout.ms (9 s): the controller fences the broker
        FaultKind::PauseBroker => (node, rng.gen_range(12_000..15_000)),
        FaultKind::RollingRestart => ("every node".to_string(), 0),
        FaultKind::IsolateBroker => (node, rng.gen_range(10_000..15_000)),
        FaultKind::RestartRegistry => ("schema-registry".to_string(), rng.gen_range(500..3_000)),
        FaultKind::KillDatabaseConnections => (service, 0),
        FaultKind::Duplicates => (topic, rng.gen_range(5..30)),
        FaultKind::Poison => (topic, 0),
    };
    ScheduledFault {
        at,
        kind,
        target,
        amount,
    }
}

/// The node id of a `kafka-<id>` target.
fn node_id(target: &str) -> anyhow::Result<i32> {
    target
        .strip_prefix("kafka-")
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{target} is not a Kafka node"))
}

/// What the executor did, for the report and the invariant checks.
#[derive(Debug, Default, Clone)]
pub struct FaultLog {
    /// Faults carried out, by kind.
    pub counts: BTreeMap<String, usize>,
    /// One line per fault.
    pub lines: Vec<String>,
    /// Every poison record produced.
    pub poison: Vec<InjectedPoison>,
    /// SIGKILLs carried out, by service.
    pub kills: BTreeMap<String, usize>,
}

/// Carries out a schedule against the cluster.
pub struct FaultExecutor {
    /// The processes.
    pub cluster: Arc<Mutex<Cluster>>,
    /// Producer on the cluster.
    pub producer: FutureProducer,
    /// Codec on the cluster's registry.
    pub codec: Arc<EventCodec>,
    /// Randomness for poison bytes and duplicate samples.
    pub rng: StdRng,
    /// What happened so far.
    pub log: Arc<Mutex<FaultLog>>,
    kafka: saga_common::config::KafkaConfig,
    firewall_table: String,
}

impl FaultExecutor {
    /// An executor for `cluster`, seeded from `seed`.
    pub async fn new(cluster: Arc<Mutex<Cluster>>, seed: u64) -> anyhow::Result<Self> {
        let (kafka, registry, run_id) = {
            let cluster = cluster.lock().await;
            (
                cluster.kafka(),
                cluster.registry_config(),
                cluster.config.run_id.clone(),
            )
        };
        Ok(Self {
            producer: kafka::producer(&kafka)?,
            codec: Arc::new(EventCodec::new(&registry, &kafka)?),
            cluster,
            rng: StdRng::seed_from_u64(seed ^ 0x0bad_cafe),
            log: Arc::new(Mutex::new(FaultLog::default())),
            kafka,
            firewall_table: format!("saga_harness_{run_id}"),
        })
    }

    /// Runs the schedule, each fault at its time from `started` (or at once if the faults before
    /// it ran late). A fault that fails is logged and the schedule goes on.
    pub async fn run(&mut self, schedule: Vec<ScheduledFault>, started: Instant) {
        for fault in schedule {
            tokio::time::sleep_until(started + fault.at).await;
            let began = started.elapsed().as_secs_f64();
            let outcome = self.inject(&fault).await;
            let line = match &outcome {
                Ok(detail) => format!("{began:>7.1}s {} {}: {detail}", fault.kind.as_str(), fault.target),
                Err(error) => format!(
                    "{began:>7.1}s {} {}: FAILED {error:#}",
                    fault.kind.as_str(),
                    fault.target
                ),
            };
            tracing::info!("{line}");
            let mut log = self.log.lock().await;
            if outcome.is_ok() {
                *log.counts.entry(fault.kind.as_str().to_string()).or_default() += 1;
            }
            log.lines.push(line);
        }
    }

    async fn inject(&mut self, fault: &ScheduledFault) -> anyhow::Result<String> {
        let amount = Duration::from_millis(fault.amount);
        match fault.kind {
            FaultKind::KillService => {
                let mut cluster = self.cluster.lock().await;
                if let Some(process) = cluster.services.get_mut(&fault.target) {
                    process.kill().await?;
                    *self.log.lock().await.kills.entry(fault.target.clone()).or_default() += 1;
                }
                drop(cluster);
                tokio::time::sleep(amount).await;
                self.cluster.lock().await.start_service(&fault.target)?;
                Ok(format!("killed, restarted after {amount:?}"))
            }
            FaultKind::PauseService => {
                if let Some(process) = self.cluster.lock().await.services.get(&fault.target) {
                    process.pause().await?;
                }
                tokio::time::sleep(amount).await;
                if let Some(process) = self.cluster.lock().await.services.get(&fault.target) {
                    process.resume().await?;
                }
                Ok(format!("paused for {amount:?}"))
            }
            FaultKind::KillPartitionLeader => self.kill_partition_leader(amount).await,
            FaultKind::PauseBroker => self.pause_broker(node_id(&fault.target)?, amount).await,
            FaultKind::RollingRestart => self.rolling_restart().await,
            FaultKind::IsolateBroker => self.isolate_broker(node_id(&fault.target)?, amount).await,
            FaultKind::RestartRegistry => {
                let mut cluster = self.cluster.lock().await;
                let registry = cluster
                    .registry
                    .as_mut()
                    .ok_or_else(|| anyhow::anyhow!("the harness did not start the registry"))?;
                registry.terminate(Duration::from_secs(10)).await?;
                drop(cluster);
                tokio::time::sleep(amount).await;
                // Not waiting for it to answer: it comes up once Kafka can serve.
                if let Some(registry) = self.cluster.lock().await.registry.as_mut() {
                    registry.start()?;
                }
                Ok(format!("restarted after {amount:?} down"))
            }
            FaultKind::KillDatabaseConnections => {
                let url = self.cluster.lock().await.databases[&fault.target].clone();
                let name = url.rsplit('/').next().unwrap_or_default().to_string();
                let server = url.trim_end_matches(&name).trim_end_matches('/').to_string();
                let pool = sqlx::PgPool::connect(&format!("{server}/postgres")).await?;
                let terminated: Vec<bool> = sqlx::query_scalar(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                )
                .bind(&name)
                .fetch_all(&pool)
                .await?;
                pool.close().await;
                Ok(format!("terminated {} connections", terminated.len()))
            }
            FaultKind::Duplicates => self.duplicate(&fault.target, fault.amount as usize).await,
            FaultKind::Poison => self.poison(&fault.target).await,
        }
    }

    /// Waits until node `id` answers on its own port and the cluster's metadata lists it again
    /// (a node killed a moment ago is still listed until its session expires, so the listing
    /// alone proves nothing); returns how long that took.
    async fn wait_back(&self, id: i32) -> anyhow::Result<Duration> {
        let since = Instant::now();
        let address = self.cluster.lock().await.node_mut(id)?.address();
        let itself = saga_common::config::KafkaConfig::new(address);
        wait_for_brokers(&itself, &[id], NODE_START_TIMEOUT).await?;
        wait_for_brokers(&self.kafka, &[id], NODE_START_TIMEOUT).await?;
        Ok(since.elapsed())
    }

    /// Whether node `id` drops out of the metadata (is fenced) within `within`.
    async fn fenced_within(&self, id: i32, within: Duration) -> Option<Duration> {
        let since = Instant::now();
        while since.elapsed() < within {
            if let Ok(listed) = listed_brokers(&self.kafka, Duration::from_secs(2)).await {
                if !listed.contains(&id) {
                    return Some(since.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        None
    }

    async fn kill_partition_leader(&mut self, down: Duration) -> anyhow::Result<String> {
        let topics: Vec<String> = Topic::ALL.iter().map(|topic| self.kafka.topic(*topic)).collect();
        let partitions = partitions(&self.kafka, Duration::from_secs(10)).await?;
        let total = partitions.iter().filter(|p| topics.contains(&p.topic)).count();
        let (id, led) = busiest_leader(&partitions, &topics)
            .ok_or_else(|| anyhow::anyhow!("no saga-topic partition has a leader"))?;
        self.cluster.lock().await.node_mut(id)?.process.kill().await?;
        tokio::time::sleep(down).await;
        self.cluster.lock().await.node_mut(id)?.process.start()?;
        let back = self.wait_back(id).await?;
        Ok(format!(
            "kafka-{id} led {led} of {total} saga partitions; SIGKILLed, restarted after {down:?}, in the metadata again {:.1} s later",
            back.as_secs_f64()
        ))
    }

    async fn pause_broker(&mut self, id: i32, pause: Duration) -> anyhow::Result<String> {
        let paused_at = Instant::now();
        self.cluster.lock().await.node_mut(id)?.process.pause().await?;
        // Resumes the node whatever happens while it is paused.
        let fenced = self.fenced_within(id, pause).await;
        tokio::time::sleep(pause.saturating_sub(paused_at.elapsed())).await;
        self.cluster.lock().await.node_mut(id)?.process.resume().await?;
        let back = self.wait_back(id).await?;
        Ok(format!(
            "SIGSTOP for {pause:?}; {}; in the metadata again {:.1} s after SIGCONT",
            fenced_text(fenced),
            back.as_secs_f64()
        ))
    }

    async fn rolling_restart(&mut self) -> anyhow::Result<String> {
        let ids: Vec<i32> = self
            .cluster
            .lock()
            .await
            .kafka_nodes
            .iter()
            .map(|node| node.id)
            .collect();
        let mut steps = Vec::new();
        for id in ids {
            let stopping = Instant::now();
            let exited = {
                let mut cluster = self.cluster.lock().await;
                let node = cluster.node_mut(id)?;
                let exited = node.process.terminate(NODE_SHUTDOWN_GRACE).await?;
                node.process.start()?;
                exited
            };
            let down = stopping.elapsed();
            let back = self.wait_back(id).await?;
            let lagging = wait_fully_replicated(&self.kafka, REPLICATION_CATCH_UP_TIMEOUT).await;
            steps.push(format!(
                "kafka-{id} {} after {:.1} s, back in {:.1} s, {}",
                if exited { "stopped" } else { "killed (no graceful exit)" },
                down.as_secs_f64(),
                back.as_secs_f64(),
                if lagging.is_empty() {
                    "fully replicated".to_string()
                } else {
                    format!(
                        "{} partitions still under-replicated: {}",
                        lagging.len(),
                        lagging.join(", ")
                    )
                }
            ));
        }
        Ok(steps.join("; "))
    }

    async fn isolate_broker(&mut self, id: i32, cut: Duration) -> anyhow::Result<String> {
        let rules = {
            let mut cluster = self.cluster.lock().await;
            let node = cluster.node_mut(id)?;
            IsolationRules::cut_off(
                &self.firewall_table,
                &[node.client_port, node.controller_port],
                node.cgroup.as_ref(),
            )?
        };
        let cut_at = Instant::now();
        let own_sockets = self.cluster.lock().await.node_mut(id)?.cgroup.is_some();
        let fenced = self.fenced_within(id, cut).await;
        tokio::time::sleep(cut.saturating_sub(cut_at.elapsed())).await;
        rules.lift()?;
        let back = self.wait_back(id).await?;
        Ok(format!(
            "cut off for {cut:?} (table inet {}; {}); {}; in the metadata again {:.1} s after",
            self.firewall_table,
            if own_sockets {
                "its ports and its own sockets"
            } else {
                "its ports only: no cgroup v2 for its sockets"
            },
            fenced_text(fenced),
            back.as_secs_f64()
        ))
    }

    async fn duplicate(&mut self, base_topic: &str, sample: usize) -> anyhow::Result<String> {
        let registry = self.cluster.lock().await.registry_config();
        let topic = self.kafka.prefixed(base_topic);
        let records = retry_transient("reading the topic", || async {
            TopicReader::new(&self.kafka, &registry, &topic)?
                .read_raw_to_end(Duration::from_secs(60))
                .await
        })
        .await?;
        let injected: Vec<RecordPosition> = self
            .log
            .lock()
            .await
            .poison
            .iter()
            .map(|p| p.position.clone())
            .collect();
        // Only real events are duplicated: a copy of a poison record would be a new poison record.
        let mut candidates = Vec::new();
        for record in records {
            let position = RecordPosition {
                topic: record.topic.clone(),
                partition: record.partition,
                offset: record.offset,
            };
            if !injected.contains(&position) && self.codec.decode(record.payload.as_deref()).await.is_ok() {
                candidates.push(record);
            }
        }
        let chosen: Vec<_> = candidates.choose_multiple(&mut self.rng, sample).cloned().collect();
        for record in &chosen {
            let mut headers = OwnedHeaders::new();
            for (key, value) in &record.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let mut copy = FutureRecord::to(&topic).headers(headers);
            if let Some(key) = &record.key {
                copy = copy.key(key);
            }
            if let Some(payload) = &record.payload {
                copy = copy.payload(payload);
            }
            self.producer
                .send(copy, Duration::from_secs(30))
                .await
                .map_err(|(error, _)| error)?;
        }
        Ok(format!("re-produced {} of {} events", chosen.len(), candidates.len()))
    }

    async fn poison(&mut self, base_topic: &str) -> anyhow::Result<String> {
        let topic = self.kafka.prefixed(base_topic);
        let key = uuid::Uuid::new_v4().to_string();
        // Not Confluent framing: the first byte is not the magic byte 0.
        let mut random_bytes = vec![0xFFu8];
        random_bytes.extend((0..self.rng.gen_range(8..64)).map(|_| self.rng.gen::<u8>()));
        // Confluent framing with a schema id the registry never issued.
        let mut unknown_schema = vec![0u8, 0x7F, 0xFF, 0xFF, 0xF0];
        unknown_schema.extend((0..16).map(|_| self.rng.gen::<u8>()));
        // The registry may be restarting (an earlier fault): wait for it before producing anything.
        let (invalid_type, invalid_value) = invalid_event(base_topic)?;
        let invalid = retry_transient("encoding the invalid event", || async {
            self.codec
                .encode_value(invalid_type, invalid_value.clone())
                .await
                .map_err(anyhow::Error::from)
        })
        .await?;
        let mut produced = Vec::new();
        for (kind, payload) in [
            ("random_bytes", random_bytes),
            ("unknown_schema_id", unknown_schema),
            ("invalid_content", invalid),
        ] {
            let record = FutureRecord::to(&topic).key(&key).payload(&payload);
            let delivery = self
                .producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(error, _)| error)?;
            let (partition, offset) = (delivery.partition, delivery.offset);
            let poison = InjectedPoison {
                kind: kind.to_string(),
                position: RecordPosition {
                    topic: topic.clone(),
                    partition,
                    offset,
                },
            };
            // Logged at once: if a later send fails, the records already produced still count.
            self.log.lock().await.poison.push(poison.clone());
            produced.push(poison);
        }
        Ok(produced
            .iter()
            .map(|p| format!("{}@{}:{}", p.kind, p.position.partition, p.position.offset))
            .collect::<Vec<_>>()
            .join(", "))
    }
}

/// Retries `attempt` for up to a minute: record faults must land even while an earlier fault
/// (a registry restart, a broker failover) is still settling.
async fn retry_transient<T, F, Fut>(what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut delay = Duration::from_millis(500);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if Instant::now() + delay < deadline => {
                tracing::warn!(error = format!("{error:#}"), "{what} failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(8));
            }
            Err(error) => return Err(error.context(format!("{what} kept failing for a minute"))),
        }
    }
}

fn fenced_text(fenced: Option<Duration>) -> String {
    match fenced {
        Some(after) => format!("out of the metadata (fenced) after {:.1} s", after.as_secs_f64()),
        None => "never out of the metadata".to_string(),
    }
}

/// Valid Avro for `topic`'s schema whose content this build cannot accept: an order id that is
/// not a UUID. Written as a raw Avro value, since the typed contracts cannot even hold it.
fn invalid_event(topic: &str) -> anyhow::Result<(EventType, Value)> {
    let order = fixtures::order_created_with(OrderId::new(), &[("H-PLENTY-A", 1)], "tok_ok");
    let event: SagaEvent = match topic {
        "payments" => fixtures::payment_succeeded(&order).into(),
        "inventory" => fixtures::inventory_reserved(&order).into(),
        _ => order.into(),
    };
    let Value::Record(mut fields) = event.to_avro_value()? else {
        anyhow::bail!("{} is not an Avro record", event.event_type());
    };
    for (name, value) in &mut fields {
        if name == "order_id" {
            *value = Value::String(format!("poison-{}", &event.event_id().to_string()[..8]));
        }
    }
    Ok((event.event_type(), Value::Record(fields)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_poison_records_go_only_to_topics_a_service_consumes() {
        let kinds = [FaultKind::Duplicates, FaultKind::Poison];
        let targets: std::collections::BTreeSet<String> = (0..200)
            .flat_map(|seed| {
                schedule(
                    seed,
                    &kinds,
                    Duration::from_secs(60),
                    Some(Duration::from_secs(5)),
                    3,
                    1,
                )
            })
            .map(|fault| fault.target)
            .collect();
        let expected: std::collections::BTreeSet<String> = ["orders", "payments", "inventory"].map(String::from).into();
        assert_eq!(targets, expected);
    }

    #[test]
    fn every_enabled_kind_is_scheduled_at_least_once_inside_the_load() {
        let load = Duration::from_secs(60);
        let faults = schedule(5, &FaultKind::ALL, load, None, 3, 1);
        for kind in FaultKind::ALL {
            assert!(faults.iter().any(|f| f.kind == kind), "{kind:?} missing");
        }
        assert!(faults.iter().all(|f| f.at >= load / 10 && f.at <= load * 8 / 10));
        assert!(faults.windows(2).all(|w| w[0].at <= w[1].at), "sorted by time");
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let plan = |seed| {
            schedule(
                seed,
                &FaultKind::ALL,
                Duration::from_secs(60),
                Some(Duration::from_secs(5)),
                3,
                1,
            )
        };
        assert_eq!(plan(5), plan(5));
        assert_ne!(plan(5), plan(6));
    }

    #[test]
    fn an_interval_adds_faults_every_few_seconds() {
        let faults = schedule(
            5,
            &[FaultKind::KillService],
            Duration::from_secs(60),
            Some(Duration::from_secs(5)),
            3,
            1,
        );
        assert_eq!(faults.len(), 1 + 11);
    }

    #[test]
    fn pauses_outlast_the_session_timeouts() {
        let faults = schedule(
            8,
            &[FaultKind::PauseService, FaultKind::PauseBroker],
            Duration::from_secs(600),
            Some(Duration::from_secs(3)),
            3,
            1,
        );
        for fault in &faults {
            match fault.kind {
                // the services' consumer session timeout is 6 s
                FaultKind::PauseService => assert!(fault.amount > 6_000, "{fault:?}"),
                // KRaft's broker.session.timeout.ms is 9 s
                _ => assert!(fault.amount >= 12_000, "{fault:?}"),
            }
        }
    }

    #[test]
    fn with_two_instances_kills_and_pauses_hit_either_and_connection_kills_the_service_database() {
        let faults = schedule(
            4,
            &[
                FaultKind::KillService,
                FaultKind::PauseService,
                FaultKind::KillDatabaseConnections,
            ],
            Duration::from_secs(600),
            Some(Duration::from_secs(2)),
            3,
            2,
        );
        let targets = |kind| -> std::collections::BTreeSet<&str> {
            faults
                .iter()
                .filter(|f| f.kind == kind)
                .map(|f| f.target.as_str())
                .collect()
        };
        let every_instance: std::collections::BTreeSet<&str> = [
            "order-service",
            "order-service-2",
            "payment-service",
            "payment-service-2",
            "inventory-service",
            "inventory-service-2",
            "notification-service",
            "notification-service-2",
        ]
        .into();
        assert_eq!(targets(FaultKind::KillService), every_instance);
        assert_eq!(targets(FaultKind::PauseService), every_instance);
        assert_eq!(targets(FaultKind::KillDatabaseConnections), SERVICES.into());
    }

    #[test]
    fn broker_faults_target_nodes_of_the_cluster() {
        let faults = schedule(
            9,
            &[FaultKind::PauseBroker, FaultKind::IsolateBroker],
            Duration::from_secs(600),
            Some(Duration::from_secs(2)),
            3,
            1,
        );
        let ids: std::collections::BTreeSet<i32> = faults.iter().map(|f| node_id(&f.target).unwrap()).collect();
        assert_eq!(ids, [1, 2, 3].into_iter().collect());
    }

    #[test]
    fn broker_and_registry_faults_need_the_harness_s_own_cluster() {
        let own: Vec<&str> = FaultKind::ALL
            .iter()
            .filter(|kind| kind.needs_own_cluster())
            .map(|kind| kind.as_str())
            .collect();
        assert_eq!(
            own,
            [
                "kill_partition_leader",
                "pause_broker",
                "rolling_restart",
                "isolate_broker",
                "restart_registry"
            ]
        );
    }
}
