//! Replay: rebuilding a service's state from its topics into an empty database, with the same
//! domain code the live service runs and none of its side effects.
//!
//! A service takes part by implementing [`Rebuild`]. The runner ([`run`]) migrates the target,
//! takes the topics' end offsets when it starts, reads every record up to them, and for each
//! event: records it in the inbox (for the topics the live service consumes, so the rebuilt
//! inbox deduplicates like the live one), hands it to [`Rebuild::apply`], and compares the
//! decisions the service re-ran with the ones recorded on the topics. The state is built in
//! memory ([`memory`]) and written every `batch_size` events in one transaction with the
//! replay's progress, in multi-row statements, so an interrupted replay resumes from its last
//! write. No producer, SMTP transport or payment gateway exists in replay mode: a rebuild holds
//! its tables and nothing else.

pub mod memory;
mod verify;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use std::sync::Arc;

use foldhash::fast::RandomState;
use rdkafka::consumer::StreamConsumer;
use tokio::task::JoinSet;

use async_trait::async_trait;
use rdkafka::consumer::Consumer;
use rdkafka::{Message, Offset, TopicPartitionList};
use saga_contracts::{EventId, EventType, OrderId, SagaEvent, Topic};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::migrate::Migrator;
use sqlx::PgPool;

use crate::codec::{DecodeError, EventCodec, TRACEPARENT_HEADER};
use crate::config::{KafkaConfig, RegistryConfig};
use crate::consumer::{header_value, ConsumedEvent, HandlerError};
use crate::error::{Classify, ErrorClass};
use crate::retry::ErrorPolicy;
use crate::service::ServiceSpec;
use crate::{database, kafka, Error, Result};

use memory::{MemoryTable, RebuiltTable, Row, Statement};
pub use verify::{verify, verify_since, Difference, MovedOn};

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

/// A service whose state can be rebuilt from its topics: it holds the state in memory, as
/// [`MemoryTable`]s its store code reads and changes.
#[async_trait]
pub trait Rebuild: Send {
    /// What the rebuild reads, re-runs and compares.
    fn rebuilding(&self) -> &'static Rebuilding;

    /// Applies one event to the state, with the live service's domain and store code, and
    /// returns the events the live service would have emitted for it (never published: only
    /// compared with the recorded ones). Called for the events of the consumed topics after the
    /// inbox took them (a duplicate is not applied), and for every event of the service's own
    /// topics: the service applies the facts among them (a gateway's outcome, an email sent, a
    /// decision no event caused, like a deadline) and ignores the rest. When it refuses an
    /// event, the runner undoes what the event changed.
    async fn apply(&mut self, event: &ConsumedEvent) -> Result<Vec<SagaEvent>, HandlerError>;

    /// The tables the rebuild holds, parents before the tables that refer to them: the runner
    /// loads them when it resumes, ends each event on them and writes their changes.
    fn rebuilt_tables(&mut self) -> Vec<&mut dyn RebuiltTable>;

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
    /// Events whose changes are written per transaction (the progress is stored with each).
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
            batch_size: 20_000,
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
    /// Of that, how long it took to read the service's own topics first (see `merge_key`).
    pub scanning: Duration,
    /// Of that, how long applying waited for records from the broker.
    pub waited_for_records: Duration,
    /// Of that, how long applying waited for the database to finish a write.
    pub waited_for_writes: Duration,
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
#[derive(Debug)]
struct Record {
    topic: String,
    partition: i32,
    offset: i64,
    /// Where the record goes in the merged order (see [`merge_key`]).
    merge_key: (i64, i64, u8),
    /// For an event of the service's own topics: the consumed event that caused it.
    cause: Option<EventId>,
    traceparent: Option<String>,
    event: Result<SagaEvent, String>,
}

/// Rebuilds `rebuild`'s state into the database at `target_url` from the topics of `kafka`,
/// calling `report_progress` about once a second. See the module documentation.
pub async fn run(
    rebuild: &mut dyn Rebuild,
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
    let resumed = prepare_run(&database, rebuild.rebuilding(), options).await?;
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
        defer_secondary_indexes(&database, rebuild.rebuilding()).await?;
    }
    let positions = load_positions(&database).await?;
    let mut replay = Replay {
        consumed_topics: rebuild.consumes().iter().map(|topic| kafka.topic(*topic)).collect(),
        decisions: rebuild.decisions(),
        options: options.clone(),
        bookkeeping: Bookkeeping::default(),
        report: ReplayReport {
            resumed,
            ..ReplayReport::default()
        },
        handled: HashSet::default(),
        seen: HashSet::default(),
        positions,
        findings: Vec::new(),
        set_aside: Vec::new(),
        since_write: 0,
        writing: JoinSet::new(),
        waited_for_writes: Duration::ZERO,
        waited_for_records: Duration::ZERO,
    };
    let codec = Arc::new(EventCodec::new(registry, kafka)?);
    let own_topics: Vec<String> = rebuild.records_on().iter().map(|topic| kafka.topic(*topic)).collect();
    let scanning = Instant::now();
    let mut own = read_own_record(kafka, &codec, &replay.positions, &own_topics, rebuild.decisions()).await?;
    replay.report.scanning = scanning.elapsed();
    replay.load(&database, rebuild, &own).await?;
    // The own records kept from the scan are in hand already; the consumer reads the rest.
    let own_kept = own.records.is_some();
    let mut queues: BTreeMap<(String, i32), VecDeque<Record>> = own.records.take().unwrap_or_default();
    for key in replay.positions.keys() {
        queues.entry(key.clone()).or_default();
    }
    queues.retain(|key, _| replay.positions.contains_key(key));
    let mut heads: Vec<Head> = Vec::new();
    // The other records are read and decoded by tasks of their own, each for a share of the
    // partitions, on the other cores, while the events before them are applied.
    let own = Arc::new(own);
    let to_read: Vec<((String, i32), Position)> = replay
        .positions
        .iter()
        .filter(|((topic, _), position)| position.next < position.end && !(own_kept && own_topics.contains(topic)))
        .map(|(key, position)| (key.clone(), *position))
        .collect();
    let (records, mut incoming) = tokio::sync::mpsc::channel(RECORDS_READ_AHEAD);
    let mut reader = JoinSet::new();
    for share in shares(&to_read) {
        let consumer = kafka::consumer(
            kafka,
            &format!("{}replay-{}", kafka.topic_prefix, uuid::Uuid::new_v4().simple()),
        )?;
        let mut assignment = TopicPartitionList::new();
        for ((topic, partition), position) in &share {
            assignment.add_partition_offset(topic, *partition, Offset::Offset(position.next))?;
        }
        consumer.assign(&assignment)?;
        let ends = share.into_iter().map(|(key, position)| (key, position.end)).collect();
        reader.spawn(read_records(
            consumer,
            Arc::clone(&codec),
            replay.consumed_topics.clone(),
            Arc::clone(&own),
            ends,
            records.clone(),
        ));
    }
    drop(records);
    let mut last_progress = Instant::now();
    let run_started_done: u64 = replay.positions.values().map(Position::done).sum();
    tracing::info!(service, resumed, topics = ?topics, "replay started");
    loop {
        // A record that goes after a decision no event caused (see `merge_key`) waits aside, out
        // of its partition's order: it would otherwise hold back the records of other orders
        // behind it, which the live service took in long before.
        for ((_, queue), (_, position)) in queues.iter_mut().zip(replay.positions.iter_mut()) {
            while let Some(record) = queue
                .front()
                .filter(|record| record.merge_key.2 == AFTER_UNCAUSED_DECISION)
            {
                position.next = position.next.max(record.offset + 1);
                let record = queue.pop_front().expect("a record in hand");
                replay.set_aside.push(record);
            }
        }
        // A record the replay passes over (a copy of an event it took, or one it cannot decode)
        // changes nothing, so it is taken at once: a copy published again later carries a later
        // timestamp than the records behind it, and would otherwise hold them back while
        // records of other partitions that the live service took after them overtook them.
        let passed_over: Vec<Record> = queues
            .values_mut()
            .flat_map(|queue| {
                let copies = queue.iter().take_while(|record| replay.passes_over(record)).count();
                queue.drain(..copies)
            })
            .collect();
        for record in passed_over {
            replay.take(rebuild, record).await?;
        }
        // Records are applied in the order the live service took them in (see `merge_key`),
        // across partitions and topics, so a decision is re-run after the facts it depended on,
        // as live: a record is taken only when every partition not yet at its end offset has
        // one in hand. (`queues` holds a queue for every partition of `positions`, so the two
        // are walked side by side.)
        heads.clear();
        let mut any_open = false;
        let mut waiting = false;
        let cause_handled = |record: &Record| record.cause.is_none_or(|cause| replay.handled.contains(&cause));
        for (index, ((key, queue), (_, position))) in queues.iter().zip(replay.positions.iter()).enumerate() {
            if position.next >= position.end {
                continue;
            }
            any_open = true;
            let Some(record) = queue.front() else {
                waiting = true;
                break;
            };
            // The order's earlier record waits aside: its later ones wait for it.
            let held = !replay.set_aside.is_empty() && {
                let order = record.event.as_ref().ok().and_then(SagaEvent::order_id);
                replay.set_aside.iter().any(|aside| {
                    aside.topic == key.0
                        && aside.partition == key.1
                        && aside.event.as_ref().ok().and_then(SagaEvent::order_id) == order
                })
            };
            if !held {
                heads.push(Head {
                    source: HeadSource::Partition(index),
                    order: (record.merge_key, record.offset),
                    cause_handled: cause_handled(record),
                });
            }
        }
        if !any_open && replay.set_aside.is_empty() {
            break;
        }
        if waiting {
            let receiving = Instant::now();
            let mut record = tokio::time::timeout(Duration::from_secs(60), incoming.recv())
                .await
                .map_err(|_| Error::Config(format!("no record for a minute while replaying {topics:?}")))?
                .ok_or_else(|| Error::Config(format!("the reader of {topics:?} stopped")))??;
            replay.waited_for_records += receiving.elapsed();
            // The topic moves into the lookup key and back: no copy per record.
            let key = (std::mem::take(&mut record.topic), record.partition);
            let queue = queues.get_mut(&key);
            record.topic = key.0;
            queue
                .ok_or_else(|| {
                    Error::Replay(format!(
                        "a record of {}/{} that no position covers",
                        record.topic, record.partition
                    ))
                })?
                .push_back(record);
            continue;
        }
        heads.extend(replay.set_aside.iter().enumerate().map(|(index, record)| Head {
            source: HeadSource::SetAside(index),
            order: (record.merge_key, record.offset),
            cause_handled: cause_handled(record),
        }));
        // An event waits until the event in the replayed range that caused it was applied, and
        // so does every later one: a waiting event holds back the records behind it in its
        // partition, which would otherwise be overtaken. Only when nothing can go on that way
        // does the earliest event whose cause was applied go, and failing that, the earliest of
        // all (its cause lies outside the range).
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
        let record = match next.source {
            HeadSource::Partition(index) => queues
                .values_mut()
                .nth(index)
                .and_then(VecDeque::pop_front)
                .expect("a record in hand"),
            HeadSource::SetAside(index) => replay.set_aside.remove(index),
        };
        replay.take(rebuild, record).await?;
        if replay.since_write >= options.batch_size.max(1) {
            replay.write(&database, rebuild).await?;
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            report_progress(&progress(&replay.positions, run_started_done, started.elapsed()));
        }
    }
    replay.write(&database, rebuild).await?;
    replay.finish_writing().await?;
    let mut report = replay.report;
    report.unconfirmed = replay.bookkeeping.expected.len() as u64;
    create_deferred_indexes(&database).await?;
    sqlx::query("UPDATE replay_run SET finished_at = now()")
        .execute(&database)
        .await?;
    report.elapsed = started.elapsed();
    report.waited_for_records = replay.waited_for_records;
    report.waited_for_writes = replay.waited_for_writes;
    report_progress(&progress(&replay.positions, run_started_done, report.elapsed));
    database.close().await;
    tracing::info!(
        service,
        read = report.read,
        findings = report.findings.len(),
        seconds = report.elapsed.as_secs_f64(),
        "replay finished"
    );
    Ok(report)
}

/// The runner's own tables, kept and written like a rebuild's.
struct Bookkeeping {
    /// The inbox of the consumed topics, as the live service keeps it.
    inbox: MemoryTable<InboxRow>,
    /// Re-run decisions awaiting their recorded counterpart.
    expected: MemoryTable<ExpectedRow>,
}

impl Default for Bookkeeping {
    fn default() -> Self {
        Self {
            inbox: MemoryTable::insert_only(),
            expected: MemoryTable::default(),
        }
    }
}

impl Bookkeeping {
    fn tables(&mut self) -> [&mut dyn RebuiltTable; 2] {
        [&mut self.inbox, &mut self.expected]
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct InboxRow {
    event_id: EventId,
    event_type: String,
    source_topic: String,
    source_partition: i32,
    source_offset: i64,
}

impl Row for InboxRow {
    type Key = EventId;
    const TABLE: &'static str = "inbox";
    const KEY_COLUMNS: &'static [&'static str] = &["event_id"];
    fn key(&self) -> EventId {
        self.event_id
    }
}

/// A re-run decision awaiting its recorded counterpart, by order and event type.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ExpectedRow {
    order_id: OrderId,
    event_type: String,
    event: Value,
}

impl Row for ExpectedRow {
    type Key = (OrderId, String);
    const TABLE: &'static str = "replay_expected";
    const KEY_COLUMNS: &'static [&'static str] = &["order_id", "event_type"];
    fn key(&self) -> Self::Key {
        (self.order_id, self.event_type.clone())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProgressRow {
    topic: String,
    partition: i32,
    low_offset: i64,
    next_offset: i64,
    end_offset: i64,
}

impl Row for ProgressRow {
    type Key = (String, i32);
    const TABLE: &'static str = "replay_progress";
    const KEY_COLUMNS: &'static [&'static str] = &["topic", "partition"];
    fn key(&self) -> Self::Key {
        (self.topic.clone(), self.partition)
    }
}

/// A replay under way: what it has applied in memory and not yet written.
struct Replay {
    consumed_topics: Vec<String>,
    decisions: &'static [EventType],
    options: ReplayOptions,
    bookkeeping: Bookkeeping,
    report: ReplayReport,
    /// Events handled (applied, duplicate or filtered): an event waits for its cause.
    handled: HashSet<EventId, RandomState>,
    /// The service's own events applied (the relay publishes at least once; an interrupted
    /// replay's are known from the scan of the own topics).
    seen: HashSet<EventId, RandomState>,
    positions: BTreeMap<(String, i32), Position>,
    /// Findings not yet written.
    findings: Vec<Finding>,
    /// Records taken out of their partition's order, waiting to be applied (see `merge_key`).
    set_aside: Vec<Record>,
    /// Records taken since the last write.
    since_write: usize,
    /// The write under way (dropped, it is aborted: its transaction rolls back).
    writing: JoinSet<Result<()>>,
    /// How long applying waited for writes to finish.
    waited_for_writes: Duration,
    /// How long applying waited for records from the broker.
    waited_for_records: Duration,
}

impl Replay {
    /// Starts from nothing, or, resuming, from what the interrupted replay wrote: the tables, and
    /// the events it took (the inbox's, and the own events below the stored positions).
    async fn load(&mut self, database: &PgPool, rebuild: &mut dyn Rebuild, own: &OwnRecord) -> Result<()> {
        let resumed = self.report.resumed;
        let mut tables = rebuild.rebuilt_tables();
        tables.extend(self.bookkeeping.tables());
        for table in tables {
            table.clear();
            if resumed {
                table.load(memory::read_rows(database, table.name()).await?)?;
            }
        }
        self.seen = own.taken_before.clone();
        self.handled = self
            .bookkeeping
            .inbox
            .rows()
            .map(|row| row.event_id)
            .chain(own.taken_before.iter().copied())
            .collect();
        Ok(())
    }

    /// Whether taking `record` would change nothing: it cannot be decoded, or it is a copy of
    /// an event already taken (the inbox's, for a consumed topic; the own events seen, else).
    fn passes_over(&self, record: &Record) -> bool {
        match &record.event {
            Err(_) => true,
            Ok(event) if self.consumed_topics.contains(&record.topic) => {
                self.bookkeeping.inbox.contains(&event.event_id())
            }
            Ok(event) => self.seen.contains(&event.event_id()),
        }
    }

    /// Takes the next record in the merged order: applies its event, or passes it over.
    async fn take(&mut self, rebuild: &mut dyn Rebuild, record: Record) -> Result<()> {
        if let Some(position) = self.positions.get_mut(&(record.topic.clone(), record.partition)) {
            position.next = position.next.max(record.offset + 1);
        }
        match self.report.per_topic.get_mut(&record.topic) {
            Some(read) => *read += 1,
            None => {
                self.report.per_topic.insert(record.topic.clone(), 1);
            }
        }
        self.report.read += 1;
        self.since_write += 1;
        // The record's parts move into the event the service applies: no copy per event.
        let Record {
            topic,
            partition,
            offset,
            traceparent,
            event,
            ..
        } = record;
        let event = match event {
            Ok(event) => event,
            Err(reason) => {
                self.findings.push(finding(
                    (&topic, partition, offset),
                    "undecodable",
                    None,
                    None,
                    None,
                    reason,
                ));
                return Ok(());
            }
        };
        self.handled.insert(event.event_id());
        let out_of_range = self
            .options
            .until_millis
            .is_some_and(|until| event.occurred_at_millis() > until);
        let other_order = self
            .options
            .order_id
            .is_some_and(|wanted| event.order_id().is_some_and(|order| order != wanted));
        if out_of_range || other_order {
            self.report.filtered += 1;
            return Ok(());
        }
        let consumed_topic = self.consumed_topics.contains(&topic);
        let first_time = if consumed_topic {
            self.bookkeeping.inbox.insert_new(InboxRow {
                event_id: event.event_id(),
                event_type: event.event_type().as_str().to_owned(),
                source_topic: topic.clone(),
                source_partition: partition,
                source_offset: offset,
            })
        } else {
            self.seen.insert(event.event_id())
        };
        if !first_time {
            self.report.duplicates += 1;
            return Ok(());
        }
        let consumed = ConsumedEvent {
            event,
            topic,
            partition,
            offset,
            traceparent,
        };
        let applied = rebuild.apply(&consumed).await;
        let event = &consumed.event;
        let place = (consumed.topic.as_str(), partition, offset);
        // An event the service refuses for good leaves nothing behind, as the live service's
        // rolled-back transaction does (and the live service dead-letters it).
        let keep = applied.is_ok();
        if !keep && !consumed_topic {
            self.seen.remove(&event.event_id());
        }
        for table in rebuild.rebuilt_tables().into_iter().chain(self.bookkeeping.tables()) {
            table.end_event(keep);
        }
        match applied {
            Ok(emitted) => {
                self.report.applied += 1;
                for decision in emitted.iter().filter(|e| self.decisions.contains(&e.event_type())) {
                    if let Some(order_id) = decision.order_id() {
                        self.bookkeeping.expected.upsert(ExpectedRow {
                            order_id,
                            event_type: decision.event_type().as_str().to_owned(),
                            event: comparable(decision),
                        });
                    }
                }
                self.bookkeeping.expected.end_event(true);
            }
            Err(error @ HandlerError::Transient(_)) => {
                return Err(Error::Replay(format!(
                    "applying {} at {}/{}:{} failed: {error:#}",
                    event.event_type(),
                    place.0,
                    place.1,
                    place.2
                )))
            }
            Err(error) => {
                self.findings.push(finding(
                    place,
                    "not_applied",
                    Some(event),
                    None,
                    None,
                    error.to_string(),
                ));
                return Ok(());
            }
        }
        if !consumed_topic && self.decisions.contains(&event.event_type()) {
            self.compare_decision(place, event);
        }
        Ok(())
    }

    /// Compares a recorded decision with the one the replay re-ran for its order.
    fn compare_decision(&mut self, place: (&str, i32, i64), event: &SagaEvent) {
        let Some(order_id) = event.order_id() else { return };
        let key = (order_id, event.event_type().as_str().to_owned());
        let recorded = comparable(event);
        let replayed = self.bookkeeping.expected.remove(&key);
        self.bookkeeping.expected.end_event(true);
        match replayed {
            Some(replayed) if replayed.event == recorded => {}
            Some(replayed) => self.findings.push(finding(
                place,
                "mismatch",
                Some(event),
                Some(recorded),
                Some(replayed.event),
                "the re-run decision differs from the recorded one".into(),
            )),
            // A decision no replayed event caused (a deadline, an HTTP request) is a fact, not
            // a re-run decision.
            None if event.causation_id().is_none() => {}
            None => self.findings.push(finding(
                place,
                "unrecorded",
                Some(event),
                Some(recorded),
                None,
                "the topic records this decision, the replay did not make it".into(),
            )),
        }
    }

    /// Waits for the write under way, if any.
    async fn finish_writing(&mut self) -> Result<()> {
        let waiting = Instant::now();
        while let Some(written) = self.writing.join_next().await {
            written.map_err(|e| Error::Replay(format!("writing the replayed state stopped: {e}")))??;
        }
        self.waited_for_writes += waiting.elapsed();
        Ok(())
    }

    /// Starts writing what changed since the last write, with the progress and the findings,
    /// in one transaction (see [`write_retrying`]).
    async fn write(&mut self, database: &PgPool, rebuild: &mut dyn Rebuild) -> Result<()> {
        let mut statements = Vec::new();
        for table in rebuild.rebuilt_tables().into_iter().chain(self.bookkeeping.tables()) {
            statements.extend(table.take_changes()?);
        }
        if !self.findings.is_empty() {
            let findings: Vec<FindingRow<'_>> = self.findings.iter().map(FindingRow::from).collect();
            statements.push(Statement::insert("replay_findings", &findings)?);
        }
        let progress: Vec<ProgressRow> = self
            .positions
            .iter()
            .map(|((topic, partition), position)| ProgressRow {
                topic: topic.clone(),
                partition: *partition,
                low_offset: position.low,
                // A resumed replay reads again from the first record set aside and not applied
                // yet; the inbox passes over what it took behind it.
                next_offset: self
                    .set_aside
                    .iter()
                    .filter(|record| &record.topic == topic && record.partition == *partition)
                    .map(|record| record.offset)
                    .fold(position.next, i64::min),
                end_offset: position.end,
            })
            .collect();
        statements.push(Statement::upsert(&progress)?);
        // The write runs while the next events are applied; the one before must be done, so
        // writes commit in order and at most one is under way.
        self.finish_writing().await?;
        let database = database.clone();
        self.writing
            .spawn(async move { write_retrying(&database, &statements).await });
        self.report.findings.append(&mut self.findings);
        self.since_write = 0;
        Ok(())
    }
}

/// Runs `statements` in one transaction; on a transient failure the same statements are tried
/// again.
async fn write_retrying(database: &PgPool, statements: &[Statement]) -> Result<()> {
    let policy = ErrorPolicy::default();
    let mut attempt = 0;
    loop {
        match write_in_transaction(database, statements).await {
            Ok(()) => return Ok(()),
            Err(error) if error.class() == ErrorClass::Transient => {
                attempt += 1;
                let delay = policy.backoff.delay(attempt);
                tracing::warn!(%error, attempt, "writing the replayed state failed; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(error) => return Err(Error::Replay(format!("writing the replayed state: {error:#}"))),
        }
    }
}

async fn write_in_transaction(database: &PgPool, statements: &[Statement]) -> Result<()> {
    let mut tx = database.begin().await?;
    // A write lost in a crash is lost with the progress it carries: the resumed replay takes
    // its events again. The commit need not wait for the disk.
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    for statement in statements {
        statement.execute(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A finding as `replay_findings` holds it.
#[derive(Debug, Serialize)]
struct FindingRow<'a> {
    kind: &'static str,
    topic: &'a str,
    partition: i32,
    offset: i64,
    order_id: Option<OrderId>,
    event_type: Option<&'static str>,
    recorded: &'a Option<Value>,
    replayed: &'a Option<Value>,
    detail: &'a str,
}

impl<'a> From<&'a Finding> for FindingRow<'a> {
    fn from(found: &'a Finding) -> Self {
        Self {
            kind: found.kind,
            topic: &found.topic,
            partition: found.partition,
            offset: found.offset,
            order_id: found.order_id,
            event_type: found.event_type.map(EventType::as_str),
            recorded: &found.recorded,
            replayed: &found.replayed,
            detail: &found.detail,
        }
    }
}

/// Records read ahead of the one being applied.
const RECORDS_READ_AHEAD: usize = 10_000;

/// Reads the assigned partitions up to their end offsets (`ends`) and hands each record,
/// decoded and placed in the merged order, to `records`; stops when every partition reached
/// its end, or the replay stopped listening.
async fn read_records(
    consumer: StreamConsumer,
    codec: Arc<EventCodec>,
    consumed_topics: Vec<String>,
    own: Arc<OwnRecord>,
    mut ends: HashMap<(String, i32), i64>,
    records: tokio::sync::mpsc::Sender<Result<Record>>,
) {
    while !ends.is_empty() {
        let message = match consumer.recv().await {
            Ok(message) => message,
            Err(error) => {
                records.send(Err(error.into())).await.ok();
                return;
            }
        };
        let key = (message.topic().to_owned(), message.partition());
        let Some(end) = ends.get(&key).copied() else { continue };
        if message.offset() + 1 >= end {
            ends.remove(&key);
        }
        if message.offset() >= end {
            continue;
        }
        let event = decode_retrying(&codec, message.payload()).await;
        let timestamp = message.timestamp().to_millis().unwrap_or(0);
        let consumed = consumed_topics.iter().any(|topic| topic == message.topic());
        let record = Record {
            topic: key.0,
            partition: key.1,
            offset: message.offset(),
            merge_key: merge_key(consumed, timestamp, event.as_ref().ok(), &own),
            cause: event
                .as_ref()
                .ok()
                .and_then(|event| cause_in_range(consumed, event, &own)),
            traceparent: header_value(&message, TRACEPARENT_HEADER),
            event,
        };
        if records.send(Ok(record)).await.is_err() {
            return;
        }
    }
}

/// What the service's own topics tell about when the live service took its consumed events in,
/// read once before the replay applies anything.
#[derive(Debug, Default)]
struct OwnRecord {
    /// Per consumed event (by id): the record timestamp and the event time of the first own
    /// event it caused.
    reactions: HashMap<EventId, (i64, i64), RandomState>,
    /// Per order: the record timestamp and the event time of a recorded decision no event
    /// caused (a deadline).
    uncaused_decisions: HashMap<OrderId, (i64, i64), RandomState>,
    /// Every own event in the range.
    event_ids: HashSet<EventId, RandomState>,
    /// The own events an interrupted replay took already (below the stored positions).
    taken_before: HashSet<EventId, RandomState>,
    /// The own records still to take, per partition, kept from the scan so they are not read
    /// and decoded twice; `None` when there were more than [`OWN_RECORDS_KEPT`].
    records: Option<BTreeMap<(String, i32), VecDeque<Record>>>,
}

impl OwnRecord {
    /// Takes in what another task's scan of other partitions found.
    fn merge(&mut self, other: OwnRecord) {
        for (cause, reaction) in other.reactions {
            let first = self.reactions.entry(cause).or_insert(reaction);
            *first = (*first).min(reaction);
        }
        for (order, decision) in other.uncaused_decisions {
            let first = self.uncaused_decisions.entry(order).or_insert(decision);
            *first = (*first).min(decision);
        }
        self.event_ids.extend(other.event_ids);
        self.taken_before.extend(other.taken_before);
        match (self.records.as_mut(), other.records) {
            (Some(records), Some(more)) => records.extend(more),
            _ => self.records = None,
        }
    }
}

/// At most this many of the service's own records are kept in memory from the scan; with more,
/// they are read again.
const OWN_RECORDS_KEPT: i64 = 5_000_000;

/// Where a record goes in the merged order, which follows the order the live service took its
/// events in as well as the topics tell it:
/// - an event of the service's own topics took effect when it was published (its record's
///   timestamp: the relay publishes right after the commit). Records the relay published in the
///   same millisecond go in the order their events occurred, which is the order of the outbox;
/// - a consumed event took effect when the service reacted to it, so at the time of the first
///   own event it caused (it sorts just before it), else at its own record's timestamp;
/// - a consumed event of an order that a decision no event caused (a deadline) decided, and
///   that caused nothing itself, arrived after that decision: live it would otherwise have
///   decided the order. Such a record waits aside (see `run`), not in its partition.
///
/// Ordering consumed events by their own timestamps instead would, for example, apply an
/// order.created before a stock adjustment the inventory service committed before it consumed
/// the order. Whatever the keys, an event is applied only after the event that caused it
/// (see `run`).
fn merge_key(consumed: bool, timestamp: i64, event: Option<&SagaEvent>, own: &OwnRecord) -> (i64, i64, u8) {
    let occurred_at = event.map_or(0, SagaEvent::occurred_at_millis);
    if !consumed {
        return (timestamp, occurred_at, OWN);
    }
    let reacted_at = event.and_then(|event| own.reactions.get(&event.event_id())).copied();
    if let Some((reacted_at, reaction_occurred_at)) = reacted_at {
        return (reacted_at, reaction_occurred_at, CONSUMED);
    }
    let decided_before = event
        .and_then(SagaEvent::order_id)
        .and_then(|order| own.uncaused_decisions.get(&order))
        .copied();
    match decided_before {
        Some((decided_at, decision_occurred_at)) if decided_at >= timestamp => {
            (decided_at, decision_occurred_at, AFTER_UNCAUSED_DECISION)
        }
        _ => (timestamp, occurred_at, CONSUMED),
    }
}

/// The last part of a merge key: of records at the same time, a consumed event goes before the
/// own event it caused, and one that goes after a decision no event caused goes after it.
const CONSUMED: u8 = 0;
/// See [`CONSUMED`].
const OWN: u8 = 1;
/// See [`CONSUMED`].
const AFTER_UNCAUSED_DECISION: u8 = 2;

/// How many tasks read and decode records at once: one per core, at least two (one core
/// applies while the other decodes), at most four.
fn readers() -> usize {
    std::thread::available_parallelism().map_or(2, |cores| cores.get().clamp(2, 4))
}

/// `partitions` dealt into [`readers`] shares.
fn shares<T: Clone>(partitions: &[T]) -> Vec<Vec<T>> {
    let count = readers().min(partitions.len());
    let mut shares = vec![Vec::new(); count];
    for (index, partition) in partitions.iter().enumerate() {
        shares[index % count].push(partition.clone());
    }
    shares
}

/// Reads the service's own topics from the beginning up to the end offsets (see [`OwnRecord`]),
/// a share of the partitions per task.
async fn read_own_record(
    kafka: &KafkaConfig,
    codec: &Arc<EventCodec>,
    positions: &BTreeMap<(String, i32), Position>,
    own_topics: &[String],
    decisions: &'static [EventType],
) -> Result<OwnRecord> {
    let own: Vec<((String, i32), Position)> = positions
        .iter()
        .filter(|((topic, _), position)| own_topics.contains(topic) && position.low < position.end)
        .map(|(key, position)| (key.clone(), *position))
        .collect();
    let total: i64 = own.iter().map(|(_, position)| position.end - position.low).sum();
    let keep_records = total <= OWN_RECORDS_KEPT;
    let mut scans = JoinSet::new();
    for share in shares(&own) {
        scans.spawn(scan_own_partitions(
            kafka.clone(),
            Arc::clone(codec),
            share.into_iter().collect(),
            decisions,
            keep_records,
        ));
    }
    let mut merged = OwnRecord {
        records: keep_records.then(BTreeMap::new),
        ..OwnRecord::default()
    };
    while let Some(scanned) = scans.join_next().await {
        let scanned = scanned.map_err(|e| Error::Replay(format!("scanning the own topics stopped: {e}")))??;
        merged.merge(scanned);
    }
    Ok(merged)
}

/// Reads `positions`' partitions of the service's own topics from their first offsets up to
/// their end offsets.
async fn scan_own_partitions(
    kafka: KafkaConfig,
    codec: Arc<EventCodec>,
    positions: BTreeMap<(String, i32), Position>,
    decisions: &'static [EventType],
    keep_records: bool,
) -> Result<OwnRecord> {
    let kafka = &kafka;
    let codec = codec.as_ref();
    let own_topics: Vec<String> = positions.keys().map(|(topic, _)| topic.clone()).collect();
    let positions = &positions;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0;
    for ((topic, partition), position) in positions {
        assignment.add_partition_offset(topic, *partition, Offset::Offset(position.low))?;
        remaining += position.end - position.low;
    }
    let mut own = OwnRecord {
        records: keep_records.then(BTreeMap::new),
        ..OwnRecord::default()
    };
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
        let key = (message.topic().to_owned(), message.partition());
        let Some(position) = positions.get(&key) else { continue };
        if message.offset() >= position.end {
            continue;
        }
        remaining -= 1;
        let timestamp = message.timestamp().to_millis().unwrap_or(0);
        let decoded = decode_retrying(codec, message.payload()).await;
        if let Ok(event) = &decoded {
            own.event_ids.insert(event.event_id());
            if message.offset() < position.next {
                own.taken_before.insert(event.event_id());
            }
            match (event.causation_id(), event.order_id()) {
                (Some(cause), _) => {
                    let reaction = (timestamp, event.occurred_at_millis());
                    let first = own.reactions.entry(cause).or_insert(reaction);
                    *first = (*first).min(reaction);
                }
                (None, Some(order)) if decisions.contains(&event.event_type()) => {
                    own.uncaused_decisions
                        .entry(order)
                        .or_insert((timestamp, event.occurred_at_millis()));
                }
                (None, _) => {}
            }
        }
        if let Some(records) = own.records.as_mut().filter(|_| message.offset() >= position.next) {
            records.entry(key).or_default().push_back(Record {
                topic: message.topic().to_owned(),
                partition: message.partition(),
                offset: message.offset(),
                merge_key: (
                    timestamp,
                    decoded.as_ref().map_or(0, SagaEvent::occurred_at_millis),
                    OWN,
                ),
                cause: decoded.as_ref().ok().and_then(SagaEvent::causation_id),
                traceparent: header_value(&message, TRACEPARENT_HEADER),
                event: decoded,
            });
        }
    }
    Ok(own)
}

/// A record that can go next, as the merge weighs it.
struct Head {
    source: HeadSource,
    order: ((i64, i64, u8), i64),
    cause_handled: bool,
}

/// Where a record that can go next is.
enum HeadSource {
    /// At the front of the records in hand of this partition (its index in the positions).
    Partition(usize),
    /// Set aside, at this index.
    SetAside(usize),
}

/// The event in the replayed range that `event` must be applied after: for an own event, the
/// consumed event that caused it (every own event below the end offsets was caused by a
/// consumed event below them, see `run`); for a consumed event, the own event that caused it
/// (an order.created the order service published, for an outcome), if that is in the range.
fn cause_in_range(consumed: bool, event: &SagaEvent, own: &OwnRecord) -> Option<EventId> {
    let cause = event.causation_id()?;
    (!consumed || own.event_ids.contains(&cause)).then_some(cause)
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
async fn prepare_run(database: &PgPool, rebuilding: &Rebuilding, options: &ReplayOptions) -> Result<bool> {
    let service = rebuilding.service.name;
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
    for table in rebuilding.tables.iter().map(|t| t.name).chain(["inbox"]) {
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

/// What the topics a replay into `rebuilt` read hold past its end offsets now: the orders and
/// SKUs the live service saw events of after the rebuild's range. Nothing when `rebuilt` holds
/// no replay.
pub async fn moved_on_since(kafka: &KafkaConfig, registry: &RegistryConfig, rebuilt: &PgPool) -> Result<MovedOn> {
    let ends: Vec<(String, i32, i64)> = sqlx::query_as("SELECT topic, partition, end_offset FROM replay_progress")
        .fetch_all(rebuilt)
        .await?;
    let mut moved_on = MovedOn::default();
    if ends.is_empty() {
        return Ok(moved_on);
    }
    let probe = kafka::consumer(kafka, &format!("{}verify-offsets", kafka.topic_prefix))?;
    let highs = tokio::task::spawn_blocking(move || {
        ends.into_iter()
            .map(|(topic, partition, end)| {
                let (_, high) = probe.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
                Ok((topic, partition, end, high))
            })
            .collect::<Result<Vec<_>>>()
    })
    .await
    .map_err(|e| Error::Config(format!("the watermark probe failed: {e}")))??;
    let mut assignment = TopicPartitionList::new();
    let mut remaining: HashMap<(String, i32), i64> = HashMap::new();
    for (topic, partition, end, high) in highs {
        if high > end {
            assignment.add_partition_offset(&topic, partition, Offset::Offset(end))?;
            remaining.insert((topic, partition), high);
        }
    }
    if remaining.is_empty() {
        return Ok(moved_on);
    }
    let codec = EventCodec::new(registry, kafka)?;
    let consumer = kafka::consumer(
        kafka,
        &format!("{}verify-{}", kafka.topic_prefix, uuid::Uuid::new_v4().simple()),
    )?;
    consumer.assign(&assignment)?;
    while !remaining.is_empty() {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .map_err(|_| {
                Error::Config("no record for a minute while reading past the replay's end offsets".into())
            })??;
        let key = (message.topic().to_owned(), message.partition());
        let Some(high) = remaining.get(&key).copied() else {
            continue;
        };
        if message.offset() + 1 >= high {
            remaining.remove(&key);
        }
        if message.offset() >= high {
            continue;
        }
        if let Ok(event) = decode_retrying(&codec, message.payload()).await {
            moved_on.add(&event);
        }
    }
    Ok(moved_on)
}

/// Drops the secondary indexes and the foreign keys of the rebuilt tables (not the primary keys
/// and unique indexes: the writes' upserts need those), keeping their definitions: rows load
/// faster without them. An index built once over all rows costs less than one kept up row by
/// row, and a foreign key checked once over all rows less than a check per row. (The rebuilt
/// state keeps its references by the service's own code, as live: a timeline entry is written
/// only for an order that exists.)
async fn defer_secondary_indexes(database: &PgPool, rebuilding: &Rebuilding) -> Result<()> {
    let tables: Vec<&str> = rebuilding.tables.iter().map(|table| table.name).collect();
    let mut tx = database.begin().await?;
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT i.relname::text, pg_get_indexdef(x.indexrelid) FROM pg_index x \
         JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname = current_schema() AND t.relname = ANY($1) AND NOT x.indisunique AND NOT x.indisprimary",
    )
    .bind(&tables)
    .fetch_all(&mut *tx)
    .await?;
    let foreign_keys: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT c.conname::text, t.relname::text, pg_get_constraintdef(c.oid) FROM pg_constraint c \
         JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname = current_schema() AND t.relname = ANY($1) AND c.contype = 'f'",
    )
    .bind(&tables)
    .fetch_all(&mut *tx)
    .await?;
    let deferred = indexes
        .iter()
        .map(|(name, definition)| (name.clone(), definition.clone(), format!("DROP INDEX \"{name}\"")))
        .chain(foreign_keys.iter().map(|(name, table, definition)| {
            (
                name.clone(),
                format!("ALTER TABLE {table} ADD CONSTRAINT \"{name}\" {definition}"),
                format!("ALTER TABLE {table} DROP CONSTRAINT \"{name}\""),
            )
        }));
    for (name, definition, drop) in deferred {
        sqlx::query("INSERT INTO replay_deferred_indexes (name, definition) VALUES ($1, $2)")
            .bind(&name)
            .bind(&definition)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&drop).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Creates the indexes and foreign keys [`defer_secondary_indexes`] dropped.
async fn create_deferred_indexes(database: &PgPool) -> Result<()> {
    let mut tx = database.begin().await?;
    let indexes: Vec<(String, String)> = sqlx::query_as("SELECT name, definition FROM replay_deferred_indexes")
        .fetch_all(&mut *tx)
        .await?;
    for (_, definition) in &indexes {
        sqlx::query(definition).execute(&mut *tx).await?;
    }
    sqlx::query("DELETE FROM replay_deferred_indexes")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
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

/// A finding about the record at `place` (topic, partition, offset).
fn finding(
    (topic, partition, offset): (&str, i32, i64),
    kind: &'static str,
    event: Option<&SagaEvent>,
    recorded: Option<Value>,
    replayed: Option<Value>,
    detail: String,
) -> Finding {
    Finding {
        kind,
        topic: topic.to_owned(),
        partition,
        offset,
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
