//! The metrics every service exports, after a known workload through the whole platform: five
//! orders (three confirmed, one of them after a gateway failing transiently; one declined; one
//! out of stock), an idempotent replay of one of them, and a poison record on the orders topic.
//! Each service's `GET /metrics` is read back and checked against what the workload must have
//! caused.
//!
//! The four services run in this process and share one recorder, so every service's `/metrics`
//! shows all of their metrics, and counters add up over the life of the process: this binary
//! holds this one test, and series are picked by this test's topic prefix where they carry it.

use std::time::Duration;

use payment_service::gateway::simulated::FLAKY_TRANSIENT_FAILURES;
use saga_common::metrics::{self as names, label};
use saga_contracts::Topic;
use saga_tests::eventually;
use saga_tests::platform::{exactly_mails, unique_email, unique_sku, Platform};
use saga_tests::prometheus::{scrape, Scrape};
use serde_json::{json, Value};

/// Places an order with an Idempotency-Key; returns its id.
async fn place_with_key(platform: &Platform, email: &str, sku: &str, key: &str) -> anyhow::Result<String> {
    let body = json!({
        "customer_id": "c-metrics", "customer_email": email, "currency": "EUR", "payment_token": "tok_ok",
        "items": [{"sku": sku, "quantity": 1, "unit_price_minor": 1250}],
    });
    let response = saga_tests::http()
        .post(format!("http://{}/orders", platform.order.local_addr))
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(response.status() == 202, "POST /orders answered {}", response.status());
    let answer: Value = response.json().await?;
    Ok(answer["order_id"].as_str().unwrap_or_default().to_string())
}

/// Scrapes every service until `ready` holds for the scrape; returns the order service's.
async fn scrape_until(platform: &Platform, what: &str, ready: impl Fn(&Scrape) -> bool) -> anyhow::Result<Scrape> {
    eventually(what, Duration::from_secs(60), || async {
        let scraped = scrape(platform.order.local_addr).await.ok()?;
        ready(&scraped).then_some(scraped)
    })
    .await
}

#[tokio::test]
async fn a_known_workload_shows_in_every_services_metrics() -> anyhow::Result<()> {
    let platform = Platform::start(30.0).await?;
    let env = &platform.env;
    let (sku, scarce) = (unique_sku(), unique_sku());
    platform.restock(&sku, 10).await?;
    platform.restock(&scarce, 1).await?;
    let emails: Vec<String> = (0..5).map(|_| unique_email()).collect();

    // Three confirmed orders: one placed twice with the same key, one whose charge fails
    // transiently before it is captured.
    let key = format!("metrics-{}", uuid::Uuid::new_v4());
    let keyed = place_with_key(&platform, &emails[0], &sku, &key).await?;
    assert_eq!(place_with_key(&platform, &emails[0], &sku, &key).await?, keyed);
    let plain = platform.place(&emails[1], "tok_ok", &[(&sku, 1)]).await?;
    let flaky = platform.place(&emails[2], "tok_flaky_metrics", &[(&sku, 1)]).await?;
    let declined = platform.place(&emails[3], "tok_decline_metrics", &[(&sku, 1)]).await?;
    let out_of_stock = platform.place(&emails[4], "tok_ok", &[(&scarce, 2)]).await?;
    env.produce_raw(Topic::Orders, "poison-key", b"\xFFnot an event")
        .await?;

    for order_id in [&keyed, &plain, &flaky] {
        assert_eq!(platform.terminal_order(order_id).await?["status"], "CONFIRMED");
    }
    assert_eq!(
        platform.terminal_order(&declined).await?["failure_reason"],
        "payment_declined"
    );
    assert_eq!(
        platform.terminal_order(&out_of_stock).await?["failure_reason"],
        "out_of_stock"
    );
    platform.payment_when(&out_of_stock, "refunded").await?;
    platform.stock_settles(&sku, 7, 0, 3).await?;
    platform.stock_settles(&scarce, 1, 0, 0).await?;
    for email in &emails {
        exactly_mails(email, 1).await?;
    }
    // A path no route matches, answered 404.
    let unmatched = saga_tests::get(format!("http://{}/no/such/path", platform.order.local_addr)).await?;
    assert_eq!(unmatched.status(), 404);

    // Everything published and consumed: the gauges reach zero within a refresh or two.
    let prefix = env.prefix.clone();
    let services = [
        "order-service",
        "payment-service",
        "inventory-service",
        "notification-service",
    ];
    let consumed: [(&str, Topic); 5] = [
        ("order-service", Topic::Payments),
        ("order-service", Topic::Inventory),
        ("payment-service", Topic::Orders),
        ("inventory-service", Topic::Orders),
        ("notification-service", Topic::Orders),
    ];
    let lag_of = |scraped: &Scrape, group: &str, topic: &str| -> Vec<f64> {
        scraped
            .matching(
                names::CONSUMER_LAG,
                &[(label::CONSUMER_GROUP, group), (label::TOPIC, topic)],
            )
            .map(|sample| sample.value)
            .collect()
    };
    let scraped = scrape_until(&platform, "outboxes empty and consumers caught up", |scraped| {
        let outboxes_empty = services.iter().all(|service| {
            scraped.value(names::OUTBOX_PENDING, &[(label::SERVICE, service)]) == Some(0.0)
                && scraped.value(names::OUTBOX_OLDEST_AGE, &[(label::SERVICE, service)]) == Some(0.0)
        });
        let caught_up = consumed.iter().all(|(service, topic)| {
            let lags = lag_of(scraped, &format!("{prefix}{service}"), &env.kafka.topic(*topic));
            lags.len() == 6 && lags.iter().all(|lag| *lag == 0.0)
        });
        outboxes_empty && caught_up
    })
    .await?;

    // Every service serves the text format on its own port.
    for service in [
        &platform.order,
        &platform.payment,
        &platform.inventory,
        &platform.notification,
    ] {
        let own = scrape(service.local_addr).await?;
        assert!(own.sum(names::HTTP_REQUESTS, &[]) > 0.0);
    }

    // Orders.
    assert_eq!(
        scraped.value(names::ORDERS_PLACED, &[]),
        Some(5.0),
        "the replay is not counted"
    );
    let decided = |outcome: &str, reason: &str| {
        scraped.value(
            names::ORDERS_DECIDED,
            &[(label::OUTCOME, outcome), (label::REASON, reason)],
        )
    };
    assert_eq!(decided("confirmed", "none"), Some(3.0));
    assert_eq!(decided("failed", "payment_declined"), Some(1.0));
    assert_eq!(decided("failed", "out_of_stock"), Some(1.0));
    assert_eq!(scraped.sum(names::ORDERS_DECIDED, &[]), 5.0);
    let saga_count = format!("{}_count", names::SAGA_DURATION);
    assert_eq!(scraped.sum(&saga_count, &[]), 5.0);
    assert_eq!(scraped.value(&saga_count, &[(label::OUTCOME, "confirmed")]), Some(3.0));
    assert!(scraped.sum(&format!("{}_sum", names::SAGA_DURATION), &[]) > 0.0);

    // HTTP, by route template.
    let requests = |method: &str, route: &str, status: &str| {
        scraped.value(
            names::HTTP_REQUESTS,
            &[
                (label::SERVICE, "order-service"),
                (label::METHOD, method),
                (label::ROUTE, route),
                (label::STATUS, status),
            ],
        )
    };
    assert_eq!(
        requests("POST", "/orders", "202"),
        Some(6.0),
        "five orders and one replay"
    );
    assert!(requests("GET", "/orders/{order_id}", "200").unwrap_or_default() >= 5.0);
    assert_eq!(requests("GET", "unmatched", "404"), Some(1.0));
    assert!(
        !scraped.samples.iter().any(|sample| sample
            .label(label::ROUTE)
            .is_some_and(|route| route.contains(&keyed) || route == "/metrics")),
        "no raw ids and no scrapes among the routes"
    );
    assert_eq!(
        scraped.value(
            &format!("{}_count", names::HTTP_REQUEST_DURATION),
            &[
                (label::SERVICE, "order-service"),
                (label::METHOD, "POST"),
                (label::ROUTE, "/orders"),
                (label::STATUS, "202"),
            ],
        ),
        Some(6.0)
    );

    // Payment gateway: five charges (one failing transiently first), one refund.
    let calls = |operation: &str, outcome: &str| {
        scraped.value(
            names::GATEWAY_CALLS,
            &[(label::OPERATION, operation), (label::OUTCOME, outcome)],
        )
    };
    let flaky_failures = f64::from(FLAKY_TRANSIENT_FAILURES);
    assert_eq!(calls("charge", "captured"), Some(4.0));
    assert_eq!(calls("charge", "declined"), Some(1.0));
    assert_eq!(calls("charge", "error"), Some(flaky_failures));
    assert_eq!(calls("refund", "refunded"), Some(1.0));
    assert_eq!(
        scraped.value(
            names::GATEWAY_ERRORS,
            &[(label::OPERATION, "charge"), (label::KIND, "transient")],
        ),
        Some(flaky_failures)
    );
    assert_eq!(
        scraped.value(
            &format!("{}_count", names::GATEWAY_CALL_DURATION),
            &[(label::OPERATION, "charge")],
        ),
        Some(5.0 + flaky_failures)
    );
    // A few transient failures among so few calls stay under the breaker's minimum: it stayed
    // closed.
    assert_eq!(scraped.value(names::GATEWAY_CIRCUIT_STATE, &[]), Some(0.0));
    assert_eq!(scraped.sum(names::GATEWAY_CIRCUIT_TRANSITIONS, &[]), 0.0);

    // Emails: one per decision.
    assert_eq!(
        scraped.value(names::EMAILS_SENT, &[(label::TEMPLATE, "confirmed")]),
        Some(3.0)
    );
    assert_eq!(
        scraped.value(names::EMAILS_SENT, &[(label::TEMPLATE, "failed")]),
        Some(2.0)
    );
    assert_eq!(scraped.sum(names::EMAILS_FAILED, &[]), 0.0);

    // Consumers: every record on each consumed topic was processed, the poison dead-lettered.
    for (service, topic) in consumed {
        let group = format!("{prefix}{service}");
        let topic_name = env.kafka.topic(topic);
        let records = env.reader(&topic_name)?.read_to_end(Duration::from_secs(30)).await?;
        let events = records.iter().filter(|record| record.event.is_ok()).count() as f64;
        let poison = records.len() as f64 - events;
        let of = [
            (label::CONSUMER_GROUP, group.as_str()),
            (label::TOPIC, topic_name.as_str()),
        ];
        let outcome = |outcome: &'static str| {
            let mut labels = of.to_vec();
            labels.push((label::OUTCOME, outcome));
            scraped.sum(names::CONSUMER_RECORDS, &labels)
        };
        assert!(events > 0.0, "{topic_name} has events");
        // At least once: a record redelivered after a rebalance is counted again.
        assert!(
            outcome("processed") >= events,
            "{group} on {topic_name}: {} < {events}",
            outcome("processed")
        );
        assert_eq!(outcome("dead_lettered"), poison, "{group} on {topic_name}");
        assert_eq!(
            scraped.sum(names::CONSUMER_DEAD_LETTERS, &of),
            poison,
            "{group} on {topic_name}"
        );
        assert!(
            scraped.sum(&format!("{}_count", names::CONSUMER_HANDLER_DURATION), &of) >= events,
            "{group} on {topic_name}: every event went through the handler"
        );
        assert!(scraped.matching(names::CONSUMER_RETRIES, &of).next().is_some());
    }
    assert_eq!(
        scraped.sum(
            names::CONSUMER_DEAD_LETTERS,
            &[(label::TOPIC, env.kafka.topic(Topic::Orders).as_str())]
        ),
        3.0,
        "payment, inventory and notification each dead-lettered the poison record"
    );

    // Outbox relay of the order service: order.created and a decision per order.
    let orders_topic = env.kafka.topic(Topic::Orders);
    let published = [(label::SERVICE, "order-service"), (label::TOPIC, orders_topic.as_str())];
    assert_eq!(scraped.value(names::OUTBOX_PUBLISHED, &published), Some(10.0));
    assert_eq!(
        scraped.value(&format!("{}_count", names::OUTBOX_PUBLISH_DURATION), &published),
        Some(10.0)
    );
    assert_eq!(scraped.sum(names::OUTBOX_PARKED, &[]), 0.0);

    platform.stop().await;
    Ok(())
}
