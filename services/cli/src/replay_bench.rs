//! `sagactl replay-bench`: measures how fast each service's replay rebuilds its state. It writes
//! a synthetic saga history of N orders onto fresh topics (under a prefix of its own), replays
//! each asked service from it into a fresh database, and prints one table: events read,
//! seconds and events/s per service, with the replay's findings.
//!
//! The history is one the live platform could have recorded, event for event: stock adjustments
//! first, then per order its order.created, the participants' outcomes, the order's decision,
//! the commit or compensations it leads to, and the email sent, each caused by the event the
//! live service reacted to and each record timestamped with its event's time (replay orders
//! records by these). Replaying it therefore finds nothing; a finding means the history or a
//! service drifted from the saga, and fails the command. It cleans up its topics, schema
//! subjects and databases unless `--keep`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use saga_common::codec::{traceparent_for, EventCodec};
use saga_common::config::{redact_url, KafkaConfig, RegistryConfig};
use saga_common::consumer::event_headers;
use saga_common::kafka::{self, Retention, TopicSpec};
use saga_common::replay::{self, ReplayOptions};
use saga_contracts::{
    AdjustmentId, Envelope, EventId, EventType, FailureReason, InventoryCommitted, InventoryReleased,
    InventoryReservationFailed, InventoryReserved, NotificationSent, OrderConfirmed, OrderCreated, OrderFailed,
    OrderId, OrderLine, OrderOutcome, PaymentFailed, PaymentRefunded, PaymentSucceeded, SagaEvent, StockAdjusted,
    StockLine, Topic,
};
use sqlx::postgres::PgConnectOptions;
use sqlx::ConnectOptions;

use crate::replay::rebuilder;

/// Stocked SKUs the orders draw their lines from.
const STOCKED_SKUS: u64 = 100;
/// SKUs that are never stocked: an out-of-stock order asks for one of them.
const MISSING_SKUS: u64 = 10;
/// What names a never-stocked SKU.
const MISSING_MARK: &str = "-GONE-";
/// Most units one stock adjustment adds.
const MAX_ADJUSTMENT: i64 = 1_000_000;
/// Units each stocked SKU has left once every order took its share.
const SPARE_UNITS: i64 = 5;
/// Milliseconds between two events of one order, and between two stock adjustments.
const STEP_MS: i64 = 1;
/// Milliseconds from one order's order.created to the next one's: room for every event of an
/// order, so orders do not overlap and the whole history is in time order.
const ORDER_SLOT_MS: i64 = 10;
/// How long an order may wait for its outcomes (the order service's default saga deadline).
const SAGA_DEADLINE_MS: i64 = 30_000;
/// Orders generated and encoded per task.
const CHUNK_ORDERS: u64 = 2_000;
/// Chunks generated and encoded ahead of the producer.
const CHUNKS_AHEAD: usize = 4;
/// Records handed to the producer and not yet acknowledged before the writer waits.
const MAX_UNACKNOWLEDGED: usize = 200_000;

/// What `sagactl replay-bench` was asked.
pub(crate) struct BenchRequest<'a> {
    /// Orders in the history.
    pub(crate) orders: u64,
    /// Services to replay: order, payment, inventory, notification.
    pub(crate) services: &'a [String],
    /// PostgreSQL server URL the replay databases are created on.
    pub(crate) database_url_base: &'a str,
    /// Keep the topics, subjects and databases afterwards.
    pub(crate) keep: bool,
}

/// Writes the history, replays every asked service and prints the table; fails if a replay
/// found anything. Cleans up afterwards unless asked to keep.
pub(crate) async fn run(
    kafka: &KafkaConfig,
    registry: &RegistryConfig,
    request: &BenchRequest<'_>,
) -> anyhow::Result<()> {
    if request.orders == 0 {
        bail!("--orders must be at least 1");
    }
    for service in request.services {
        rebuilder(service)?;
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let bench_kafka = kafka
        .clone()
        .with_topic_prefix(format!("{}replaybench-{run_id}.", kafka.topic_prefix));
    let workload = Workload::new(&run_id, request.orders, seed_of(&run_id));
    let topics: Vec<TopicSpec> = Topic::ALL
        .iter()
        .map(|topic| TopicSpec {
            name: bench_kafka.topic(*topic),
            partitions: bench_kafka.topic_partitions,
            retention: Retention::Unlimited,
        })
        .collect();
    let databases: Vec<(String, String)> = request
        .services
        .iter()
        .map(|service| {
            let name = format!("replaybench_{run_id}_{}", short_name(service));
            let url = format!("{}/{name}", request.database_url_base.trim_end_matches('/'));
            (service.clone(), url)
        })
        .collect();

    let outcome = async {
        kafka::ensure_topics(&bench_kafka, &topics)
            .await
            .context("creating the benchmark's topics")?;
        println!(
            "replay benchmark {}: {} orders on {} topics of {} partitions",
            bench_kafka.topic_prefix.trim_end_matches('.'),
            request.orders,
            topics.len(),
            bench_kafka.topic_partitions
        );
        write_history(&bench_kafka, registry, Arc::new(workload)).await?;
        let mut measured = Vec::new();
        for (service, url) in &databases {
            measured.push(replay_service(&bench_kafka, registry, service, url).await?);
        }
        print_table(&measured);
        let found: usize = measured.iter().map(Measured::problems).sum();
        if found > 0 {
            bail!(
                "the replays found {found} difference(s) from the synthetic history: the history or a service drifted from the saga{}",
                if request.keep {
                    ""
                } else {
                    " (run again with --keep to inspect the replay_findings tables)"
                }
            );
        }
        Ok(())
    }
    .await;

    if request.keep {
        println!("kept the topics {}* and the databases:", bench_kafka.topic_prefix);
        for (_, url) in &databases {
            println!("    {}", redact_url(url));
        }
    } else {
        clean_up(&bench_kafka, registry, &topics, &databases).await;
    }
    outcome
}

/// `payment` and `payment-service` both give `payment`.
fn short_name(service: &str) -> &str {
    service.trim_end_matches("-service")
}

/// The seed of a run's plans: its id's bits.
fn seed_of(run_id: &str) -> u64 {
    u64::from_str_radix(run_id, 16).unwrap_or(0x5EED)
}

// ---- The synthetic history: pure, apart from the fresh ids of orders and events.

/// How an order's saga ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Branch {
    /// Paid and reserved: confirmed, the reservation committed.
    Confirmed,
    /// The gateway declines: failed, the held stock released.
    PaymentDeclined,
    /// A line cannot be reserved: failed, the capture refunded.
    OutOfStock,
}

/// A small deterministic generator (SplitMix64): one seed and order index always give the same
/// plan, so the stock can be worked out before the orders are written.
struct Dice(u64);

impl Dice {
    fn new(seed: u64, index: u64) -> Self {
        Self(seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What one order is, before it gets its ids and times.
#[derive(Debug, Clone, PartialEq)]
struct OrderPlan {
    index: u64,
    branch: Branch,
    /// Whether the payment service answers before the inventory service.
    payment_first: bool,
    /// Distinct SKUs.
    lines: Vec<OrderLine>,
    currency: &'static str,
    /// Whether the placing request carried an Idempotency-Key.
    idempotency_key: bool,
}

/// The SKUs of one run.
#[derive(Debug, Clone)]
struct Catalogue {
    run_id: String,
}

impl Catalogue {
    fn stocked(&self, number: u64) -> String {
        format!("RB-{}-{number:03}", self.run_id)
    }

    fn missing(&self, number: u64) -> String {
        format!("RB-{}{MISSING_MARK}{number:02}", self.run_id)
    }
}

/// Everything a run generates its history from.
#[derive(Debug, Clone)]
struct Workload {
    orders: u64,
    seed: u64,
    catalogue: Catalogue,
    /// When the first stock adjustment happened, Unix milliseconds.
    starts_at: i64,
}

impl Workload {
    /// A workload whose history ends a minute ago: every record timestamp lies in the past.
    fn new(run_id: &str, orders: u64, seed: u64) -> Self {
        let mut workload = Self {
            orders,
            seed,
            catalogue: Catalogue { run_id: run_id.into() },
            starts_at: 0,
        };
        let span = workload.first_order_at() + ORDER_SLOT_MS * i64::try_from(orders).unwrap_or(i64::MAX / 2);
        workload.starts_at = saga_contracts::now_millis() - span - 60_000;
        workload
    }

    fn plan(&self, index: u64) -> OrderPlan {
        let mut dice = Dice::new(self.seed, index);
        let branch = match dice.below(100) {
            0..80 => Branch::Confirmed,
            80..90 => Branch::PaymentDeclined,
            _ => Branch::OutOfStock,
        };
        let payment_first = dice.below(2) == 0;
        let wanted = 1 + dice.below(3);
        let mut skus = BTreeSet::new();
        while (skus.len() as u64) < wanted {
            skus.insert(dice.below(STOCKED_SKUS));
        }
        let mut lines: Vec<OrderLine> = skus
            .into_iter()
            .map(|number| OrderLine {
                sku: self.catalogue.stocked(number),
                quantity: 1 + dice.below(3) as i32,
                unit_price_minor: 100 + dice.below(9_900) as i64,
            })
            .collect();
        if branch == Branch::OutOfStock {
            lines.push(OrderLine {
                sku: self.catalogue.missing(dice.below(MISSING_SKUS)),
                quantity: 1,
                unit_price_minor: 100 + dice.below(9_900) as i64,
            });
        }
        let currency = ["USD", "EUR", "GBP"][dice.below(3) as usize];
        OrderPlan {
            index,
            branch,
            payment_first,
            lines,
            currency,
            idempotency_key: dice.below(2) == 0,
        }
    }

    /// Units each stocked SKU needs: what every order that reserves it asks for, and a few
    /// spare. The orders that are declined hold their units too until they are released.
    fn stock_needed(&self) -> BTreeMap<String, i64> {
        let mut needed: BTreeMap<String, i64> = (0..STOCKED_SKUS)
            .map(|number| (self.catalogue.stocked(number), SPARE_UNITS))
            .collect();
        for index in 0..self.orders {
            let plan = self.plan(index);
            if plan.branch == Branch::OutOfStock {
                continue;
            }
            for line in &plan.lines {
                *needed.entry(line.sku.clone()).or_default() += i64::from(line.quantity);
            }
        }
        needed
    }

    /// The operator's restocks that give every stocked SKU what it needs, before any order.
    fn stock_adjustments(&self) -> Vec<SagaEvent> {
        let mut at = self.starts_at;
        let mut adjustments = Vec::new();
        for (sku, mut units) in self.stock_needed() {
            while units > 0 {
                let delta = units.min(MAX_ADJUSTMENT);
                units -= delta;
                adjustments.push(SagaEvent::StockAdjusted(StockAdjusted {
                    envelope: Envelope::for_command_without_order().at(at),
                    sku: sku.clone(),
                    delta: i32::try_from(delta).unwrap_or(i32::MAX),
                    reason: "replay benchmark restock".into(),
                    adjustment_id: Some(AdjustmentId::new()),
                }));
                at += STEP_MS;
            }
        }
        adjustments
    }

    /// When the first order is placed: after every stock adjustment (one per SKU, and one more
    /// per million units needed, counted generously).
    fn first_order_at(&self) -> i64 {
        let most_adjustments = STOCKED_SKUS as i64 * (2 + 9 * self.orders as i64 / MAX_ADJUSTMENT);
        self.starts_at + STEP_MS * most_adjustments + ORDER_SLOT_MS
    }

    /// Every event of the order with plan `index`, in the order they happened.
    fn order_history(&self, index: u64) -> Vec<SagaEvent> {
        let placed_at = self.first_order_at() + ORDER_SLOT_MS * index as i64;
        OrderSaga::new(&self.plan(index), OrderId::new(), placed_at, &self.catalogue.run_id).events()
    }
}

/// One order's saga as the platform records it: its order.created, and the events that follow
/// from it by [`OrderSaga::events`].
struct OrderSaga<'a> {
    plan: &'a OrderPlan,
    created: OrderCreated,
    /// What the inventory reserves: every line or none, per SKU in SKU order.
    demand: Vec<StockLine>,
}

/// A participant's outcome event, with whether it lets the order go on.
struct Outcome {
    event: SagaEvent,
    succeeded: bool,
}

impl<'a> OrderSaga<'a> {
    /// The saga of `plan`'s order `order_id`, placed at `placed_at` in run `run_id` (which keeps
    /// its idempotency key unique).
    fn new(plan: &'a OrderPlan, order_id: OrderId, placed_at: i64, run_id: &str) -> Self {
        let request = order_service::domain::PlaceOrderRequest {
            customer_id: format!("bench-{}", plan.index),
            customer_email: format!("bench+{}@example.com", plan.index),
            currency: plan.currency.to_string(),
            payment_token: match plan.branch {
                Branch::PaymentDeclined => format!("{}_bench", payment_service::gateway::simulated::DECLINE_PREFIX),
                Branch::Confirmed | Branch::OutOfStock => "tok_bench".to_string(),
            },
            items: plan
                .lines
                .iter()
                .map(|line| order_service::domain::OrderLineRequest {
                    sku: line.sku.clone(),
                    quantity: i64::from(line.quantity),
                    unit_price_minor: line.unit_price_minor,
                })
                .collect(),
        };
        // As `POST /orders` records a request that came with an Idempotency-Key.
        let (idempotency_key, request_hash) = if plan.idempotency_key {
            let body = serde_json::to_string(&request).unwrap_or_default();
            (
                Some(format!("replaybench-{run_id}-{}", plan.index)),
                Some(order_service::domain::request_hash(&body)),
            )
        } else {
            (None, None)
        };
        let created = OrderCreated {
            envelope: Envelope::for_command(order_id).at(placed_at),
            customer_id: request.customer_id,
            customer_email: request.customer_email,
            payment_token: request.payment_token,
            total_minor: plan
                .lines
                .iter()
                .map(|line| i64::from(line.quantity) * line.unit_price_minor)
                .sum(),
            currency: request.currency,
            items: plan.lines.clone(),
            sales_channel: "api".into(),
            idempotency_key,
            request_hash,
            deadline_at: Some(placed_at + SAGA_DEADLINE_MS),
        };
        let mut demand: Vec<StockLine> = plan
            .lines
            .iter()
            .map(|line| StockLine {
                sku: line.sku.clone(),
                quantity: line.quantity,
            })
            .collect();
        demand.sort_by(|a, b| a.sku.cmp(&b.sku));
        Self { plan, created, demand }
    }

    fn order_id(&self) -> OrderId {
        self.created.envelope.order_id
    }

    /// Every event, in the order they happen, one [`STEP_MS`] apart: order.created; the payment
    /// and inventory outcomes (in the plan's order); the order's decision right after the
    /// outcome that decides it (the first failure, or the second success); the inventory's
    /// commit or release and the payment's refund the decision leads to; the email sent about
    /// it. Each is caused by the event the live service reacted to, as docs/saga.md lays out.
    fn events(&self) -> Vec<SagaEvent> {
        let mut clock = self.created.envelope.occurred_at;
        let mut tick = || {
            clock += STEP_MS;
            clock
        };
        let mut events = vec![SagaEvent::OrderCreated(self.created.clone())];
        let payment_first = self.plan.payment_first;
        let first = if payment_first {
            self.payment_outcome(tick())
        } else {
            self.inventory_outcome(tick())
        };
        events.push(first.event.clone());
        // A failure decides at once; otherwise the second outcome decides.
        let decided_early = (!first.succeeded).then(|| self.decision(&first.event, tick()));
        events.extend(decided_early.clone());
        let second = if payment_first {
            self.inventory_outcome(tick())
        } else {
            self.payment_outcome(tick())
        };
        events.push(second.event.clone());
        let decided = match decided_early {
            Some(decided) => decided,
            None => {
                let decided = self.decision(&second.event, tick());
                events.push(decided.clone());
                decided
            }
        };
        events.extend(self.inventory_settlement(&decided, tick()));
        events.extend(self.refund(&decided, tick()));
        events.push(email_sent(&decided, tick()));
        events
    }

    /// The gateway's answer to the charge: declined for a decline token, captured otherwise.
    fn payment_outcome(&self, at: i64) -> Outcome {
        let envelope = Envelope::caused_by(&self.created).at(at);
        let (amount_minor, currency) = (self.created.total_minor, self.created.currency.clone());
        match self.plan.branch {
            Branch::PaymentDeclined => Outcome {
                event: SagaEvent::PaymentFailed(PaymentFailed {
                    envelope,
                    reason: payment_service::gateway::simulated::CARD_DECLINED.into(),
                    failure_reason: FailureReason::PaymentDeclined,
                    amount_minor,
                    currency,
                }),
                succeeded: false,
            },
            Branch::Confirmed | Branch::OutOfStock => Outcome {
                event: SagaEvent::PaymentSucceeded(PaymentSucceeded {
                    envelope,
                    payment_id: payment_service::domain::payment_id_for(self.order_id()),
                    amount_minor,
                    currency,
                    gateway_reference: Some(format!("sim_ch_{}", uuid::Uuid::new_v4().simple())),
                }),
                succeeded: true,
            },
        }
    }

    /// The reservation: rejected naming the never-stocked SKU, reserved otherwise.
    fn inventory_outcome(&self, at: i64) -> Outcome {
        let envelope = Envelope::caused_by(&self.created).at(at);
        match self.plan.branch {
            Branch::OutOfStock => Outcome {
                event: SagaEvent::InventoryReservationFailed(InventoryReservationFailed {
                    envelope,
                    reason: FailureReason::OutOfStock.to_string(),
                    failure_reason: FailureReason::OutOfStock,
                    unavailable_skus: self
                        .demand
                        .iter()
                        .filter(|line| line.sku.contains(MISSING_MARK))
                        .map(|line| line.sku.clone())
                        .collect(),
                }),
                succeeded: false,
            },
            Branch::Confirmed | Branch::PaymentDeclined => Outcome {
                event: SagaEvent::InventoryReserved(InventoryReserved {
                    envelope,
                    items: self.demand.clone(),
                }),
                succeeded: true,
            },
        }
    }

    /// The order's decision, caused by the outcome that made it.
    fn decision(&self, cause: &SagaEvent, at: i64) -> SagaEvent {
        let envelope = caused_by(self.order_id(), cause).at(at);
        let created = &self.created;
        match failure_reason(self.plan.branch) {
            None => SagaEvent::OrderConfirmed(OrderConfirmed {
                envelope,
                customer_email: created.customer_email.clone(),
                total_minor: created.total_minor,
                currency: created.currency.clone(),
            }),
            Some(reason) => SagaEvent::OrderFailed(OrderFailed {
                envelope,
                reason: reason.to_string(),
                failure_reason: reason,
                customer_email: created.customer_email.clone(),
                total_minor: created.total_minor,
                currency: created.currency.clone(),
            }),
        }
    }

    /// What the inventory does with the reservation it held when the order was decided: commits
    /// it, or releases it; nothing if it held none.
    fn inventory_settlement(&self, decided: &SagaEvent, at: i64) -> Option<SagaEvent> {
        let envelope = caused_by(self.order_id(), decided).at(at);
        let items = self.demand.clone();
        match failure_reason(self.plan.branch) {
            None => Some(SagaEvent::InventoryCommitted(InventoryCommitted { envelope, items })),
            Some(FailureReason::OutOfStock) => None,
            Some(reason) => Some(SagaEvent::InventoryReleased(InventoryReleased {
                envelope,
                items,
                reason: reason.to_string(),
            })),
        }
    }

    /// The refund of the capture of a failed order; nothing if nothing was captured.
    fn refund(&self, decided: &SagaEvent, at: i64) -> Option<SagaEvent> {
        let reason = failure_reason(self.plan.branch).filter(|reason| *reason != FailureReason::PaymentDeclined)?;
        Some(SagaEvent::PaymentRefunded(PaymentRefunded {
            envelope: caused_by(self.order_id(), decided).at(at),
            payment_id: payment_service::domain::payment_id_for(self.order_id()),
            amount_minor: self.created.total_minor,
            currency: self.created.currency.clone(),
            reason: reason.to_string(),
        }))
    }
}

/// Why an order of `branch` fails; `None` for one that is confirmed.
fn failure_reason(branch: Branch) -> Option<FailureReason> {
    match branch {
        Branch::Confirmed => None,
        Branch::PaymentDeclined => Some(FailureReason::PaymentDeclined),
        Branch::OutOfStock => Some(FailureReason::OutOfStock),
    }
}

/// The envelope of an event of `order_id` reacting to `cause`.
fn caused_by(order_id: OrderId, cause: &SagaEvent) -> Envelope {
    Envelope::caused_by_recorded(order_id, cause.event_id())
}

/// notification.sent for the email the order's outcome `decided` asks for, sent at `at` on the
/// first attempt, rendered as the notification service renders it.
fn email_sent(decided: &SagaEvent, at: i64) -> SagaEvent {
    let email = notification_service::domain::email_for(decided)
        .ok()
        .flatten()
        .expect("an order outcome to a plausible address asks for an email");
    let order_outcome = match decided {
        SagaEvent::OrderConfirmed(_) => OrderOutcome::Confirmed,
        _ => OrderOutcome::Failed,
    };
    SagaEvent::NotificationSent(NotificationSent {
        envelope: Envelope::caused_by_recorded(email.order_id, decided.event_id()).at(at),
        order_outcome,
        recipient: email.recipient,
        subject: email.subject,
        message_id: email.message_id,
        attempts: 1,
    })
}

// ---- Writing the history.

/// One encoded record, ready to produce.
struct Outgoing {
    topic: String,
    key: String,
    payload: Vec<u8>,
    event_type: EventType,
    event_id: EventId,
    traceparent: String,
    timestamp: i64,
}

/// Encodes `events`, in order; the events of one order share the trace of its order.created
/// (the services continue the trace of the event they react to), a stock adjustment starts its
/// own.
async fn encode(codec: &EventCodec, events: Vec<SagaEvent>) -> anyhow::Result<Vec<Outgoing>> {
    let traceparent = events
        .first()
        .and_then(SagaEvent::order_id)
        .map(|order_id| traceparent_for(&order_id.to_string()));
    let mut outgoing = Vec::with_capacity(events.len());
    for event in events {
        let encoded = codec.encode(&event).await?;
        outgoing.push(Outgoing {
            traceparent: traceparent.clone().unwrap_or_else(|| traceparent_for(&encoded.key)),
            topic: encoded.topic,
            key: encoded.key,
            payload: encoded.payload,
            event_type: encoded.event_type,
            event_id: encoded.event_id,
            timestamp: event.occurred_at_millis(),
        });
    }
    Ok(outgoing)
}

/// Generates and encodes the orders `range`, each order's events in time order.
async fn encode_orders(
    codec: Arc<EventCodec>,
    workload: Arc<Workload>,
    range: std::ops::Range<u64>,
) -> anyhow::Result<Vec<Outgoing>> {
    let mut outgoing = Vec::new();
    for index in range {
        outgoing.extend(encode(&codec, workload.order_history(index)).await?);
    }
    Ok(outgoing)
}

/// Writes the whole history in time order (stock adjustments, then order after order), through
/// the producer every service publishes with, many records in flight; prints what each topic
/// got.
async fn write_history(kafka: &KafkaConfig, registry: &RegistryConfig, workload: Arc<Workload>) -> anyhow::Result<()> {
    let started = Instant::now();
    let codec = Arc::new(EventCodec::new(registry, kafka)?);
    let producer = kafka::producer(kafka)?;
    let mut writer = Writer {
        producer: &producer,
        unacknowledged: VecDeque::new(),
        written: BTreeMap::new(),
    };
    let mut adjustments = Vec::new();
    for adjustment in workload.stock_adjustments() {
        adjustments.extend(encode(&codec, vec![adjustment]).await?);
    }
    writer.send(adjustments).await?;

    let mut chunks = (0..workload.orders)
        .step_by(CHUNK_ORDERS as usize)
        .map(|start| start..(start + CHUNK_ORDERS).min(workload.orders));
    let mut encoding = VecDeque::new();
    loop {
        while encoding.len() < CHUNKS_AHEAD {
            let Some(range) = chunks.next() else { break };
            encoding.push_back(tokio::spawn(encode_orders(codec.clone(), workload.clone(), range)));
        }
        let Some(next) = encoding.pop_front() else { break };
        writer.send(next.await??).await?;
    }
    let records = writer.finish().await?;
    let elapsed = started.elapsed().as_secs_f64();
    let total: u64 = records.values().sum();
    println!(
        "wrote {total} records in {elapsed:.1} s ({:.0} records/s):",
        total as f64 / elapsed.max(1e-9)
    );
    for (topic, count) in &records {
        println!("    {topic:<40} {count:>10}");
    }
    Ok(())
}

/// Hands records to the producer in order without waiting for each acknowledgement.
struct Writer<'a> {
    producer: &'a FutureProducer,
    unacknowledged: VecDeque<DeliveryFuture>,
    written: BTreeMap<String, u64>,
}

impl Writer<'_> {
    /// Queues `records` in their order (the producer keeps it per partition); when the producer's
    /// queue is full, waits for the oldest acknowledgement and tries the same record again.
    async fn send(&mut self, records: Vec<Outgoing>) -> anyhow::Result<()> {
        for record in &records {
            let headers = event_headers(
                record.event_type.as_str(),
                &record.event_id.to_string(),
                &record.traceparent,
            );
            let mut queued = FutureRecord::to(&record.topic)
                .key(&record.key)
                .payload(&record.payload)
                .headers(headers)
                .timestamp(record.timestamp);
            loop {
                match self.producer.send_result(queued) {
                    Ok(delivery) => {
                        self.unacknowledged.push_back(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                        queued = returned;
                        match self.unacknowledged.pop_front() {
                            Some(delivery) => acknowledged(delivery.await)?,
                            None => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                    Err((error, _)) => bail!("producing to {}: {error}", record.topic),
                }
            }
            *self.written.entry(record.topic.clone()).or_default() += 1;
            while self.unacknowledged.len() > MAX_UNACKNOWLEDGED {
                if let Some(delivery) = self.unacknowledged.pop_front() {
                    acknowledged(delivery.await)?;
                }
            }
        }
        Ok(())
    }

    /// Waits for every acknowledgement; the records written per topic.
    async fn finish(mut self) -> anyhow::Result<BTreeMap<String, u64>> {
        while let Some(delivery) = self.unacknowledged.pop_front() {
            acknowledged(delivery.await)?;
        }
        Ok(self.written)
    }
}

fn acknowledged(delivery: Result<OwnedDeliveryResult, futures::channel::oneshot::Canceled>) -> anyhow::Result<()> {
    match delivery {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => bail!("the broker did not take a record: {error}"),
        Err(_) => bail!("the producer dropped a record"),
    }
}

// ---- Replaying and reporting.

/// One service's replay, as the table shows it.
struct Measured {
    service: String,
    topics: String,
    read: u64,
    seconds: f64,
    rate: f64,
    /// Findings by kind, and `unconfirmed` re-run decisions the history does not record.
    findings: BTreeMap<&'static str, u64>,
}

impl Measured {
    fn problems(&self) -> usize {
        self.findings.values().sum::<u64>() as usize
    }
}

async fn replay_service(
    kafka: &KafkaConfig,
    registry: &RegistryConfig,
    service: &str,
    database_url: &str,
) -> anyhow::Result<Measured> {
    let mut rebuild = rebuilder(service)?;
    println!(
        "replaying {} into {} ...",
        short_name(service),
        redact_url(database_url)
    );
    let report = replay::run(
        rebuild.as_mut(),
        kafka,
        registry,
        database_url,
        &ReplayOptions::default(),
        |_| {},
    )
    .await
    .with_context(|| format!("replaying {service}"))?;
    let mut findings: BTreeMap<&'static str, u64> = BTreeMap::new();
    for finding in &report.findings {
        *findings.entry(finding.kind).or_default() += 1;
    }
    // Every decision of the history is recorded: one the replay re-ran and the history lacks
    // is as wrong as one it made differently.
    if report.unconfirmed > 0 {
        findings.insert("unconfirmed", report.unconfirmed);
    }
    let topics: Vec<&str> = rebuild
        .records_on()
        .iter()
        .chain(rebuild.consumes())
        .map(Topic::base_name)
        .collect();
    Ok(Measured {
        service: short_name(service).to_string(),
        topics: topics.join(","),
        read: report.read,
        seconds: report.elapsed.as_secs_f64(),
        rate: report.rate(),
        findings,
    })
}

fn print_table(measured: &[Measured]) {
    println!(
        "{:<14} {:<28} {:>12} {:>9} {:>12}  findings",
        "service", "topics read", "events read", "seconds", "events/s"
    );
    for row in measured {
        let findings = if row.findings.is_empty() {
            "none".to_string()
        } else {
            row.findings
                .iter()
                .map(|(kind, count)| format!("{kind} {count}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "{:<14} {:<28} {:>12} {:>9.2} {:>12.0}  {findings}",
            row.service, row.topics, row.read, row.seconds, row.rate
        );
    }
}

// ---- Cleaning up.

/// Drops the databases, deletes the topics and the schema subjects the run made; what fails is
/// reported and left.
async fn clean_up(
    kafka: &KafkaConfig,
    registry: &RegistryConfig,
    topics: &[TopicSpec],
    databases: &[(String, String)],
) {
    for (_, url) in databases {
        if let Err(error) = drop_database(url).await {
            eprintln!("could not drop {}: {error:#}", redact_url(url));
        }
    }
    if let Err(error) = delete_topics(kafka, topics).await {
        eprintln!("could not delete the topics {}*: {error:#}", kafka.topic_prefix);
    }
    if let Err(error) = delete_subjects(kafka, registry).await {
        eprintln!(
            "could not delete the schema subjects of {}*: {error:#}",
            kafka.topic_prefix
        );
    }
    println!(
        "dropped the replay databases, deleted the topics and subjects {}*",
        kafka.topic_prefix
    );
}

async fn drop_database(url: &str) -> anyhow::Result<()> {
    let options = PgConnectOptions::from_str(url)?;
    let name = options.get_database().unwrap_or_default().to_string();
    let mut admin = options.database("postgres").connect().await?;
    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "\"\"")
    ))
    .execute(&mut admin)
    .await?;
    Ok(())
}

pub(crate) async fn delete_topics(kafka: &KafkaConfig, topics: &[TopicSpec]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka.client_config().create()?;
    let names: Vec<&str> = topics.iter().map(|topic| topic.name.as_str()).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for outcome in admin.delete_topics(&names, &options).await? {
        if let Err((name, code)) = outcome {
            if code != RDKafkaErrorCode::UnknownTopicOrPartition {
                bail!("deleting {name}: {code}");
            }
        }
    }
    Ok(())
}

/// Deletes (softly, then for good) the subjects encoding registered under the run's topics.
async fn delete_subjects(kafka: &KafkaConfig, registry: &RegistryConfig) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(registry.timeout()).build()?;
    let base = registry.url.trim_end_matches('/');
    for event_type in EventType::ALL {
        let subject = format!("{}-{}", kafka.topic(event_type.topic()), event_type.record_name());
        for query in ["", "?permanent=true"] {
            let response = registry
                .authorize(http.delete(format!("{base}/subjects/{subject}{query}")))
                .send()
                .await?;
            // 404: a subject no record of the run needed.
            if !response.status().is_success() && response.status() != reqwest::StatusCode::NOT_FOUND {
                bail!("deleting {subject}: {}", response.status());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn workload(orders: u64) -> Workload {
        Workload::new("0badc0de", orders, 7)
    }

    /// The first order of `workload` on `branch` and whether its payment answered first.
    fn plan_of(workload: &Workload, branch: Branch, payment_first: bool) -> OrderPlan {
        (0..10_000)
            .map(|index| workload.plan(index))
            .find(|plan| plan.branch == branch && plan.payment_first == payment_first)
            .expect("a plan of every kind among the first orders")
    }

    fn history_of(branch: Branch, payment_first: bool) -> Vec<SagaEvent> {
        let workload = workload(10_000);
        OrderSaga::new(
            &plan_of(&workload, branch, payment_first),
            OrderId::new(),
            1_000_000,
            "0badc0de",
        )
        .events()
    }

    fn types(events: &[SagaEvent]) -> Vec<&'static str> {
        events.iter().map(|event| event.event_type().as_str()).collect()
    }

    fn find(events: &[SagaEvent], event_type: EventType) -> &SagaEvent {
        events
            .iter()
            .find(|event| event.event_type() == event_type)
            .unwrap_or_else(|| panic!("no {event_type} in {:?}", types(events)))
    }

    /// Every event after the event that caused it, all of one order, times strictly rising.
    fn assert_causally_ordered(events: &[SagaEvent]) {
        let order_id = events[0].order_id();
        for (position, event) in events.iter().enumerate() {
            assert_eq!(event.order_id(), order_id);
            if position > 0 {
                assert!(event.occurred_at_millis() > events[position - 1].occurred_at_millis());
            }
            if let Some(cause) = event.causation_id() {
                let caused_by = events[..position]
                    .iter()
                    .position(|earlier| earlier.event_id() == cause);
                assert!(
                    caused_by.is_some(),
                    "{} is caused by no earlier event",
                    event.event_type()
                );
            }
        }
    }

    #[test]
    fn a_confirmed_order_is_reserved_paid_confirmed_by_the_later_outcome_committed_and_emailed() {
        for payment_first in [true, false] {
            let events = history_of(Branch::Confirmed, payment_first);
            assert_causally_ordered(&events);
            let outcomes = if payment_first {
                ["payment.success", "inventory.reserved"]
            } else {
                ["inventory.reserved", "payment.success"]
            };
            assert_eq!(
                types(&events),
                [
                    "order.created",
                    outcomes[0],
                    outcomes[1],
                    "order.confirmed",
                    "inventory.committed",
                    "notification.sent"
                ]
            );
            assert_eq!(events[3].causation_id(), Some(events[2].event_id()));
            let SagaEvent::NotificationSent(sent) = &events[5] else {
                unreachable!()
            };
            assert_eq!(sent.order_outcome, OrderOutcome::Confirmed);
            assert_eq!(sent.envelope.causation_id, Some(events[3].event_id()));
        }
    }

    #[test]
    fn a_declined_order_fails_on_the_decline_and_releases_the_stock_it_held() {
        let events = history_of(Branch::PaymentDeclined, true);
        assert_causally_ordered(&events);
        assert_eq!(
            types(&events),
            [
                "order.created",
                "payment.failed",
                "order.failed",
                "inventory.reserved",
                "inventory.released",
                "notification.sent"
            ]
        );
        let SagaEvent::OrderFailed(failed) = &events[2] else {
            unreachable!()
        };
        assert_eq!(
            (failed.reason.as_str(), failed.failure_reason),
            ("payment_declined", FailureReason::PaymentDeclined)
        );
        assert_eq!(failed.envelope.causation_id, Some(events[1].event_id()));
        let SagaEvent::PaymentFailed(declined) = &events[1] else {
            unreachable!()
        };
        assert_eq!(declined.reason, "card_declined");
        let SagaEvent::InventoryReleased(released) = &events[4] else {
            unreachable!()
        };
        assert_eq!(released.reason, "payment_declined");
        assert_eq!(released.envelope.causation_id, Some(failed.envelope.event_id));

        let reserved_first = history_of(Branch::PaymentDeclined, false);
        assert_causally_ordered(&reserved_first);
        assert_eq!(
            &types(&reserved_first)[1..4],
            ["inventory.reserved", "payment.failed", "order.failed"]
        );
    }

    #[test]
    fn an_out_of_stock_order_fails_on_the_missing_sku_and_its_capture_is_refunded() {
        for payment_first in [true, false] {
            let events = history_of(Branch::OutOfStock, payment_first);
            assert_causally_ordered(&events);
            let SagaEvent::OrderCreated(created) = &events[0] else {
                unreachable!()
            };
            let SagaEvent::InventoryReservationFailed(rejected) = find(&events, EventType::InventoryReservationFailed)
            else {
                unreachable!()
            };
            let missing: Vec<&str> = created
                .items
                .iter()
                .map(|line| line.sku.as_str())
                .filter(|sku| sku.contains(MISSING_MARK))
                .collect();
            assert_eq!(rejected.unavailable_skus, missing);
            assert_eq!(rejected.reason, "out_of_stock");
            let failed = find(&events, EventType::OrderFailed);
            assert_eq!(failed.causation_id(), Some(rejected.envelope.event_id));
            let SagaEvent::PaymentRefunded(refunded) = find(&events, EventType::PaymentRefunded) else {
                unreachable!()
            };
            let SagaEvent::PaymentSucceeded(captured) = find(&events, EventType::PaymentSucceeded) else {
                unreachable!()
            };
            assert_eq!(refunded.envelope.causation_id, Some(failed.event_id()));
            assert_eq!(refunded.payment_id, captured.payment_id);
            assert_eq!(
                refunded.payment_id,
                payment_service::domain::payment_id_for(created.envelope.order_id)
            );
            assert_eq!(
                (refunded.amount_minor, refunded.reason.as_str()),
                (created.total_minor, "out_of_stock")
            );
            assert!(events.iter().all(|event| !matches!(
                event,
                SagaEvent::InventoryReleased(_) | SagaEvent::InventoryCommitted(_)
            )));
        }
    }

    #[test]
    fn the_email_sent_is_the_one_the_notification_service_renders_for_the_outcome() {
        let events = history_of(Branch::OutOfStock, true);
        let failed = find(&events, EventType::OrderFailed);
        let expected = notification_service::domain::email_for(failed)
            .expect("renders")
            .expect("an email");
        let SagaEvent::NotificationSent(sent) = events.last().expect("events") else {
            panic!("the last event is the email sent")
        };
        assert_eq!(
            (
                &sent.recipient,
                &sent.subject,
                &sent.message_id,
                sent.order_outcome,
                sent.attempts
            ),
            (
                &expected.recipient,
                &expected.subject,
                &expected.message_id,
                OrderOutcome::Failed,
                1
            )
        );
    }

    #[test]
    fn orders_are_mostly_confirmed_with_a_tenth_declined_and_a_tenth_out_of_stock() {
        let workload = workload(10_000);
        let mut branches: HashMap<Branch, u64> = HashMap::new();
        for index in 0..10_000 {
            *branches.entry(workload.plan(index).branch).or_default() += 1;
        }
        assert!((7_700..8_300).contains(&branches[&Branch::Confirmed]), "{branches:?}");
        assert!(
            (800..1_200).contains(&branches[&Branch::PaymentDeclined]),
            "{branches:?}"
        );
        assert!((800..1_200).contains(&branches[&Branch::OutOfStock]), "{branches:?}");
    }

    #[test]
    fn plans_are_the_same_for_the_same_seed_and_index() {
        let (a, b) = (workload(10), workload(10));
        assert_eq!(a.plan(3), b.plan(3));
        assert_ne!(a.plan(3), a.plan(4));
    }

    #[test]
    fn the_restocks_cover_every_reservation_and_come_before_the_first_order() {
        let workload = workload(2_000);
        let mut stocked: HashMap<String, i64> = HashMap::new();
        let adjustments = workload.stock_adjustments();
        for adjustment in &adjustments {
            let SagaEvent::StockAdjusted(adjusted) = adjustment else {
                panic!("not a stock adjustment")
            };
            assert!(adjusted.adjustment_id.is_some() && adjusted.envelope.order_id.is_none());
            *stocked.entry(adjusted.sku.clone()).or_default() += i64::from(adjusted.delta);
        }
        let mut reserved: HashMap<String, i64> = HashMap::new();
        for index in 0..workload.orders {
            let plan = workload.plan(index);
            if plan.branch != Branch::OutOfStock {
                for line in plan.lines {
                    *reserved.entry(line.sku).or_default() += i64::from(line.quantity);
                }
            }
        }
        for (sku, units) in reserved {
            assert!(stocked.get(&sku).copied().unwrap_or(0) >= units, "{sku}");
            assert!(!sku.contains(MISSING_MARK));
        }
        let last_adjustment = adjustments.last().expect("restocks").occurred_at_millis();
        let first_order = workload.order_history(0)[0].occurred_at_millis();
        assert!(last_adjustment < first_order);
    }

    #[test]
    fn the_history_ends_in_the_past_and_orders_do_not_overlap() {
        let workload = workload(1_000);
        let first = workload.order_history(0);
        let second = workload.order_history(1);
        let last = workload.order_history(999);
        assert!(first.last().expect("events").occurred_at_millis() < second[0].occurred_at_millis());
        assert!(last.last().expect("events").occurred_at_millis() < saga_contracts::now_millis());
    }
}
