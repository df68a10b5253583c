//! The inventory service against the real broker, registry and PostgreSQL: stock adjustments
//! over HTTP, all-or-nothing reservations, commit and release, exactly-once handling of
//! redelivered events, no overselling under concurrent orders across two instances, and
//! dead-lettering of poison records and of events that fail permanently, without holding up
//! the partition behind them.
//!
//! The tests play the order service: they produce order.created / order.confirmed /
//! order.failed and read what the inventory service emits on the `inventory` topic.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use reqwest::StatusCode;
use saga_common::inbox;
use saga_contracts::{EventId, EventType, FailureReason, OrderCreated, OrderId, SagaEvent, StockLine, Topic};
use saga_tests::fixtures::{order_confirmed, order_created_with, order_failed, APPROVED_TOKEN};
use saga_tests::services::inventory::{Inventory, INVENTORY_SERVICE};
use saga_tests::{ReadRecord, TestEnv, TopicReader};
use serde_json::json;
use sqlx::PgPool;

/// How long any one expected effect may take (group joins included).
const PATIENCE: Duration = Duration::from_secs(90);

/// A new order of `lines` (sku, quantity).
fn new_order(lines: &[(&str, i32)]) -> OrderCreated {
    order_created_with(OrderId::new(), lines, APPROVED_TOKEN)
}

/// Stock lines (sku, quantity), as the service reports what it holds.
fn held(lines: &[(&str, i32)]) -> Vec<StockLine> {
    lines
        .iter()
        .map(|(sku, quantity)| StockLine {
            sku: sku.to_string(),
            quantity: *quantity,
        })
        .collect()
}

/// Everything the service emitted on `inventory`, read incrementally.
struct Emitted {
    reader: TopicReader,
    events: Vec<SagaEvent>,
}

impl Emitted {
    fn new(env: &TestEnv) -> anyhow::Result<Self> {
        Ok(Self {
            reader: env.reader(&env.kafka.topic(Topic::Inventory))?,
            events: Vec::new(),
        })
    }

    /// Reads on until `done` holds for everything read so far.
    async fn until(&mut self, what: &str, done: impl Fn(&[SagaEvent]) -> bool) -> anyhow::Result<&[SagaEvent]> {
        if !done(&self.events) {
            let seen = &self.events;
            let fresh = self
                .reader
                .read_until(PATIENCE, |records| {
                    let decoded: Vec<SagaEvent> =
                        records.iter().filter_map(|r| r.event.as_ref().ok().cloned()).collect();
                    done(&[seen.as_slice(), decoded.as_slice()].concat())
                })
                .await
                .with_context(|| format!("waiting for {what}"))?;
            for record in fresh {
                self.events.push(
                    record
                        .event
                        .map_err(|error| anyhow::anyhow!("undecodable record on inventory: {error}"))?,
                );
            }
        }
        Ok(&self.events)
    }

    /// Reads on until `count` events have been read in total.
    async fn at_least(&mut self, count: usize) -> anyhow::Result<&[SagaEvent]> {
        self.until(&format!("{count} inventory events"), |events| events.len() >= count)
            .await
    }

    /// Reads on until an event of `event_type` for `order_id` arrives, and returns it.
    async fn of(&mut self, event_type: EventType, order_id: OrderId) -> anyhow::Result<SagaEvent> {
        let found = |events: &[SagaEvent]| {
            events
                .iter()
                .find(|e| e.event_type() == event_type && e.order_id() == Some(order_id))
                .cloned()
        };
        let events = self
            .until(&format!("{event_type} of order {order_id}"), |events| {
                found(events).is_some()
            })
            .await?;
        found(events).context("event vanished")
    }
}

/// Events of `order_id` in the order they were emitted, as their types.
fn types_of(events: &[SagaEvent], order_id: OrderId) -> Vec<EventType> {
    events
        .iter()
        .filter(|e| e.order_id() == Some(order_id))
        .map(SagaEvent::event_type)
        .collect()
}

/// Produces `event` to its topic.
async fn produce(env: &TestEnv, event: impl Into<SagaEvent>) -> anyhow::Result<()> {
    env.produce(&event.into()).await
}

/// Waits until the service's consumer group committed every record on `orders` (so every
/// produced event, duplicates included, was handled) and its outbox is empty (so everything it
/// caused is on the broker); returns how many records the `inventory` topic then holds.
async fn quiesce(env: &TestEnv) -> anyhow::Result<usize> {
    env.wait_until_consumed(&env.group(INVENTORY_SERVICE), &env.kafka.topic(Topic::Orders), PATIENCE)
        .await?;
    env.outbox_drained("inventory").await?;
    let inventory = env.reader(&env.kafka.topic(Topic::Inventory))?;
    Ok(inventory.read_raw_to_end(PATIENCE).await?.len())
}

/// A test's own environment with an inventory service started on it holding `stock` (sku,
/// units), and a reader of what the service emits.
async fn start_with_stock(stock: &[(&str, i64)]) -> anyhow::Result<(TestEnv, Inventory, Emitted)> {
    let env = TestEnv::new().await?;
    let inventory = Inventory::start(&env).await?;
    let emitted = Emitted::new(&env)?;
    for (sku, units) in stock {
        inventory.restock(sku, *units).await?;
    }
    Ok((env, inventory, emitted))
}

async fn service_database(env: &TestEnv) -> anyhow::Result<PgPool> {
    Ok(PgPool::connect(&env.database_url("inventory")).await?)
}

/// The value of header `name` of a dead letter.
fn header<'r>(record: &'r ReadRecord, name: &str) -> Option<&'r str> {
    record
        .headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// Checks that the service dead-lettered exactly one record, the event `event_id`, given up on
/// at its first attempt as permanent and counted on `/health/live` while the service lives on;
/// returns the dead letter's reason. Call it once everything produced was consumed.
async fn the_one_dead_letter(env: &TestEnv, inventory: &Inventory, event_id: EventId) -> anyhow::Result<String> {
    let dead_letters = env.reader(&env.kafka.dead_letter_topic(INVENTORY_SERVICE))?;
    let records = dead_letters.read_until(PATIENCE, |records| !records.is_empty()).await?;
    let record = records.first().context("no dead letter")?;
    let event = record
        .event
        .as_ref()
        .map_err(|error| anyhow::anyhow!("the dead letter is not the event as it was: {error}"))?;
    anyhow::ensure!(
        event.event_id() == event_id,
        "another event was dead-lettered: {event:?}"
    );
    let reason = header(record, "dlq.error").unwrap_or_default();
    anyhow::ensure!(
        reason.starts_with("permanent error after 1 attempt"),
        "not a permanent error given up on at once: {reason}"
    );
    let (status, live) = inventory.live().await?;
    anyhow::ensure!(status == StatusCode::OK, "the service should live on: {live}");
    anyhow::ensure!(live["dead_lettered"] == 1, "exactly one dead letter counted: {live}");
    Ok(reason.to_owned())
}

#[tokio::test]
async fn an_adjustment_adds_stock_emits_stock_adjusted_and_a_retry_with_the_same_id_applies_once() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let inventory = Inventory::start(&env).await?;
    let mut emitted = Emitted::new(&env)?;
    assert_eq!(inventory.levels("WIDGET-1").await?, None, "an unknown sku is a 404");

    let adjustment_id = uuid::Uuid::new_v4().to_string();
    let body = json!({"delta": 10, "reason": "restock", "adjustment_id": adjustment_id});
    let (status, first) = inventory.adjust("WIDGET-1", body.clone()).await?;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(
        first,
        json!({"adjustment_id": adjustment_id, "sku": "WIDGET-1", "available": 10, "reserved": 0, "committed": 0})
    );

    let (status, retried) = inventory.adjust("WIDGET-1", body).await?;
    assert_eq!(status, StatusCode::CREATED, "{retried}");
    assert_eq!(retried, first, "a retry gets the same answer");
    assert_eq!(
        inventory.levels("WIDGET-1").await?,
        Some((10, 0, 0)),
        "the retry was applied once"
    );

    let (status, reused) = inventory
        .adjust(
            "WIDGET-1",
            json!({"delta": 5, "reason": "restock", "adjustment_id": adjustment_id}),
        )
        .await?;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "an id reused for another adjustment: {reused}"
    );

    let second = inventory.restock("WIDGET-1", -3).await?;
    assert_eq!(second["available"], 7);
    assert_ne!(
        second["adjustment_id"], first["adjustment_id"],
        "an id is generated when none is given"
    );
    assert_eq!(inventory.levels("WIDGET-1").await?, Some((7, 0, 0)));

    let total = quiesce(&env).await?;
    assert_eq!(total, 2, "one event per applied adjustment");
    let events = emitted.at_least(2).await?;
    let deltas: Vec<(String, i32, String, Option<OrderId>, Option<_>)> = events
        .iter()
        .map(|event| match event {
            SagaEvent::StockAdjusted(a) => (
                a.sku.clone(),
                a.delta,
                a.reason.clone(),
                a.envelope.order_id,
                a.envelope.causation_id,
            ),
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    assert_eq!(
        deltas,
        vec![
            ("WIDGET-1".into(), 10, "restock".into(), None, None),
            ("WIDGET-1".into(), -3, "restock".into(), None, None)
        ],
        "an adjustment belongs to no order and no event caused it"
    );
    // Each carries its adjustment id, so a rebuilt inventory still recognises a retry.
    let adjustment_ids: Vec<Option<String>> = events
        .iter()
        .map(|event| match event {
            SagaEvent::StockAdjusted(a) => a.adjustment_id.map(|id| id.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        adjustment_ids,
        vec![Some(adjustment_id), second["adjustment_id"].as_str().map(str::to_owned)]
    );
    inventory.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_adjustment_that_would_take_available_below_zero_is_a_conflict_and_changes_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let inventory = Inventory::start(&env).await?;
    inventory.restock("BOLT-7", 2).await?;

    let (status, body) = inventory
        .adjust("BOLT-7", json!({"delta": -3, "reason": "count correction"}))
        .await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"].as_str().unwrap_or_default().contains("only 2 available"),
        "{body}"
    );
    assert_eq!(inventory.levels("BOLT-7").await?, Some((2, 0, 0)));

    let (status, body) = inventory
        .adjust("NEVER-STOCKED", json!({"delta": -1, "reason": "count correction"}))
        .await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        inventory.levels("NEVER-STOCKED").await?,
        None,
        "a refused adjustment creates no stock row"
    );

    let (status, body) = inventory
        .adjust("BOLT-7", json!({"delta": -2, "reason": "count correction"}))
        .await?;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "removing exactly what is available is fine: {body}"
    );
    assert_eq!(inventory.levels("BOLT-7").await?, Some((0, 0, 0)));
    inventory.stop().await;
    Ok(())
}

#[tokio::test]
async fn malformed_or_invalid_adjustments_are_refused_naming_what_is_wrong() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let inventory = Inventory::start(&env).await?;

    let (status, body) = inventory.adjust_raw("NUT-3", r#"{"delta": 10, "reason": "#).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap_or_default().contains("malformed JSON"),
        "{body}"
    );

    for (request, field) in [
        (json!({"delta": 0, "reason": "restock"}), "delta"),
        (json!({"delta": 10}), "reason"),
        (json!({"delta": 10, "reason": "   "}), "reason"),
        (json!({"delta": 1.5, "reason": "restock"}), "delta"),
        (json!({"delta": 10_000_000_000_i64, "reason": "restock"}), "delta"),
        (
            json!({"delta": 10, "reason": "restock", "adjustment_id": "not-a-uuid"}),
            "adjustment_id",
        ),
    ] {
        let (status, body) = inventory.adjust("NUT-3", request.clone()).await?;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{request} answered {body}");
        assert_eq!(body["field"], field, "{request} answered {body}");
    }

    let (status, body) = inventory
        .adjust("bad%20sku", json!({"delta": 1, "reason": "restock"}))
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap_or_default().contains("sku"), "{body}");
    let (status, _) = inventory
        .adjust(&"x".repeat(65), json!({"delta": 1, "reason": "restock"}))
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    assert_eq!(inventory.levels("NUT-3").await?, None, "nothing refused was applied");
    let database = service_database(&env).await?;
    let adjustments: i64 = sqlx::query_scalar("SELECT count(*) FROM stock_adjustments")
        .fetch_one(&database)
        .await?;
    assert_eq!(adjustments, 0);
    inventory.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_order_within_stock_is_reserved_and_its_confirmation_commits_the_reservation() -> anyhow::Result<()> {
    let (env, inventory, mut emitted) = start_with_stock(&[("CUP-1", 5), ("LID-1", 5)]).await?;

    // CUP-1 is listed twice: 2 + 1 units are reserved as one line of 3.
    let created = new_order(&[("CUP-1", 2), ("LID-1", 1), ("CUP-1", 1)]);
    let order_id = created.envelope.order_id;
    produce(&env, created.clone()).await?;
    let SagaEvent::InventoryReserved(reserved) = emitted.of(EventType::InventoryReserved, order_id).await? else {
        unreachable!("filtered by type")
    };
    assert_eq!(reserved.items, held(&[("CUP-1", 3), ("LID-1", 1)]));
    assert_eq!(reserved.envelope.causation_id, Some(created.envelope.event_id));
    assert_eq!(inventory.levels("CUP-1").await?, Some((2, 3, 0)));
    assert_eq!(inventory.levels("LID-1").await?, Some((4, 1, 0)));

    let confirmed = order_confirmed(&created);
    produce(&env, confirmed.clone()).await?;
    let SagaEvent::InventoryCommitted(committed) = emitted.of(EventType::InventoryCommitted, order_id).await? else {
        unreachable!("filtered by type")
    };
    assert_eq!(committed.items, held(&[("CUP-1", 3), ("LID-1", 1)]));
    assert_eq!(committed.envelope.causation_id, Some(confirmed.envelope.event_id));
    assert_eq!(inventory.levels("CUP-1").await?, Some((2, 0, 3)));
    assert_eq!(inventory.levels("LID-1").await?, Some((4, 0, 1)));
    inventory.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_order_exceeding_stock_in_one_line_reserves_nothing_and_names_the_unavailable_sku() -> anyhow::Result<()> {
    let (env, inventory, mut emitted) = start_with_stock(&[("PEN-1", 10), ("INK-1", 2)]).await?;

    let created = new_order(&[("PEN-1", 4), ("INK-1", 3), ("PAD-1", 1)]);
    let order_id = created.envelope.order_id;
    produce(&env, created.clone()).await?;
    let SagaEvent::InventoryReservationFailed(failed) =
        emitted.of(EventType::InventoryReservationFailed, order_id).await?
    else {
        unreachable!("filtered by type")
    };
    assert_eq!(failed.failure_reason, FailureReason::OutOfStock);
    assert_eq!(failed.reason, "out_of_stock", "the text names the reason too");
    assert_eq!(
        failed.unavailable_skus,
        vec!["INK-1".to_string(), "PAD-1".to_string()],
        "short and never-stocked skus"
    );
    assert_eq!(
        inventory.levels("PEN-1").await?,
        Some((10, 0, 0)),
        "the line that fitted was not reserved"
    );
    assert_eq!(inventory.levels("INK-1").await?, Some((2, 0, 0)));
    assert_eq!(inventory.levels("PAD-1").await?, None);

    // Failing the rejected order has nothing to release.
    produce(&env, order_failed(&created, FailureReason::OutOfStock)).await?;
    let total = quiesce(&env).await?;
    let events = emitted.at_least(total).await?;
    assert_eq!(types_of(events, order_id), vec![EventType::InventoryReservationFailed]);
    assert_eq!(inventory.levels("PEN-1").await?, Some((10, 0, 0)));
    inventory.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_failed_order_releases_its_reservation_and_redelivered_events_change_nothing() -> anyhow::Result<()> {
    let (env, inventory, mut emitted) = start_with_stock(&[("MUG-9", 10)]).await?;

    // Order A fails after its reservation: the units come back.
    let created_a = new_order(&[("MUG-9", 3)]);
    let order_a = created_a.envelope.order_id;
    produce(&env, created_a.clone()).await?;
    emitted.of(EventType::InventoryReserved, order_a).await?;
    assert_eq!(inventory.levels("MUG-9").await?, Some((7, 3, 0)));
    let failed_a = order_failed(&created_a, FailureReason::PaymentDeclined);
    produce(&env, failed_a.clone()).await?;
    let SagaEvent::InventoryReleased(released) = emitted.of(EventType::InventoryReleased, order_a).await? else {
        unreachable!("filtered by type")
    };
    assert_eq!(released.reason, "payment_declined");
    assert_eq!(released.items, held(&[("MUG-9", 3)]));
    assert_eq!(inventory.levels("MUG-9").await?, Some((10, 0, 0)), "available restored");

    // Order B is confirmed.
    let created_b = new_order(&[("MUG-9", 2)]);
    let order_b = created_b.envelope.order_id;
    produce(&env, created_b.clone()).await?;
    emitted.of(EventType::InventoryReserved, order_b).await?;
    let confirmed_b = order_confirmed(&created_b);
    produce(&env, confirmed_b.clone()).await?;
    emitted.of(EventType::InventoryCommitted, order_b).await?;
    assert_eq!(inventory.levels("MUG-9").await?, Some((8, 0, 2)));

    // Every event is delivered twice more, and the same facts arrive again under new event ids:
    // a second order.created, a failure of the committed order, a confirmation of the released.
    let redelivered: [SagaEvent; 4] = [
        created_a.clone().into(),
        failed_a.into(),
        created_b.clone().into(),
        confirmed_b.into(),
    ];
    for _ in 0..2 {
        for event in &redelivered {
            env.produce(event).await?;
        }
    }
    produce(&env, order_created_with(order_a, &[("MUG-9", 3)], APPROVED_TOKEN)).await?;
    produce(&env, order_confirmed(&created_a)).await?;
    produce(&env, order_created_with(order_b, &[("MUG-9", 2)], APPROVED_TOKEN)).await?;
    produce(&env, order_failed(&created_b, FailureReason::DeadlineExceeded)).await?;

    let total = quiesce(&env).await?;
    let events = emitted.at_least(total).await?;
    assert_eq!(events.len(), total);
    assert_eq!(
        types_of(events, order_a),
        vec![EventType::InventoryReserved, EventType::InventoryReleased]
    );
    assert_eq!(
        types_of(events, order_b),
        vec![EventType::InventoryReserved, EventType::InventoryCommitted]
    );
    assert_eq!(
        inventory.levels("MUG-9").await?,
        Some((8, 0, 2)),
        "nothing changed further"
    );
    let database = service_database(&env).await?;
    let statuses: HashMap<uuid::Uuid, String> =
        sqlx::query_as::<_, (uuid::Uuid, String)>("SELECT order_id, status FROM reservations")
            .fetch_all(&database)
            .await?
            .into_iter()
            .collect();
    assert_eq!(statuses.get(&order_a.uuid()).map(String::as_str), Some("released"));
    assert_eq!(statuses.get(&order_b.uuid()).map(String::as_str), Some("committed"));
    inventory.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_order_that_failed_before_it_was_created_reserves_nothing_later() -> anyhow::Result<()> {
    let (env, inventory, mut emitted) = start_with_stock(&[("CAP-2", 5)]).await?;

    let created = new_order(&[("CAP-2", 1)]);
    let order_id = created.envelope.order_id;
    produce(&env, order_failed(&created, FailureReason::DeadlineExceeded)).await?;
    produce(&env, created.clone()).await?;
    let SagaEvent::InventoryReservationFailed(failed) =
        emitted.of(EventType::InventoryReservationFailed, order_id).await?
    else {
        unreachable!("filtered by type")
    };
    assert_eq!(failed.failure_reason, FailureReason::OrderAlreadyFailed);
    assert_eq!(failed.reason, "order_already_failed");
    assert_eq!(failed.envelope.causation_id, Some(created.envelope.event_id));
    assert_eq!(inventory.levels("CAP-2").await?, Some((5, 0, 0)));

    let total = quiesce(&env).await?;
    let events = emitted.at_least(total).await?;
    assert_eq!(types_of(events, order_id), vec![EventType::InventoryReservationFailed]);
    inventory.stop().await;
    Ok(())
}

#[tokio::test]
async fn concurrent_orders_for_the_last_units_never_oversell_even_across_two_instances() -> anyhow::Result<()> {
    const UNITS: i64 = 10;
    const ORDERS: usize = 25;
    let env = TestEnv::new().await?;
    let first = Inventory::start(&env).await?;
    let second = Inventory::start(&env).await?;
    let mut emitted = Emitted::new(&env)?;
    first.restock("LAST-1", UNITS).await?;
    // Let the group settle so each instance owns some partitions and the two contend for the
    // same stock row (a run of this test showed 3 partitions each in the broker). The assertions
    // below hold however the partitions end up assigned.
    tokio::time::sleep(Duration::from_secs(8)).await;

    let orders: Vec<SagaEvent> = (0..ORDERS).map(|_| new_order(&[("LAST-1", 1)]).into()).collect();
    futures::future::try_join_all(orders.iter().map(|order| env.produce(order))).await?;
    let order_ids: HashSet<OrderId> = orders.iter().filter_map(SagaEvent::order_id).collect();
    assert_eq!(order_ids.len(), ORDERS);

    let events = emitted
        .until("a decision for every order", |events| {
            events
                .iter()
                .filter(|e| e.order_id().is_some_and(|id| order_ids.contains(&id)))
                .count()
                >= ORDERS
        })
        .await?
        .to_vec();
    let reserved: Vec<&SagaEvent> = events
        .iter()
        .filter(|e| e.event_type() == EventType::InventoryReserved)
        .collect();
    let rejected: Vec<&SagaEvent> = events
        .iter()
        .filter(|e| e.event_type() == EventType::InventoryReservationFailed)
        .collect();
    assert_eq!(reserved.len(), 10, "exactly the units in stock were reserved");
    assert_eq!(rejected.len(), ORDERS - 10);
    for event in &rejected {
        let SagaEvent::InventoryReservationFailed(failed) = event else {
            unreachable!("filtered by type")
        };
        assert_eq!(failed.failure_reason, FailureReason::OutOfStock);
        assert_eq!(failed.unavailable_skus, vec!["LAST-1".to_string()]);
    }
    let decided: HashSet<OrderId> = reserved.iter().chain(&rejected).filter_map(|e| e.order_id()).collect();
    assert_eq!(decided.len(), ORDERS, "one decision per order");

    let (available, held, sold) = second.levels("LAST-1").await?.context("LAST-1 is stocked")?;
    assert_eq!((available, held, sold), (0, 10, 0));
    assert_eq!(available + held + sold, UNITS, "stock is conserved");
    first.stop().await;
    second.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_poison_record_on_orders_is_dead_lettered_and_the_next_event_is_processed() -> anyhow::Result<()> {
    let (env, inventory, mut emitted) = start_with_stock(&[("TAPE-5", 4)]).await?;
    let dead_letters = env.reader(&env.kafka.dead_letter_topic(INVENTORY_SERVICE))?;

    // Same key, so the same partition: each event comes right after the one before.
    let order_id = OrderId::new();
    env.produce_raw(
        Topic::Orders,
        &order_id.to_string(),
        b"\x00\x00\x00\x00\x07 definitely not avro",
    )
    .await?;
    // Valid Avro whose content can never be reserved: a line of zero units.
    produce(&env, order_created_with(order_id, &[("TAPE-5", 0)], APPROVED_TOKEN)).await?;
    produce(&env, order_created_with(order_id, &[("TAPE-5", 1)], APPROVED_TOKEN)).await?;

    let reserved = emitted.of(EventType::InventoryReserved, order_id).await?;
    assert!(matches!(reserved, SagaEvent::InventoryReserved(ref r) if r.items == held(&[("TAPE-5", 1)])));
    assert_eq!(inventory.levels("TAPE-5").await?, Some((3, 1, 0)));

    let records = dead_letters.read_until(PATIENCE, |records| records.len() >= 2).await?;
    let orders_topic = env.kafka.topic(Topic::Orders);
    let mut origin_offsets = Vec::new();
    for record in &records {
        assert_eq!(
            header(record, "dlq.origin.topic"),
            Some(orders_topic.as_str()),
            "{record:?}"
        );
        assert_eq!(
            header(record, "dlq.consumer.group"),
            Some(env.group(INVENTORY_SERVICE).as_str()),
            "{record:?}"
        );
        assert!(
            header(record, "dlq.origin.partition")
                .and_then(|p| p.parse::<i32>().ok())
                .is_some(),
            "{record:?}"
        );
        origin_offsets.push(
            header(record, "dlq.origin.offset")
                .and_then(|o| o.parse::<i64>().ok())
                .context("offset header")?,
        );
        assert!(
            !header(record, "dlq.error").unwrap_or_default().is_empty(),
            "{record:?}"
        );
        assert_eq!(record.key, Some(order_id.to_string()));
    }
    assert!(
        origin_offsets[0] < origin_offsets[1],
        "dead-lettered in order: {origin_offsets:?}"
    );
    let invalid_order_error = header(&records[1], "dlq.error").unwrap_or_default();
    assert!(
        invalid_order_error.contains("permanent") && invalid_order_error.contains("quantity"),
        "the invalid order is a permanent error naming the quantity: {invalid_order_error}"
    );
    assert!(records[1].event.is_ok(), "the invalid order itself is valid Avro");
    inventory.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_confirmation_of_an_order_never_reserved_is_dead_lettered_at_once_and_the_partition_goes_on(
) -> anyhow::Result<()> {
    let (env, inventory, mut emitted) = start_with_stock(&[("REEL-4", 5)]).await?;

    // The order service confirms only reserved orders, so a confirmation whose reservation does
    // not exist can never be applied. The order's next event travels on the same partition
    // (same key), right behind it.
    let created = new_order(&[("REEL-4", 2)]);
    let order_id = created.envelope.order_id;
    let confirmed = order_confirmed(&created);
    produce(&env, confirmed.clone()).await?;
    produce(&env, created.clone()).await?;

    let SagaEvent::InventoryReserved(reserved) = emitted.of(EventType::InventoryReserved, order_id).await? else {
        unreachable!("filtered by type")
    };
    assert_eq!(reserved.envelope.causation_id, Some(created.envelope.event_id));
    assert_eq!(
        inventory.levels("REEL-4").await?,
        Some((3, 2, 0)),
        "the event behind the dead letter was applied"
    );

    let total = quiesce(&env).await?;
    let reason = the_one_dead_letter(&env, &inventory, confirmed.envelope.event_id).await?;
    assert!(reason.contains("never reserved"), "the reason says why: {reason}");
    let events = emitted.at_least(total).await?;
    assert_eq!(
        types_of(events, order_id),
        vec![EventType::InventoryReserved],
        "nothing was committed"
    );
    inventory.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_release_that_a_stock_constraint_refuses_is_dead_lettered_at_once_and_the_partition_goes_on(
) -> anyhow::Result<()> {
    let (env, inventory, mut emitted) = start_with_stock(&[("SPOOL-6", 5)]).await?;
    let database = service_database(&env).await?;
    let created = new_order(&[("SPOOL-6", 2)]);
    let order_id = created.envelope.order_id;
    produce(&env, created.clone()).await?;
    emitted.of(EventType::InventoryReserved, order_id).await?;

    // A hand correction zeroed the reserved units while the order still holds 2: giving them
    // back would take `reserved` below zero, which the table's CHECK constraint refuses, now and
    // on every retry. The same order's next event travels right behind it on its partition.
    sqlx::query("UPDATE stock SET reserved = 0 WHERE sku = 'SPOOL-6'")
        .execute(&database)
        .await?;
    let failed = order_failed(&created, FailureReason::PaymentDeclined);
    produce(&env, failed.clone()).await?;
    let created_again = order_created_with(order_id, &[("SPOOL-6", 2)], APPROVED_TOKEN);
    produce(&env, created_again.clone()).await?;

    let total = quiesce(&env).await?;
    let reason = the_one_dead_letter(&env, &inventory, failed.envelope.event_id).await?;
    assert!(
        reason.contains("check constraint"),
        "the reason names the constraint: {reason}"
    );
    assert!(
        inbox::seen(&database, created_again.envelope.event_id).await?,
        "the event behind the dead letter was processed"
    );
    assert!(
        !inbox::seen(&database, failed.envelope.event_id).await?,
        "the refused release left no trace"
    );
    assert_eq!(
        inventory.levels("SPOOL-6").await?,
        Some((3, 0, 0)),
        "nothing was released"
    );
    let events = emitted.at_least(total).await?;
    assert_eq!(types_of(events, order_id), vec![EventType::InventoryReserved]);
    inventory.stop().await;
    Ok(())
}
