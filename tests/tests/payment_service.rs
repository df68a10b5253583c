//! The payment service against the real broker, registry and PostgreSQL: the test plays the
//! order service by producing order events, and checks what the payment service emitted on
//! `payments`, what it serves over HTTP, and what its simulated gateway's ledger recorded.
//!
//! Charges run in the background, so a payment may be seen `pending` before it settles; the
//! slow-token tests check that a slow charge holds up no other order, that an order failing
//! while its charge is pending gets the capture back exactly once, and that a charge interrupted
//! by a restart (or resumed by a second instance) is captured exactly once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use payment_service::gateway::{
    ChargeOutcome, ChargeRequest, GatewayConfig, PaymentGateway, RefundRequest, SimulatedGateway,
};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use reqwest::StatusCode;
use saga_common::consumer::event_headers;
use saga_common::consumer::{DLQ_CONSUMER_GROUP, DLQ_ERROR, DLQ_ORIGIN_OFFSET, DLQ_ORIGIN_PARTITION, DLQ_ORIGIN_TOPIC};
use saga_common::kafka;
use saga_common::service::RunningService;
use saga_contracts::{OrderConfirmed, OrderCreated, OrderFailed, OrderLine, SagaEvent, Topic};
use saga_tests::{eventually, ReadRecord, TestEnv, TopicReader};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(60);
/// How long the payments topic must stay silent to count as "nothing more was emitted".
const QUIET: Duration = Duration::from_secs(3);
const TOTAL_MINOR: i64 = 3998;

fn config(env: &TestEnv) -> payment_service::Config {
    payment_service::Config {
        service: env.service_config("payment"),
        gateway: GatewayConfig::default(),
    }
}

async fn start(env: &TestEnv) -> anyhow::Result<RunningService> {
    payment_service::start(&config(env), CancellationToken::new())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the payment service did not start"))
}

/// The payment service's database, for looking at its gateway ledger and outbox.
async fn database(env: &TestEnv) -> anyhow::Result<PgPool> {
    Ok(PgPool::connect(&env.database_url("payment")).await?)
}

fn order_created(order_id: Uuid, token: &str) -> OrderCreated {
    OrderCreated {
        event_id: Uuid::new_v4().to_string(),
        order_id: order_id.to_string(),
        causation_id: None,
        occurred_at: chrono::Utc::now().timestamp_millis(),
        customer_id: "customer-1".into(),
        customer_email: "buyer@example.com".into(),
        payment_token: token.into(),
        total_minor: TOTAL_MINOR,
        currency: "USD".into(),
        items: vec![OrderLine {
            sku: "SKU-1".into(),
            quantity: 2,
            unit_price_minor: 1999,
        }],
        sales_channel: "api".into(),
    }
}

fn order_failed(created: &OrderCreated, reason: &str) -> OrderFailed {
    OrderFailed {
        event_id: Uuid::new_v4().to_string(),
        order_id: created.order_id.clone(),
        causation_id: None,
        occurred_at: chrono::Utc::now().timestamp_millis(),
        reason: reason.into(),
        customer_email: created.customer_email.clone(),
        total_minor: created.total_minor,
        currency: created.currency.clone(),
    }
}

fn order_confirmed(created: &OrderCreated) -> OrderConfirmed {
    OrderConfirmed {
        event_id: Uuid::new_v4().to_string(),
        order_id: created.order_id.clone(),
        causation_id: None,
        occurred_at: chrono::Utc::now().timestamp_millis(),
        customer_email: created.customer_email.clone(),
        total_minor: created.total_minor,
        currency: created.currency.clone(),
    }
}

fn payments_reader(env: &TestEnv) -> anyhow::Result<TopicReader> {
    env.reader(&env.kafka.topic(Topic::Payments))
}

fn events(records: &[ReadRecord]) -> Vec<&SagaEvent> {
    records.iter().filter_map(|record| record.event.as_ref().ok()).collect()
}

/// Reads the payments topic until `count` events were read, then checks that nothing more comes.
async fn read_exactly(reader: &TopicReader, count: usize) -> anyhow::Result<Vec<SagaEvent>> {
    let records = reader.read_until(TIMEOUT, |records| records.len() >= count).await?;
    let extra = reader.read_until(QUIET, |records| !records.is_empty()).await;
    if let Ok(extra) = extra {
        anyhow::bail!("expected {count} events, then silence; also got {extra:#?}");
    }
    assert!(
        records.iter().all(|r| r.event.is_ok()),
        "undecodable payments: {records:#?}"
    );
    Ok(events(&records).into_iter().cloned().collect())
}

/// Produces `events` in this order through one producer (quicker than [`TestEnv::produce`] per
/// event, for the tests that time what follows).
async fn produce_all(env: &TestEnv, events: &[SagaEvent]) -> anyhow::Result<()> {
    let codec = env.codec()?;
    let producer = kafka::producer(&env.kafka)?;
    for event in events {
        let encoded = codec.encode(event).await?;
        let headers = event_headers(
            encoded.event_type.as_str(),
            &encoded.event_id,
            &saga_common::codec::traceparent_for(&encoded.key),
        );
        let record = FutureRecord::to(&encoded.topic)
            .key(&encoded.key)
            .payload(&encoded.payload)
            .headers(headers);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(error, _)| anyhow::anyhow!("produce failed: {error}"))?;
    }
    Ok(())
}

/// The stored status of the payment of `order_id`, if it has one.
async fn status(database: &PgPool, order_id: &str) -> anyhow::Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT status FROM payments WHERE order_id = $1::uuid")
            .bind(order_id)
            .fetch_optional(database)
            .await?,
    )
}

/// Waits until the payment of `order_id` is recorded with status `expected`.
async fn status_becomes(database: &PgPool, order_id: &str, expected: &str) -> anyhow::Result<()> {
    eventually(&format!("payment of {order_id} {expected}"), TIMEOUT, || async {
        (status(database, order_id).await.ok()?.as_deref() == Some(expected)).then_some(())
    })
    .await
}

/// Waits until the payment service has processed every record on `orders` (its committed
/// offsets reached the end of every partition), settled every payment it recorded (none is
/// pending) and published every event it caused.
async fn wait_until_settled(env: &TestEnv, database: &PgPool) -> anyhow::Result<()> {
    let topic = env.kafka.topic(Topic::Orders);
    let probe: Arc<StreamConsumer> = Arc::new(kafka::consumer(&env.kafka, &env.group(payment_service::SPEC.name))?);
    eventually("every order event consumed", TIMEOUT, || {
        let probe = probe.clone();
        let topic = topic.clone();
        async move {
            let consumed = tokio::task::spawn_blocking(move || consumed_to_the_end(&probe, &topic))
                .await
                .ok()?;
            consumed.ok()?.then_some(())
        }
    })
    .await?;
    eventually("no payment pending", TIMEOUT, || async {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE status = 'pending'")
            .fetch_one(database)
            .await
            .ok()?;
        (pending == 0).then_some(())
    })
    .await?;
    eventually("outbox published", TIMEOUT, || async {
        let pending = saga_common::outbox::pending(database).await.ok()?;
        (pending == 0).then_some(())
    })
    .await
}

fn consumed_to_the_end(probe: &StreamConsumer, topic: &str) -> anyhow::Result<bool> {
    let wait = Duration::from_secs(10);
    let mut partitions = TopicPartitionList::new();
    for partition in 0..6 {
        partitions.add_partition(topic, partition);
    }
    let committed = probe.committed_offsets(partitions, wait)?;
    for partition in 0..6 {
        let (_, high) = probe.fetch_watermarks(topic, partition, wait)?;
        if high == 0 {
            continue;
        }
        match committed.find_partition(topic, partition).map(|entry| entry.offset()) {
            Some(Offset::Offset(offset)) if offset >= high => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

async fn get_payment(service: &RunningService, order_id: &str) -> anyhow::Result<(StatusCode, Value)> {
    let response = reqwest::get(format!("http://{}/payments/{order_id}", service.local_addr)).await?;
    let status = response.status();
    Ok((status, response.json().await?))
}

/// The gateway ledger's rows: (idempotency key, operation, attempts, outcome, amount).
async fn ledger(database: &PgPool) -> anyhow::Result<Vec<(String, String, i32, Option<String>, i64)>> {
    Ok(sqlx::query_as(
        "SELECT idempotency_key, operation, attempts, outcome, amount_minor FROM gateway_ledger ORDER BY created_at",
    )
    .fetch_all(database)
    .await?)
}

fn header<'a>(record: &'a ReadRecord, name: &str) -> Option<&'a str> {
    record
        .headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

#[tokio::test]
async fn a_good_token_is_captured_and_payment_success_carries_the_order_total() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env).await?;
    let order_id = Uuid::new_v4();
    let created = order_created(order_id, "tok_visa");
    env.produce(&created.clone().into()).await?;

    let emitted = read_exactly(&payments_reader(&env)?, 1).await?;
    let SagaEvent::PaymentSucceeded(success) = &emitted[0] else {
        panic!("expected payment.success, got {emitted:#?}");
    };
    assert_eq!(success.order_id, created.order_id);
    assert_eq!(success.causation_id.as_deref(), Some(created.event_id.as_str()));
    assert_eq!(success.amount_minor, TOTAL_MINOR);
    assert_eq!(success.currency, "USD");
    assert!(Uuid::parse_str(&success.payment_id).is_ok());

    let (status, body) = get_payment(&service, &created.order_id).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        serde_json::json!({
            "order_id": created.order_id,
            "payment_id": success.payment_id,
            "status": "captured",
            "amount_minor": TOTAL_MINOR,
            "refunded_minor": 0,
            "currency": "USD",
            "decline_reason": null,
        })
    );

    // order.confirmed changes nothing: the capture stands.
    env.produce(&order_confirmed(&created).into()).await?;
    let database = database(&env).await?;
    wait_until_settled(&env, &database).await?;
    assert_eq!(get_payment(&service, &created.order_id).await?.1["status"], "captured");
    assert_eq!(
        ledger(&database).await?,
        vec![(
            created.order_id.clone(),
            "charge".into(),
            1,
            Some("captured".into()),
            TOTAL_MINOR
        )]
    );
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_decline_token_is_declined_with_payment_failed_and_nothing_is_charged() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env).await?;
    let created = order_created(Uuid::new_v4(), "tok_decline_insufficient_funds");
    env.produce(&created.clone().into()).await?;

    let emitted = read_exactly(&payments_reader(&env)?, 1).await?;
    let SagaEvent::PaymentFailed(failed) = &emitted[0] else {
        panic!("expected payment.failed, got {emitted:#?}");
    };
    assert_eq!(failed.order_id, created.order_id);
    assert_eq!(failed.reason, "card_declined");
    assert_eq!(failed.amount_minor, TOTAL_MINOR);
    assert_eq!(failed.currency, "USD");

    let (status, body) = get_payment(&service, &created.order_id).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "declined");
    assert_eq!(body["decline_reason"], "card_declined");
    assert_eq!(body["refunded_minor"], 0);

    let database = database(&env).await?;
    let captured: i64 = sqlx::query_scalar("SELECT count(*) FROM gateway_ledger WHERE outcome = 'captured'")
        .fetch_one(&database)
        .await?;
    assert_eq!(captured, 0, "a declined order must not be charged");
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_flaky_token_is_captured_after_transient_errors_with_exactly_one_payment_success() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env).await?;
    let created = order_created(Uuid::new_v4(), "tok_flaky_visa");
    env.produce(&created.clone().into()).await?;

    let emitted = read_exactly(&payments_reader(&env)?, 1).await?;
    assert!(
        matches!(&emitted[0], SagaEvent::PaymentSucceeded(success) if success.amount_minor == TOTAL_MINOR),
        "expected one payment.success, got {emitted:#?}"
    );
    assert_eq!(get_payment(&service, &created.order_id).await?.1["status"], "captured");
    let database = database(&env).await?;
    // Two transient failures, then the capture: three calls under one key, one charge.
    assert_eq!(
        ledger(&database).await?,
        vec![(
            created.order_id.clone(),
            "charge".into(),
            3,
            Some("captured".into()),
            TOTAL_MINOR
        )]
    );
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn order_failed_after_a_capture_refunds_exactly_once_however_often_events_are_delivered() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env).await?;
    let reader = payments_reader(&env)?;
    let created = order_created(Uuid::new_v4(), "tok_visa");
    env.produce(&created.clone().into()).await?;
    reader.read_until(TIMEOUT, |records| !records.is_empty()).await?;

    let failed = order_failed(&created, "out_of_stock");
    env.produce(&failed.clone().into()).await?;
    // The same order.failed and order.created delivered again, and a second order.failed.
    env.produce(&failed.clone().into()).await?;
    env.produce(&created.clone().into()).await?;
    env.produce(&order_failed(&created, "deadline_exceeded").into()).await?;
    let database = database(&env).await?;
    wait_until_settled(&env, &database).await?;

    let emitted = read_exactly(&reader, 1).await?;
    let SagaEvent::PaymentRefunded(refunded) = &emitted[0] else {
        panic!("expected one payment.refunded after the payment.success, got {emitted:#?}");
    };
    assert_eq!(refunded.order_id, created.order_id);
    assert_eq!(refunded.causation_id.as_deref(), Some(failed.event_id.as_str()));
    assert_eq!(refunded.amount_minor, TOTAL_MINOR);
    assert_eq!(refunded.currency, "USD");
    assert_eq!(refunded.reason, "out_of_stock");

    let (status, body) = get_payment(&service, &created.order_id).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "refunded");
    assert_eq!(body["payment_id"], refunded.payment_id.as_str());
    assert_eq!(body["refunded_minor"], TOTAL_MINOR);
    assert_eq!(body["amount_minor"], TOTAL_MINOR);

    let refund_key = format!("refund-{}", created.order_id);
    assert_eq!(
        ledger(&database).await?,
        vec![
            (
                created.order_id.clone(),
                "charge".into(),
                1,
                Some("captured".into()),
                TOTAL_MINOR
            ),
            (refund_key, "refund".into(), 1, Some("refunded".into()), TOTAL_MINOR),
        ]
    );
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn order_failed_for_a_declined_payment_refunds_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env).await?;
    let reader = payments_reader(&env)?;
    let created = order_created(Uuid::new_v4(), "tok_decline");
    env.produce(&created.clone().into()).await?;
    env.produce(&order_failed(&created, "payment_declined").into()).await?;
    let database = database(&env).await?;
    wait_until_settled(&env, &database).await?;

    let emitted = read_exactly(&reader, 1).await?;
    assert!(
        matches!(&emitted[0], SagaEvent::PaymentFailed(_)),
        "expected only payment.failed, got {emitted:#?}"
    );
    let body = get_payment(&service, &created.order_id).await?.1;
    assert_eq!(body["status"], "declined");
    assert_eq!(body["refunded_minor"], 0);
    let refunds: i64 = sqlx::query_scalar("SELECT count(*) FROM gateway_ledger WHERE operation = 'refund'")
        .fetch_one(&database)
        .await?;
    assert_eq!(refunds, 0);
    let failed_reason: String = sqlx::query_scalar("SELECT reason FROM failed_orders WHERE order_id = $1::uuid")
        .bind(&created.order_id)
        .fetch_one(&database)
        .await?;
    assert_eq!(failed_reason, "payment_declined");
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_poison_record_is_dead_lettered_with_its_origin_and_the_next_order_is_still_charged() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env).await?;
    let poison_key = Uuid::new_v4().to_string();
    let mut poison = vec![0xFF_u8];
    poison.extend_from_slice(Uuid::new_v4().as_bytes());
    env.produce_raw(Topic::Orders, &poison_key, &poison).await?;
    let created = order_created(Uuid::new_v4(), "tok_visa");
    env.produce(&created.clone().into()).await?;

    let dead_letters = env.reader(&env.kafka.dead_letter_topic(payment_service::SPEC.name))?;
    let records = dead_letters.read_until(TIMEOUT, |records| !records.is_empty()).await?;
    let dead = &records[0];
    assert_eq!(dead.key.as_deref(), Some(poison_key.as_str()));
    assert!(dead.event.is_err(), "the dead letter keeps the undecodable bytes");
    assert_eq!(
        header(dead, DLQ_ORIGIN_TOPIC),
        Some(env.kafka.topic(Topic::Orders).as_str())
    );
    assert!(header(dead, DLQ_ORIGIN_PARTITION).is_some_and(|p| p.parse::<i32>().is_ok_and(|p| (0..6).contains(&p))));
    assert!(header(dead, DLQ_ORIGIN_OFFSET).is_some_and(|o| o.parse::<i64>().is_ok()));
    assert!(header(dead, DLQ_ERROR).is_some_and(|e| !e.is_empty()));
    assert_eq!(
        header(dead, DLQ_CONSUMER_GROUP),
        Some(env.group(payment_service::SPEC.name).as_str())
    );

    let emitted = read_exactly(&payments_reader(&env)?, 1).await?;
    assert!(
        matches!(&emitted[0], SagaEvent::PaymentSucceeded(success) if success.order_id == created.order_id),
        "expected payment.success for the good order, got {emitted:#?}"
    );
    assert_eq!(get_payment(&service, &created.order_id).await?.1["status"], "captured");
    let more_dead = dead_letters.read_until(QUIET, |records| !records.is_empty()).await;
    assert!(
        more_dead.is_err(),
        "only the poison record is dead-lettered: {more_dead:#?}"
    );
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_restarted_service_does_not_charge_or_refund_again_when_events_are_redelivered() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env).await?;
    let charged = order_created(Uuid::new_v4(), "tok_visa");
    let refunded = order_created(Uuid::new_v4(), "tok_visa");
    let refunded_failure = order_failed(&refunded, "deadline_exceeded");
    for event in [
        SagaEvent::from(charged.clone()),
        refunded.clone().into(),
        refunded_failure.clone().into(),
    ] {
        env.produce(&event).await?;
    }
    let database = database(&env).await?;
    wait_until_settled(&env, &database).await?;
    let before = (
        get_payment(&service, &charged.order_id).await?.1,
        get_payment(&service, &refunded.order_id).await?.1,
        ledger(&database).await?,
    );
    assert_eq!(before.0["status"], "captured");
    assert_eq!(before.1["status"], "refunded");
    service.stop().await;

    let service = start(&env).await?;
    for event in [
        SagaEvent::from(charged.clone()),
        refunded.clone().into(),
        refunded_failure.clone().into(),
    ] {
        env.produce(&event).await?;
    }
    wait_until_settled(&env, &database).await?;
    let after = (
        get_payment(&service, &charged.order_id).await?.1,
        get_payment(&service, &refunded.order_id).await?.1,
        ledger(&database).await?,
    );
    // Same payments, and no gateway call at all (the ledger counts every call).
    assert_eq!(after, before);

    let emitted = read_exactly(&payments_reader(&env)?, 3).await?;
    let mut types: Vec<&str> = emitted.iter().map(|event| event.event_type().as_str()).collect();
    types.sort_unstable();
    assert_eq!(types, ["payment.refunded", "payment.success", "payment.success"]);
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_charge_made_before_a_crash_is_not_repeated_when_the_order_is_processed_again() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env).await?;
    let database = database(&env).await?;
    let created = order_created(Uuid::new_v4(), "tok_visa");
    // As if an earlier run charged the order and crashed before its commit.
    let gateway = SimulatedGateway::new(database.clone(), Duration::ZERO, 0.0);
    let first = gateway
        .charge(ChargeRequest {
            idempotency_key: created.order_id.clone(),
            token: created.payment_token.clone(),
            amount_minor: created.total_minor,
            currency: created.currency.clone(),
        })
        .await?;
    let ChargeOutcome::Captured { gateway_reference } = first else {
        panic!("expected a capture, got {first:?}");
    };

    env.produce(&created.clone().into()).await?;
    let emitted = read_exactly(&payments_reader(&env)?, 1).await?;
    assert!(
        matches!(&emitted[0], SagaEvent::PaymentSucceeded(_)),
        "got {emitted:#?}"
    );
    let stored: String = sqlx::query_scalar("SELECT gateway_reference FROM payments WHERE order_id = $1::uuid")
        .bind(&created.order_id)
        .fetch_one(&database)
        .await?;
    assert_eq!(stored, gateway_reference, "the service got the first charge back");
    assert_eq!(
        ledger(&database).await?,
        vec![(
            created.order_id.clone(),
            "charge".into(),
            2,
            Some("captured".into()),
            TOTAL_MINOR
        )]
    );
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_refund_made_before_a_crash_is_not_repeated_when_order_failed_is_processed_again() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env).await?;
    let database = database(&env).await?;
    let reader = payments_reader(&env)?;
    let created = order_created(Uuid::new_v4(), "tok_visa");
    env.produce(&created.clone().into()).await?;
    reader.read_until(TIMEOUT, |records| !records.is_empty()).await?;
    let charge_reference: String =
        sqlx::query_scalar("SELECT gateway_reference FROM payments WHERE order_id = $1::uuid")
            .bind(&created.order_id)
            .fetch_one(&database)
            .await?;
    // As if an earlier run refunded at the gateway and crashed before its commit.
    let refund_key = format!("refund-{}", created.order_id);
    SimulatedGateway::new(database.clone(), Duration::ZERO, 0.0)
        .refund(RefundRequest {
            idempotency_key: refund_key.clone(),
            gateway_reference: charge_reference,
            amount_minor: created.total_minor,
            currency: created.currency.clone(),
        })
        .await?;

    env.produce(&order_failed(&created, "out_of_stock").into()).await?;
    let emitted = read_exactly(&reader, 1).await?;
    assert!(
        matches!(&emitted[0], SagaEvent::PaymentRefunded(refund) if refund.amount_minor == TOTAL_MINOR),
        "expected one payment.refunded, got {emitted:#?}"
    );
    assert_eq!(
        get_payment(&service, &created.order_id).await?.1["refunded_minor"],
        TOTAL_MINOR
    );
    assert_eq!(
        ledger(&database).await?,
        vec![
            (
                created.order_id.clone(),
                "charge".into(),
                1,
                Some("captured".into()),
                TOTAL_MINOR
            ),
            (refund_key, "refund".into(), 2, Some("refunded".into()), TOTAL_MINOR),
        ]
    );
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_payment_api_answers_404_for_an_unknown_order_and_400_for_a_malformed_id() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env).await?;
    let (status, body) = get_payment(&service, &Uuid::new_v4().to_string()).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
    let (status, body) = get_payment(&service, "not-a-uuid").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().is_some_and(|e| e.contains("not-a-uuid")));
    service.stop().await;
    Ok(())
}

/// The `order_id`s of the payment.success events among `records`.
fn succeeded(records: &[ReadRecord]) -> HashSet<String> {
    events(records)
        .into_iter()
        .filter_map(|event| match event {
            SagaEvent::PaymentSucceeded(success) => Some(success.order_id.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_slow_charge_does_not_delay_the_orders_behind_it() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env).await?;
    let database = database(&env).await?;
    let reader = payments_reader(&env)?;
    // Once this one is through, the service's consumer and the reader have their partitions.
    let warm_up = order_created(Uuid::new_v4(), "tok_visa");
    env.produce(&warm_up.clone().into()).await?;
    reader
        .read_until(TIMEOUT, |records| succeeded(records).contains(&warm_up.order_id))
        .await?;

    let slow = order_created(Uuid::new_v4(), "tok_slow_8000");
    let fast: Vec<OrderCreated> = (0..10).map(|_| order_created(Uuid::new_v4(), "tok_visa")).collect();
    let fast_ids: HashSet<String> = fast.iter().map(|order| order.order_id.clone()).collect();
    let mut batch = vec![SagaEvent::from(slow.clone())];
    batch.extend(fast.iter().cloned().map(SagaEvent::from));
    let produced = Instant::now();
    produce_all(&env, &batch).await?;
    let records = reader
        .read_until(Duration::from_secs(3).saturating_sub(produced.elapsed()), |records| {
            fast_ids.is_subset(&succeeded(records))
        })
        .await?;
    let captured_within = produced.elapsed();
    assert!(
        !succeeded(&records).contains(&slow.order_id),
        "the slow charge cannot have finished yet: {records:#?}"
    );
    assert_eq!(status(&database, &slow.order_id).await?.as_deref(), Some("pending"));
    let (code, body) = get_payment(&service, &slow.order_id).await?;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        body["status"], "pending",
        "a payment being charged is served as pending"
    );
    assert_eq!(body["refunded_minor"], 0);
    assert_eq!(body["decline_reason"], Value::Null);
    for order in &fast {
        assert_eq!(get_payment(&service, &order.order_id).await?.1["status"], "captured");
    }
    assert!(
        captured_within <= Duration::from_secs(3),
        "ten orders captured behind a slow one in {captured_within:?}"
    );

    // The slow one is captured in its own time, once.
    let later = reader
        .read_until(TIMEOUT, |records| succeeded(records).contains(&slow.order_id))
        .await?;
    assert!(produced.elapsed() >= Duration::from_secs(8), "the slow token takes 8 s");
    assert_eq!(later.len(), 1, "only the slow order's payment.success: {later:#?}");
    assert_eq!(get_payment(&service, &slow.order_id).await?.1["status"], "captured");
    let captures: i64 =
        sqlx::query_scalar("SELECT count(*) FROM gateway_ledger WHERE operation = 'charge' AND outcome = 'captured'")
            .fetch_one(&database)
            .await?;
    assert_eq!(
        captures, 12,
        "the warm-up, the ten and the slow one, each captured once"
    );
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn order_failed_while_the_charge_is_pending_refunds_the_capture_exactly_once() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env).await?;
    let database = database(&env).await?;
    let reader = payments_reader(&env)?;
    let created = order_created(Uuid::new_v4(), "tok_slow_3000");
    env.produce(&created.clone().into()).await?;
    status_becomes(&database, &created.order_id, "pending").await?;

    // The deadline fails the order while the gateway still works on the charge; the failure
    // arrives twice, and a second failure for another reason too.
    let failed = order_failed(&created, "deadline_exceeded");
    produce_all(
        &env,
        &[
            failed.clone().into(),
            failed.clone().into(),
            order_failed(&created, "out_of_stock").into(),
        ],
    )
    .await?;
    eventually("order.failed recorded", TIMEOUT, || async {
        let reason: Option<String> = sqlx::query_scalar("SELECT reason FROM failed_orders WHERE order_id = $1::uuid")
            .bind(&created.order_id)
            .fetch_optional(&database)
            .await
            .ok()?;
        reason
    })
    .await?;
    assert_eq!(
        status(&database, &created.order_id).await?.as_deref(),
        Some("pending"),
        "order.failed must be handled while the charge is still pending for this test to mean anything"
    );

    let emitted = read_exactly(&reader, 2).await?;
    let [SagaEvent::PaymentSucceeded(success), SagaEvent::PaymentRefunded(refunded)] = emitted.as_slice() else {
        panic!("expected payment.success then payment.refunded, got {emitted:#?}");
    };
    assert_eq!(success.causation_id.as_deref(), Some(created.event_id.as_str()));
    assert_eq!(success.amount_minor, TOTAL_MINOR);
    assert_eq!(refunded.payment_id, success.payment_id);
    assert_eq!(refunded.causation_id.as_deref(), Some(failed.event_id.as_str()));
    assert_eq!(refunded.reason, "deadline_exceeded");
    assert_eq!(refunded.amount_minor, TOTAL_MINOR);
    assert_eq!(refunded.currency, "USD");

    wait_until_settled(&env, &database).await?;
    let body = get_payment(&service, &created.order_id).await?.1;
    assert_eq!(body["status"], "refunded");
    assert_eq!(body["amount_minor"], TOTAL_MINOR);
    assert_eq!(body["refunded_minor"], TOTAL_MINOR);
    assert_eq!(
        ledger(&database).await?,
        vec![
            (
                created.order_id.clone(),
                "charge".into(),
                1,
                Some("captured".into()),
                TOTAL_MINOR
            ),
            (
                format!("refund-{}", created.order_id),
                "refund".into(),
                1,
                Some("refunded".into()),
                TOTAL_MINOR
            ),
        ]
    );
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_charge_interrupted_by_a_restart_is_resumed_and_captured_exactly_once() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env).await?;
    let database = database(&env).await?;
    let created = order_created(Uuid::new_v4(), "tok_slow_3000");
    env.produce(&created.clone().into()).await?;
    status_becomes(&database, &created.order_id, "pending").await?;
    // The gateway has the call: its ledger counts the attempt, with no outcome yet.
    eventually("charge under way at the gateway", TIMEOUT, || async {
        let outcome: Option<Option<String>> =
            sqlx::query_scalar("SELECT outcome FROM gateway_ledger WHERE idempotency_key = $1")
                .bind(&created.order_id)
                .fetch_optional(&database)
                .await
                .ok()?;
        matches!(outcome, Some(None)).then_some(())
    })
    .await?;

    let stopping = Instant::now();
    service.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "stopping waits for no charge: took {:?}",
        stopping.elapsed()
    );
    assert_eq!(
        status(&database, &created.order_id).await?.as_deref(),
        Some("pending"),
        "the interrupted charge is left pending"
    );

    let service = start(&env).await?;
    let emitted = read_exactly(&payments_reader(&env)?, 1).await?;
    let SagaEvent::PaymentSucceeded(success) = &emitted[0] else {
        panic!("expected one payment.success, got {emitted:#?}");
    };
    assert_eq!(success.causation_id.as_deref(), Some(created.event_id.as_str()));
    assert_eq!(get_payment(&service, &created.order_id).await?.1["status"], "captured");
    // Two calls under one key (the interrupted one and the resumed one), one capture.
    assert_eq!(
        ledger(&database).await?,
        vec![(
            created.order_id.clone(),
            "charge".into(),
            2,
            Some("captured".into()),
            TOTAL_MINOR
        )]
    );
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn two_instances_resuming_one_pending_charge_capture_it_once() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let first = start(&env).await?;
    let database = database(&env).await?;
    let created = order_created(Uuid::new_v4(), "tok_slow_3000");
    env.produce(&created.clone().into()).await?;
    status_becomes(&database, &created.order_id, "pending").await?;
    // The second instance's startup scan finds the payment pending and charges it too.
    let second = start(&env).await?;

    let emitted = read_exactly(&payments_reader(&env)?, 1).await?;
    assert!(
        matches!(&emitted[0], SagaEvent::PaymentSucceeded(success) if success.order_id == created.order_id),
        "expected one payment.success, got {emitted:#?}"
    );
    wait_until_settled(&env, &database).await?;
    assert_eq!(get_payment(&second, &created.order_id).await?.1["status"], "captured");
    let charges: Vec<(String, i64)> =
        sqlx::query_as("SELECT outcome, count(*) FROM gateway_ledger WHERE operation = 'charge' GROUP BY outcome")
            .fetch_all(&database)
            .await?;
    assert_eq!(charges, vec![("captured".to_string(), 1)]);
    tokio::join!(first.stop(), second.stop());
    Ok(())
}
