//! The notification service against the real broker, registry, PostgreSQL and SMTP server
//! (maildev): one email per order outcome, whatever is redelivered, however long SMTP is down,
//! and poison records dead-lettered without stopping the service.
//!
//! maildev is shared by every test, so each test mails a recipient of its own and only looks at
//! that recipient's mail. `SMTP_HOST`/`SMTP_PORT` say where maildev's SMTP is, `MAILDEV_API_URL`
//! (or `MAILDEV_WEB_PORT`) where its HTTP API is.

use std::time::Duration;

use anyhow::Context;
use notification_service::mailer::{MailerConfig, SmtpConfig};
use notification_service::{start, Config};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use reqwest::StatusCode;
use saga_common::consumer::{DLQ_CONSUMER_GROUP, DLQ_ERROR, DLQ_ORIGIN_OFFSET, DLQ_ORIGIN_PARTITION, DLQ_ORIGIN_TOPIC};
use saga_common::kafka;
use saga_common::service::RunningService;
use saga_contracts::{OrderConfirmed, OrderFailed, SagaEvent, Topic};
use saga_tests::{eventually, TestEnv};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);
/// The SMTP port of the local maildev (`SMTP_PORT`, as deploy/local/stack.env exports it).
fn local_smtp_port() -> u16 {
    std::env::var("SMTP_PORT")
        .ok()
        .and_then(|port| port.parse().ok())
        .unwrap_or(1025)
}

fn maildev_url() -> String {
    std::env::var("MAILDEV_API_URL").unwrap_or_else(|_| {
        let port = std::env::var("MAILDEV_WEB_PORT").unwrap_or_else(|_| "1080".into());
        format!("http://127.0.0.1:{port}")
    })
}

/// Starts the notification service in-process on this test's topics and database, mailing
/// through the SMTP server on `smtp_port`, with short mailer timings.
async fn start_notification(env: &TestEnv, smtp_port: u16) -> anyhow::Result<RunningService> {
    let config = Config {
        service: env.service_config("notification"),
        smtp: SmtpConfig {
            host: std::env::var("SMTP_HOST").unwrap_or_else(|_| "127.0.0.1".into()),
            port: smtp_port,
            command_timeout_ms: 5_000,
            ..SmtpConfig::default()
        },
        mailer: MailerConfig {
            poll_interval_ms: 200,
            retry_initial_ms: 200,
            retry_max_ms: 1_000,
            ..MailerConfig::default()
        },
    };
    start(&config, CancellationToken::new())
        .await?
        .context("service stopped before it was up")
}

fn unique_recipient() -> String {
    format!("{}@example.com", uuid::Uuid::new_v4().simple())
}

fn order_confirmed(order_id: &str, customer_email: &str) -> SagaEvent {
    SagaEvent::OrderConfirmed(OrderConfirmed {
        event_id: uuid::Uuid::new_v4().to_string(),
        order_id: order_id.to_string(),
        causation_id: Some(uuid::Uuid::new_v4().to_string()),
        occurred_at: chrono::Utc::now().timestamp_millis(),
        customer_email: customer_email.to_string(),
        total_minor: 3998,
        currency: "USD".into(),
    })
}

fn order_failed(order_id: &str, customer_email: &str, reason: &str) -> SagaEvent {
    SagaEvent::OrderFailed(OrderFailed {
        event_id: uuid::Uuid::new_v4().to_string(),
        order_id: order_id.to_string(),
        causation_id: Some(uuid::Uuid::new_v4().to_string()),
        occurred_at: chrono::Utc::now().timestamp_millis(),
        reason: reason.to_string(),
        customer_email: customer_email.to_string(),
        total_minor: 1250,
        currency: "EUR".into(),
    })
}

/// Every mail maildev received for `recipient`.
async fn mails_to(recipient: &str) -> anyhow::Result<Vec<Value>> {
    let all: Vec<Value> = reqwest::get(format!("{}/email", maildev_url()))
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(all
        .into_iter()
        .filter(|mail| {
            mail["to"]
                .as_array()
                .is_some_and(|to| to.iter().any(|address| address["address"] == recipient))
        })
        .collect())
}

/// What the service's HTTP API reports for an order.
async fn notifications(service: &RunningService, order_id: &str) -> anyhow::Result<(StatusCode, Value)> {
    let response = reqwest::get(format!("http://{}/notifications/{order_id}", service.local_addr)).await?;
    let status = response.status();
    Ok((status, response.json().await?))
}

/// Waits until the order's only email is marked sent, then checks that exactly one mail reached
/// `recipient`: once the row is sent the mailer never touches it again, so one stays one.
async fn the_one_email(service: &RunningService, order_id: &str, recipient: &str) -> anyhow::Result<Value> {
    let row = eventually("the email marked sent", WAIT, || async {
        let (status, body) = notifications(service, order_id).await.ok()?;
        let row = body.as_array().filter(|rows| rows.len() == 1)?.first()?.clone();
        (status == StatusCode::OK && row["status"] == "sent").then_some(row)
    })
    .await?;
    assert_eq!(row["attempts"].as_i64().map(|a| a >= 1), Some(true), "{row}");
    eventually("the mail in maildev", WAIT, || async {
        (!mails_to(recipient).await.ok()?.is_empty()).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = mails_to(recipient).await?;
    assert_eq!(
        mails.len(),
        1,
        "expected exactly one mail to {recipient}, got {mails:#?}"
    );
    Ok(mails.into_iter().next().unwrap_or_default())
}

/// Records of `topic` the service's consumer group has committed, over all 6 partitions.
async fn committed_records(env: &TestEnv, topic: &str) -> anyhow::Result<i64> {
    let probe: StreamConsumer = kafka::consumer(&env.kafka, &env.group("notification-service"))?;
    let mut partitions = TopicPartitionList::new();
    for partition in 0..6 {
        partitions.add_partition(topic, partition);
    }
    let committed =
        tokio::task::spawn_blocking(move || probe.committed_offsets(partitions, Duration::from_secs(10))).await??;
    Ok(committed
        .elements()
        .iter()
        .map(|element| match element.offset() {
            Offset::Offset(offset) => offset,
            _ => 0,
        })
        .sum())
}

/// A port nothing listens on (bound once by us, then released).
fn closed_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[tokio::test]
async fn a_confirmed_order_gets_exactly_one_confirmation_email_with_the_deterministic_message_id() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let service = start_notification(&env, local_smtp_port()).await?;
    let order_id = uuid::Uuid::new_v4().to_string();
    let recipient = unique_recipient();
    env.produce(&order_confirmed(&order_id, &recipient)).await?;

    let mail = the_one_email(&service, &order_id, &recipient).await?;
    let expected_message_id = format!("<{order_id}.confirmed@saga-platform.local>");
    assert_eq!(mail["headers"]["message-id"], expected_message_id.as_str(), "{mail:#}");
    assert_eq!(
        mail["messageId"],
        format!("{order_id}.confirmed@saga-platform.local"),
        "{mail:#}"
    );
    assert_eq!(mail["subject"], format!("Order {} confirmed", &order_id[..8]));
    let text = mail["text"].as_str().unwrap_or_default();
    assert!(text.contains(&order_id), "{text}");
    assert!(text.contains("39.98 USD"), "{text}");

    let (status, body) = notifications(&service, &order_id).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body[0]["outcome"], "confirmed");
    assert_eq!(body[0]["recipient"], recipient.as_str());
    assert_eq!(body[0]["message_id"], expected_message_id.as_str());
    assert_eq!(body[0]["attempts"], 1);
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_failed_order_gets_exactly_one_failure_email_naming_the_reason() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start_notification(&env, local_smtp_port()).await?;
    let order_id = uuid::Uuid::new_v4().to_string();
    let recipient = unique_recipient();
    env.produce(&order_failed(&order_id, &recipient, "payment_declined"))
        .await?;

    let mail = the_one_email(&service, &order_id, &recipient).await?;
    assert_eq!(mail["subject"], format!("Order {} failed", &order_id[..8]));
    let text = mail["text"].as_str().unwrap_or_default();
    assert!(text.contains("your payment was declined"), "{text}");
    assert!(text.contains("12.50 EUR"), "{text}");
    assert_eq!(
        mail["headers"]["message-id"],
        format!("<{order_id}.failed@saga-platform.local>"),
        "{mail:#}"
    );
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_same_order_confirmed_delivered_three_times_sends_one_email() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let order_id = uuid::Uuid::new_v4().to_string();
    let recipient = unique_recipient();
    let event = order_confirmed(&order_id, &recipient);
    for _ in 0..3 {
        env.produce(&event).await?;
    }
    let service = start_notification(&env, local_smtp_port()).await?;

    // All three deliveries were handled (their offsets are stored only after the handler
    // committed), and still there is one email.
    let orders = env.kafka.topic(Topic::Orders);
    eventually("all three deliveries handled", WAIT, || async {
        (committed_records(&env, &orders).await.ok()? == 3).then_some(())
    })
    .await?;
    the_one_email(&service, &order_id, &recipient).await?;
    let (_, body) = notifications(&service, &order_id).await?;
    assert_eq!(body.as_array().map(Vec::len), Some(1), "{body:#}");
    assert_eq!(body[0]["attempts"], 1, "{body:#}");
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_smtp_outage_does_not_lose_the_email() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let order_id = uuid::Uuid::new_v4().to_string();
    let recipient = unique_recipient();
    let service = start_notification(&env, closed_port()?).await?;
    env.produce(&order_confirmed(&order_id, &recipient)).await?;

    let pending = eventually("a failed attempt recorded", WAIT, || async {
        let (_, body) = notifications(&service, &order_id).await.ok()?;
        let row = body.as_array()?.first()?.clone();
        (row["status"] == "pending" && row["attempts"].as_i64()? > 0).then_some(row)
    })
    .await?;
    service.stop().await;
    assert!(mails_to(&recipient).await?.is_empty(), "nothing can have been sent yet");

    // Same database, SMTP reachable again: the pending email goes out, once.
    let service = start_notification(&env, local_smtp_port()).await?;
    let mail = the_one_email(&service, &order_id, &recipient).await?;
    assert_eq!(mail["subject"], format!("Order {} confirmed", &order_id[..8]));
    let (_, body) = notifications(&service, &order_id).await?;
    assert!(
        body[0]["attempts"].as_i64() > pending["attempts"].as_i64(),
        "{body:#} after {pending:#}"
    );
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_poison_record_is_dead_lettered_and_the_next_event_is_still_emailed() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start_notification(&env, local_smtp_port()).await?;
    let order_id = uuid::Uuid::new_v4().to_string();
    let recipient = unique_recipient();
    // Same key, so the same partition: the good event comes right after the poison.
    env.produce_raw(Topic::Orders, &order_id, b"this is not an Avro event")
        .await?;
    env.produce(&order_confirmed(&order_id, &recipient)).await?;

    let dead_letter_topic = format!("{}notification-service.dead-letter", env.prefix);
    let reader = env.reader(&dead_letter_topic)?;
    let records = reader.read_until(WAIT, |records| !records.is_empty()).await?;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key.as_deref(), Some(order_id.as_str()));
    let header = |name: &str| {
        records[0]
            .headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    assert_eq!(header(DLQ_ORIGIN_TOPIC), Some(env.kafka.topic(Topic::Orders)));
    assert!(header(DLQ_ORIGIN_PARTITION).is_some_and(|p| p.parse::<i32>().is_ok_and(|p| (0..6).contains(&p))));
    assert!(header(DLQ_ORIGIN_OFFSET).is_some_and(|o| o.parse::<i64>().is_ok()));
    assert!(header(DLQ_ERROR).is_some_and(|e| !e.is_empty()));
    assert_eq!(header(DLQ_CONSUMER_GROUP), Some(env.group("notification-service")));

    the_one_email(&service, &order_id, &recipient).await?;
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_notifications_endpoint_rejects_bad_ids_and_reports_unknown_orders_as_not_found() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start_notification(&env, local_smtp_port()).await?;
    let (status, _) = notifications(&service, "not-a-uuid").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = notifications(&service, &uuid::Uuid::new_v4().to_string()).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_claimed_email_is_not_claimed_again_until_its_claim_ends_or_expires() -> anyhow::Result<()> {
    use notification_service::store::{self, NewNotification};
    let env = TestEnv::new().await?;
    // Starting the service migrates its database; stopped, its own mailers stay out of the way.
    start_notification(&env, local_smtp_port()).await?.stop().await;
    let database = sqlx::PgPool::connect(&env.database_url("notification")).await?;
    let order_id = uuid::Uuid::new_v4();
    let mut connection = database.acquire().await?;
    store::record_intent(
        &mut connection,
        &NewNotification {
            order_id,
            outcome: notification_service::email::Outcome::Confirmed,
            recipient: unique_recipient(),
            subject: "Your order is confirmed".into(),
            body: "Thank you.".into(),
            message_id: format!("<{order_id}.confirmed@test>"),
            source_event_id: uuid::Uuid::new_v4(),
        },
    )
    .await?;
    drop(connection);

    // The claim is committed by itself: while it holds, no other mailer gets the row, whatever
    // became of the claimant's connection.
    let claimed = store::claim_due(&database, Duration::from_secs(60)).await?;
    assert_eq!(claimed.map(|n| n.order_id), Some(order_id));
    let other_pool = sqlx::PgPool::connect(&env.database_url("notification")).await?;
    assert!(store::claim_due(&other_pool, Duration::from_secs(60)).await?.is_none());

    // A claimant that died leaves a claim that expires; then the email can be claimed again.
    sqlx::query("UPDATE notifications SET claimed_until = now() - interval '1 second' WHERE order_id = $1")
        .bind(order_id)
        .execute(&database)
        .await?;
    let reclaimed = store::claim_due(&other_pool, Duration::from_secs(60)).await?;
    assert_eq!(reclaimed.map(|n| n.order_id), Some(order_id));

    // Recording the email as sent ends the claim for good.
    let mut connection = other_pool.acquire().await?;
    store::mark_sent(&mut connection, order_id, "confirmed").await?;
    let (status, claimed): (String, bool) =
        sqlx::query_as("SELECT status, claimed_until IS NOT NULL FROM notifications WHERE order_id = $1")
            .bind(order_id)
            .fetch_one(&database)
            .await?;
    assert_eq!((status.as_str(), claimed), ("sent", false));
    assert!(store::claim_due(&database, Duration::from_secs(60)).await?.is_none());
    Ok(())
}
