//! The order service against the real broker, registry and PostgreSQL, with the payment and
//! inventory services played by the test: it produces their outcome events directly.

use std::time::Duration;

use saga_common::service::RunningService;
use saga_contracts::{InventoryReserved, PaymentFailed, PaymentSucceeded, SagaEvent, StockLine, Topic};
use saga_tests::{eventually, ReadRecord, TestEnv};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Turns a valid order body into an invalid one.
type BodyChange = Box<dyn Fn(&mut Value)>;

async fn start_order_service(env: &TestEnv, deadline_secs: f64) -> anyhow::Result<RunningService> {
    let config = order_service::Config {
        service: env.service_config("order"),
        saga_deadline_secs: deadline_secs,
    };
    order_service::start(&config, CancellationToken::new())
        .await?
        .ok_or_else(|| anyhow::anyhow!("order service did not start"))
}

fn order_body() -> Value {
    json!({
        "customer_id": "c-1",
        "customer_email": "a@example.com",
        "currency": "USD",
        "payment_token": "tok_ok",
        "items": [{"sku": "SKU-1", "quantity": 2, "unit_price_minor": 1999}]
    })
}

async fn place(service: &RunningService, body: &Value) -> anyhow::Result<String> {
    let response = reqwest::Client::new()
        .post(format!("http://{}/orders", service.local_addr))
        .json(body)
        .send()
        .await?;
    anyhow::ensure!(response.status() == 202, "expected 202, got {}", response.status());
    let answer: Value = response.json().await?;
    Ok(answer["order_id"].as_str().unwrap_or_default().to_string())
}

async fn order(service: &RunningService, order_id: &str) -> anyhow::Result<Value> {
    Ok(reqwest::get(format!("http://{}/orders/{order_id}", service.local_addr))
        .await?
        .json()
        .await?)
}

async fn wait_for_status(service: &RunningService, order_id: &str, status: &str) -> anyhow::Result<Value> {
    eventually(
        &format!("order {order_id} {status}"),
        Duration::from_secs(30),
        || async {
            let view = order(service, order_id).await.ok()?;
            (view["status"] == status).then_some(view)
        },
    )
    .await
}

fn common(order_id: &str) -> (String, String, Option<String>, i64) {
    (
        uuid::Uuid::new_v4().to_string(),
        order_id.to_string(),
        None,
        chrono::Utc::now().timestamp_millis(),
    )
}

fn payment_success(order_id: &str) -> SagaEvent {
    let (event_id, order_id, causation_id, occurred_at) = common(order_id);
    SagaEvent::PaymentSucceeded(PaymentSucceeded {
        event_id,
        order_id,
        causation_id,
        occurred_at,
        payment_id: uuid::Uuid::new_v4().to_string(),
        amount_minor: 3998,
        currency: "USD".into(),
    })
}

fn payment_failed(order_id: &str) -> SagaEvent {
    let (event_id, order_id, causation_id, occurred_at) = common(order_id);
    SagaEvent::PaymentFailed(PaymentFailed {
        event_id,
        order_id,
        causation_id,
        occurred_at,
        reason: "card_declined".into(),
        amount_minor: 3998,
        currency: "USD".into(),
    })
}

fn reserved(order_id: &str) -> SagaEvent {
    let (event_id, order_id, causation_id, occurred_at) = common(order_id);
    SagaEvent::InventoryReserved(InventoryReserved {
        event_id,
        order_id,
        causation_id,
        occurred_at,
        items: vec![StockLine {
            sku: "SKU-1".into(),
            quantity: 2,
        }],
    })
}

fn types_for(records: &[ReadRecord], order_id: &str) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| r.event.as_ref().ok())
        .filter(|e| e.order_id() == Some(order_id))
        .map(|e| e.event_type().as_str().to_string())
        .collect()
}

#[tokio::test]
async fn placing_an_order_commits_it_with_its_order_created_event() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start_order_service(&env, 30.0).await?;
    let response = reqwest::Client::new()
        .post(format!("http://{}/orders", service.local_addr))
        .json(&order_body())
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str()?.to_string();
    let answer: Value = response.json().await?;
    let order_id = answer["order_id"].as_str().expect("order_id").to_string();
    assert_eq!(answer["status"], "PENDING");
    assert_eq!(location, format!("/orders/{order_id}"));

    let records = env
        .reader(&env.kafka.topic(Topic::Orders))?
        .read_until(Duration::from_secs(30), |records| !records.is_empty())
        .await?;
    let Ok(SagaEvent::OrderCreated(created)) = &records[0].event else {
        panic!("expected order.created: {records:?}")
    };
    assert_eq!(created.order_id, order_id);
    assert_eq!(created.total_minor, 3998);
    assert_eq!(created.items[0].quantity, 2);
    assert_eq!(records[0].key.as_deref(), Some(order_id.as_str()));
    assert!(records[0]
        .headers
        .iter()
        .any(|(k, v)| k == "event_type" && v == "order.created"));
    assert!(records[0]
        .headers
        .iter()
        .any(|(k, v)| k == "traceparent" && v.starts_with("00-")));

    let view = order(&service, &order_id).await?;
    assert_eq!(view["status"], "PENDING");
    assert_eq!(view["total_minor"], 3998);
    assert_eq!(view["timeline"][0]["event_type"], "order.created");
    assert_eq!(view["timeline"][0]["source"], "order-service");
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn invalid_orders_are_rejected_naming_the_field() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start_order_service(&env, 30.0).await?;
    let url = format!("http://{}/orders", service.local_addr);
    let client = reqwest::Client::new();

    let malformed = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"customer_id\": ")
        .send()
        .await?;
    assert_eq!(malformed.status(), 400);
    assert!(malformed.text().await?.contains("malformed JSON"));

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

    let not_found = client
        .get(format!("http://{}/orders/{}", service.local_addr, uuid::Uuid::new_v4()))
        .send()
        .await?;
    assert_eq!(not_found.status(), 404);
    let not_uuid = client
        .get(format!("http://{}/orders/nope", service.local_addr))
        .send()
        .await?;
    assert_eq!(not_uuid.status(), 400);
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_retried_post_with_the_same_idempotency_key_creates_nothing_new() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start_order_service(&env, 30.0).await?;
    let url = format!("http://{}/orders", service.local_addr);
    let client = reqwest::Client::new();
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
    assert_eq!(reused.status(), 422);

    env.outbox_drained("order").await?;
    let records = env
        .reader(&env.kafka.topic(Topic::Orders))?
        .read_to_end(Duration::from_secs(30))
        .await?;
    let order_id = answers[0]["order_id"].as_str().expect("order_id");
    assert_eq!(types_for(&records, order_id), vec!["order.created"]);
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn payment_and_reservation_confirm_the_order_once_even_when_redelivered() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start_order_service(&env, 30.0).await?;
    let order_id = place(&service, &order_body()).await?;
    let success = payment_success(&order_id);
    let reservation = reserved(&order_id);
    for event in [&success, &reservation, &success, &reservation] {
        env.produce(event).await?;
    }
    let view = wait_for_status(&service, &order_id, "CONFIRMED").await?;
    let timeline: Vec<&str> = view["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    assert_eq!(
        timeline,
        vec![
            "order.created",
            "payment.success",
            "inventory.reserved",
            "order.confirmed"
        ]
    );
    // The redeliveries come after the first copies in their partitions; once a later event of
    // each topic shows in the timeline, the duplicates were handled.
    let (event_id, committed_order, causation_id, occurred_at) = common(&order_id);
    env.produce(&SagaEvent::InventoryCommitted(saga_contracts::InventoryCommitted {
        event_id,
        order_id: committed_order,
        causation_id,
        occurred_at,
        items: vec![StockLine {
            sku: "SKU-1".into(),
            quantity: 2,
        }],
    }))
    .await?;
    eventually("commit recorded", Duration::from_secs(30), || async {
        let view = order(&service, &order_id).await.ok()?;
        view["timeline"]
            .as_array()?
            .iter()
            .any(|e| e["event_type"] == "inventory.committed")
            .then_some(())
    })
    .await?;
    env.outbox_drained("order").await?;
    let records = env
        .reader(&env.kafka.topic(Topic::Orders))?
        .read_to_end(Duration::from_secs(30))
        .await?;
    assert_eq!(types_for(&records, &order_id), vec!["order.created", "order.confirmed"]);
    let view = order(&service, &order_id).await?;
    let timeline: Vec<&str> = view["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    for expected in ["payment.success", "inventory.reserved", "order.confirmed"] {
        assert_eq!(
            timeline.iter().filter(|t| **t == expected).count(),
            1,
            "{expected} in {timeline:?}"
        );
    }
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_declined_payment_fails_the_order_with_payment_declined() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start_order_service(&env, 30.0).await?;
    let order_id = place(&service, &order_body()).await?;
    env.produce(&payment_failed(&order_id)).await?;
    let view = wait_for_status(&service, &order_id, "FAILED").await?;
    assert_eq!(view["failure_reason"], "payment_declined");
    // The reservation that arrives afterwards decides nothing more.
    env.produce(&reserved(&order_id)).await?;
    eventually("late reservation in the timeline", Duration::from_secs(30), || async {
        let view = order(&service, &order_id).await.ok()?;
        view["timeline"]
            .as_array()?
            .iter()
            .any(|e| e["event_type"] == "inventory.reserved")
            .then_some(())
    })
    .await?;
    let view = order(&service, &order_id).await?;
    assert_eq!(view["status"], "FAILED");
    assert_eq!(view["failure_reason"], "payment_declined");
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_order_without_outcomes_fails_at_its_deadline_and_late_success_changes_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start_order_service(&env, 1.0).await?;
    let order_id = place(&service, &order_body()).await?;
    let view = wait_for_status(&service, &order_id, "FAILED").await?;
    assert_eq!(view["failure_reason"], "deadline_exceeded");
    env.produce(&payment_success(&order_id)).await?;
    env.produce(&reserved(&order_id)).await?;
    eventually("late outcomes recorded", Duration::from_secs(30), || async {
        let view = order(&service, &order_id).await.ok()?;
        (view["timeline"].as_array()?.len() == 4).then_some(())
    })
    .await?;
    env.outbox_drained("order").await?;
    let records = env
        .reader(&env.kafka.topic(Topic::Orders))?
        .read_to_end(Duration::from_secs(30))
        .await?;
    assert_eq!(types_for(&records, &order_id), vec!["order.created", "order.failed"]);
    let failed = records
        .iter()
        .filter_map(|r| r.event.as_ref().ok())
        .find(|e| e.order_id() == Some(order_id.as_str()) && e.event_type().as_str() == "order.failed");
    let Some(SagaEvent::OrderFailed(failed)) = failed else {
        panic!("no order.failed")
    };
    assert_eq!(failed.reason, "deadline_exceeded");
    assert_eq!(order(&service, &order_id).await?["status"], "FAILED");
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_poison_outcome_is_dead_lettered_and_the_next_one_is_processed() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start_order_service(&env, 30.0).await?;
    let order_id = place(&service, &order_body()).await?;
    env.produce_raw(Topic::Payments, &order_id, b"\x00\x00\x00\x00\x07garbage")
        .await?;
    env.produce_raw(Topic::Inventory, &order_id, b"not avro at all").await?;
    env.produce(&payment_failed(&order_id)).await?;
    wait_for_status(&service, &order_id, "FAILED").await?;
    let dead_letters = env
        .reader(&env.kafka.dead_letter_topic("order-service"))?
        .read_until(Duration::from_secs(30), |records| records.len() >= 2)
        .await?;
    let origins: Vec<String> = dead_letters
        .iter()
        .filter_map(|r| {
            r.headers
                .iter()
                .find(|(k, _)| k == "dlq.origin.topic")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert!(origins.contains(&env.kafka.topic(Topic::Payments)), "{origins:?}");
    assert!(origins.contains(&env.kafka.topic(Topic::Inventory)), "{origins:?}");
    for record in &dead_letters {
        for header in ["dlq.origin.partition", "dlq.origin.offset", "dlq.error"] {
            assert!(
                record.headers.iter().any(|(k, _)| k == header),
                "{header} missing: {:?}",
                record.headers
            );
        }
    }
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn health_says_live_and_ready_when_database_broker_and_registry_answer() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start_order_service(&env, 30.0).await?;
    let live = reqwest::get(format!("http://{}/health/live", service.local_addr)).await?;
    assert_eq!(live.status(), 200);
    let ready = reqwest::get(format!("http://{}/health/ready", service.local_addr)).await?;
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
    let service = start_order_service(&env, 30.0).await?;
    // The service waits for the registry at startup, so the outage is checked on the readiness
    // router itself, with the service's database and broker and a registry URL on a closed port.
    let mut config = env.service_config("order");
    config.registry.url = "http://127.0.0.1:9".into();
    let dependencies = saga_common::health::Dependencies {
        database: sqlx::PgPool::connect(&env.database_url("order")).await?,
        kafka: config.kafka.clone(),
        registry: config.registry.clone(),
        http: reqwest::Client::new(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, saga_common::health::router(dependencies)).await });
    let ready = reqwest::get(format!("http://{address}/health/ready")).await?;
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await?;
    assert_eq!(body["checks"]["database"], "up");
    assert_eq!(body["checks"]["broker"], "up");
    assert!(
        body["checks"]["schema_registry"]
            .as_str()
            .unwrap_or_default()
            .starts_with("down"),
        "{body}"
    );
    server.abort();
    service.stop().await;
    Ok(())
}
