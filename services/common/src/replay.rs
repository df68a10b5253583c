//! Replay: rebuilding a service's state from its topics into an empty database, with the same
//! domain code the live service runs and none of its side effects.
//!
//! A service takes part by implementing [`Rebuild`]. The runner ([`run`]) migrates the target,
//! takes the topics' end offsets when it starts, reads every record up to them, and for each
//! event: records it in the inbox (for the topics the live service consumes, so the rebuilt
//! inbox deduplicates like the live one), hands it to [`Rebuild::apply`] in a transaction that
//! also stores the replay's progress, and compares the decisions the service re-ran with the
//! ones recorded on the topics. No producer, SMTP transport or payment gateway exists in replay
//! mode: [`Rebuild::apply`] gets a database transaction and nothing else.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::Consumer;
use rdkafka::{Message, Offset, TopicPartitionList};
use saga_contracts::{EventId, EventType, OrderId, SagaEvent, Topic};
use serde_json::Value;
use sqlx::migrate::Migrator;
use sqlx::{Acquire, PgConnection, PgPool};

use crate::codec::{DecodeError, EventCodec, TRACEPARENT_HEADER};
use crate::config::{KafkaConfig, RegistryConfig};
use crate::consumer::{header_value, ConsumedEvent, HandlerError};
use crate::error::{Classify, ErrorClass};
use crate::retry::ErrorPolicy;
use crate::service::ServiceSpec;
use crate::{database, inbox, kafka, Error, Result};

/// What a service's rebuild reads, re-runs and compares.
#[derive(Debug)]
pub struct Rebuilding {
    /// The service (its name names the dead-letter topic, its default database the target).
    pub service: ServiceSpec,
    /// The service's own migrations, as the live service runs them (the shared ones run first).
    pub migrations: &'static Migrator,
    /// The topics the live service consumes: their events go through the inbox, as live.
    pub consumes: &'static [Topic],
    /// Further topics replay reads: the service's own events, which carry the facts that came
    /// from the outside world (gateway results, sent emails) and the decisions it recorded.
    pub records_on: &'static [Topic],
    /// The event types this service emits by decisions replay re-runs (the order saga's
    /// confirmed/failed, inventory's reserved/reservation_failed, ...). For these, what
    /// [`Rebuild::apply`] returns is compared with what the topics recorded.
    pub decisions: &'static [EventType],
    /// The business tables `sagactl verify` compares between the live and a rebuilt database.
    pub tables: &'static [VerifiedTable],
}

/// A service whose state can be rebuilt from its topics.
#[async_trait]
pub trait Rebuild: Send + Sync {
    /// What the rebuild reads, re-runs and compares.
    fn rebuilding(&self) -> &'static Rebuilding;

    /// Applies one event to the state in `tx`, with the live service's domain and store code,
    /// and returns the events the live service would have emitted for it (never published:
    /// only compared with the recorded ones). Called for the events of the consumed topics
    /// after the inbox took them (a duplicate is not applied), and for every event of the
    /// service's own topics: the service applies the facts among them (a gateway's outcome, an
    /// email sent, a decision no event caused, like a deadline) and ignores the rest.
    async fn apply(&self, tx: &mut PgConnection, event: &ConsumedEvent) -> Result<Vec<SagaEvent>, HandlerError>;

    /// The service.
    fn spec(&self) -> ServiceSpec {
        self.rebuilding().service
    }

    /// The service's migrations.
    fn migrations(&self) -> &'static Migrator {
        self.rebuilding().migrations
    }

    /// The topics the live service consumes.
    fn consumes(&self) -> &'static [Topic] {
        self.rebuilding().consumes
    }

    /// The service's own topics.
    fn records_on(&self) -> &'static [Topic] {
        self.rebuilding().records_on
    }

    /// The event types of the decisions replay re-runs.
    fn decisions(&self) -> &'static [EventType] {
        self.rebuilding().decisions
    }

    /// The business tables verify compares.
    fn tables(&self) -> &'static [VerifiedTable] {
        self.rebuilding().tables
    }
}

/// A business table as verify compares it: row by row by `key`, every column but `ignored`.
#[derive(Debug, Clone, Copy)]
pub struct VerifiedTable {
    /// The table's name.
    pub name: &'static str,
    /// The columns that identify a row.
    pub key: &'static [&'static str],
    /// Bookkeeping columns that legitimately differ between the live and a rebuilt database
    /// (processing timestamps, attempt counters of the live machinery); documented for
    /// operators in docs/replay.md.
    pub ignored: &'static [&'static str],
}

/// How a replay runs.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Events applied per transaction (the progress is stored with each).
    pub batch_size: usize,
    /// Only events that occurred up to this time (Unix milliseconds); later ones are read and
    /// passed over.
    pub until_millis: Option<i64>,
    /// Only the events of this order (events of no order, stock adjustments, are kept).
    pub order_id: Option<OrderId>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            until_millis: None,
            order_id: None,
        }
    }
}

/// Where a replay stands, as it reports it while it runs.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Records read so far (this run and, when resumed, earlier ones).
    pub done: u64,
    /// Records up to the end offsets.
    pub total: u64,
    /// Per topic: (done, total).
    pub per_topic: BTreeMap<String, (u64, u64)>,
    /// Records per second in this run.
    pub rate: f64,
    /// Time left at that rate.
    pub eta: Option<Duration>,
}

/// What a replay did.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    /// Whether it went on from an earlier, interrupted replay.
    pub resumed: bool,
    /// Records read in this run.
    pub read: u64,
    /// Events applied.
    pub applied: u64,
    /// Events the inbox had seen already (duplicates on the topic), not applied again.
    pub duplicates: u64,
    /// Events passed over by `--until` or `--order-id`.
    pub filtered: u64,
    /// Findings: mismatches between re-run and recorded decisions, events that could not be
    /// applied or decoded (all also in the target's `replay_findings` table).
    pub findings: Vec<Finding>,
    /// Re-run decisions that no recorded event confirmed (their record lies past the end
    /// offsets, or the live service never made them).
    pub unconfirmed: u64,
    /// How long this run took.
    pub elapsed: Duration,
    /// Records read per topic in this run.
    pub per_topic: BTreeMap<String, u64>,
}

impl ReplayReport {
    /// Events per second of this run.
    pub fn rate(&self) -> f64 {
        self.read as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Something a replay found different from the record, or could not apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// `mismatch` (a re-run decision differs from the recorded one), `unrecorded` (a recorded
    /// decision the replay did not make), `not_applied` (the service refused the event for
    /// good, as the live one dead-letters it) or `undecodable`.
    pub kind: &'static str,
    /// Where the record is.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its order, if it has one.
    pub order_id: Option<OrderId>,
    /// Its event type, if it decoded.
    pub event_type: Option<EventType>,
    /// The recorded event (JSON), for mismatches.
    pub recorded: Option<Value>,
    /// The re-run decision (JSON), for mismatches.
    pub replayed: Option<Value>,
    /// What is wrong.
    pub detail: String,
}

/// One record in hand, decoded or not.
struct Record {
    topic: String,
    partition: i32,
    offset: i64,
    /// Where the record goes in the merged order (see [`merge_key`]).
    merge_key: (i64, u8),
    /// For an event of the service's own topics: the consumed event that caused it.
    cause: Option<EventId>,
    traceparent: Option<String>,
    event: Result<SagaEvent, String>,
}

/// Rebuilds `rebuild`'s state into the database at `target_url` from the topics of `kafka`,
/// calling `report_progress` about once a second. See the module documentation.
pub async fn run(
    rebuild: &dyn Rebuild,
    kafka: &KafkaConfig,
    registry: &RegistryConfig,
    target_url: &str,
    options: &ReplayOptions,
    mut report_progress: impl FnMut(&Progress),
) -> Result<ReplayReport> {
    let started = Instant::now();
    let migrator = database::migrator(rebuild.migrations());
    let database = database::connect_and_migrate(target_url, &migrator, 2).await?;
    let service = rebuild.spec().name;
    let resumed = prepare_run(&database, rebuild, options).await?;
    // The own topics' end offsets are taken first: every own event below them was caused by a
    // consumed event written earlier, so below the consumed topics' end offsets taken after.
    let topics: Vec<String> = rebuild
        .records_on()
        .iter()
        .chain(rebuild.consumes())
        .map(|topic| kafka.topic(*topic))
        .collect();
    if !resumed {
        record_end_offsets(&database, kafka, &topics).await?;
    }
    let mut positions = load_positions(&database).await?;
    let consumed_topics: Vec<String> = rebuild.consumes().iter().map(|topic| kafka.topic(*topic)).collect();
    let codec = EventCodec::new(registry, kafka)?;
    let consumer = kafka::consumer(
        kafka,
        &format!("{}replay-{}", kafka.topic_prefix, uuid::Uuid::new_v4().simple()),
    )?;
    let mut assignment = TopicPartitionList::new();
    for ((topic, partition), position) in &positions {
        if position.next < position.end {
            assignment.add_partition_offset(topic, *partition, Offset::Offset(position.next))?;
        }
    }
    consumer.assign(&assignment)?;
    let own_topics: Vec<String> = rebuild.records_on().iter().map(|topic| kafka.topic(*topic)).collect();
    let own = read_own_record(kafka, &codec, &positions, &own_topics, rebuild.decisions()).await?;
    // Events handled (applied, duplicate or filtered): an event waits for its cause.
    let mut handled: HashSet<EventId> = if resumed {
        sqlx::query_scalar::<_, uuid::Uuid>("SELECT event_id FROM inbox UNION SELECT event_id FROM replay_seen")
            .fetch_all(&database)
            .await?
            .into_iter()
            .map(EventId::from)
            .collect()
    } else {
        HashSet::new()
    };
    let mut expected = load_expected(&database).await?;
    let mut report = ReplayReport {
        resumed,
        ..ReplayReport::default()
    };
    let mut queues: BTreeMap<(String, i32), VecDeque<Record>> = BTreeMap::new();
    let mut last_progress = Instant::now();
    let run_started_done: u64 = positions.values().map(Position::done).sum();
    tracing::info!(service, resumed, topics = ?topics, "replay started");
    loop {
        // Records are applied in the order the live service took them in (see `merge_key`),
        // across partitions and topics, so a decision is re-run after the facts it depended on,
        // as live: a record is taken only when every partition not yet at its end offset has
        // one in hand.
        let open: Vec<(String, i32)> = positions
            .iter()
            .filter(|(_, position)| position.next < position.end)
            .map(|(key, _)| key.clone())
            .collect();
        if open.is_empty() {
            break;
        }
        let waiting_for = open.iter().find(|key| queues.get(*key).is_none_or(VecDeque::is_empty));
        if waiting_for.is_some() {
            let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
                .await
                .map_err(|_| Error::Config(format!("no record for a minute while replaying {topics:?}")))??;
            let event = decode_retrying(&codec, message.payload()).await;
            let timestamp = message.timestamp().to_millis().unwrap_or(0);
            let consumed = consumed_topics.iter().any(|topic| topic == message.topic());
            queues
                .entry((message.topic().to_owned(), message.partition()))
                .or_default()
                .push_back(Record {
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                    offset: message.offset(),
                    merge_key: merge_key(consumed, timestamp, event.as_ref().ok(), &own),
                    cause: event
                        .as_ref()
                        .ok()
                        .and_then(|event| cause_in_range(consumed, event, &own)),
                    traceparent: header_value(&message, TRACEPARENT_HEADER),
                    event,
                });
            continue;
        }
        let mut batch = Vec::with_capacity(options.batch_size);
        while batch.len() < options.batch_size {
            let heads: Vec<Head<'_>> = open
                .iter()
                .filter(|key| positions[*key].next + count_taken(&batch, key) < positions[*key].end)
                .filter_map(|key| {
                    queues.get(key).and_then(VecDeque::front).map(|record| Head {
                        partition: key,
                        order: (record.merge_key, record.offset),
                        cause_handled: record.cause.is_none_or(|cause| handled.contains(&cause)),
                    })
                })
                .collect();
            // An event waits until the event in the replayed range that caused it was applied,
            // and so does every later one: a waiting event holds back the records behind it in
            // its partition, which would otherwise be overtaken. Only when nothing can go on
            // that way does the earliest event whose cause was applied go, and failing that, the
            // earliest of all (its cause lies outside the range).
            let barrier = heads
                .iter()
                .filter(|head| !head.cause_handled)
                .map(|head| head.order)
                .min();
            let next = heads
                .iter()
                .filter(|head| head.cause_handled && barrier.is_none_or(|barrier| head.order <= barrier))
                .min_by_key(|head| head.order)
                .or_else(|| {
                    heads
                        .iter()
                        .filter(|head| head.cause_handled)
                        .min_by_key(|head| head.order)
                })
                .or_else(|| heads.iter().min_by_key(|head| head.order));
            let Some(next) = next else { break };
            let key: (String, i32) = next.partition.clone();
            let record = queues
                .get_mut(&key)
                .and_then(VecDeque::pop_front)
                .expect("a record in hand");
            let finished = record.offset + 1 >= positions[&key].end;
            if let Ok(event) = &record.event {
                handled.insert(event.event_id());
            }
            batch.push(record);
            if finished || queues.get(&key).is_none_or(VecDeque::is_empty) {
                break;
            }
        }
        apply_batch(
            &database,
            rebuild,
            &consumed_topics,
            options,
            &batch,
            &mut expected,
            &mut positions,
            &mut report,
        )
        .await?;
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            report_progress(&progress(&positions, run_started_done, started.elapsed()));
        }
    }
    report.unconfirmed = expected.len() as u64;
    sqlx::query("UPDATE replay_run SET finished_at = now()")
        .execute(&database)
        .await?;
    report.elapsed = started.elapsed();
    report_progress(&progress(&positions, run_started_done, report.elapsed));
    database.close().await;
    tracing::info!(
        service,
        read = report.read,
        findings = report.findings.len(),
        "replay finished"
    );
    Ok(report)
}

/// What the service's own topics tell about when the live service took its consumed events in,
/// read once before the replay applies anything.
#[derive(Debug, Default)]
struct OwnRecord {
    /// Per consumed event (by id): the timestamp of the first own event it caused.
    reactions: HashMap<EventId, i64>,
    /// Per order: the timestamp of a recorded decision no event caused (a deadline).
    uncaused_decisions: HashMap<OrderId, i64>,
    /// Every own event in the range.
    event_ids: HashSet<EventId>,
}

/// Where a record goes in the merged order, which follows the order the live service took its
/// events in as well as the topics tell it:
/// - an event of the service's own topics took effect when it was published (its record's
///   timestamp: the relay publishes right after the commit);
/// - a consumed event took effect when the service reacted to it, so at the time of the first
///   own event it caused (it sorts just before it), else at its own record's timestamp;
/// - a consumed event of an order that a decision no event caused (a deadline) decided, and
///   that caused nothing itself, arrived after that decision: live it would otherwise have
///   decided the order.
///
/// Ordering consumed events by their own timestamps instead would, for example, apply an
/// order.created before a stock adjustment the inventory service committed before it consumed
/// the order. Whatever the keys, an event is applied only after the event that caused it
/// (see `run`).
fn merge_key(consumed: bool, timestamp: i64, event: Option<&SagaEvent>, own: &OwnRecord) -> (i64, u8) {
    if !consumed {
        return (timestamp, 1);
    }
    let reacted_at = event.and_then(|event| own.reactions.get(&event.event_id())).copied();
    if let Some(reacted_at) = reacted_at {
        return (reacted_at, 0);
    }
    let decided_before = event
        .and_then(SagaEvent::order_id)
        .and_then(|order| own.uncaused_decisions.get(&order))
        .copied();
    match decided_before {
        Some(decided_at) if decided_at >= timestamp => (decided_at, 2),
        _ => (timestamp, 0),
    }
}

/// Reads the service's own topics from the beginning up to the end offsets (see [`OwnRecord`]).
async fn read_own_record(
    kafka: &KafkaConfig,
    codec: &EventCodec,
    positions: &BTreeMap<(String, i32), Position>,
    own_topics: &[String],
    decisions: &[EventType],
) -> Result<OwnRecord> {
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0;
    for ((topic, partition), position) in positions {
        if own_topics.contains(topic) && position.low < position.end {
            assignment.add_partition_offset(topic, *partition, Offset::Offset(position.low))?;
            remaining += position.end - position.low;
        }
    }
    let mut own = OwnRecord::default();
    if remaining == 0 {
        return Ok(own);
    }
    let scanner = kafka::consumer(
        kafka,
        &format!("{}replay-scan-{}", kafka.topic_prefix, uuid::Uuid::new_v4().simple()),
    )?;
    scanner.assign(&assignment)?;
    while remaining > 0 {
        let message = tokio::time::timeout(Duration::from_secs(60), scanner.recv())
            .await
            .map_err(|_| Error::Config(format!("no record for a minute while scanning {own_topics:?}")))??;
        let end = positions
            .get(&(message.topic().to_owned(), message.partition()))
            .map_or(0, |position| position.end);
        if message.offset() >= end {
            continue;
        }
        remaining -= 1;
        let timestamp = message.timestamp().to_millis().unwrap_or(0);
        let Ok(event) = decode_retrying(codec, message.payload()).await else {
            continue;
        };
        own.event_ids.insert(event.event_id());
        match (event.causation_id(), event.order_id()) {
            (Some(cause), _) => {
                let first = own.reactions.entry(cause).or_insert(timestamp);
                *first = (*first).min(timestamp);
            }
            (None, Some(order)) if decisions.contains(&event.event_type()) => {
                own.uncaused_decisions.entry(order).or_insert(timestamp);
            }
            (None, _) => {}
        }
    }
    Ok(own)
}

/// The next record of a partition, as the merge weighs it.
struct Head<'a> {
    partition: &'a (String, i32),
    order: ((i64, u8), i64),
    cause_handled: bool,
}

/// The event in the replayed range that `event` must be applied after: for an own event, the
/// consumed event that caused it (every own event below the end offsets was caused by a
/// consumed event below them, see `run`); for a consumed event, the own event that caused it
/// (an order.created the order service published, for an outcome), if that is in the range.
fn cause_in_range(consumed: bool, event: &SagaEvent, own: &OwnRecord) -> Option<EventId> {
    let cause = event.causation_id()?;
    (!consumed || own.event_ids.contains(&cause)).then_some(cause)
}

/// How many records of partition `key` the batch holds.
fn count_taken(batch: &[Record], key: &(String, i32)) -> i64 {
    batch
        .iter()
        .filter(|record| record.topic == key.0 && record.partition == key.1)
        .count() as i64
}

async fn decode_retrying(codec: &EventCodec, payload: Option<&[u8]>) -> Result<SagaEvent, String> {
    let mut attempt = 0;
    loop {
        match codec.decode(payload).await {
            Ok(event) => return Ok(event),
            Err(DecodeError::Poison(reason)) => return Err(reason),
            Err(DecodeError::Transient(reason)) => {
                attempt += 1;
                let delay = ErrorPolicy::default().backoff.delay(attempt);
                tracing::warn!(reason, attempt, "schema registry unavailable during replay; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// A partition's place in the replay.
#[derive(Debug, Clone, Copy)]
struct Position {
    low: i64,
    next: i64,
    end: i64,
}

impl Position {
    fn done(&self) -> u64 {
        u64::try_from(self.next - self.low).unwrap_or(0)
    }
    fn total(&self) -> u64 {
        u64::try_from(self.end - self.low).unwrap_or(0)
    }
}

/// Starts the run record, or finds the interrupted one to resume. A new replay needs an empty
/// target: none of the service's tables may hold a row.
async fn prepare_run(database: &PgPool, rebuild: &dyn Rebuild, options: &ReplayOptions) -> Result<bool> {
    let service = rebuild.spec().name;
    let earlier: Option<(String, Option<i64>, Option<uuid::Uuid>, bool)> =
        sqlx::query_as("SELECT service, until_millis, order_id, finished_at IS NOT NULL FROM replay_run")
            .fetch_optional(database)
            .await?;
    if let Some((earlier_service, until, order, finished)) = earlier {
        if earlier_service != service {
            return Err(Error::Config(format!(
                "the target holds a replay of {earlier_service}, not {service}; use an empty database"
            )));
        }
        if finished {
            return Err(Error::Config(format!(
                "the target holds a finished replay of {service}; use an empty database for a new one"
            )));
        }
        if until != options.until_millis || order != options.order_id.map(OrderId::uuid) {
            return Err(Error::Config(
                "the interrupted replay in the target ran with other --until/--order-id; resume it with the same ones"
                    .into(),
            ));
        }
        tracing::info!(service, "resuming the interrupted replay");
        return Ok(true);
    }
    for table in rebuild.tables().iter().map(|t| t.name).chain(["inbox"]) {
        let holds_rows: bool = sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {table})"))
            .fetch_one(database)
            .await?;
        if holds_rows {
            return Err(Error::Config(format!(
                "the target is not empty (table {table} holds rows); replay needs an empty or new database"
            )));
        }
    }
    sqlx::query("INSERT INTO replay_run (service, until_millis, order_id) VALUES ($1, $2, $3)")
        .bind(service)
        .bind(options.until_millis)
        .bind(options.order_id.map(OrderId::uuid))
        .execute(database)
        .await?;
    Ok(false)
}

/// Takes every partition's low and high watermarks now: the replay reads up to these.
async fn record_end_offsets(database: &PgPool, kafka: &KafkaConfig, topics: &[String]) -> Result<()> {
    let metadata = kafka::cluster_metadata(kafka, Duration::from_secs(10)).await?;
    let probe = kafka::consumer(kafka, &format!("{}replay-offsets", kafka.topic_prefix))?;
    let mut wanted = Vec::new();
    for topic in topics {
        let partitions: Vec<i32> = metadata
            .partitions
            .iter()
            .filter(|partition| &partition.topic == topic)
            .map(|partition| partition.partition)
            .collect();
        if partitions.is_empty() {
            return Err(Error::Config(format!("topic {topic} does not exist")));
        }
        wanted.extend(partitions.into_iter().map(|partition| (topic.clone(), partition)));
    }
    // Watermark requests block: ask them all on the blocking pool.
    let rows = tokio::task::spawn_blocking(move || {
        wanted
            .into_iter()
            .map(|(topic, partition)| {
                let (low, high) = probe.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
                Ok((topic, partition, low, high))
            })
            .collect::<Result<Vec<_>>>()
    })
    .await
    .map_err(|e| Error::Config(format!("the watermark probe failed: {e}")))??;
    let mut tx = database.begin().await?;
    for (topic, partition, low, high) in rows {
        sqlx::query(
            "INSERT INTO replay_progress (topic, partition, low_offset, next_offset, end_offset) VALUES ($1, $2, $3, $3, $4)",
        )
        .bind(&topic)
        .bind(partition)
        .bind(low)
        .bind(high)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn load_positions(database: &PgPool) -> Result<BTreeMap<(String, i32), Position>> {
    let rows: Vec<(String, i32, i64, i64, i64)> =
        sqlx::query_as("SELECT topic, partition, low_offset, next_offset, end_offset FROM replay_progress")
            .fetch_all(database)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(topic, partition, low, next, end)| ((topic, partition), Position { low, next, end }))
        .collect())
}

/// Re-run decisions awaiting their recorded counterpart, by order and event type.
type Expected = HashMap<(OrderId, String), Value>;

async fn load_expected(database: &PgPool) -> Result<Expected> {
    let rows: Vec<(uuid::Uuid, String, Value)> =
        sqlx::query_as("SELECT order_id, event_type, event FROM replay_expected")
            .fetch_all(database)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(order_id, event_type, event)| ((OrderId::from(order_id), event_type), event))
        .collect())
}

/// An event as replay compares it: its JSON without what differs between two emissions of the
/// same decision: its own id and time, and its causation. A decision that waits for two facts
/// (a payment and a reservation) names the one that arrived last, and which of two events on
/// different topics a service processed first is not recorded anywhere.
fn comparable(event: &SagaEvent) -> Value {
    let mut json = serde_json::to_value(event).unwrap_or(Value::Null);
    if let Some(fields) = json.get_mut("event").and_then(Value::as_object_mut) {
        fields.remove("event_id");
        fields.remove("occurred_at");
        fields.remove("causation_id");
    }
    json
}

/// Applies `batch` in one transaction, with its progress; on a transient failure the whole
/// batch is tried again.
#[allow(clippy::too_many_arguments)]
async fn apply_batch(
    database: &PgPool,
    rebuild: &dyn Rebuild,
    consumed_topics: &[String],
    options: &ReplayOptions,
    batch: &[Record],
    expected: &mut Expected,
    positions: &mut BTreeMap<(String, i32), Position>,
    report: &mut ReplayReport,
) -> Result<()> {
    let policy = ErrorPolicy::default();
    let mut attempt = 0;
    loop {
        let mut staged = BatchOutcome::default();
        match apply_in_transaction(
            database,
            rebuild,
            consumed_topics,
            options,
            batch,
            expected,
            &mut staged,
        )
        .await
        {
            Ok(()) => {
                for key in &staged.confirmed {
                    expected.remove(key);
                }
                expected.extend(staged.added);
                for record in batch {
                    if let Some(position) = positions.get_mut(&(record.topic.clone(), record.partition)) {
                        position.next = record.offset + 1;
                    }
                    *report.per_topic.entry(record.topic.clone()).or_default() += 1;
                }
                report.read += batch.len() as u64;
                report.applied += staged.applied;
                report.duplicates += staged.duplicates;
                report.filtered += staged.filtered;
                report.findings.extend(staged.findings);
                return Ok(());
            }
            Err(error) if error.class() == ErrorClass::Transient => {
                attempt += 1;
                let delay = policy.backoff.delay(attempt);
                tracing::warn!(%error, attempt, "replay batch failed; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(error) => return Err(Error::Replay(format!("{error:#}"))),
        }
    }
}

/// What one batch did, kept apart until its transaction commits.
#[derive(Default)]
struct BatchOutcome {
    /// Re-run decisions the batch made.
    added: Expected,
    /// Expectations from earlier batches that the batch met with their recorded decision.
    confirmed: HashSet<(OrderId, String)>,
    applied: u64,
    duplicates: u64,
    filtered: u64,
    findings: Vec<Finding>,
}

impl BatchOutcome {
    /// Takes the re-run decision awaiting `key`: one of this batch, or one of `earlier`
    /// batches not yet confirmed.
    fn take_expected(&mut self, earlier: &Expected, key: &(OrderId, String)) -> Option<Value> {
        if let Some(event) = self.added.remove(key) {
            return Some(event);
        }
        let event = earlier.get(key).filter(|_| !self.confirmed.contains(key))?;
        self.confirmed.insert(key.clone());
        Some(event.clone())
    }
}

#[allow(clippy::too_many_arguments)]
async fn apply_in_transaction(
    database: &PgPool,
    rebuild: &dyn Rebuild,
    consumed_topics: &[String],
    options: &ReplayOptions,
    batch: &[Record],
    earlier: &Expected,
    outcome: &mut BatchOutcome,
) -> Result<(), HandlerError> {
    let mut tx = database.begin().await?;
    for record in batch {
        let event = match &record.event {
            Ok(event) => event,
            Err(reason) => {
                outcome
                    .findings
                    .push(finding(record, "undecodable", None, None, None, reason.clone()));
                continue;
            }
        };
        let out_of_range = options
            .until_millis
            .is_some_and(|until| event.occurred_at_millis() > until);
        let other_order = options
            .order_id
            .is_some_and(|wanted| event.order_id().is_some_and(|order| order != wanted));
        if out_of_range || other_order {
            outcome.filtered += 1;
            continue;
        }
        let consumed = ConsumedEvent {
            event: event.clone(),
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
            traceparent: record.traceparent.clone(),
        };
        let first_time = if consumed_topics.contains(&record.topic) {
            inbox::record(&mut tx, &consumed).await?
        } else {
            sqlx::query("INSERT INTO replay_seen (event_id) VALUES ($1) ON CONFLICT DO NOTHING")
                .bind(event.event_id().uuid())
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1
        };
        if !first_time {
            outcome.duplicates += 1;
            continue;
        }
        // Each event in a savepoint: one the service refuses for good is set aside, as the
        // live service dead-letters it, and the rest of the batch goes on.
        let mut savepoint = Acquire::begin(&mut *tx).await?;
        match rebuild.apply(&mut savepoint, &consumed).await {
            Ok(emitted) => {
                savepoint.commit().await?;
                outcome.applied += 1;
                for decision in emitted.iter().filter(|e| rebuild.decisions().contains(&e.event_type())) {
                    if let Some(order_id) = decision.order_id() {
                        outcome.added.insert(
                            (order_id, decision.event_type().as_str().to_owned()),
                            comparable(decision),
                        );
                    }
                }
            }
            Err(error @ HandlerError::Transient(_)) => return Err(error),
            Err(error) => {
                savepoint.rollback().await?;
                outcome.findings.push(finding(
                    record,
                    "not_applied",
                    Some(event),
                    None,
                    None,
                    error.to_string(),
                ));
                continue;
            }
        }
        let recorded_decision =
            !consumed_topics.contains(&record.topic) && rebuild.decisions().contains(&event.event_type());
        if recorded_decision {
            compare_decision(record, event, earlier, outcome);
        }
    }
    for (order_id, event_type) in &outcome.confirmed {
        sqlx::query("DELETE FROM replay_expected WHERE order_id = $1 AND event_type = $2")
            .bind(order_id.uuid())
            .bind(event_type)
            .execute(&mut *tx)
            .await?;
    }
    for ((order_id, event_type), event) in &outcome.added {
        sqlx::query(
            "INSERT INTO replay_expected (order_id, event_type, event) VALUES ($1, $2, $3) \
             ON CONFLICT (order_id, event_type) DO UPDATE SET event = EXCLUDED.event",
        )
        .bind(order_id.uuid())
        .bind(event_type)
        .bind(event)
        .execute(&mut *tx)
        .await?;
    }
    for found in &outcome.findings {
        sqlx::query(
            "INSERT INTO replay_findings (kind, topic, partition, \"offset\", order_id, event_type, recorded, replayed, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(found.kind)
        .bind(&found.topic)
        .bind(found.partition)
        .bind(found.offset)
        .bind(found.order_id.map(OrderId::uuid))
        .bind(found.event_type.map(EventType::as_str))
        .bind(&found.recorded)
        .bind(&found.replayed)
        .bind(&found.detail)
        .execute(&mut *tx)
        .await?;
    }
    for record in batch {
        sqlx::query("UPDATE replay_progress SET next_offset = $3 WHERE topic = $1 AND partition = $2")
            .bind(&record.topic)
            .bind(record.partition)
            .bind(record.offset + 1)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Compares a recorded decision with the one the replay re-ran for its order.
fn compare_decision(record: &Record, event: &SagaEvent, earlier: &Expected, outcome: &mut BatchOutcome) {
    let Some(order_id) = event.order_id() else { return };
    let key = (order_id, event.event_type().as_str().to_owned());
    let recorded = comparable(event);
    match outcome.take_expected(earlier, &key) {
        Some(replayed) if replayed == recorded => {}
        Some(replayed) => outcome.findings.push(finding(
            record,
            "mismatch",
            Some(event),
            Some(recorded),
            Some(replayed),
            "the re-run decision differs from the recorded one".into(),
        )),
        // A decision no replayed event caused (a deadline, an HTTP request) is a fact, not a
        // re-run decision.
        None if event.causation_id().is_none() => {}
        None => outcome.findings.push(finding(
            record,
            "unrecorded",
            Some(event),
            Some(recorded),
            None,
            "the topic records this decision, the replay did not make it".into(),
        )),
    }
}

fn finding(
    record: &Record,
    kind: &'static str,
    event: Option<&SagaEvent>,
    recorded: Option<Value>,
    replayed: Option<Value>,
    detail: String,
) -> Finding {
    Finding {
        kind,
        topic: record.topic.clone(),
        partition: record.partition,
        offset: record.offset,
        order_id: event.and_then(SagaEvent::order_id),
        event_type: event.map(SagaEvent::event_type),
        recorded,
        replayed,
        detail,
    }
}

fn progress(positions: &BTreeMap<(String, i32), Position>, done_before: u64, elapsed: Duration) -> Progress {
    let mut per_topic: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for ((topic, _), position) in positions {
        let entry = per_topic.entry(topic.clone()).or_default();
        entry.0 += position.done();
        entry.1 += position.total();
    }
    let done: u64 = per_topic.values().map(|(done, _)| done).sum();
    let total: u64 = per_topic.values().map(|(_, total)| total).sum();
    let rate = done.saturating_sub(done_before) as f64 / elapsed.as_secs_f64().max(1e-9);
    let eta = (rate > 0.0).then(|| Duration::from_secs_f64(total.saturating_sub(done) as f64 / rate));
    Progress {
        done,
        total,
        per_topic,
        rate,
        eta,
    }
}

/// A difference between the live and a rebuilt database, as verify reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// The table.
    pub table: &'static str,
    /// The row's key columns and values.
    pub key: Value,
    /// What differs: the row is `missing` from the rebuilt database, `extra` there, or its
    /// `columns` differ.
    pub kind: &'static str,
    /// For `columns`: each differing column with its live and rebuilt value.
    pub columns: Vec<(String, Value, Value)>,
}

/// Compares every table of `tables` between `live` and `rebuilt`, row by row by key, every
/// column but the ignored ones. Returns the differences; none means equal.
pub async fn verify(tables: &[VerifiedTable], live: &PgPool, rebuilt: &PgPool) -> Result<Vec<Difference>> {
    let mut differences = Vec::new();
    for table in tables {
        let (live_rows, rebuilt_rows) = tokio::try_join!(rows_by_key(live, table), rows_by_key(rebuilt, table))?;
        for (key, live_row) in &live_rows {
            match rebuilt_rows.get(key) {
                None => differences.push(Difference {
                    table: table.name,
                    key: key_value(key),
                    kind: "missing",
                    columns: Vec::new(),
                }),
                Some(rebuilt_row) if rebuilt_row != live_row => differences.push(Difference {
                    table: table.name,
                    key: key_value(key),
                    kind: "columns",
                    columns: differing_columns(live_row, rebuilt_row),
                }),
                Some(_) => {}
            }
        }
        for key in rebuilt_rows.keys().filter(|key| !live_rows.contains_key(*key)) {
            differences.push(Difference {
                table: table.name,
                key: key_value(key),
                kind: "extra",
                columns: Vec::new(),
            });
        }
    }
    Ok(differences)
}

/// Every row of `table` as JSON without its ignored columns, by its key (as JSON text).
async fn rows_by_key(database: &PgPool, table: &VerifiedTable) -> Result<BTreeMap<String, Value>> {
    let rows: Vec<Value> = sqlx::query_scalar(&format!("SELECT to_jsonb(t) FROM {} t", table.name))
        .fetch_all(database)
        .await?;
    let mut by_key = BTreeMap::new();
    for mut row in rows {
        let key: serde_json::Map<String, Value> = table
            .key
            .iter()
            .map(|column| ((*column).to_owned(), row.get(*column).cloned().unwrap_or(Value::Null)))
            .collect();
        if let Some(columns) = row.as_object_mut() {
            for ignored in table.ignored {
                columns.remove(*ignored);
            }
        }
        by_key.insert(Value::Object(key).to_string(), row);
    }
    Ok(by_key)
}

fn key_value(key: &str) -> Value {
    serde_json::from_str(key).unwrap_or(Value::Null)
}

fn differing_columns(live: &Value, rebuilt: &Value) -> Vec<(String, Value, Value)> {
    let empty = serde_json::Map::new();
    let live = live.as_object().unwrap_or(&empty);
    let rebuilt = rebuilt.as_object().unwrap_or(&empty);
    let mut columns: Vec<&String> = live.keys().chain(rebuilt.keys()).collect();
    columns.sort();
    columns.dedup();
    columns
        .into_iter()
        .filter(|column| live.get(*column) != rebuilt.get(*column))
        .map(|column| {
            (
                column.clone(),
                live.get(column).cloned().unwrap_or(Value::Null),
                rebuilt.get(column).cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparing_two_emissions_of_one_decision_ignores_their_ids_times_and_causes_only() {
        let order = saga_contracts::OrderConfirmed {
            envelope: saga_contracts::Envelope::for_command(OrderId::new()),
            customer_email: "a@example.com".into(),
            total_minor: 100,
            currency: "EUR".into(),
        };
        let again = saga_contracts::OrderConfirmed {
            envelope: saga_contracts::Envelope::for_command(order.envelope.order_id).at(5),
            ..order.clone()
        };
        assert_eq!(comparable(&order.clone().into()), comparable(&again.clone().into()));
        let other_total = saga_contracts::OrderConfirmed {
            total_minor: 101,
            ..again
        };
        assert_ne!(comparable(&order.into()), comparable(&other_total.into()));
    }

    #[test]
    fn differing_columns_name_each_column_with_both_values() {
        let live = serde_json::json!({"a": 1, "b": "x", "c": null});
        let rebuilt = serde_json::json!({"a": 1, "b": "y", "d": 2});
        assert_eq!(
            differing_columns(&live, &rebuilt),
            vec![
                ("b".to_owned(), Value::from("x"), Value::from("y")),
                // A column one side lacks is a difference even where the other holds null.
                ("c".to_owned(), Value::Null, Value::Null),
                ("d".to_owned(), Value::Null, Value::from(2)),
            ]
        );
    }

    #[test]
    fn progress_counts_from_each_partitions_first_offset_and_estimates_the_time_left() {
        let positions = BTreeMap::from([
            (
                ("orders".to_owned(), 0),
                Position {
                    low: 10,
                    next: 60,
                    end: 110,
                },
            ),
            (
                ("orders".to_owned(), 1),
                Position {
                    low: 0,
                    next: 100,
                    end: 100,
                },
            ),
        ]);
        let progress = progress(&positions, 0, Duration::from_secs(10));
        assert_eq!((progress.done, progress.total), (150, 200));
        assert_eq!(progress.per_topic["orders"], (150, 200));
        assert_eq!(progress.rate, 15.0);
        assert_eq!(progress.eta.map(|eta| eta.as_secs()), Some(3));
    }
}
