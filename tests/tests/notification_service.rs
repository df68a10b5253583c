//! The notification service against the real broker, registry, PostgreSQL and SMTP: one email
//! per order outcome, whatever is redelivered, however long SMTP is down; an email the SMTP
//! server refuses for good set aside without holding up the others; records that can never be
//! handled dead-lettered without stopping the service.
//!
//! Most tests mail through the local stack's maildev (see `saga_tests::services::notification`),
//! one through an SMTP server of its own that refuses a recipient.

use std::time::Duration;

use notification_service::domain::NewNotification;
use notification_service::email::Outcome;
use notification_service::store;
use reqwest::StatusCode;
use saga_common::consumer::{DLQ_CONSUMER_GROUP, DLQ_ERROR, DLQ_ORIGIN_OFFSET, DLQ_ORIGIN_PARTITION, DLQ_ORIGIN_TOPIC};
use saga_common::service::RunningService;
use saga_contracts::{EventId, FailureReason, OrderCreated, OrderId, OrderOutcome, SagaEvent, Topic};
use saga_tests::fixtures::{order_confirmed, order_created, order_failed};
use saga_tests::services::notification::{
    maildev_mails_to, maildev_smtp, smtp_on_localhost, start, RejectingSmtpServer,
};
use saga_tests::{eventually, TestEnv};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// `order`'s confirmation, as the order service publishes it.
fn confirmed(order: &OrderCreated) -> SagaEvent {
    SagaEvent::OrderConfirmed(order_confirmed(order))
}

/// What the service's HTTP API reports for an order (`order_id` as the client spells it).
async fn notifications(
    service: &RunningService,
    order_id: impl std::fmt::Display,
) -> anyhow::Result<(StatusCode, Value)> {
    let response = saga_tests::get(format!("http://{}/notifications/{order_id}", service.local_addr)).await?;
    let status = response.status();
    Ok((status, response.json().await?))
}

/// Waits until the order's only email has `status`, and returns it.
async fn the_email_once(service: &RunningService, order_id: OrderId, status: &str) -> anyhow::Result<Value> {
    eventually(&format!("the email {status}"), WAIT, || async {
        let (code, body) = notifications(service, order_id).await.ok()?;
        let row = body.as_array().filter(|rows| rows.len() == 1)?.first()?.clone();
        (code == StatusCode::OK && row["status"] == status).then_some(row)
    })
    .await
}

/// Waits until the order's only email is marked sent, then checks that exactly one mail reached
/// its customer in maildev: once the row is sent the mailer never touches it again, so one
/// stays one.
/// The first `count` events on the notifications topic (what the service told it sent or set
/// aside), waiting until there are that many.
async fn notification_events(env: &TestEnv, count: usize) -> anyhow::Result<Vec<SagaEvent>> {
    let records = env
        .reader(&env.kafka.topic(Topic::Notifications))?
        .read_until(Duration::from_secs(30), |records| records.len() >= count)
        .await?;
    records
        .into_iter()
        .map(|record| record.event.map_err(|error| anyhow::anyhow!(error)))
        .collect()
}

async fn the_one_email(service: &RunningService, order: &OrderCreated) -> anyhow::Result<Value> {
    let row = the_email_once(service, order.envelope.order_id, "sent").await?;
    assert_eq!(row["attempts"].as_i64().map(|a| a >= 1), Some(true), "{row}");
    let recipient = order.customer_email.as_str();
    eventually("the mail in maildev", WAIT, || async {
        (!maildev_mails_to(recipient).await.ok()?.is_empty()).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = maildev_mails_to(recipient).await?;
    assert_eq!(
        mails.len(),
        1,
        "expected exactly one mail to {recipient}, got {mails:#?}"
    );
    Ok(mails.into_iter().next().unwrap_or_default())
}

/// The order id as subjects show it: its first 8 characters.
fn short_id(order: &OrderCreated) -> String {
    order.envelope.order_id.to_string()[..8].to_owned()
}

#[tokio::test]
async fn a_confirmed_order_gets_exactly_one_confirmation_email_with_the_deterministic_message_id() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let service = start(&env, maildev_smtp()).await?;
    let order = order_created();
    let order_id = order.envelope.order_id;
    env.produce(&confirmed(&order)).await?;

    let mail = the_one_email(&service, &order).await?;
    let expected_message_id = format!("<{order_id}.confirmed@saga-platform.local>");
    assert_eq!(mail["headers"]["message-id"], expected_message_id.as_str(), "{mail:#}");
    assert_eq!(
        mail["messageId"],
        format!("{order_id}.confirmed@saga-platform.local"),
        "{mail:#}"
    );
    assert_eq!(mail["subject"], format!("Order {} confirmed", short_id(&order)));
    let text = mail["text"].as_str().unwrap_or_default();
    assert!(text.contains(&order_id.to_string()), "{text}");
    assert!(text.contains("25.00 EUR"), "{text}");

    let (status, body) = notifications(&service, order_id).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body[0]["outcome"], "confirmed");
    assert_eq!(body[0]["recipient"], order.customer_email.as_str());
    assert_eq!(body[0]["message_id"], expected_message_id.as_str());
    assert_eq!(body[0]["attempts"], 1);

    // What was sent is an event of its own, so "exactly one email" survives a rebuild.
    let told = notification_events(&env, 1).await?;
    let SagaEvent::NotificationSent(sent) = &told[0] else {
        panic!("expected notification.sent, got {told:?}");
    };
    assert_eq!(sent.envelope.order_id, order_id);
    assert_eq!(sent.order_outcome, OrderOutcome::Confirmed);
    assert_eq!(sent.message_id, expected_message_id);
    assert_eq!(
        (sent.recipient.as_str(), sent.attempts),
        (order.customer_email.as_str(), 1)
    );
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_failed_order_gets_exactly_one_failure_email_naming_the_reason() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env, maildev_smtp()).await?;
    let order = order_created();
    env.produce(&SagaEvent::OrderFailed(order_failed(
        &order,
        FailureReason::PaymentDeclined,
    )))
    .await?;

    let mail = the_one_email(&service, &order).await?;
    assert_eq!(mail["subject"], format!("Order {} failed", short_id(&order)));
    let text = mail["text"].as_str().unwrap_or_default();
    assert!(text.contains("your payment was declined"), "{text}");
    assert!(text.contains("25.00 EUR"), "{text}");
    assert_eq!(
        mail["headers"]["message-id"],
        format!("<{}.failed@saga-platform.local>", order.envelope.order_id),
        "{mail:#}"
    );
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_same_order_confirmed_delivered_three_times_sends_one_email() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let order = order_created();
    let event = confirmed(&order);
    for _ in 0..3 {
        env.produce(&event).await?;
    }
    let service = start(&env, maildev_smtp()).await?;

    // All three deliveries were handled (their offsets are stored only after the handler
    // committed), and still there is one email.
    env.wait_until_consumed(
        &env.group("notification-service"),
        &env.kafka.topic(Topic::Orders),
        WAIT,
    )
    .await?;
    the_one_email(&service, &order).await?;
    let (_, body) = notifications(&service, order.envelope.order_id).await?;
    assert_eq!(body.as_array().map(Vec::len), Some(1), "{body:#}");
    assert_eq!(body[0]["attempts"], 1, "{body:#}");
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_smtp_outage_does_not_lose_the_email() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let order = order_created();
    // Bound once, then released: nothing listens there.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let service = start(&env, smtp_on_localhost(closed_port)).await?;
    env.produce(&confirmed(&order)).await?;

    let pending = eventually("a failed attempt recorded", WAIT, || async {
        let (_, body) = notifications(&service, order.envelope.order_id).await.ok()?;
        let row = body.as_array()?.first()?.clone();
        (row["status"] == "pending" && row["attempts"].as_i64()? > 0).then_some(row)
    })
    .await?;
    assert!(
        pending["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{pending:#}"
    );
    service.stop().await;
    assert!(
        maildev_mails_to(&order.customer_email).await?.is_empty(),
        "nothing can have been sent yet"
    );

    // Same database, SMTP reachable again: the pending email goes out, once.
    let service = start(&env, maildev_smtp()).await?;
    let mail = the_one_email(&service, &order).await?;
    assert_eq!(mail["subject"], format!("Order {} confirmed", short_id(&order)));
    let (_, body) = notifications(&service, order.envelope.order_id).await?;
    assert!(
        body[0]["attempts"].as_i64() > pending["attempts"].as_i64(),
        "{body:#} after {pending:#}"
    );
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_recipient_the_smtp_server_rejects_for_good_is_set_aside_and_later_emails_still_go() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let rejected = order_created();
    let accepted = order_created();
    let smtp = RejectingSmtpServer::start(&[rejected.customer_email.as_str()]).await?;
    let service = start(&env, smtp_on_localhost(smtp.port)).await?;
    let admin = format!("http://{}/admin/notifications/failed", service.local_addr);

    env.produce(&confirmed(&rejected)).await?;
    let failed = the_email_once(&service, rejected.envelope.order_id, "failed").await?;
    assert_eq!(failed["attempts"], 1, "{failed:#}");
    assert!(
        failed["last_error"].as_str().is_some_and(|e| e.contains("550")),
        "{failed:#}"
    );

    // The next email goes out while the rejected one stays set aside, tried once.
    env.produce(&confirmed(&accepted)).await?;
    the_email_once(&service, accepted.envelope.order_id, "sent").await?;
    assert_eq!(smtp.delivered_to(), vec![accepted.customer_email.clone()]);
    let still_failed = the_email_once(&service, rejected.envelope.order_id, "failed").await?;
    assert_eq!(still_failed["attempts"], 1, "{still_failed:#}");

    // Operators find it, and once the cause is fixed, redrive it: it is sent then.
    let listed: Vec<Value> = saga_tests::get(&admin).await?.error_for_status()?.json().await?;
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["message_id"], failed["message_id"]);
    smtp.accept_everyone();
    let redriven: Value = saga_tests::http()
        .post(format!("{admin}/redrive"))
        .json(&json!({ "order_ids": [rejected.envelope.order_id] }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(redriven["redriven"], json!([failed["message_id"]]), "{redriven:#}");
    let sent = the_email_once(&service, rejected.envelope.order_id, "sent").await?;
    assert_eq!(sent["attempts"], 2, "{sent:#}");
    // Each step is an event: set aside, the other email sent, then this one sent on attempt 2.
    let told = notification_events(&env, 3).await?;
    let steps: Vec<(String, OrderId, i32)> = told
        .iter()
        .map(|event| match event {
            SagaEvent::NotificationSent(e) => ("sent".to_string(), e.envelope.order_id, e.attempts),
            SagaEvent::NotificationFailed(e) => {
                let refused = if e.error.contains("550") {
                    "refused with 550"
                } else {
                    "other error"
                };
                (format!("failed: {refused}"), e.envelope.order_id, e.attempts)
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let (rejected_id, accepted_id) = (rejected.envelope.order_id, accepted.envelope.order_id);
    assert!(
        steps.contains(&("failed: refused with 550".to_string(), rejected_id, 1)),
        "{steps:?}"
    );
    assert!(steps.contains(&("sent".to_string(), accepted_id, 1)), "{steps:?}");
    assert!(steps.contains(&("sent".to_string(), rejected_id, 2)), "{steps:?}");
    assert_eq!(
        smtp.delivered_to(),
        vec![accepted.customer_email.clone(), rejected.customer_email.clone()]
    );
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_poison_record_and_an_undeliverable_outcome_are_dead_lettered_and_the_next_event_is_still_emailed(
) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env, maildev_smtp()).await?;
    let order = order_created();
    let key = order.envelope.order_id.to_string();
    let mut undeliverable = order_confirmed(&order);
    undeliverable.customer_email = "not an address".into();
    // Same key, so the same partition: the good event comes right after the two bad ones.
    env.produce_raw(Topic::Orders, &key, b"this is not an Avro event")
        .await?;
    env.produce(&SagaEvent::OrderConfirmed(undeliverable)).await?;
    env.produce(&confirmed(&order)).await?;

    let reader = env.reader(&format!("{}notification-service.dead-letter", env.prefix))?;
    let records = reader.read_until(WAIT, |records| records.len() >= 2).await?;
    assert_eq!(records.len(), 2);
    let mut errors = Vec::new();
    for record in &records {
        assert_eq!(record.key.as_deref(), Some(key.as_str()));
        let header = |name: &str| {
            record
                .headers
                .iter()
                .find(|(header, _)| header == name)
                .map(|(_, value)| value.clone())
        };
        assert_eq!(header(DLQ_ORIGIN_TOPIC), Some(env.kafka.topic(Topic::Orders)));
        assert!(header(DLQ_ORIGIN_PARTITION).is_some_and(|p| p.parse::<i32>().is_ok_and(|p| (0..6).contains(&p))));
        assert!(header(DLQ_ORIGIN_OFFSET).is_some_and(|o| o.parse::<i64>().is_ok()));
        assert_eq!(header(DLQ_CONSUMER_GROUP), Some(env.group("notification-service")));
        errors.push(header(DLQ_ERROR).unwrap_or_default());
    }
    assert!(
        errors.iter().any(|e| e.contains("is not an email address")),
        "{errors:#?}"
    );
    assert!(errors.iter().all(|e| !e.is_empty()), "{errors:#?}");

    the_one_email(&service, &order).await?;
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_notifications_endpoint_rejects_bad_ids_and_reports_unknown_orders_as_not_found() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = start(&env, maildev_smtp()).await?;
    let (status, _) = notifications(&service, "not-a-uuid").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = notifications(&service, OrderId::new()).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_claimed_email_is_not_claimed_again_until_its_claim_ends_or_expires() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    // Starting the service migrates its database; stopped, its own mailers stay out of the way.
    start(&env, maildev_smtp()).await?.stop().await;
    let database = sqlx::PgPool::connect(&env.database_url("notification")).await?;
    let order_id = OrderId::new();
    let mut connection = database.acquire().await?;
    store::record_intent(
        &mut connection,
        &NewNotification {
            order_id,
            outcome: Outcome::Confirmed,
            recipient: format!("{order_id}@example.com"),
            subject: "Your order is confirmed".into(),
            body: "Thank you.".into(),
            message_id: format!("<{order_id}.confirmed@test>"),
            source_event_id: EventId::new(),
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
        .bind(order_id.uuid())
        .execute(&database)
        .await?;
    let reclaimed = store::claim_due(&other_pool, Duration::from_secs(60)).await?;
    assert_eq!(reclaimed.map(|n| n.order_id), Some(order_id));

    // Recording the email as sent ends the claim for good.
    let mut connection = other_pool.acquire().await?;
    store::mark_sent(&mut connection, order_id, Outcome::Confirmed.as_str()).await?;
    drop(connection);
    let (status, claimed): (String, bool) =
        sqlx::query_as("SELECT status, claimed_until IS NOT NULL FROM notifications WHERE order_id = $1")
            .bind(order_id.uuid())
            .fetch_one(&database)
            .await?;
    assert_eq!((status.as_str(), claimed), ("sent", false));
    assert!(store::claim_due(&database, Duration::from_secs(60)).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn emails_go_out_over_reused_smtp_connections() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let smtp = RejectingSmtpServer::start(&[]).await?;
    let service = start(&env, smtp_on_localhost(smtp.port)).await?;
    let orders: Vec<OrderCreated> = (0..12).map(|_| order_created()).collect();
    for order in &orders {
        env.produce(&confirmed(order)).await?;
    }
    for order in &orders {
        the_email_once(&service, order.envelope.order_id, "sent").await?;
    }
    assert_eq!(smtp.delivered_to().len(), orders.len());
    // Four mailers (MAILER_CONCURRENCY's default) share the pool: at most one connection each.
    assert!(
        smtp.connections() <= 4,
        "{} connections for {} emails",
        smtp.connections(),
        orders.len()
    );
    service.stop().await;
    Ok(())
}
