//! The shared library against the real broker and registry: Avro events keyed by order id on
//! 6-partition topics, the at-least-once consumer loop's offset discipline, and the codec and
//! registry probe against a registry that requires basic authentication.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use saga_common::codec::{DecodeError, EncodedEvent, EventCodec};
use saga_common::config::{RegistryConfig, RegistryUserInfo};
use saga_common::consumer::{
    event_headers, AfterCommit, BatchHandler, ConsumedEvent, ConsumerLoop, EventHandler, HandlerError,
};
use saga_common::health::HealthState;
use saga_common::kafka;
use saga_common::outbox::RelaySettings;
use saga_common::retry::{Backoff, ErrorPolicy};
use saga_common::{Classify, ErrorClass};
use saga_contracts::{EventId, OrderId, SagaEvent, Topic};
use saga_tests::{eventually, fixtures, TestEnv};
use tokio_util::sync::CancellationToken;

/// A new order.created of `order_id`.
fn order_created(order_id: OrderId) -> SagaEvent {
    fixtures::order_created_with(order_id, &[("SKU-1", 2)], fixtures::APPROVED_TOKEN).into()
}

async fn produce(producer: &FutureProducer, encoded: &EncodedEvent) -> (i32, i64) {
    let headers = event_headers(
        encoded.event_type.as_str(),
        &encoded.event_id.to_string(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    let record = FutureRecord::to(&encoded.topic)
        .key(&encoded.key)
        .payload(&encoded.payload)
        .headers(headers);
    let delivery = producer.send(record, Duration::from_secs(10)).await.expect("delivered");
    (delivery.partition, delivery.offset)
}

#[tokio::test]
async fn an_avro_event_keyed_by_order_id_is_consumed_back_and_decoded() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let codec = EventCodec::new(&env.registry, &env.kafka)?;
    let producer = kafka::producer(&env.kafka)?;
    let order_id = OrderId::new();
    let sent = order_created(order_id);
    let encoded = codec.encode(&sent).await?;
    assert_eq!(encoded.topic, env.kafka.topic(Topic::Orders));
    assert_eq!(encoded.key, order_id.to_string());
    assert_eq!(encoded.payload[0], 0, "Confluent framing starts with magic byte 0");
    produce(&producer, &encoded).await;

    let consumer = kafka::consumer(&env.kafka, &env.group("roundtrip"))?;
    consumer.subscribe(&[&encoded.topic])?;
    let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await??;
    assert_eq!(message.key(), Some(order_id.to_string().as_bytes()));
    let received = codec.decode(message.payload()).await?;
    assert_eq!(received, sent);
    assert_eq!(
        saga_common::consumer::header_value(&message, "event_type").as_deref(),
        Some("order.created")
    );
    Ok(())
}

#[tokio::test]
async fn events_with_the_same_key_always_land_in_one_partition() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let codec = EventCodec::new(&env.registry, &env.kafka)?;
    let producer = kafka::producer(&env.kafka)?;
    let order_ids: Vec<OrderId> = (0..24).map(|_| OrderId::new()).collect();
    let mut partitions_by_key: HashMap<OrderId, HashSet<i32>> = HashMap::new();
    for round in 0..5 {
        for order_id in &order_ids {
            let encoded = codec.encode(&order_created(*order_id)).await?;
            let (partition, _) = produce(&producer, &encoded).await;
            partitions_by_key.entry(*order_id).or_default().insert(partition);
            assert!(
                (0..6).contains(&partition),
                "round {round}: partition {partition} out of range"
            );
        }
    }
    for (key, partitions) in &partitions_by_key {
        assert_eq!(partitions.len(), 1, "key {key} landed in partitions {partitions:?}");
    }
    let used: HashSet<i32> = partitions_by_key.values().flatten().copied().collect();
    assert!(
        used.len() > 1,
        "24 keys should spread over more than one of 6 partitions, used {used:?}"
    );
    Ok(())
}

/// Fails one chosen event with an error of a chosen class (a transient one only until
/// released), recording the events it completed.
struct FailingHandler {
    failing_event_id: Option<EventId>,
    class: ErrorClass,
    released: AtomicBool,
    attempts_on_failing: AtomicUsize,
    completed: Mutex<Vec<EventId>>,
}

impl FailingHandler {
    /// A handler that fails `failing_event_id` with an error of `class`.
    fn new(failing_event_id: Option<EventId>, class: ErrorClass) -> Arc<Self> {
        Arc::new(Self {
            failing_event_id,
            class,
            released: AtomicBool::new(false),
            attempts_on_failing: AtomicUsize::new(0),
            completed: Mutex::new(Vec::new()),
        })
    }

    /// A handler that fails `failing_event_id` transiently until released.
    fn transient(failing_event_id: EventId, released: bool) -> Arc<Self> {
        let handler = Self::new(Some(failing_event_id), ErrorClass::Transient);
        handler.released.store(released, Ordering::SeqCst);
        handler
    }

    fn completed(&self) -> Vec<EventId> {
        self.completed.lock().expect("lock").clone()
    }

    fn attempts(&self) -> usize {
        self.attempts_on_failing.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl EventHandler for FailingHandler {
    async fn handle(&self, event: &ConsumedEvent) -> Result<(), HandlerError> {
        let event_id = event.event.event_id();
        if Some(event_id) == self.failing_event_id && !self.released.load(Ordering::SeqCst) {
            self.attempts_on_failing.fetch_add(1, Ordering::SeqCst);
            return Err(match self.class {
                ErrorClass::Transient => HandlerError::Transient(anyhow::anyhow!("database down (simulated)")),
                ErrorClass::Permanent => HandlerError::permanent("a constraint rejects this event (simulated)"),
                ErrorClass::Unclassified => HandlerError::Unclassified(anyhow::anyhow!("nobody knows (simulated)")),
            });
        }
        self.completed.lock().expect("lock").push(event_id);
        Ok(())
    }
}

/// How many unclassified failures the loops in these tests allow before dead-lettering.
const UNCLASSIFIED_ATTEMPTS: u32 = 3;

/// A consumer loop of `group` on `topics`, dead-lettering to `dead_letters`, retrying fast.
fn consumer_loop(env: &TestEnv, group: &str, topics: &[String], dead_letters: &str) -> anyhow::Result<ConsumerLoop> {
    Ok(ConsumerLoop {
        consumer: kafka::subscribed_consumer(&env.kafka, group, topics)?,
        codec: Arc::new(EventCodec::new(&env.registry, &env.kafka)?),
        producer: kafka::producer(&env.kafka)?,
        dead_letter_topic: dead_letters.to_owned(),
        group_id: group.to_owned(),
        policy: ErrorPolicy {
            backoff: Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(100),
            },
            unclassified_attempts: UNCLASSIFIED_ATTEMPTS,
        },
        health: Arc::new(HealthState::default()),
        batch_size: 64,
        batch_linger: Duration::ZERO,
    })
}

async fn committed_offset(env: &TestEnv, group: &str, topic: &str, partition: i32) -> anyhow::Result<Option<i64>> {
    let probe: StreamConsumer = kafka::consumer(&env.kafka, group)?;
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let committed =
        tokio::task::spawn_blocking(move || probe.committed_offsets(list, Duration::from_secs(10))).await??;
    Ok(match committed.find_partition(topic, partition).map(|p| p.offset()) {
        Some(Offset::Offset(offset)) => Some(offset),
        _ => None,
    })
}

/// Waits until `group` has committed `offset` on `topic`'s `partition`.
async fn wait_for_committed(
    env: &TestEnv,
    group: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> anyhow::Result<()> {
    eventually(
        &format!("offset {offset} committed"),
        Duration::from_secs(60),
        || async { (committed_offset(env, group, topic, partition).await.ok()? == Some(offset)).then_some(()) },
    )
    .await
}

/// Produces `count` order.created events of one order (so to one partition, in order);
/// returns them with their partition and the offset of the first.
async fn produce_events_of_one_order(env: &TestEnv, count: usize) -> anyhow::Result<(Vec<SagaEvent>, i32, i64)> {
    let codec = EventCodec::new(&env.registry, &env.kafka)?;
    let producer = kafka::producer(&env.kafka)?;
    let order_id = OrderId::new();
    let events: Vec<SagaEvent> = (0..count).map(|_| order_created(order_id)).collect();
    let mut placed = Vec::new();
    for event in &events {
        placed.push(produce(&producer, &codec.encode(event).await?).await);
    }
    let (partition, first_offset) = placed[0];
    Ok((events, partition, first_offset))
}

#[tokio::test]
async fn a_consumer_stores_its_offset_only_after_its_handler_succeeds() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let dead_letters = env.topic("offsets.dead-letter", 1).await?;
    // Three events of one order: same partition, consumed in order.
    let (events, partition, first_offset) = produce_events_of_one_order(&env, 3).await?;
    let topic = env.kafka.topic(Topic::Orders);

    let handler = FailingHandler::transient(events[1].event_id(), false);
    let group = env.group("offsets");
    let consumer_loop = consumer_loop(&env, &group, std::slice::from_ref(&topic), &dead_letters)?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer_loop.run(handler.clone(), shutdown.clone()));

    // The second event keeps failing: it is retried, never skipped, and the committed offset
    // stops right after the first event.
    eventually("retries of the failing event", Duration::from_secs(60), || async {
        (handler.attempts() >= 5).then_some(())
    })
    .await?;
    wait_for_committed(&env, &group, &topic, partition, first_offset + 1).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await; // two auto-commit intervals
    assert_eq!(
        committed_offset(&env, &group, &topic, partition).await?,
        Some(first_offset + 1)
    );
    assert_eq!(handler.completed(), vec![events[0].event_id()]);

    // Once the handler succeeds, the remaining events are processed and their offsets stored.
    handler.released.store(true, Ordering::SeqCst);
    wait_for_committed(&env, &group, &topic, partition, first_offset + 3).await?;
    let expected: Vec<EventId> = events.iter().map(SagaEvent::event_id).collect();
    assert_eq!(handler.completed(), expected);
    shutdown.cancel();
    running.await?;
    Ok(())
}

#[tokio::test]
async fn a_consumer_stopped_before_its_handler_succeeds_redelivers_the_event() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let codec = Arc::new(EventCodec::new(&env.registry, &env.kafka)?);
    let producer = kafka::producer(&env.kafka)?;
    let dead_letters = env.topic("redeliver.dead-letter", 1).await?;
    let event = order_created(OrderId::new());
    produce(&producer, &codec.encode(&event).await?).await;
    let topic = env.kafka.topic(Topic::Orders);
    let group = env.group("redeliver");
    let run_once = |released: bool| {
        let handler = FailingHandler::transient(event.event_id(), released);
        let consumer_loop =
            consumer_loop(&env, &group, std::slice::from_ref(&topic), &dead_letters).expect("consumer loop");
        let shutdown = CancellationToken::new();
        (
            handler.clone(),
            shutdown.clone(),
            tokio::spawn(consumer_loop.run(handler, shutdown)),
        )
    };

    // First consumer: the handler never succeeds; it is shut down mid-retry.
    let (failing, shutdown, running) = run_once(false);
    eventually("first attempts", Duration::from_secs(60), || async {
        (failing.attempts() >= 2).then_some(())
    })
    .await?;
    shutdown.cancel();
    running.await?;
    assert!(failing.completed().is_empty());

    // Second consumer of the same group gets the same event again and completes it.
    let (succeeding, shutdown, running) = run_once(true);
    eventually("redelivery", Duration::from_secs(60), || async {
        (!succeeding.completed().is_empty()).then_some(())
    })
    .await?;
    assert_eq!(succeeding.completed(), vec![event.event_id()]);
    shutdown.cancel();
    running.await?;
    Ok(())
}

#[tokio::test]
async fn an_idle_member_takes_over_the_partition_when_its_holder_leaves() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let codec = Arc::new(EventCodec::new(&env.registry, &env.kafka)?);
    let producer = kafka::producer(&env.kafka)?;
    let dead_letters = env.topic("takeover.dead-letter", 1).await?;
    let topic = env.topic("takeover", 1).await?;
    let group = env.group("takeover");
    let topics = vec![topic.clone()];

    // Another member holds the topic's only partition, so the loop's member gets none.
    let holder = Arc::new(kafka::subscribed_consumer(&env.kafka, &group, &topics)?);
    let polling = tokio::spawn({
        let holder = holder.clone();
        async move { while holder.recv().await.is_ok() {} }
    });
    eventually(
        "the holder is assigned the partition",
        Duration::from_secs(60),
        || async { (holder.assignment().ok()?.count() == 1).then_some(()) },
    )
    .await?;

    let handler = FailingHandler::new(None, ErrorClass::Transient);
    let consumer_loop = consumer_loop(&env, &group, &topics, &dead_letters)?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer_loop.run(handler.clone(), shutdown.clone()));
    // The loop's member joins and, with one partition and two members, stays idle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(handler.completed().is_empty());

    // The holder leaves; the group rebalances and the idle member takes the partition.
    polling.abort();
    let _ = polling.await;
    let holder = Arc::into_inner(holder).expect("the polling task released the holder");
    tokio::task::spawn_blocking(move || drop(holder)).await?;
    let event = order_created(OrderId::new());
    let encoded = codec.encode(&event).await?;
    let record = FutureRecord::to(&topic).key(&encoded.key).payload(&encoded.payload);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(error, _)| error)?;
    eventually(
        "the event consumed after the holder left",
        Duration::from_secs(90),
        || async { (!handler.completed().is_empty()).then_some(()) },
    )
    .await?;
    assert_eq!(handler.completed(), vec![event.event_id()]);
    shutdown.cancel();
    running.await?;
    Ok(())
}

/// Runs a consumer loop over three events of one order whose middle one fails with an error of
/// `class` for good; returns the handler, the events, the records that reached the dead-letter
/// topic, and the committed offset relative to the first event.
async fn run_with_a_failing_middle_event(
    class: ErrorClass,
) -> anyhow::Result<(Arc<FailingHandler>, Vec<SagaEvent>, Vec<saga_tests::RawRecord>)> {
    let env = TestEnv::new().await?;
    let dead_letters = env.topic(&format!("{class}.dead-letter"), 1).await?;
    let (events, partition, first_offset) = produce_events_of_one_order(&env, 3).await?;
    let topic = env.kafka.topic(Topic::Orders);
    let handler = FailingHandler::new(Some(events[1].event_id()), class);
    let group = env.group(&format!("{class}-failure"));
    let consumer_loop = consumer_loop(&env, &group, std::slice::from_ref(&topic), &dead_letters)?;
    let health = consumer_loop.health.clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer_loop.run(handler.clone(), shutdown.clone()));

    // The partition goes on past the failing event: every offset is committed.
    wait_for_committed(&env, &group, &topic, partition, first_offset + 3).await?;
    let dead = env
        .reader(&dead_letters)?
        .read_raw_to_end(Duration::from_secs(20))
        .await?;
    assert_eq!(health.dead_lettered(), 1, "the dead letter is counted");
    shutdown.cancel();
    running.await?;
    Ok((handler, events, dead))
}

#[tokio::test]
async fn a_permanent_handler_error_dead_letters_the_event_at_once_and_the_partition_goes_on() -> anyhow::Result<()> {
    let (handler, events, dead) = run_with_a_failing_middle_event(ErrorClass::Permanent).await?;
    assert_eq!(handler.attempts(), 1, "a permanent error is not retried");
    assert_eq!(handler.completed(), vec![events[0].event_id(), events[2].event_id()]);
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].header("event_id"),
        Some(events[1].event_id().to_string().as_str())
    );
    let reason = dead[0].header("dlq.error").unwrap_or_default();
    assert!(reason.starts_with("permanent error after 1 attempt(s)"), "{reason}");
    assert!(reason.contains("a constraint rejects this event"), "{reason}");
    Ok(())
}

#[tokio::test]
async fn an_unclassified_handler_error_is_retried_within_the_budget_then_dead_lettered() -> anyhow::Result<()> {
    let (handler, events, dead) = run_with_a_failing_middle_event(ErrorClass::Unclassified).await?;
    assert_eq!(handler.attempts(), UNCLASSIFIED_ATTEMPTS as usize);
    assert_eq!(handler.completed(), vec![events[0].event_id(), events[2].event_id()]);
    assert_eq!(dead.len(), 1);
    let reason = dead[0].header("dlq.error").unwrap_or_default();
    assert!(
        reason.starts_with(&format!("unclassified error after {UNCLASSIFIED_ATTEMPTS} attempt(s)")),
        "{reason}"
    );
    Ok(())
}

/// A database with only the shared library's tables (outbox, inbox, parked rows).
async fn machinery_database(env: &TestEnv) -> anyhow::Result<sqlx::PgPool> {
    let migrator = saga_common::database::migrator(&sqlx::migrate::Migrator::DEFAULT);
    Ok(saga_common::database::connect_and_migrate(&env.database_url("machinery"), &migrator, 4).await?)
}

#[tokio::test]
async fn an_outbox_row_that_can_never_be_published_is_parked_and_the_rows_behind_it_publish() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let database = machinery_database(&env).await?;
    let health = Arc::new(HealthState::default());
    let relay = saga_common::outbox::Relay::new(
        database.clone(),
        kafka::producer(&env.kafka)?,
        Arc::new(env.codec()?),
        ErrorPolicy::default(),
        health.clone(),
    );
    // First in line: a row whose payload is no event of this build (as if written by a
    // release with a contract this one lacks); behind it, a valid event.
    let unpublishable = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, partition_key, payload, traceparent) \
         VALUES ($1, 'order.teleported', 'k', '{\"type\": \"OrderTeleported\", \"event\": {}}', 'tp')",
    )
    .bind(unpublishable)
    .execute(&database)
    .await?;
    let valid = order_created(OrderId::new());
    let mut tx = database.begin().await?;
    saga_common::outbox::enqueue(&mut tx, &valid, None).await?;
    tx.commit().await?;

    assert_eq!(relay.publish_batch().await?, 2, "both rows leave the outbox");
    assert_eq!(saga_common::outbox::pending(&database).await?, 0);
    let published = env
        .reader(&env.kafka.topic(Topic::Orders))?
        .read_until(Duration::from_secs(30), |records| !records.is_empty())
        .await?;
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].event.as_ref().ok(), Some(&valid));

    let parked = saga_common::outbox::list_parked(&database).await?;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].event_id, unpublishable);
    assert!(
        parked[0].reason.starts_with("permanent error: cannot encode event"),
        "{}",
        parked[0].reason
    );
    assert_eq!(health.parked(), 1, "the parked row is counted");

    // Redriven, it goes back to the end of the outbox; still unpublishable, it is parked again.
    let redriven = saga_common::outbox::redrive_parked(&database, Some(&[unpublishable])).await?;
    assert_eq!(redriven, vec![unpublishable]);
    assert_eq!(saga_common::outbox::pending(&database).await?, 1);
    assert_eq!(relay.publish_batch().await?, 1);
    assert_eq!(saga_common::outbox::list_parked(&database).await?.len(), 1);
    assert_eq!(health.parked(), 2);
    Ok(())
}

#[tokio::test]
async fn a_background_task_that_dies_makes_liveness_fail_and_names_it() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let spec = saga_common::service::ServiceSpec::new("liveness-probe", "liveness_probe", 0);
    let shutdown = CancellationToken::new();
    let context = saga_common::service::ServiceContext::start(
        spec,
        &env.service_config("liveness"),
        &sqlx::migrate::Migrator::DEFAULT,
        shutdown.clone(),
    )
    .await?
    .ok_or_else(|| anyhow::anyhow!("the service did not start"))?;
    let crash = tokio::sync::Notify::new();
    let crash = Arc::new(crash);
    let trigger = crash.clone();
    let workload = saga_common::service::Workload {
        consumer: None,
        background: vec![saga_common::service::BackgroundTask::new("exploder", async move {
            trigger.notified().await;
            panic!("simulated worker crash");
        })],
    };
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let running = context
        .launch(
            listen,
            axum::Router::new(),
            saga_common::openapi::OpenApi::default(),
            workload,
        )
        .await?;
    let live_url = format!("http://{}/health/live", running.local_addr);

    let live = saga_tests::get(&live_url).await?;
    assert_eq!(live.status(), 200);
    let body: serde_json::Value = live.json().await?;
    assert_eq!(body["tasks"]["exploder"], "running");
    assert_eq!(body["tasks"]["outbox relay"], "running");
    let ready = saga_tests::get(format!("http://{}/health/ready", running.local_addr)).await?;
    assert_eq!(ready.status(), 200, "ready needs database, broker and registry, all up");

    crash.notify_one();
    let body = eventually("liveness fails", Duration::from_secs(10), || async {
        let live = saga_tests::get(&live_url).await.ok()?;
        (live.status() == 503).then_some(())?;
        live.json::<serde_json::Value>().await.ok()
    })
    .await?;
    assert_eq!(body["status"], "dead");
    assert_eq!(body["tasks"]["exploder"], "died: panicked: simulated worker crash");
    assert_eq!(
        body["tasks"]["outbox relay"], "running",
        "the rest of the service goes on"
    );
    running.stop().await;
    Ok(())
}

/// Starts a registry on `listen` over `topic` of the test broker, with these users.
async fn registry_with_users(
    env: &TestEnv,
    topic: &str,
    listen: std::net::SocketAddr,
    users: &str,
) -> anyhow::Result<schema_registry::RunningRegistry> {
    let config = schema_registry::RegistryConfig {
        listen,
        users: Some(users.parse().map_err(anyhow::Error::msg)?),
        ..schema_registry::RegistryConfig::new(env.kafka.bootstrap_servers.clone(), topic)
    };
    Ok(schema_registry::Registry::start(config).await?)
}

#[tokio::test]
async fn with_registry_credentials_the_codec_and_the_probe_work_and_refused_ones_are_transient() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let schemas_topic = format!("{}_schemas", env.prefix);
    let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let registry = registry_with_users(&env, &schemas_topic, any_port, "saga:right-password:write").await?;
    let address = registry.local_addr();
    let as_user = |password: Option<&str>| {
        RegistryConfig::new(registry.url()).with_user_info(password.map(|p| RegistryUserInfo::new("saga", p)))
    };
    let http = reqwest::Client::new();

    let codec = EventCodec::new(&as_user(Some("right-password")), &env.kafka)?;
    let sent = order_created(OrderId::new());
    let encoded = codec.encode(&sent).await?;
    assert_eq!(codec.decode(Some(&encoded.payload)).await?, sent);
    saga_common::health::probe_registry(&http, &as_user(Some("right-password")))
        .await
        .map_err(anyhow::Error::msg)?;

    // Missing or wrong credentials are the deployment's fault, not the event's: transient, so
    // nothing is dead-lettered or parked for them, and the probe says what is wrong.
    let anonymous = EventCodec::new(&as_user(None), &env.kafka)?;
    let error = anonymous
        .decode(Some(&encoded.payload))
        .await
        .expect_err("no credentials");
    assert!(matches!(error, DecodeError::Transient(_)), "{error:?}");
    let error = anonymous.encode(&sent).await.expect_err("no credentials");
    assert_eq!(error.class(), ErrorClass::Transient, "{error:?}");
    let refused = saga_common::health::probe_registry(&http, &as_user(None)).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|reason| reason.contains("401") && reason.contains("requires credentials")),
        "{refused:?}"
    );
    let refused = saga_common::health::probe_registry(&http, &as_user(Some("old-password"))).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|reason| reason.contains("refuses user 'saga'")),
        "{refused:?}"
    );

    // A codec whose password the registry refuses recovers, without a restart, once the
    // registry accepts it: the failures are not kept in the codec's caches.
    let outdated = EventCodec::new(&as_user(Some("old-password")), &env.kafka)?;
    let other = order_created(OrderId::new());
    assert!(matches!(
        outdated.decode(Some(&encoded.payload)).await,
        Err(DecodeError::Transient(_))
    ));
    assert!(outdated.encode(&other).await.is_err());
    registry.shutdown().await?;
    let registry = registry_with_users(&env, &schemas_topic, address, "saga:old-password:write").await?;
    assert_eq!(outdated.decode(Some(&encoded.payload)).await?, sent);
    assert_eq!(
        outdated.decode(Some(&outdated.encode(&other).await?.payload)).await?,
        other
    );
    registry.shutdown().await?;
    Ok(())
}

/// A batching handler over a real database: each event it applies leaves a row (with the id of
/// the transaction that wrote it) in `applied`; one event it refuses for good AFTER writing its
/// row, one it fails transiently until released.
struct TableHandler {
    database: sqlx::PgPool,
    refused: Option<EventId>,
    failing_until_released: Option<EventId>,
    released: AtomicBool,
}

#[async_trait]
impl EventHandler for TableHandler {
    async fn handle(&self, event: &ConsumedEvent) -> Result<(), HandlerError> {
        saga_common::consumer::handle_alone(self, event).await
    }

    fn batched(&self) -> Option<&dyn BatchHandler> {
        Some(self)
    }
}

#[async_trait]
impl BatchHandler for TableHandler {
    fn database(&self) -> &sqlx::PgPool {
        &self.database
    }

    fn wants(&self, _event: &ConsumedEvent) -> bool {
        true
    }

    async fn apply(
        &self,
        tx: &mut sqlx::PgConnection,
        event: &ConsumedEvent,
    ) -> Result<Option<AfterCommit>, HandlerError> {
        let event_id = event.event.event_id();
        if Some(event_id) == self.failing_until_released && !self.released.load(Ordering::SeqCst) {
            return Err(HandlerError::Transient(anyhow::anyhow!("database hiccup (simulated)")));
        }
        sqlx::query("INSERT INTO applied (event_id, txid) VALUES ($1, txid_current())")
            .bind(event_id.uuid())
            .execute(&mut *tx)
            .await?;
        if Some(event_id) == self.refused {
            return Err(HandlerError::permanent("refused after writing (simulated)"));
        }
        Ok(None)
    }
}

/// The `applied` rows: event id and the transaction that wrote it.
async fn applied(database: &sqlx::PgPool) -> anyhow::Result<Vec<(uuid::Uuid, i64)>> {
    Ok(sqlx::query_as("SELECT event_id, txid FROM applied")
        .fetch_all(database)
        .await?)
}

/// Produces `count` events of one order (and, with `copy_of_first`, the first one again after
/// them), then runs a consumer loop with `handler` (made from the events and a fresh database)
/// until every offset is committed; returns the events, the database and the dead letters.
async fn run_batched(
    count: usize,
    copy_of_first: bool,
    handler: impl FnOnce(&[SagaEvent], sqlx::PgPool) -> Arc<TableHandler>,
) -> anyhow::Result<(Vec<SagaEvent>, sqlx::PgPool, Vec<saga_tests::RawRecord>)> {
    let env = TestEnv::new().await?;
    let database = machinery_database(&env).await?;
    sqlx::query("CREATE TABLE applied (event_id uuid PRIMARY KEY, txid bigint NOT NULL)")
        .execute(&database)
        .await?;
    let dead_letters = env.topic("batch.dead-letter", 1).await?;
    // All produced before the consumer starts: its worker finds them in hand together.
    let (events, partition, first_offset) = produce_events_of_one_order(&env, count).await?;
    let mut records = count as i64;
    if copy_of_first {
        env.produce(&events[0]).await?;
        records += 1;
    }
    let topic = env.kafka.topic(Topic::Orders);
    let handler = handler(&events, database.clone());
    let group = env.group("batch");
    let consumer_loop = consumer_loop(&env, &group, std::slice::from_ref(&topic), &dead_letters)?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer_loop.run(handler.clone(), shutdown.clone()));
    if handler.failing_until_released.is_some() {
        // Nothing of the batch commits while one of its events fails: it is rolled back and
        // retried one by one, the failing event holding up the rest of its partition.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before_release = applied(&database).await?.len();
        assert!(
            before_release < count,
            "{before_release} of {count} applied while one fails"
        );
        handler.released.store(true, Ordering::SeqCst);
    }
    wait_for_committed(&env, &group, &topic, partition, first_offset + records).await?;
    let dead = env
        .reader(&dead_letters)?
        .read_raw_to_end(Duration::from_secs(20))
        .await?;
    shutdown.cancel();
    running.await?;
    Ok((events, database, dead))
}

#[tokio::test]
async fn events_in_hand_together_commit_in_one_transaction_and_a_copy_among_them_is_applied_once() -> anyhow::Result<()>
{
    let (events, database, dead) = run_batched(6, true, |_, database| {
        Arc::new(TableHandler {
            database,
            refused: None,
            failing_until_released: None,
            released: AtomicBool::new(false),
        })
    })
    .await?;
    let rows = applied(&database).await?;
    let applied_ids: HashSet<uuid::Uuid> = rows.iter().map(|(event_id, _)| *event_id).collect();
    let expected: HashSet<uuid::Uuid> = events.iter().map(|event| event.event_id().uuid()).collect();
    assert_eq!(applied_ids, expected);
    assert_eq!(rows.len(), events.len(), "the copy of the first event is applied once");
    let transactions: HashSet<i64> = rows.iter().map(|(_, txid)| *txid).collect();
    assert!(
        transactions.len() < rows.len(),
        "events in hand together share a transaction: {} transactions for {} events",
        transactions.len(),
        rows.len()
    );
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&database)
        .await?;
    assert_eq!(inbox, events.len() as i64, "each event once in the inbox");
    assert!(dead.is_empty(), "nothing dead-lettered: {} records", dead.len());
    Ok(())
}

#[tokio::test]
async fn an_event_refused_for_good_in_a_batch_is_rolled_back_and_dead_lettered_alone() -> anyhow::Result<()> {
    let (events, database, dead) = run_batched(6, false, |events, database| {
        Arc::new(TableHandler {
            database,
            refused: Some(events[2].event_id()),
            failing_until_released: None,
            released: AtomicBool::new(false),
        })
    })
    .await?;
    let rows = applied(&database).await?;
    let applied_ids: HashSet<uuid::Uuid> = rows.iter().map(|(event_id, _)| *event_id).collect();
    let expected: HashSet<uuid::Uuid> = events
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != 2)
        .map(|(_, event)| event.event_id().uuid())
        .collect();
    assert_eq!(
        applied_ids, expected,
        "the refused event's own write is rolled back, no other"
    );
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&database)
        .await?;
    assert_eq!(inbox, 5, "each applied event once in the inbox, the refused one not");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].header("event_id"),
        Some(events[2].event_id().to_string().as_str())
    );
    let reason = dead[0].header("dlq.error").unwrap_or_default();
    assert!(reason.starts_with("permanent error after 1 attempt(s)"), "{reason}");
    assert!(reason.contains("refused after writing"), "{reason}");
    Ok(())
}

#[tokio::test]
async fn a_batch_that_fails_transiently_is_rolled_back_and_its_events_applied_one_by_one_exactly_once(
) -> anyhow::Result<()> {
    let (events, database, dead) = run_batched(6, false, |events, database| {
        Arc::new(TableHandler {
            database,
            refused: None,
            failing_until_released: Some(events[3].event_id()),
            released: AtomicBool::new(false),
        })
    })
    .await?;
    let applied_ids: Vec<uuid::Uuid> = applied(&database).await?.into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        applied_ids.len(),
        events.len(),
        "each event applied once: {applied_ids:?}"
    );
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&database)
        .await?;
    assert_eq!(inbox, events.len() as i64);
    assert!(dead.is_empty(), "nothing dead-lettered: {} records", dead.len());
    Ok(())
}

#[tokio::test]
async fn a_consumer_with_a_linger_waits_for_records_arriving_one_by_one_and_applies_them_together() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let database = machinery_database(&env).await?;
    sqlx::query("CREATE TABLE applied (event_id uuid PRIMARY KEY, txid bigint NOT NULL)")
        .execute(&database)
        .await?;
    let dead_letters = env.topic("linger.dead-letter", 1).await?;
    let topic = env.kafka.topic(Topic::Orders);
    let group = env.group("linger");
    let handler = Arc::new(TableHandler {
        database: database.clone(),
        refused: None,
        failing_until_released: None,
        released: AtomicBool::new(false),
    });
    let mut consumer_loop = consumer_loop(&env, &group, std::slice::from_ref(&topic), &dead_letters)?;
    consumer_loop.batch_linger = Duration::from_secs(3);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer_loop.run(handler.clone(), shutdown.clone()));
    // A first event, once applied, shows the consumer has its partition.
    let (first, partition, first_offset) = produce_events_of_one_order(&env, 1).await?;
    wait_for_committed(&env, &group, &topic, partition, first_offset + 1).await?;
    // Four more of the same order, 200 ms apart: without a linger each would find the worker
    // idle and commit alone.
    let order_id = first[0].order_id().expect("an order's event");
    for _ in 0..4 {
        env.produce(&order_created(order_id)).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for_committed(&env, &group, &topic, partition, first_offset + 5).await?;
    shutdown.cancel();
    running.await?;
    let rows = applied(&database).await?;
    assert_eq!(rows.len(), 5, "every event applied once");
    let transactions: HashSet<i64> = rows.iter().map(|(_, txid)| *txid).collect();
    assert!(
        transactions.len() < rows.len(),
        "events 200 ms apart share a transaction within a 3 s linger: {} transactions for 5 events",
        transactions.len()
    );
    Ok(())
}

#[tokio::test]
async fn the_relay_publishes_at_most_its_batch_size_per_batch_in_outbox_order() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let database = machinery_database(&env).await?;
    let relay = saga_common::outbox::Relay::new(
        database.clone(),
        kafka::producer(&env.kafka)?,
        Arc::new(env.codec()?),
        ErrorPolicy::default(),
        Arc::new(HealthState::default()),
    )
    .with_settings(RelaySettings {
        batch_size: 2,
        linger: Duration::ZERO,
    });
    let order_id = OrderId::new();
    let events: Vec<SagaEvent> = (0..5).map(|_| order_created(order_id)).collect();
    let mut tx = database.begin().await?;
    for event in &events {
        saga_common::outbox::enqueue(&mut tx, event, None).await?;
    }
    tx.commit().await?;

    let batches = [
        relay.publish_batch().await?,
        relay.publish_batch().await?,
        relay.publish_batch().await?,
    ];
    assert_eq!(batches, [2, 2, 1]);
    assert_eq!(saga_common::outbox::pending(&database).await?, 0);
    let published = env
        .reader(&env.kafka.topic(Topic::Orders))?
        .read_until(Duration::from_secs(30), |records| records.len() >= 5)
        .await?;
    let published: Vec<&SagaEvent> = published
        .iter()
        .filter_map(|record| record.event.as_ref().ok())
        .collect();
    assert_eq!(published, events.iter().collect::<Vec<_>>(), "one key, in outbox order");
    Ok(())
}
