//! The circuit breaker around the payment gateway, against the real broker, registry and
//! PostgreSQL: the test plays the order service, takes the simulated gateway down while orders
//! keep coming, and brings it back.
//!
//! It shows that the breaker opens (its status at `GET /admin/gateway/circuit` and its metrics
//! say so), that while it is open the payments wait (pending, or refunding for a refund) with no
//! decline and no event, and the gateway is asked far less often than the error policy's retries
//! alone would ask it; and that once the gateway is back the breaker closes after its probes and
//! every order is charged exactly once, and the refund made exactly once.
//!
//! This binary holds this one test: the metrics it reads are the process's, so no other payment
//! service may run beside it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use payment_service::breaker::BreakerSettings;
use payment_service::gateway::OutageSwitch;
use saga_common::metrics::{label, GATEWAY_CIRCUIT_STATE, GATEWAY_CIRCUIT_TRANSITIONS};
use saga_contracts::{FailureReason, OrderCreated, OrderId, SagaEvent, Topic};
use saga_tests::fixtures::{self, order_failed, APPROVED_TOKEN};
use saga_tests::prometheus::{scrape, Scrape};
use saga_tests::services::payment::{self, ledger, status, LedgerEntry, PAYMENT_SERVICE};
use saga_tests::{eventually, ReadRecord, TestEnv};

const TIMEOUT: Duration = Duration::from_secs(60);
/// How long the payments topic must stay silent to count as "nothing was emitted".
const QUIET: Duration = Duration::from_secs(2);
const COOL_DOWN: Duration = Duration::from_secs(2);
const PROBES: u32 = 2;
/// Opens once 5 calls of the last 10 are in and half of them failed; 2 probes after 2 s.
const BREAKER: BreakerSettings = BreakerSettings {
    window: 10,
    minimum_calls: 5,
    failure_rate: 0.5,
    cool_down: COOL_DOWN,
    half_open_probes: PROBES,
};

fn order() -> OrderCreated {
    fixtures::order_created_with(OrderId::new(), &[("SKU-1", 1)], APPROVED_TOKEN)
}

fn order_id(order: &OrderCreated) -> OrderId {
    order.envelope.order_id
}

fn events(records: &[ReadRecord]) -> Vec<&SagaEvent> {
    records.iter().filter_map(|record| record.event.as_ref().ok()).collect()
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

fn transitions(scraped: &Scrape, from: &str, to: &str) -> f64 {
    scraped.sum(GATEWAY_CIRCUIT_TRANSITIONS, &[(label::FROM, from), (label::TO, to)])
}

#[tokio::test]
async fn a_gateway_outage_opens_the_breaker_and_no_payment_is_lost_declined_or_doubled() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let outage = OutageSwitch::new();
    let service = payment::start_with_outage(&env, BREAKER, outage.clone()).await?;
    let database = payment::database(&env).await?;
    let payments = env.reader(&env.kafka.topic(Topic::Payments))?;

    // Before the outage: an order captured (the consumer has its partitions by then).
    let captured_before = order();
    env.produce(&captured_before.clone().into()).await?;
    payments
        .read_until(TIMEOUT, |records| {
            succeeded(records).contains(&order_id(&captured_before))
        })
        .await?;
    assert_eq!(payment::circuit(&service).await?["state"], "closed");
    assert_eq!(
        scrape(service.local_addr).await?.value(GATEWAY_CIRCUIT_STATE, &[]),
        Some(0.0)
    );

    // The gateway goes down while orders come in: their charges fail, and the breaker opens.
    outage.start();
    let outage_began = Instant::now();
    let first_wave: Vec<OrderCreated> = (0..6).map(|_| order()).collect();
    env.produce_all(&first_wave.iter().cloned().map(SagaEvent::from).collect::<Vec<_>>())
        .await?;
    let opened = eventually("the circuit opens", TIMEOUT, || async {
        let status = payment::circuit(&service).await.ok()?;
        (status["state"] == "open").then_some(status)
    })
    .await?;
    assert_eq!(opened["settings"]["cool_down_ms"], 2000);
    eventually("the state gauge says open", TIMEOUT, || async {
        let scraped = scrape(service.local_addr).await.ok()?;
        (scraped.value(GATEWAY_CIRCUIT_STATE, &[]) == Some(2.0)).then_some(())
    })
    .await?;

    // More orders arrive while it is open, and a captured order fails: its refund waits too.
    let second_wave: Vec<OrderCreated> = (0..4).map(|_| order()).collect();
    let mut arriving: Vec<SagaEvent> = second_wave.iter().cloned().map(SagaEvent::from).collect();
    arriving.push(order_failed(&captured_before, FailureReason::OutOfStock).into());
    env.produce_all(&arriving).await?;
    let orders: Vec<&OrderCreated> = first_wave.iter().chain(&second_wave).collect();
    let orders_topic = env.kafka.topic(Topic::Orders);
    env.wait_until_consumed(&env.group(PAYMENT_SERVICE), &orders_topic, TIMEOUT)
        .await?;
    for order in &orders {
        assert_eq!(
            status(&database, order_id(order)).await?.as_deref(),
            Some("pending"),
            "a payment waits while the gateway is down"
        );
    }
    assert_eq!(
        status(&database, order_id(&captured_before)).await?.as_deref(),
        Some("refunding")
    );
    // Probes during the outage fail and open the breaker again.
    eventually("a failed probe reopens the circuit", TIMEOUT, || async {
        let scraped = scrape(service.local_addr).await.ok()?;
        (transitions(&scraped, "half_open", "open") >= 1.0).then_some(())
    })
    .await?;
    let nothing = payments.read_until(QUIET, |records| !records.is_empty()).await;
    assert!(
        nothing.is_err(),
        "no payment event while the gateway is down: {nothing:#?}"
    );
    for order in &orders {
        assert_eq!(status(&database, order_id(order)).await?.as_deref(), Some("pending"));
    }

    // The gateway saw the first wave's calls before the breaker opened, then only probes: at
    // most PROBES per cool-down. Retries alone (100 ms doubling, 11 payments waiting) would have
    // called it dozens of times by now.
    let outage_lasted = outage_began.elapsed();
    let cool_downs = outage_lasted.as_secs_f64() / COOL_DOWN.as_secs_f64();
    let allowed = first_wave.len() as f64 + f64::from(PROBES) * (cool_downs.ceil() + 1.0);
    let failed_calls = outage.failed_calls() as f64;
    assert!(
        failed_calls <= allowed,
        "{failed_calls} calls failed in the {outage_lasted:?} outage; at most {allowed} expected"
    );

    // The gateway is back: the next probes succeed, the breaker closes, and everything waiting
    // goes through, once.
    outage.end();
    let records = payments
        .read_until(TIMEOUT, |records| {
            let done = succeeded(records);
            orders.iter().all(|order| done.contains(&order_id(order)))
                && events(records)
                    .iter()
                    .any(|event| matches!(event, SagaEvent::PaymentRefunded(_)))
        })
        .await?;
    let extra = payments.read_until(QUIET, |records| !records.is_empty()).await;
    assert!(extra.is_err(), "nothing more: {extra:#?}");
    let emitted = events(&records);
    assert_eq!(
        emitted.len(),
        orders.len() + 1,
        "one payment.success per order and one payment.refunded: {emitted:#?}"
    );
    assert!(
        !emitted.iter().any(|event| matches!(event, SagaEvent::PaymentFailed(_))),
        "no payment.failed: {emitted:#?}"
    );
    let closed = eventually("the circuit closes", TIMEOUT, || async {
        let status = payment::circuit(&service).await.ok()?;
        (status["state"] == "closed").then_some(status)
    })
    .await?;
    assert!(
        closed["transitions"].as_u64().is_some_and(|count| count >= 5),
        "{closed}"
    );
    let scraped = scrape(service.local_addr).await?;
    assert_eq!(scraped.value(GATEWAY_CIRCUIT_STATE, &[]), Some(0.0));
    assert_eq!(transitions(&scraped, "closed", "open"), 1.0);
    assert_eq!(transitions(&scraped, "half_open", "closed"), 1.0);
    assert!(transitions(&scraped, "open", "half_open") >= 2.0);
    assert!(transitions(&scraped, "half_open", "open") >= 1.0);

    // Every payment captured and the failed order refunded, each with one call that reached the
    // gateway: the calls the outage failed never got there, and nothing was made twice.
    for order in &orders {
        assert_eq!(status(&database, order_id(order)).await?.as_deref(), Some("captured"));
    }
    assert_eq!(
        status(&database, order_id(&captured_before)).await?.as_deref(),
        Some("refunded")
    );
    let mut expected: Vec<LedgerEntry> = orders.iter().map(|order| LedgerEntry::captured(order, 1)).collect();
    expected.push(LedgerEntry::captured(&captured_before, 1));
    expected.push(LedgerEntry::refunded(&captured_before, 1));
    let mut entries = ledger(&database).await?;
    expected.sort_by(|a, b| a.idempotency_key.cmp(&b.idempotency_key));
    entries.sort_by(|a, b| a.idempotency_key.cmp(&b.idempotency_key));
    assert_eq!(entries, expected);
    service.stop().await;
    Ok(())
}
