//! The order service against the real broker, registry and PostgreSQL, with the payment and
//! inventory services played by the test: it reads the order.created the service published and
//! produces their outcome events for it directly.

use std::sync::Arc;
use std::time::Duration;

use saga_common::consumer::{DLQ_ERROR, DLQ_ORIGIN_OFFSET, DLQ_ORIGIN_PARTITION, DLQ_ORIGIN_TOPIC};
use saga_common::health::{Dependencies, HealthState};
use saga_common::service::RunningService;
use saga_contracts::{EventType, FailureReason, OrderCreated, OrderId, SagaEvent, Topic};
use saga_tests::fixtures::{inventory_committed, inventory_reserved, order_created, payment_failed, payment_succeeded};
use saga_tests::services::order::{start, LONG_DEADLINE_SECS};
use saga_tests::{eventually, ReadRecord, TestEnv};
use serde_json::{json, Value};

/// How long any one thing may take to happen.
const WAIT: Duration = Duration::from_secs(30);

/// Turns a valid order body into an invalid one.
type BodyChange = Box<dyn Fn(&mut Value)>;

/// Two units of SKU-1 at 19.99 USD: 39.98 in all.
fn order_body() -> Value {
    json!({
        "customer_id": "c-1",
        "customer_email": "a@example.com",
        "currency": "USD",
        "payment_token": "tok_ok",
        "items": [{"sku": "SKU-1", "quantity": 2, "unit_price_minor": 1999}]
    })
}

fn orders_url(service: &RunningService) -> String {
    format!("http://{}/orders", service.local_addr)
}

/// The order.created of `order_id` among `records`.
fn created_of(records: &[ReadRecord], order_id: OrderId) -> Option<OrderCreated> {
    records.iter().find_map(|record| match &record.event {
        Ok(SagaEvent::OrderCreated(created)) if created.envelope.order_id == order_id => Some(created.clone()),
        _ => None,
    })
}

/// Places [`order_body`] over HTTP and returns the order.created the service published for it,
/// as the payment and inventory services receive it.
async fn place_order(env: &TestEnv, service: &RunningService) -> anyhow::Result<OrderCreated> {
    let response = saga_tests::http()
        .post(orders_url(service))
        .json(&order_body())
        .send()
        .await?;
    anyhow::ensure!(response.status() == 202, "expected 202, got {}", response.status());
    let answer: Value = response.json().await?;
    let order_id: OrderId = answer["order_id"].as_str().unwrap_or_default().parse()?;
    let records = env
        .reader(&env.kafka.topic(Topic::Orders))?
        .read_until(WAIT, |records| created_of(records, order_id).is_some())
        .await?;
    created_of(&records, order_id).ok_or_else(|| anyhow::anyhow!("no order.created for {order_id}"))
}

/// `GET /orders/{order_id}`'s body.
async fn order_view(service: &RunningService, order_id: OrderId) -> anyhow::Result<Value> {
    Ok(saga_tests::get(format!("{}/{order_id}", orders_url(service)))
        .await?
        .json()
        .await?)
}

async fn wait_for_status(service: &RunningService, order_id: OrderId, status: &str) -> anyhow::Result<Value> {
    eventually(&format!("order {order_id} {status}"), WAIT, || async {
        let view = order_view(service, order_id).await.ok()?;
        (view["status"] == status).then_some(view)
    })
    .await
}

/// The event types of a view's timeline, oldest first.
fn timeline(view: &Value) -> Vec<&str> {
    view["timeline"]
        .as_array()
        .map(|entries| entries.iter().filter_map(|e| e["event_type"].as_str()).collect())
        .unwrap_or_default()
}

/// Waits until the order service has consumed everything produced to the payments and
/// inventory topics so far (its offsets are stored only once an event's effect is committed).
async fn wait_until_outcomes_consumed(env: &TestEnv) -> anyhow::Result<()> {
    let group = env.group(order_service::SPEC.name);
    for topic in [Topic::Payments, Topic::Inventory] {
        env.wait_until_consumed(&group, &env.kafka.topic(topic), WAIT).await?;
    }
    Ok(())
}

/// Every event the order service published for `order_id`, once its outbox is drained.
async fn published_for(env: &TestEnv, order_id: OrderId) -> anyhow::Result<Vec<SagaEvent>> {
    env.outbox_drained("order").await?;
    let records = env.reader(&env.kafka.topic(Topic::Orders))?.read_to_end(WAIT).await?;
    Ok(records
        .into_iter()
        .filter_map(|record| record.event.ok())
        .filter(|event| event.order_id() == Some(order_id))
        .collect())
}

fn types(events: &[SagaEvent]) -> Vec<EventType> {
    events.iter().map(SagaEvent::event_type).collect()
}

fn header<'a>(record: &'a ReadRecord, name: &str) -> Option<&'a str> {
    record
        .headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

#[tokio::test]
async fn placing_an_order_commits_it_with_its_order_created_event() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env, LONG_DEADLINE_SECS).await?;
    let response = saga_tests::http()
        .post(orders_url(&service))
        .json(&order_body())
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str()?.to_string();
    let answer: Value = response.json().await?;
    let order_id: OrderId = answer["order_id"].as_str().expect("order_id").parse()?;
    assert_eq!(answer["status"], "PENDING");
    assert_eq!(location, format!("/orders/{order_id}"));

    let records = env
        .reader(&env.kafka.topic(Topic::Orders))?
        .read_until(WAIT, |records| !records.is_empty())
        .await?;
    let Ok(SagaEvent::OrderCreated(created)) = &records[0].event else {
        panic!("expected order.created: {records:?}")
    };
    assert_eq!(created.envelope.order_id, order_id);
    assert_eq!(
        created.envelope.causation_id, None,
        "a request, not an event, caused it"
    );
    assert_eq!(created.total_minor, 3998);
    assert_eq!(created.items[0].quantity, 2);
    assert_eq!(records[0].key, Some(order_id.to_string()));
    assert_eq!(header(&records[0], "event_type"), Some("order.created"));
    assert!(header(&records[0], "traceparent").is_some_and(|value| value.starts_with("00-")));

    let view = order_view(&service, order_id).await?;
    assert_eq!(view["status"], "PENDING");
    assert_eq!(view["total_minor"], 3998);
    assert_eq!(view["timeline"][0]["event_type"], "order.created");
    assert_eq!(view["timeline"][0]["event_id"], created.envelope.event_id.to_string());
    assert_eq!(view["timeline"][0]["source"], "order-service");
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn invalid_orders_are_rejected_naming_the_field() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env, LONG_DEADLINE_SECS).await?;
    let url = orders_url(&service);
    let client = saga_tests::http();

    let malformed = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"customer_id\": ")
        .send()
        .await?;
    assert_eq!(malformed.status(), 400);
    assert!(malformed.text().await?.contains("malformed JSON"));
    let not_an_object = client.post(&url).json(&json!([order_body()])).send().await?;
    assert_eq!(not_an_object.status(), 400);
    assert!(not_an_object.text().await?.contains("must be a JSON object"));

    let cases: Vec<(&str, BodyChange)> = vec![
        (
            "currency",
            Box::new(|b: &mut Value| drop(b.as_object_mut().map(|o| o.remove("currency")))),
        ),
        (
            "items[0].quantity",
            Box::new(|b: &mut Value| b["items"][0]["quantity"] = json!(0)),
        ),
        (
            "items[0].unit_price_minor",
            Box::new(|b: &mut Value| b["items"][0]["unit_price_minor"] = json!(-5)),
        ),
        ("currency", Box::new(|b: &mut Value| b["currency"] = json!("usd"))),
        ("items", Box::new(|b: &mut Value| b["items"] = json!([]))),
        (
            "customer_email",
            Box::new(|b: &mut Value| b["customer_email"] = json!("not-an-email")),
        ),
        (
            "customer_email",
            Box::new(|b: &mut Value| b["customer_email"] = json!("a..b@example.com")),
        ),
        (
            "customer_id",
            Box::new(|b: &mut Value| b["customer_id"] = json!("c\u{0}1")),
        ),
        (
            "items[0].quantity",
            Box::new(|b: &mut Value| b["items"][0]["quantity"] = json!("two")),
        ),
    ];
    for (field, mutate) in cases {
        let mut body = order_body();
        mutate(&mut body);
        let response = client.post(&url).json(&body).send().await?;
        let status = response.status();
        let answer: Value = response.json().await?;
        assert_eq!(status, 422, "{body} -> {answer}");
        assert_eq!(answer["field"], field, "{body} -> {answer}");
        assert!(answer["error"].as_str().unwrap_or_default().contains(field));
    }

    let not_found = client.get(format!("{url}/{}", OrderId::new())).send().await?;
    assert_eq!(not_found.status(), 404);
    let not_uuid = client.get(format!("{url}/nope")).send().await?;
    assert_eq!(not_uuid.status(), 400);
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_retried_post_with_the_same_idempotency_key_creates_nothing_new() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env, LONG_DEADLINE_SECS).await?;
    let url = orders_url(&service);
    let client = saga_tests::http();
    let key = uuid::Uuid::new_v4().to_string();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let response = client
            .post(&url)
            .header("Idempotency-Key", &key)
            .json(&order_body())
            .send()
            .await?;
        assert_eq!(response.status(), 202);
        answers.push(response.json::<Value>().await?);
    }
    assert!(answers.windows(2).all(|pair| pair[0] == pair[1]), "{answers:?}");

    let mut other = order_body();
    other["items"][0]["quantity"] = json!(3);
    let reused = client
        .post(&url)
        .header("Idempotency-Key", &key)
        .json(&other)
        .send()
        .await?;
    // The key is taken: a conflict, not a malformed request.
    assert_eq!(reused.status(), 409);

    let order_id: OrderId = answers[0]["order_id"].as_str().expect("order_id").parse()?;
    let published = published_for(&env, order_id).await?;
    assert_eq!(types(&published), vec![EventType::OrderCreated]);
    // The key and the request's hash travel with the event, so a service rebuilt from the
    // topics still answers a retry with this order; so does the deadline.
    let SagaEvent::OrderCreated(created) = &published[0] else {
        unreachable!()
    };
    assert_eq!(created.idempotency_key.as_deref(), Some(key.as_str()));
    assert!(
        created.request_hash.as_ref().is_some_and(|hash| hash.len() == 36),
        "{created:?}"
    );
    assert_eq!(
        created.deadline_at,
        Some(created.envelope.occurred_at + (LONG_DEADLINE_SECS * 1000.0) as i64)
    );
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn payment_and_reservation_confirm_the_order_once_even_when_redelivered() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env, LONG_DEADLINE_SECS).await?;
    let created = place_order(&env, &service).await?;
    let order_id = created.envelope.order_id;
    let outcomes: [SagaEvent; 2] = [payment_succeeded(&created).into(), inventory_reserved(&created).into()];
    for event in outcomes.iter().chain(&outcomes) {
        env.produce(event).await?;
    }
    let view = wait_for_status(&service, order_id, "CONFIRMED").await?;
    // The two outcomes travel on different topics, so either may be applied first.
    let mut steps = timeline(&view);
    steps[1..3].sort_unstable();
    assert_eq!(
        steps,
        vec![
            "order.created",
            "inventory.reserved",
            "payment.success",
            "order.confirmed"
        ]
    );

    // A commit only extends the timeline; once it and the redeliveries are consumed, nothing
    // more was decided.
    env.produce(&inventory_committed(&created).into()).await?;
    wait_until_outcomes_consumed(&env).await?;
    let published = published_for(&env, order_id).await?;
    assert_eq!(
        types(&published),
        vec![EventType::OrderCreated, EventType::OrderConfirmed]
    );
    let decided_by = published[1].causation_id().expect("caused by an outcome");
    assert!(
        outcomes.iter().any(|outcome| outcome.event_id() == decided_by),
        "order.confirmed is caused by the outcome that completed the order"
    );
    let view = order_view(&service, order_id).await?;
    let steps = timeline(&view);
    for expected in [
        "payment.success",
        "inventory.reserved",
        "order.confirmed",
        "inventory.committed",
    ] {
        assert_eq!(
            steps.iter().filter(|step| **step == expected).count(),
            1,
            "{expected} in {steps:?}"
        );
    }
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_declined_payment_fails_the_order_with_payment_declined() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env, LONG_DEADLINE_SECS).await?;
    let created = place_order(&env, &service).await?;
    let order_id = created.envelope.order_id;
    let declined = payment_failed(&created);
    env.produce(&declined.clone().into()).await?;
    let view = wait_for_status(&service, order_id, "FAILED").await?;
    assert_eq!(view["failure_reason"], "payment_declined");

    // The reservation that arrives afterwards is recorded and decides nothing more.
    env.produce(&inventory_reserved(&created).into()).await?;
    wait_until_outcomes_consumed(&env).await?;
    let view = order_view(&service, order_id).await?;
    assert_eq!(view["status"], "FAILED");
    assert_eq!(view["failure_reason"], "payment_declined");
    assert!(timeline(&view).contains(&"inventory.reserved"), "{view}");

    let published = published_for(&env, order_id).await?;
    let [SagaEvent::OrderCreated(_), SagaEvent::OrderFailed(failed)] = published.as_slice() else {
        panic!("expected order.created, order.failed: {published:?}");
    };
    assert_eq!(failed.failure_reason, FailureReason::PaymentDeclined);
    assert_eq!(failed.reason, "payment_declined");
    assert_eq!(failed.envelope.causation_id, Some(declined.envelope.event_id));
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_order_without_outcomes_fails_at_its_deadline_and_late_success_changes_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env, 1.0).await?;
    let created = place_order(&env, &service).await?;
    let order_id = created.envelope.order_id;
    let view = wait_for_status(&service, order_id, "FAILED").await?;
    assert_eq!(view["failure_reason"], "deadline_exceeded");

    env.produce(&payment_succeeded(&created).into()).await?;
    env.produce(&inventory_reserved(&created).into()).await?;
    wait_until_outcomes_consumed(&env).await?;
    let view = order_view(&service, order_id).await?;
    assert_eq!(view["status"], "FAILED");
    assert_eq!(
        timeline(&view).len(),
        4,
        "created, failed and the two late outcomes: {view}"
    );

    let published = published_for(&env, order_id).await?;
    let [SagaEvent::OrderCreated(_), SagaEvent::OrderFailed(failed)] = published.as_slice() else {
        panic!("expected order.created, order.failed: {published:?}");
    };
    assert_eq!(failed.reason(), FailureReason::DeadlineExceeded);
    assert_eq!(failed.reason, "deadline_exceeded");
    assert_eq!(
        failed.envelope.causation_id, None,
        "the deadline, not an event, caused it"
    );
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_poison_outcome_is_dead_lettered_and_the_next_one_is_processed() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env, LONG_DEADLINE_SECS).await?;
    let created = place_order(&env, &service).await?;
    let key = created.envelope.order_id.to_string();
    env.produce_raw(Topic::Payments, &key, b"\x00\x00\x00\x00\x07garbage")
        .await?;
    env.produce_raw(Topic::Inventory, &key, b"not avro at all").await?;
    env.produce(&payment_failed(&created).into()).await?;
    wait_for_status(&service, created.envelope.order_id, "FAILED").await?;
    let dead_letters = env
        .reader(&env.kafka.dead_letter_topic(order_service::SPEC.name))?
        .read_until(WAIT, |records| records.len() >= 2)
        .await?;
    let origins: Vec<&str> = dead_letters
        .iter()
        .filter_map(|record| header(record, DLQ_ORIGIN_TOPIC))
        .collect();
    assert!(
        origins.contains(&env.kafka.topic(Topic::Payments).as_str()),
        "{origins:?}"
    );
    assert!(
        origins.contains(&env.kafka.topic(Topic::Inventory).as_str()),
        "{origins:?}"
    );
    for record in &dead_letters {
        for name in [DLQ_ORIGIN_PARTITION, DLQ_ORIGIN_OFFSET, DLQ_ERROR] {
            assert!(header(record, name).is_some(), "{name} missing: {:?}", record.headers);
        }
    }
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_outcome_for_an_order_never_placed_is_dead_lettered_at_once_and_its_partition_goes_on() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let service = start(&env, LONG_DEADLINE_SECS).await?;
    let created = place_order(&env, &service).await?;
    let order_id = created.envelope.order_id;
    // A well-formed payment outcome of an order this service never stored: no retry can make
    // the order appear. It is keyed like the placed order's events, so it sits on their
    // partition right before the declined payment.
    let never_placed = order_created();
    let orphan = SagaEvent::from(payment_succeeded(&never_placed));
    let encoded = env.codec()?.encode(&orphan).await?;
    env.produce_raw(Topic::Payments, &order_id.to_string(), &encoded.payload)
        .await?;
    env.produce(&payment_failed(&created).into()).await?;

    let view = wait_for_status(&service, order_id, "FAILED").await?;
    assert_eq!(view["failure_reason"], "payment_declined");
    wait_until_outcomes_consumed(&env).await?;
    let dead_letters = env
        .reader(&env.kafka.dead_letter_topic(order_service::SPEC.name))?
        .read_to_end(WAIT)
        .await?;
    let [dead_letter] = dead_letters.as_slice() else {
        panic!("expected one dead letter: {dead_letters:?}");
    };
    assert_eq!(dead_letter.event.as_ref(), Ok(&orphan));
    assert_eq!(
        header(dead_letter, DLQ_ORIGIN_TOPIC),
        Some(env.kafka.topic(Topic::Payments).as_str())
    );
    let error = header(dead_letter, DLQ_ERROR).unwrap_or_default();
    assert!(error.starts_with("permanent error after 1 attempt(s)"), "{error}");
    assert!(
        error.contains(&format!("unknown order {}", never_placed.envelope.order_id)),
        "{error}"
    );
    let live: Value = saga_tests::get(format!("http://{}/health/live", service.local_addr))
        .await?
        .json()
        .await?;
    assert_eq!(live["dead_lettered"], 1, "{live}");
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn health_says_live_and_ready_when_database_broker_and_registry_answer() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env, LONG_DEADLINE_SECS).await?;
    let live = saga_tests::get(format!("http://{}/health/live", service.local_addr)).await?;
    assert_eq!(live.status(), 200);
    let live: Value = live.json().await?;
    assert_eq!(live["tasks"]["deadline scanner"], "running", "{live}");
    assert_eq!(live["tasks"]["consumer"], "running", "{live}");
    let ready = saga_tests::get(format!("http://{}/health/ready", service.local_addr)).await?;
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await?;
    assert_eq!(
        body["checks"],
        json!({"database": "up", "broker": "up", "schema_registry": "up"})
    );
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn readiness_names_an_unreachable_registry() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env, LONG_DEADLINE_SECS).await?;
    // The service waits for the registry at startup, so the outage is checked on the readiness
    // router itself, with the service's database, broker and readiness rule and a registry URL
    // on a closed port.
    let mut config = env.service_config("order");
    config.registry.url = "http://127.0.0.1:9".into();
    let dependencies = Dependencies {
        database: sqlx::PgPool::connect(&env.database_url("order")).await?,
        producer: saga_common::kafka::producer(&config.kafka)?,
        registry: config.registry.clone(),
        http: reqwest::Client::new(),
        ready_without_broker: order_service::SPEC.ready_without_broker,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let router = saga_common::health::router(dependencies, Arc::new(HealthState::default()));
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let ready = saga_tests::get(format!("http://{address}/health/ready")).await?;
    let status = ready.status();
    let body: Value = ready.json().await?;
    assert_eq!(status, 200, "accepted orders wait in the outbox: {body}");
    assert_eq!(body["needs"], json!(["database"]));
    assert_eq!(body["checks"]["database"], "up");
    assert_eq!(body["checks"]["broker"], "up");
    assert!(
        body["checks"]["schema_registry"]
            .as_str()
            .is_some_and(|check| check.starts_with("down")),
        "{body}"
    );
    server.abort();
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_client_over_its_order_limit_gets_429_with_retry_after_and_idempotent_retries_pass() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let limit = order_service::rate_limit::OrderRateLimitConfig {
        per_second: 1,
        burst: 2,
    };
    let service = saga_tests::services::order::start_with_rate_limit(&env, LONG_DEADLINE_SECS, limit).await?;
    let http = saga_tests::http();
    let post = |key: Option<&'static str>| {
        let mut request = http.post(orders_url(&service)).json(&order_body());
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send()
    };

    // The burst: two orders at once, one of them with an Idempotency-Key.
    assert_eq!(post(None).await?.status(), 202);
    let first: Value = post(Some("limit-retry")).await?.json().await?;
    // A third at once is over the limit: 429, how long to wait, and why.
    let refused = post(None).await?;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no Retry-After header"))?;
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    let body: Value = refused.json().await?;
    let message = body["error"].as_str().unwrap_or_default();
    assert!(message.contains("too many orders"), "{body}");
    // A retry of the accepted order, over the limit all the same: answered, not refused or counted.
    let retried = post(Some("limit-retry")).await?;
    assert_eq!(retried.status(), 202);
    assert_eq!(retried.json::<Value>().await?["order_id"], first["order_id"]);
    // After the wait it says, the client may order again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(post(None).await?.status(), 202);
    service.stop().await;
    Ok(())
}
