//! The shared library against the real broker and registry: Avro events keyed by order id on
//! 6-partition topics, and the at-least-once consumer loop's offset discipline.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use saga_common::codec::{EncodedEvent, EventCodec};
use saga_common::consumer::{event_headers, ConsumedEvent, ConsumerLoop, EventHandler, HandlerError};
use saga_common::kafka;
use saga_common::retry::Backoff;
use saga_contracts::{OrderCreated, OrderLine, SagaEvent, Topic};
use saga_tests::{eventually, TestEnv};
use tokio_util::sync::CancellationToken;

fn order_created(order_id: &str) -> SagaEvent {
    SagaEvent::OrderCreated(OrderCreated {
        event_id: uuid::Uuid::new_v4().to_string(),
        order_id: order_id.to_string(),
        causation_id: None,
        occurred_at: 1_763_700_000_000,
        customer_id: "c-1".into(),
        customer_email: "a@example.com".into(),
        payment_token: "tok_ok".into(),
        total_minor: 3998,
        currency: "USD".into(),
        items: vec![OrderLine {
            sku: "SKU-1".into(),
            quantity: 2,
            unit_price_minor: 1999,
        }],
        sales_channel: "api".into(),
    })
}

async fn produce(producer: &FutureProducer, encoded: &EncodedEvent) -> (i32, i64) {
    let headers = event_headers(
        encoded.event_type.as_str(),
        &encoded.event_id,
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
    let order_id = uuid::Uuid::new_v4().to_string();
    let sent = order_created(&order_id);
    let encoded = codec.encode(&sent).await?;
    assert_eq!(encoded.topic, env.kafka.topic(Topic::Orders));
    assert_eq!(encoded.key, order_id);
    assert_eq!(encoded.payload[0], 0, "Confluent framing starts with magic byte 0");
    produce(&producer, &encoded).await;

    let consumer = kafka::consumer(&env.kafka, &env.group("roundtrip"))?;
    consumer.subscribe(&[&encoded.topic])?;
    let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await??;
    assert_eq!(message.key(), Some(order_id.as_bytes()));
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
    let order_ids: Vec<String> = (0..24).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let mut partitions_by_key: HashMap<String, HashSet<i32>> = HashMap::new();
    for round in 0..5 {
        for order_id in &order_ids {
            let encoded = codec.encode(&order_created(order_id)).await?;
            let (partition, _) = produce(&producer, &encoded).await;
            partitions_by_key.entry(order_id.clone()).or_default().insert(partition);
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

/// Fails transiently on one chosen event until released, recording what it completed.
struct GatedHandler {
    blocked_event_id: String,
    released: AtomicBool,
    attempts_on_blocked: AtomicUsize,
    completed: Mutex<Vec<String>>,
}

impl GatedHandler {
    /// A handler that fails `blocked_event_id` transiently until `released`.
    fn new(blocked_event_id: impl Into<String>, released: bool) -> Arc<Self> {
        Arc::new(Self {
            blocked_event_id: blocked_event_id.into(),
            released: AtomicBool::new(released),
            attempts_on_blocked: AtomicUsize::new(0),
            completed: Mutex::new(Vec::new()),
        })
    }
}

#[async_trait]
impl EventHandler for GatedHandler {
    async fn handle(&self, event: &ConsumedEvent) -> Result<(), HandlerError> {
        let event_id = event.event.event_id().to_string();
        if event_id == self.blocked_event_id {
            self.attempts_on_blocked.fetch_add(1, Ordering::SeqCst);
            if !self.released.load(Ordering::SeqCst) {
                return Err(HandlerError::Transient(anyhow::anyhow!("database down (simulated)")));
            }
        }
        self.completed.lock().expect("lock").push(event_id);
        Ok(())
    }
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

#[tokio::test]
async fn a_consumer_stores_its_offset_only_after_its_handler_succeeds() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let codec = Arc::new(EventCodec::new(&env.registry, &env.kafka)?);
    let producer = kafka::producer(&env.kafka)?;
    let dead_letters = env.topic("offsets.dead-letter", 1).await?;
    // Three events of one order: same partition, consumed in order.
    let order_id = uuid::Uuid::new_v4().to_string();
    let events: Vec<SagaEvent> = (0..3).map(|_| order_created(&order_id)).collect();
    let mut placed = Vec::new();
    for event in &events {
        placed.push(produce(&producer, &codec.encode(event).await?).await);
    }
    let (partition, first_offset) = placed[0];
    let topic = env.kafka.topic(Topic::Orders);

    let handler = GatedHandler::new(events[1].event_id().to_string(), false);
    let group = env.group("offsets");
    let consumer = kafka::consumer(&env.kafka, &group)?;
    consumer.subscribe(&[&topic])?;
    let shutdown = CancellationToken::new();
    let consumer_loop = ConsumerLoop {
        consumer,
        codec: codec.clone(),
        producer: producer.clone(),
        dead_letter_topic: dead_letters,
        group_id: group.clone(),
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
        },
    };
    let running = tokio::spawn(consumer_loop.run(handler.clone(), shutdown.clone()));

    // The second event keeps failing: it is retried, never skipped, and the committed offset
    // stops right after the first event.
    eventually("retries of the failing event", Duration::from_secs(60), || async {
        (handler.attempts_on_blocked.load(Ordering::SeqCst) >= 5).then_some(())
    })
    .await?;
    eventually(
        "offset of the first event committed",
        Duration::from_secs(20),
        || async {
            (committed_offset(&env, &group, &topic, partition).await.ok()? == Some(first_offset + 1)).then_some(())
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await; // two auto-commit intervals
    assert_eq!(
        committed_offset(&env, &group, &topic, partition).await?,
        Some(first_offset + 1)
    );
    assert_eq!(
        *handler.completed.lock().expect("lock"),
        vec![events[0].event_id().to_string()]
    );

    // Once the handler succeeds, the remaining events are processed and their offsets stored.
    handler.released.store(true, Ordering::SeqCst);
    eventually("all offsets committed", Duration::from_secs(20), || async {
        (committed_offset(&env, &group, &topic, partition).await.ok()? == Some(first_offset + 3)).then_some(())
    })
    .await?;
    let completed: Vec<String> = handler.completed.lock().expect("lock").clone();
    let expected: Vec<String> = events.iter().map(|e| e.event_id().to_string()).collect();
    assert_eq!(completed, expected);
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
    let event = order_created(&uuid::Uuid::new_v4().to_string());
    produce(&producer, &codec.encode(&event).await?).await;
    let topic = env.kafka.topic(Topic::Orders);
    let group = env.group("redeliver");
    let run_once = |released: bool| {
        let handler = GatedHandler::new(event.event_id().to_string(), released);
        let consumer = kafka::consumer(&env.kafka, &group).expect("consumer");
        consumer.subscribe(&[&topic]).expect("subscribe");
        let consumer_loop = ConsumerLoop {
            consumer,
            codec: codec.clone(),
            producer: producer.clone(),
            dead_letter_topic: dead_letters.clone(),
            group_id: group.clone(),
            backoff: Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(100),
            },
        };
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
        (failing.attempts_on_blocked.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await?;
    shutdown.cancel();
    running.await?;
    assert!(failing.completed.lock().expect("lock").is_empty());

    // Second consumer of the same group gets the same event again and completes it.
    let (succeeding, shutdown, running) = run_once(true);
    eventually("redelivery", Duration::from_secs(60), || async {
        (!succeeding.completed.lock().expect("lock").is_empty()).then_some(())
    })
    .await?;
    assert_eq!(
        *succeeding.completed.lock().expect("lock"),
        vec![event.event_id().to_string()]
    );
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

    let handler = GatedHandler::new(String::new(), true);
    let consumer_loop = ConsumerLoop {
        consumer: kafka::subscribed_consumer(&env.kafka, &group, &topics)?,
        codec: codec.clone(),
        producer: producer.clone(),
        dead_letter_topic: dead_letters,
        group_id: group.clone(),
        backoff: Backoff::default(),
    };
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer_loop.run(handler.clone(), shutdown.clone()));
    // The loop's member joins and, with one partition and two members, stays idle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(handler.completed.lock().expect("lock").is_empty());

    // The holder leaves; the group rebalances and the idle member takes the partition.
    polling.abort();
    let _ = polling.await;
    let holder = Arc::into_inner(holder).expect("the polling task released the holder");
    tokio::task::spawn_blocking(move || drop(holder)).await?;
    let event = order_created(&uuid::Uuid::new_v4().to_string());
    let encoded = codec.encode(&event).await?;
    let record = FutureRecord::to(&topic).key(&encoded.key).payload(&encoded.payload);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(error, _)| error)?;
    eventually(
        "the event consumed after the holder left",
        Duration::from_secs(90),
        || async { (!handler.completed.lock().expect("lock").is_empty()).then_some(()) },
    )
    .await?;
    assert_eq!(
        *handler.completed.lock().expect("lock"),
        vec![event.event_id().to_string()]
    );
    shutdown.cancel();
    running.await?;
    Ok(())
}
