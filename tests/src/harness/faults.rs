//! Fault injection: a schedule derived from the seed (every enabled kind at least once, plus
//! optional faults at a fixed interval for long runs) and the executor that carries it out
//! against the cluster while the load runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use saga_common::codec::EventCodec;
use saga_common::kafka;
use saga_contracts::{InventoryReserved, OrderCreated, OrderLine, PaymentSucceeded, SagaEvent, StockLine, Topic};
use tokio::sync::Mutex;

use super::cluster::{Cluster, SERVICES};
use super::group_repair::repair_stored_groups;
use super::observe::{consumed_topics, group_position};
use super::state::{InjectedPoison, RecordPosition};
use crate::TopicReader;

/// The kinds of fault the harness injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum FaultKind {
    /// SIGKILL a service, restart it after a random delay.
    KillService,
    /// SIGSTOP a service longer than its session timeout, then SIGCONT.
    PauseService,
    /// Restart the broker (durable storage survives).
    RestartBroker,
    /// Restart the schema registry (its schemas live in the broker).
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
    pub const ALL: [FaultKind; 7] = [
        FaultKind::KillService,
        FaultKind::PauseService,
        FaultKind::RestartBroker,
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
            FaultKind::RestartBroker => "restart_broker",
            FaultKind::RestartRegistry => "restart_registry",
            FaultKind::KillDatabaseConnections => "kill_database_connections",
            FaultKind::Duplicates => "duplicates",
            FaultKind::Poison => "poison",
        }
    }
}

/// One fault at a point of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledFault {
    /// When, from the start of the load.
    pub at: Duration,
    /// What.
    pub kind: FaultKind,
    /// The service it targets (for service and database faults) or the topic (for records).
    pub target: String,
    /// How long the target stays down or paused, in milliseconds; the sample size for duplicates.
    pub amount: u64,
}

/// Plans the faults of a load lasting `load_duration`: every kind in `kinds` once at a random
/// point between 10% and 80% of the load, then, if `interval` is set, a random kind every
/// `interval`. The same seed gives the same schedule.
pub fn schedule(
    seed: u64,
    kinds: &[FaultKind],
    load_duration: Duration,
    interval: Option<Duration>,
) -> Vec<ScheduledFault> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_fa17);
    let mut faults = Vec::new();
    if kinds.is_empty() {
        return faults;
    }
    let window = load_duration.as_millis().max(1000) as u64;
    for kind in kinds {
        let at = Duration::from_millis(rng.gen_range(window / 10..=window * 8 / 10));
        faults.push(fault(&mut rng, *kind, at));
    }
    if let Some(interval) = interval.filter(|i| !i.is_zero()) {
        let mut at = interval;
        while at < load_duration {
            let kind = kinds[rng.gen_range(0..kinds.len())];
            faults.push(fault(&mut rng, kind, at));
            at += interval;
        }
    }
    faults.sort_by_key(|f| f.at);
    faults
}

fn fault(rng: &mut StdRng, kind: FaultKind, at: Duration) -> ScheduledFault {
    let service = SERVICES[rng.gen_range(0..SERVICES.len())].to_string();
    let topic = [Topic::Orders, Topic::Payments, Topic::Inventory][rng.gen_range(0..3)]
        .base_name()
        .to_string();
    let (target, amount) = match kind {
        FaultKind::KillService => (service, rng.gen_range(500..4_000)),
        // longer than the 6 s session timeout: the paused member loses its partitions
        FaultKind::PauseService => (service, rng.gen_range(8_000..10_000)),
        FaultKind::RestartBroker => ("broker".to_string(), rng.gen_range(500..3_000)),
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
    /// Producer on the cluster's broker.
    pub producer: FutureProducer,
    /// Codec on the cluster's registry.
    pub codec: Arc<EventCodec>,
    /// Randomness for poison bytes and duplicate samples.
    pub rng: StdRng,
    /// What happened so far.
    pub log: Arc<Mutex<FaultLog>>,
}

impl FaultExecutor {
    /// An executor for `cluster`, seeded from `seed`.
    pub async fn new(cluster: Arc<Mutex<Cluster>>, seed: u64) -> anyhow::Result<Self> {
        let (kafka, registry) = {
            let cluster = cluster.lock().await;
            (cluster.kafka(), cluster.registry_config())
        };
        Ok(Self {
            producer: kafka::producer(&kafka)?,
            codec: Arc::new(EventCodec::new(&registry, &kafka)?),
            cluster,
            rng: StdRng::seed_from_u64(seed ^ 0x0bad_cafe),
            log: Arc::new(Mutex::new(FaultLog::default())),
        })
    }

    /// Runs the schedule, each fault at its time from `started`. A fault that fails is logged and
    /// the schedule goes on.
    pub async fn run(&mut self, schedule: Vec<ScheduledFault>, started: tokio::time::Instant) {
        for fault in schedule {
            tokio::time::sleep_until(started + fault.at).await;
            let outcome = self.inject(&fault).await;
            let line = match &outcome {
                Ok(detail) => format!(
                    "{:>7.1}s {} {}: {detail}",
                    fault.at.as_secs_f64(),
                    fault.kind.as_str(),
                    fault.target
                ),
                Err(error) => format!(
                    "{:>7.1}s {} {}: FAILED {error:#}",
                    fault.at.as_secs_f64(),
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
            FaultKind::RestartBroker => {
                let mut cluster = self.cluster.lock().await;
                // SIGKILL, not SIGTERM: the local broker's graceful shutdown stops its storage
                // before its connections and leaves storage it cannot read after the restart;
                // a hard stop lets SQLite roll back to a consistent state, like a crash would.
                cluster.broker.kill().await?;
                tokio::time::sleep(amount).await;
                cluster.start_broker().await?;
                Ok(format!("restarted after {amount:?} down"))
            }
            FaultKind::RestartRegistry => {
                self.cluster
                    .lock()
                    .await
                    .registry
                    .terminate(Duration::from_secs(10))
                    .await?;
                tokio::time::sleep(amount).await;
                // Not waiting for it to answer while holding the cluster: it comes up once the
                // broker can serve, and the broker supervisor may need the cluster meanwhile.
                self.cluster.lock().await.registry.start()?;
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

    async fn duplicate(&mut self, topic: &str, sample: usize) -> anyhow::Result<String> {
        let (kafka, registry) = {
            let cluster = self.cluster.lock().await;
            (cluster.kafka(), cluster.registry_config())
        };
        let records = TopicReader::new(&kafka, &registry, topic)?
            .read_raw_to_end(Duration::from_secs(60))
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
            let mut copy = FutureRecord::to(topic).headers(headers);
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

    async fn poison(&mut self, topic: &str) -> anyhow::Result<String> {
        let key = uuid::Uuid::new_v4().to_string();
        // Not Confluent framing: the first byte is not the magic byte 0.
        let mut random_bytes = vec![0xFFu8];
        random_bytes.extend((0..self.rng.gen_range(8..64)).map(|_| self.rng.gen::<u8>()));
        // Confluent framing with a schema id the registry never issued.
        let mut unknown_schema = vec![0u8, 0x7F, 0xFF, 0xFF, 0xF0];
        unknown_schema.extend((0..16).map(|_| self.rng.gen::<u8>()));
        let invalid = self.codec.encode(&invalid_event(topic)).await?.payload;
        let mut produced = Vec::new();
        for (kind, payload) in [
            ("random_bytes", random_bytes),
            ("unknown_schema_id", unknown_schema),
            ("invalid_content", invalid),
        ] {
            let record = FutureRecord::to(topic).key(&key).payload(&payload);
            let delivery = self
                .producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(error, _)| error)?;
            let (partition, offset) = (delivery.partition, delivery.offset);
            produced.push(InjectedPoison {
                kind: kind.to_string(),
                position: RecordPosition {
                    topic: topic.to_string(),
                    partition,
                    offset,
                },
            });
        }
        let summary = produced
            .iter()
            .map(|p| format!("{}@{}:{}", p.kind, p.position.partition, p.position.offset))
            .collect::<Vec<_>>()
            .join(", ");
        self.log.lock().await.poison.extend(produced);
        Ok(summary)
    }
}

/// What the broker supervisor did, for the report.
#[derive(Debug, Default, Clone)]
pub struct SupervisorLog {
    /// Restarts because the broker ran but did not answer.
    pub unresponsive_restarts: usize,
    /// Restarts because a consumer group stopped making progress, one line each.
    pub stuck_group_restarts: Vec<String>,
    /// Groups whose stored state was repaired during a restart (see [`super::group_repair`]).
    pub repaired_groups: Vec<String>,
}

/// A broker that has not answered a metadata probe for this long is broken, not just slow.
const BROKER_SILENCE_LIMIT: Duration = Duration::from_secs(30);
/// A consumer group with lag whose committed offsets have not moved for this long is stuck
/// (longer than a pause, a restart and a rebalance together).
const GROUP_STALL_LIMIT: Duration = Duration::from_secs(30);
/// How often the groups' progress is checked.
const GROUP_CHECK_INTERVAL: Duration = Duration::from_secs(15);

/// Watches the local broker like liveness probes would and restarts it (SIGKILL, same storage)
/// when it runs but has not answered for 30 s, or when a service's consumer group has had
/// records to read and committed nothing for 30 s. While it is stopped, groups led by a member
/// that is no longer in them, and the stuck groups, are put back to forming
/// ([`super::group_repair`]).
///
/// Both are faults of the local broker (Tansu 0.6.0), not of the services: its group coordinator
/// can keep a member that left the group as the group's leader, and then no member ever gets an
/// assignment.
pub async fn supervise_broker(
    cluster: Arc<Mutex<Cluster>>,
    stop: tokio_util::sync::CancellationToken,
) -> SupervisorLog {
    let mut log = SupervisorLog::default();
    let mut silent_since: Option<tokio::time::Instant> = None;
    // per service: its group's committed offsets when last seen moving, and since when
    let mut progress: BTreeMap<String, (i64, tokio::time::Instant)> = BTreeMap::new();
    let mut last_group_check = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return log,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let (address, running, kafka, services) = {
            let mut cluster = cluster.lock().await;
            let services: Vec<String> = cluster.services.keys().cloned().collect();
            (
                cluster.broker_address.clone(),
                cluster.broker.is_running(),
                cluster.kafka(),
                services,
            )
        };
        if !running {
            silent_since = None;
            continue;
        }
        if !Cluster::broker_answers(&address, Duration::from_secs(10)).await {
            let since = *silent_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= BROKER_SILENCE_LIMIT {
                tracing::warn!("the broker runs but does not answer; restarting it");
                if restart_broker(&cluster, &[], &mut log).await {
                    log.unresponsive_restarts += 1;
                }
                silent_since = None;
                progress.clear();
            }
            continue;
        }
        silent_since = None;
        if last_group_check.elapsed() < GROUP_CHECK_INTERVAL {
            continue;
        }
        last_group_check = tokio::time::Instant::now();
        let mut stuck = Vec::new();
        for service in services {
            let Ok(position) = group_position(&kafka, &service, &consumed_topics(&service)).await else {
                continue;
            };
            let now = tokio::time::Instant::now();
            let seen = progress.entry(service.clone()).or_insert((position.committed, now));
            if position.lag == 0 || position.committed != seen.0 {
                *seen = (position.committed, now);
            } else if seen.1.elapsed() >= GROUP_STALL_LIMIT {
                let line = format!(
                    "{service} (lag {}, nothing committed for {} s)",
                    position.lag,
                    seen.1.elapsed().as_secs()
                );
                stuck.push((service.clone(), line));
            }
        }
        if !stuck.is_empty() {
            tracing::warn!(?stuck, "consumer groups make no progress; restarting the broker");
            let groups: Vec<String> = stuck.iter().map(|(group, _)| group.clone()).collect();
            if restart_broker(&cluster, &groups, &mut log).await {
                let lines: Vec<String> = stuck.into_iter().map(|(_, line)| line).collect();
                log.stuck_group_restarts.push(lines.join(", "));
            }
            progress.clear();
        }
    }
}

/// Stops the broker, repairs its stored groups (forcing those in `stuck`), starts it again.
async fn restart_broker(cluster: &Mutex<Cluster>, stuck: &[String], log: &mut SupervisorLog) -> bool {
    let mut cluster = cluster.lock().await;
    if cluster.broker.kill().await.is_err() {
        return false;
    }
    match repair_stored_groups(&cluster.broker_storage(), stuck) {
        Ok(groups) => log.repaired_groups.extend(groups),
        Err(error) => tracing::warn!(error = format!("{error:#}"), "could not repair the broker's groups"),
    }
    cluster.start_broker().await.is_ok()
}

/// Valid Avro for `topic` whose content no consumer can process: an order id that is not a UUID.
fn invalid_event(topic: &str) -> SagaEvent {
    let event_id = uuid::Uuid::new_v4().to_string();
    let order_id = format!("poison-{}", &event_id[..8]);
    let occurred_at = chrono::Utc::now().timestamp_millis();
    match topic {
        "payments" => SagaEvent::PaymentSucceeded(PaymentSucceeded {
            event_id,
            order_id,
            causation_id: None,
            occurred_at,
            payment_id: uuid::Uuid::new_v4().to_string(),
            amount_minor: 100,
            currency: "EUR".into(),
        }),
        "inventory" => SagaEvent::InventoryReserved(InventoryReserved {
            event_id,
            order_id,
            causation_id: None,
            occurred_at,
            items: vec![StockLine {
                sku: "H-PLENTY-A".into(),
                quantity: 1,
            }],
        }),
        _ => SagaEvent::OrderCreated(OrderCreated {
            event_id,
            order_id,
            causation_id: None,
            occurred_at,
            customer_id: "poison".into(),
            customer_email: "poison@harness.example.com".into(),
            payment_token: "tok_ok".into(),
            total_minor: 100,
            currency: "EUR".into(),
            items: vec![OrderLine {
                sku: "H-PLENTY-A".into(),
                quantity: 1,
                unit_price_minor: 100,
            }],
            sales_channel: "api".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_enabled_kind_is_scheduled_at_least_once_inside_the_load() {
        let load = Duration::from_secs(60);
        let faults = schedule(5, &FaultKind::ALL, load, None);
        for kind in FaultKind::ALL {
            assert!(faults.iter().any(|f| f.kind == kind), "{kind:?} missing");
        }
        assert!(faults.iter().all(|f| f.at >= load / 10 && f.at <= load * 8 / 10));
        assert!(faults.windows(2).all(|w| w[0].at <= w[1].at), "sorted by time");
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let a = schedule(
            5,
            &FaultKind::ALL,
            Duration::from_secs(60),
            Some(Duration::from_secs(5)),
        );
        assert_eq!(
            a,
            schedule(
                5,
                &FaultKind::ALL,
                Duration::from_secs(60),
                Some(Duration::from_secs(5))
            )
        );
        assert_ne!(
            a,
            schedule(
                6,
                &FaultKind::ALL,
                Duration::from_secs(60),
                Some(Duration::from_secs(5))
            )
        );
    }

    #[test]
    fn an_interval_adds_faults_every_few_seconds() {
        let faults = schedule(
            5,
            &[FaultKind::KillService],
            Duration::from_secs(60),
            Some(Duration::from_secs(5)),
        );
        assert_eq!(faults.len(), 1 + 11);
    }

    #[test]
    fn pauses_outlast_the_session_timeout() {
        let faults = schedule(
            8,
            &[FaultKind::PauseService],
            Duration::from_secs(600),
            Some(Duration::from_secs(3)),
        );
        assert!(faults.iter().all(|f| f.amount > 6_000));
    }
}
