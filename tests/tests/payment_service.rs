//! The payment service against the real broker, registry and PostgreSQL: the test plays the
//! order service by producing order events, and checks what the payment service emitted on
//! `payments`, what it serves over HTTP, and what its simulated gateway's ledger recorded.
//!
//! Gateway calls run in the background, so a payment may be seen `pending` (or `refunding`)
//! before it settles; the slow-token tests check that a slow charge holds up no other order, that
//! an order failing while its charge is pending gets the capture back exactly once, and that a
//! charge interrupted by a restart (or resumed by a second instance) is captured exactly once.
//! Errors that retrying cannot fix hold up nothing: an order.created that cannot be charged is
//! dead-lettered and the events behind it are processed; a charge the gateway refuses is left
//! stalled and the other orders are charged.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use payment_service::gateway::{ChargeOutcome, ChargeRequest, PaymentGateway, RefundRequest, SimulatedGateway};
use reqwest::StatusCode;
use saga_common::consumer::{DLQ_CONSUMER_GROUP, DLQ_ERROR, DLQ_ORIGIN_OFFSET, DLQ_ORIGIN_PARTITION, DLQ_ORIGIN_TOPIC};
use saga_common::service::RunningService;
use saga_contracts::{FailureReason, OrderCreated, OrderId, SagaEvent, Topic};
use saga_tests::fixtures::{self, order_confirmed, order_failed, APPROVED_TOKEN, CURRENCY};
use saga_tests::services::payment::{self, ledger, status, LedgerEntry, PAYMENT_SERVICE};
use saga_tests::{eventually, ReadRecord, TestEnv, TopicReader};
use serde_json::Value;
use sqlx::PgPool;

const TIMEOUT: Duration = Duration::from_secs(60);
/// How long the payments topic must stay silent to count as "nothing more was emitted".
const QUIET: Duration = Duration::from_secs(3);

/// One test's payment service, with its database and a reader of the `payments` topic.
struct Test {
    env: TestEnv,
    service: RunningService,
    database: PgPool,
    payments: TopicReader,
}

impl Test {
    async fn start() -> anyhow::Result<Self> {
        let env = TestEnv::new().await?;
        let service = payment::start(&env).await?;
        Ok(Self {
            database: payment::database(&env).await?,
            payments: env.reader(&env.kafka.topic(Topic::Payments))?,
            service,
            env,
        })
    }

    /// Stops the service and starts it again on the same topics and database.
    async fn restart(self) -> anyhow::Result<Self> {
        self.service.stop().await;
        Ok(Self {
            service: payment::start(&self.env).await?,
            ..self
        })
    }

    /// Produces `events` in this order through one producer.
    async fn produce(&self, events: &[SagaEvent]) -> anyhow::Result<()> {
        self.env.produce_all(events).await
    }

    /// Reads the payments topic until `count` more events were read, then checks that nothing
    /// more comes.
    async fn read_exactly(&self, count: usize) -> anyhow::Result<Vec<SagaEvent>> {
        let records = self
            .payments
            .read_until(TIMEOUT, |records| records.len() >= count)
            .await?;
        let extra = self.payments.read_until(QUIET, |records| !records.is_empty()).await;
        if let Ok(extra) = extra {
            anyhow::bail!("expected {count} events, then silence; also got {extra:#?}");
        }
        assert!(
            records.iter().all(|r| r.event.is_ok()),
            "undecodable payments: {records:#?}"
        );
        Ok(events(&records).into_iter().cloned().collect())
    }

    /// `order`'s payment as served by `GET /payments/{order_id}`, which must answer 200.
    async fn payment(&self, order: &OrderCreated) -> anyhow::Result<Value> {
        let (code, body) = payment::payment(&self.service, order_id(order)).await?;
        anyhow::ensure!(code == StatusCode::OK, "GET /payments answered {code}: {body}");
        Ok(body)
    }

    /// The stored status of `order`'s payment, if it has one.
    async fn status(&self, order: &OrderCreated) -> anyhow::Result<Option<String>> {
        status(&self.database, order_id(order)).await
    }

    /// Waits until `order`'s payment is recorded with status `expected`.
    async fn status_becomes(&self, order: &OrderCreated, expected: &str) -> anyhow::Result<()> {
        eventually(&format!("payment {expected}"), TIMEOUT, || async {
            (self.status(order).await.ok()?.as_deref() == Some(expected)).then_some(())
        })
        .await
    }

    async fn ledger(&self) -> anyhow::Result<Vec<LedgerEntry>> {
        ledger(&self.database).await
    }

    /// Checks that the gateway's ledger holds `charges` charges, each captured with one call.
    async fn assert_each_captured_with_one_call(&self, charges: usize) -> anyhow::Result<()> {
        let ledger = self.ledger().await?;
        assert_eq!(ledger.len(), charges, "{ledger:#?}");
        assert!(
            ledger
                .iter()
                .all(|entry| entry.outcome.as_deref() == Some("captured") && entry.attempts == 1),
            "each captured with one call: {ledger:#?}"
        );
        Ok(())
    }

    /// Waits until the order events are consumed to the end.
    async fn consumed(&self) -> anyhow::Result<()> {
        let orders = self.env.kafka.topic(Topic::Orders);
        self.env
            .wait_until_consumed(&self.env.group(PAYMENT_SERVICE), &orders, TIMEOUT)
            .await
    }

    /// Waits until the service has processed every record on `orders`, settled every payment it
    /// recorded (none waits for the gateway) and published every event it caused.
    async fn settled(&self) -> anyhow::Result<()> {
        self.consumed().await?;
        eventually("no payment waiting for the gateway", TIMEOUT, || async {
            let waiting: i64 =
                sqlx::query_scalar("SELECT count(*) FROM payments WHERE status IN ('pending', 'refunding')")
                    .fetch_one(&self.database)
                    .await
                    .ok()?;
            (waiting == 0).then_some(())
        })
        .await?;
        eventually("outbox published", TIMEOUT, || async {
            let pending = saga_common::outbox::pending(&self.database).await.ok()?;
            (pending == 0).then_some(())
        })
        .await
    }

    /// The reason recorded for `order`'s failure, once its order.failed was processed.
    async fn recorded_failure(&self, order: &OrderCreated) -> anyhow::Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT reason FROM failed_orders WHERE order_id = $1")
                .bind(order_id(order).uuid())
                .fetch_optional(&self.database)
                .await?,
        )
    }

    /// The gateway's reference of the capture of `order`'s payment.
    async fn capture_of(&self, order: &OrderCreated) -> anyhow::Result<String> {
        Ok(
            sqlx::query_scalar("SELECT gateway_reference FROM payments WHERE order_id = $1")
                .bind(order_id(order).uuid())
                .fetch_one(&self.database)
                .await?,
        )
    }

    /// The simulated gateway on the service's ledger, as an earlier run of the service saw it.
    fn gateway(&self) -> SimulatedGateway {
        SimulatedGateway::new(self.database.clone(), Duration::ZERO, 0.0)
    }

    /// Checks that `order`'s capture was given back in full, once: served as refunded, and the
    /// ledger holds its one charge and one refund, reached by `refund_attempts` calls.
    async fn assert_refunded_once(&self, order: &OrderCreated, refund_attempts: i32) -> anyhow::Result<()> {
        let body = self.payment(order).await?;
        assert_eq!(body["status"], "refunded");
        assert_eq!(body["amount_minor"], order.total_minor);
        assert_eq!(body["refunded_minor"], order.total_minor);
        assert_eq!(
            self.ledger().await?,
            [
                LedgerEntry::captured(order, 1),
                LedgerEntry::refunded(order, refund_attempts)
            ]
        );
        Ok(())
    }

    async fn stop(self) {
        self.service.stop().await;
    }
}

/// A new order paid with `token`.
fn order_paid_with(token: &str) -> OrderCreated {
    fixtures::order_created_with(OrderId::new(), &[("SKU-1", 2)], token)
}

fn order_id(order: &OrderCreated) -> OrderId {
    order.envelope.order_id
}

fn events(records: &[ReadRecord]) -> Vec<&SagaEvent> {
    records.iter().filter_map(|record| record.event.as_ref().ok()).collect()
}

fn header<'a>(record: &'a ReadRecord, name: &str) -> Option<&'a str> {
    record
        .headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// The orders of the payment.success events among `records`.
fn succeeded(records: &[ReadRecord]) -> HashSet<OrderId> {
    events(records)
        .into_iter()
        .filter_map(|event| match event {
            SagaEvent::PaymentSucceeded(success) => Some(success.envelope.order_id),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_good_token_is_captured_and_payment_success_carries_the_order_total() -> anyhow::Result<()> {
    let test = Test::start().await?;
    let created = order_paid_with(APPROVED_TOKEN);
    test.produce(&[created.clone().into()]).await?;

    let emitted = test.read_exactly(1).await?;
    let SagaEvent::PaymentSucceeded(success) = &emitted[0] else {
        panic!("expected payment.success, got {emitted:#?}");
    };
    assert_eq!(success.envelope.order_id, order_id(&created));
    assert_eq!(success.envelope.causation_id, Some(created.envelope.event_id));
    assert_eq!(success.amount_minor, created.total_minor);
    assert_eq!(success.currency, CURRENCY);
    // The gateway's answer is recorded in the event, so a rebuilt state need not ask again.
    let captured_reference: Option<String> =
        sqlx::query_scalar("SELECT gateway_reference FROM payments WHERE order_id = $1")
            .bind(order_id(&created))
            .fetch_one(&test.database)
            .await?;
    assert!(captured_reference.is_some());
    assert_eq!(success.gateway_reference, captured_reference);
    assert_eq!(
        test.payment(&created).await?,
        serde_json::json!({
            "order_id": order_id(&created),
            "payment_id": success.payment_id,
            "status": "captured",
            "amount_minor": created.total_minor,
            "refunded_minor": 0,
            "currency": CURRENCY,
            "decline_reason": null,
        })
    );

    // order.confirmed changes nothing: the capture stands.
    test.produce(&[order_confirmed(&created).into()]).await?;
    test.settled().await?;
    assert_eq!(test.payment(&created).await?["status"], "captured");
    assert_eq!(test.ledger().await?, [LedgerEntry::captured(&created, 1)]);
    test.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_decline_token_is_declined_with_payment_failed_and_nothing_is_charged() -> anyhow::Result<()> {
    let test = Test::start().await?;
    let created = order_paid_with("tok_decline_insufficient_funds");
    test.produce(&[created.clone().into()]).await?;

    let emitted = test.read_exactly(1).await?;
    let SagaEvent::PaymentFailed(failed) = &emitted[0] else {
        panic!("expected payment.failed, got {emitted:#?}");
    };
    assert_eq!(failed.envelope.order_id, order_id(&created));
    assert_eq!(failed.envelope.causation_id, Some(created.envelope.event_id));
    assert_eq!(failed.reason, "card_declined");
    assert_eq!(failed.failure_reason, FailureReason::PaymentDeclined);
    assert_eq!(failed.amount_minor, created.total_minor);

    let body = test.payment(&created).await?;
    assert_eq!(body["status"], "declined");
    assert_eq!(body["decline_reason"], "card_declined");
    assert_eq!(body["refunded_minor"], 0);
    let ledger = test.ledger().await?;
    assert!(
        ledger.iter().all(|entry| entry.outcome.as_deref() == Some("declined")),
        "a declined order must not be charged: {ledger:?}"
    );
    test.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_flaky_token_is_captured_after_transient_errors_with_exactly_one_payment_success() -> anyhow::Result<()> {
    let test = Test::start().await?;
    let created = order_paid_with("tok_flaky_visa");
    test.produce(&[created.clone().into()]).await?;

    let emitted = test.read_exactly(1).await?;
    assert!(
        matches!(&emitted[0], SagaEvent::PaymentSucceeded(success) if success.amount_minor == created.total_minor),
        "expected one payment.success, got {emitted:#?}"
    );
    assert_eq!(test.payment(&created).await?["status"], "captured");
    // Two transient failures, then the capture: three calls under one key, one charge.
    assert_eq!(test.ledger().await?, [LedgerEntry::captured(&created, 3)]);
    test.stop().await;
    Ok(())
}

#[tokio::test]
async fn order_failed_after_a_capture_refunds_exactly_once_however_often_events_are_delivered() -> anyhow::Result<()> {
    let test = Test::start().await?;
    let created = order_paid_with(APPROVED_TOKEN);
    test.produce(&[created.clone().into()]).await?;
    test.payments.read_until(TIMEOUT, |records| !records.is_empty()).await?;

    let failed = order_failed(&created, FailureReason::OutOfStock);
    // The same order.failed and order.created delivered again, and a second order.failed.
    test.produce(&[
        failed.clone().into(),
        failed.clone().into(),
        created.clone().into(),
        order_failed(&created, FailureReason::DeadlineExceeded).into(),
    ])
    .await?;
    test.settled().await?;

    let emitted = test.read_exactly(1).await?;
    let SagaEvent::PaymentRefunded(refunded) = &emitted[0] else {
        panic!("expected one payment.refunded after the payment.success, got {emitted:#?}");
    };
    assert_eq!(refunded.envelope.order_id, order_id(&created));
    assert_eq!(refunded.envelope.causation_id, Some(failed.envelope.event_id));
    assert_eq!(refunded.amount_minor, created.total_minor);
    assert_eq!(refunded.currency, CURRENCY);
    assert_eq!(refunded.reason, "out_of_stock");
    assert_eq!(
        test.payment(&created).await?["payment_id"],
        refunded.payment_id.to_string()
    );
    test.assert_refunded_once(&created, 1).await?;
    test.stop().await;
    Ok(())
}

#[tokio::test]
async fn order_failed_for_a_declined_payment_refunds_nothing() -> anyhow::Result<()> {
    let test = Test::start().await?;
    let created = order_paid_with("tok_decline");
    test.produce(&[
        created.clone().into(),
        order_failed(&created, FailureReason::PaymentDeclined).into(),
    ])
    .await?;
    test.settled().await?;

    let emitted = test.read_exactly(1).await?;
    assert!(
        matches!(&emitted[0], SagaEvent::PaymentFailed(_)),
        "expected only payment.failed, got {emitted:#?}"
    );
    let body = test.payment(&created).await?;
    assert_eq!(body["status"], "declined");
    assert_eq!(body["refunded_minor"], 0);
    let ledger = test.ledger().await?;
    assert!(
        ledger.iter().all(|entry| entry.operation == "charge"),
        "nothing to refund: {ledger:?}"
    );
    assert_eq!(
        test.recorded_failure(&created).await?.as_deref(),
        Some("payment_declined")
    );
    test.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_poison_record_is_dead_lettered_with_its_origin_and_the_next_order_is_still_charged() -> anyhow::Result<()> {
    let test = Test::start().await?;
    let env = &test.env;
    let poison_key = OrderId::new().to_string();
    let mut poison = vec![0xFF_u8];
    poison.extend_from_slice(OrderId::new().uuid().as_bytes());
    env.produce_raw(Topic::Orders, &poison_key, &poison).await?;
    let created = order_paid_with(APPROVED_TOKEN);
    test.produce(&[created.clone().into()]).await?;

    let dead_letters = env.reader(&env.kafka.dead_letter_topic(PAYMENT_SERVICE))?;
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
        Some(env.group(PAYMENT_SERVICE).as_str())
    );

    let emitted = test.read_exactly(1).await?;
    assert!(
        matches!(&emitted[0], SagaEvent::PaymentSucceeded(success) if success.envelope.order_id == order_id(&created)),
        "expected payment.success for the good order, got {emitted:#?}"
    );
    assert_eq!(test.payment(&created).await?["status"], "captured");
    let more_dead = dead_letters.read_until(QUIET, |records| !records.is_empty()).await;
    assert!(
        more_dead.is_err(),
        "only the poison record is dead-lettered: {more_dead:#?}"
    );
    test.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_order_that_cannot_be_charged_is_dead_lettered_and_the_events_behind_it_are_processed() -> anyhow::Result<()>
{
    let test = Test::start().await?;
    // A currency the service cannot charge in: retrying cannot help, so it is a permanent error.
    let uncharged = OrderCreated {
        currency: "eur".into(),
        ..order_paid_with(APPROVED_TOKEN)
    };
    // The order service fails the order when its deadline passes. Same order, so same key and
    // partition: it waits behind the order.created the payment service gives up on.
    let failed = order_failed(&uncharged, FailureReason::DeadlineExceeded);
    test.produce(&[uncharged.clone().into(), failed.into()]).await?;

    let dead_letters = test.env.reader(&test.env.kafka.dead_letter_topic(PAYMENT_SERVICE))?;
    let records = dead_letters.read_until(TIMEOUT, |records| !records.is_empty()).await?;
    let [dead] = records.as_slice() else {
        panic!("expected one dead letter, got {records:#?}");
    };
    assert!(
        matches!(&dead.event, Ok(SagaEvent::OrderCreated(order)) if order.envelope.event_id == uncharged.envelope.event_id),
        "the dead letter is the order.created: {dead:#?}"
    );
    let error = header(dead, DLQ_ERROR).unwrap_or_default();
    assert!(
        error.starts_with("permanent error after 1 attempt(s)") && error.contains("\"eur\""),
        "dead-lettered at once, saying why: {error}"
    );

    // The order.failed behind it was processed: consumed, and the failure recorded.
    test.consumed().await?;
    assert_eq!(
        test.recorded_failure(&uncharged).await?.as_deref(),
        Some("deadline_exceeded")
    );
    assert_eq!(test.status(&uncharged).await?, None, "the order has no payment");
    assert!(test.ledger().await?.is_empty(), "nothing was charged");
    let (code, live) = payment::live(&test.service).await?;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(live["dead_lettered"], 1);
    let nothing = test.payments.read_until(QUIET, |records| !records.is_empty()).await;
    assert!(nothing.is_err(), "no payment event for the order: {nothing:#?}");
    test.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_charge_the_gateway_refuses_is_left_stalled_and_the_other_orders_are_still_charged() -> anyhow::Result<()> {
    let test = Test::start().await?;
    let refused = order_paid_with(APPROVED_TOKEN);
    // The order's idempotency key was used at the gateway for another amount: the gateway
    // refuses the charge for good.
    test.gateway()
        .charge(ChargeRequest {
            idempotency_key: order_id(&refused).to_string(),
            token: APPROVED_TOKEN.into(),
            amount_minor: refused.total_minor + 1,
            currency: CURRENCY.into(),
        })
        .await?;
    let charged = order_paid_with(APPROVED_TOKEN);
    test.produce(&[refused.clone().into(), charged.clone().into()]).await?;

    let emitted = test.read_exactly(1).await?;
    assert!(
        matches!(&emitted[0], SagaEvent::PaymentSucceeded(success) if success.envelope.order_id == order_id(&charged)),
        "expected payment.success for the other order only, got {emitted:#?}"
    );
    let stalled = eventually("the refused charge marked stalled", TIMEOUT, || async {
        sqlx::query_scalar::<_, Option<String>>("SELECT stalled_reason FROM payments WHERE order_id = $1")
            .bind(order_id(&refused).uuid())
            .fetch_one(&test.database)
            .await
            .ok()
            .flatten()
    })
    .await?;
    assert!(
        stalled.contains("permanent") && stalled.contains("different charge request"),
        "{stalled}"
    );
    assert_eq!(
        test.payment(&refused).await?["status"],
        "pending",
        "a refused charge stays pending for an operator"
    );
    let (code, live) = payment::live(&test.service).await?;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(live["tasks"]["charger"], "running");
    test.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_restarted_service_does_not_charge_or_refund_again_when_events_are_redelivered() -> anyhow::Result<()> {
    let test = Test::start().await?;
    let charged = order_paid_with(APPROVED_TOKEN);
    let refunded = order_paid_with(APPROVED_TOKEN);
    let delivered = [
        SagaEvent::from(charged.clone()),
        refunded.clone().into(),
        order_failed(&refunded, FailureReason::DeadlineExceeded).into(),
    ];
    test.produce(&delivered).await?;
    test.settled().await?;
    let before = (
        test.payment(&charged).await?,
        test.payment(&refunded).await?,
        test.ledger().await?,
    );
    assert_eq!(before.0["status"], "captured");
    assert_eq!(before.1["status"], "refunded");

    let test = test.restart().await?;
    test.produce(&delivered).await?;
    test.settled().await?;
    let after = (
        test.payment(&charged).await?,
        test.payment(&refunded).await?,
        test.ledger().await?,
    );
    // Same payments, and no gateway call at all (the ledger counts every call).
    assert_eq!(after, before);

    let emitted = test.read_exactly(3).await?;
    let mut types: Vec<&str> = emitted.iter().map(|event| event.event_type().as_str()).collect();
    types.sort_unstable();
    assert_eq!(types, ["payment.refunded", "payment.success", "payment.success"]);
    test.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_charge_made_before_a_crash_is_not_repeated_when_the_order_is_processed_again() -> anyhow::Result<()> {
    let test = Test::start().await?;
    let created = order_paid_with(APPROVED_TOKEN);
    // As if an earlier run charged the order and crashed before its commit.
    let first = test
        .gateway()
        .charge(ChargeRequest {
            idempotency_key: order_id(&created).to_string(),
            token: created.payment_token.clone(),
            amount_minor: created.total_minor,
            currency: created.currency.clone(),
        })
        .await?;
    let ChargeOutcome::Captured { gateway_reference } = first else {
        panic!("expected a capture, got {first:?}");
    };

    test.produce(&[created.clone().into()]).await?;
    let emitted = test.read_exactly(1).await?;
    assert!(
        matches!(&emitted[0], SagaEvent::PaymentSucceeded(_)),
        "got {emitted:#?}"
    );
    assert_eq!(
        test.capture_of(&created).await?,
        gateway_reference,
        "the service got the first charge back"
    );
    assert_eq!(test.ledger().await?, [LedgerEntry::captured(&created, 2)]);
    test.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_refund_made_before_a_crash_is_not_repeated_when_order_failed_is_processed_again() -> anyhow::Result<()> {
    let test = Test::start().await?;
    let created = order_paid_with(APPROVED_TOKEN);
    test.produce(&[created.clone().into()]).await?;
    test.payments.read_until(TIMEOUT, |records| !records.is_empty()).await?;
    // As if an earlier run refunded at the gateway and crashed before its commit.
    test.gateway()
        .refund(RefundRequest {
            idempotency_key: format!("refund-{}", order_id(&created)),
            gateway_reference: test.capture_of(&created).await?,
            amount_minor: created.total_minor,
            currency: created.currency.clone(),
        })
        .await?;

    test.produce(&[order_failed(&created, FailureReason::OutOfStock).into()])
        .await?;
    let emitted = test.read_exactly(1).await?;
    assert!(
        matches!(&emitted[0], SagaEvent::PaymentRefunded(refund) if refund.amount_minor == created.total_minor),
        "expected one payment.refunded, got {emitted:#?}"
    );
    // The repeated refund call got the first one's outcome back.
    test.assert_refunded_once(&created, 2).await?;
    test.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_payment_api_answers_404_for_an_unknown_order_and_400_for_a_malformed_id() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = payment::start(&env).await?;
    let (code, body) = payment::payment(&service, OrderId::new()).await?;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
    let (code, body) = payment::payment(&service, "not-a-uuid").await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().is_some_and(|e| e.contains("not-a-uuid")));
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_slow_charge_does_not_delay_the_orders_behind_it() -> anyhow::Result<()> {
    let test = Test::start().await?;
    // Once this one is through, the service's consumer and the reader have their partitions.
    let warm_up = order_paid_with(APPROVED_TOKEN);
    test.produce(&[warm_up.clone().into()]).await?;
    test.payments
        .read_until(TIMEOUT, |records| succeeded(records).contains(&order_id(&warm_up)))
        .await?;

    let slow = order_paid_with("tok_slow_8000");
    let fast: Vec<OrderCreated> = (0..10).map(|_| order_paid_with(APPROVED_TOKEN)).collect();
    let fast_ids: HashSet<OrderId> = fast.iter().map(order_id).collect();
    let mut batch = vec![SagaEvent::from(slow.clone())];
    batch.extend(fast.iter().cloned().map(SagaEvent::from));
    let produced = Instant::now();
    test.produce(&batch).await?;
    let records = test
        .payments
        .read_until(Duration::from_secs(3).saturating_sub(produced.elapsed()), |records| {
            fast_ids.is_subset(&succeeded(records))
        })
        .await?;
    let captured_within = produced.elapsed();
    assert!(
        !succeeded(&records).contains(&order_id(&slow)),
        "the slow charge cannot have finished yet: {records:#?}"
    );
    assert_eq!(test.status(&slow).await?.as_deref(), Some("pending"));
    let body = test.payment(&slow).await?;
    assert_eq!(
        body["status"], "pending",
        "a payment being charged is served as pending"
    );
    assert_eq!(body["refunded_minor"], 0);
    assert_eq!(body["decline_reason"], Value::Null);
    for order in &fast {
        assert_eq!(test.payment(order).await?["status"], "captured");
    }
    assert!(
        captured_within <= Duration::from_secs(3),
        "ten orders captured behind a slow one in {captured_within:?}"
    );

    // The slow one is captured in its own time, once.
    let later = test
        .payments
        .read_until(TIMEOUT, |records| succeeded(records).contains(&order_id(&slow)))
        .await?;
    assert!(produced.elapsed() >= Duration::from_secs(8), "the slow token takes 8 s");
    assert_eq!(later.len(), 1, "only the slow order's payment.success: {later:#?}");
    assert_eq!(test.payment(&slow).await?["status"], "captured");
    // The warm-up, the ten and the slow one.
    test.assert_each_captured_with_one_call(12).await?;
    test.stop().await;
    Ok(())
}

#[tokio::test]
async fn order_failed_while_the_charge_is_pending_refunds_the_capture_exactly_once() -> anyhow::Result<()> {
    let test = Test::start().await?;
    let created = order_paid_with("tok_slow_3000");
    test.produce(&[created.clone().into()]).await?;
    test.status_becomes(&created, "pending").await?;

    // The deadline fails the order while the gateway still works on the charge; the failure
    // arrives twice, and a second failure for another reason too.
    let failed = order_failed(&created, FailureReason::DeadlineExceeded);
    test.produce(&[
        failed.clone().into(),
        failed.clone().into(),
        order_failed(&created, FailureReason::OutOfStock).into(),
    ])
    .await?;
    eventually("order.failed recorded", TIMEOUT, || async {
        test.recorded_failure(&created).await.ok()?
    })
    .await?;
    assert_eq!(
        test.status(&created).await?.as_deref(),
        Some("pending"),
        "order.failed must be handled while the charge is still pending for this test to mean anything"
    );

    let emitted = test.read_exactly(2).await?;
    let [SagaEvent::PaymentSucceeded(success), SagaEvent::PaymentRefunded(refunded)] = emitted.as_slice() else {
        panic!("expected payment.success then payment.refunded, got {emitted:#?}");
    };
    assert_eq!(success.envelope.causation_id, Some(created.envelope.event_id));
    assert_eq!(success.amount_minor, created.total_minor);
    assert_eq!(refunded.payment_id, success.payment_id);
    assert_eq!(refunded.envelope.causation_id, Some(failed.envelope.event_id));
    assert_eq!(refunded.reason, "deadline_exceeded");
    assert_eq!(refunded.amount_minor, created.total_minor);
    assert_eq!(refunded.currency, CURRENCY);

    test.settled().await?;
    test.assert_refunded_once(&created, 1).await?;
    test.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_charge_interrupted_by_a_restart_is_resumed_and_captured_exactly_once() -> anyhow::Result<()> {
    let test = Test::start().await?;
    let created = order_paid_with("tok_slow_3000");
    test.produce(&[created.clone().into()]).await?;
    test.status_becomes(&created, "pending").await?;
    // The gateway has the call: its ledger counts the attempt, with no outcome yet.
    eventually("charge under way at the gateway", TIMEOUT, || async {
        let entries = test.ledger().await.ok()?;
        matches!(entries.as_slice(), [entry] if entry.outcome.is_none()).then_some(())
    })
    .await?;

    let stopping = Instant::now();
    test.service.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "stopping waits for no charge: took {:?}",
        stopping.elapsed()
    );
    assert_eq!(
        status(&test.database, order_id(&created)).await?.as_deref(),
        Some("pending"),
        "the interrupted charge is left pending"
    );

    let test = Test {
        service: payment::start(&test.env).await?,
        ..test
    };
    let emitted = test.read_exactly(1).await?;
    let SagaEvent::PaymentSucceeded(success) = &emitted[0] else {
        panic!("expected one payment.success, got {emitted:#?}");
    };
    assert_eq!(success.envelope.causation_id, Some(created.envelope.event_id));
    assert_eq!(test.payment(&created).await?["status"], "captured");
    // Two calls under one key (the interrupted one and the resumed one), one capture.
    assert_eq!(test.ledger().await?, [LedgerEntry::captured(&created, 2)]);
    test.stop().await;
    Ok(())
}

#[tokio::test]
async fn two_instances_resuming_one_pending_charge_capture_it_once() -> anyhow::Result<()> {
    let test = Test::start().await?;
    let created = order_paid_with("tok_slow_3000");
    test.produce(&[created.clone().into()]).await?;
    test.status_becomes(&created, "pending").await?;
    // The second instance's startup scan finds the payment pending and charges it too.
    let second = payment::start(&test.env).await?;

    let emitted = test.read_exactly(1).await?;
    assert!(
        matches!(&emitted[0], SagaEvent::PaymentSucceeded(success) if success.envelope.order_id == order_id(&created)),
        "expected one payment.success, got {emitted:#?}"
    );
    test.settled().await?;
    assert_eq!(
        payment::payment(&second, order_id(&created)).await?.1["status"],
        "captured"
    );
    let ledger = test.ledger().await?;
    assert!(
        matches!(ledger.as_slice(), [entry] if entry.operation == "charge" && entry.outcome.as_deref() == Some("captured")),
        "one charge, captured once: {ledger:#?}"
    );
    tokio::join!(test.stop(), second.stop());
    Ok(())
}

#[tokio::test]
async fn charges_answered_together_are_recorded_together_each_exactly_once() -> anyhow::Result<()> {
    let test = Test::start().await?;
    // Forty charges that the gateway answers after the same delay: their outcomes arrive at the
    // charger within milliseconds of each other.
    let orders: Vec<OrderCreated> = (0..40).map(|_| order_paid_with("tok_slow_1500")).collect();
    let events: Vec<SagaEvent> = orders.iter().cloned().map(SagaEvent::from).collect();
    test.produce(&events).await?;
    let emitted = test.read_exactly(orders.len()).await?;
    let captured: HashSet<OrderId> = emitted
        .iter()
        .filter_map(|event| match event {
            SagaEvent::PaymentSucceeded(success) => Some(success.envelope.order_id),
            _ => None,
        })
        .collect();
    let expected: HashSet<OrderId> = orders.iter().map(order_id).collect();
    assert_eq!(captured, expected, "one payment.success per order");
    test.settled().await?;

    // Rows changed by one transaction carry its id as xmin: fewer transactions than payments
    // means outcomes were recorded together.
    let (payments, transactions): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT xmin::text) FROM payments WHERE status = 'captured'")
            .fetch_one(&test.database)
            .await?;
    assert_eq!(payments, 40);
    assert!(
        transactions < payments,
        "40 captures recorded in {transactions} transactions"
    );
    test.assert_each_captured_with_one_call(40).await?;
    test.stop().await;
    Ok(())
}
