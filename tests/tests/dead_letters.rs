//! What the error policy sets aside, as an operator handles it with sagactl: a poison record
//! in a dead-letter topic is listed with its origin and reason, and redriving it re-produces the
//! same bytes to the topic it came from; an outbox row parked by the relay is listed with its
//! reason and redriven back into the outbox.

use std::future::IntoFuture;
use std::time::Duration;

use saga_contracts::Topic;
use saga_tests::{services, TestEnv};

#[tokio::test]
async fn a_dead_letter_is_listed_and_redriven_to_its_origin_topic() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let service = services::payment::start(&env).await?;
    let poison = b"\xFFnot an event".to_vec();
    env.produce_raw(Topic::Orders, "poison-key", &poison).await?;
    let dead_letters = env.kafka.dead_letter_topic("payment-service");
    env.reader(&dead_letters)?
        .read_until(Duration::from_secs(60), |records| !records.is_empty())
        .await?;

    let listing = env.sagactl(&["dead-letters", "list", "--service", "payment-service"])?;
    assert!(listing.contains("1 dead letter(s)"), "{listing}");
    assert!(
        listing.contains(&format!("from {}[", env.kafka.topic(Topic::Orders))),
        "{listing}"
    );

    let redrive = env.sagactl(&["dead-letters", "redrive", "--service", "payment-service"])?;
    assert!(redrive.contains("1 dead letter(s) redriven"), "{redrive}");
    let orders = env
        .reader(&env.kafka.topic(Topic::Orders))?
        .read_raw_to_end(Duration::from_secs(30))
        .await?;
    let copies: Vec<_> = orders
        .iter()
        .filter(|r| r.payload.as_deref() == Some(&poison[..]))
        .collect();
    assert_eq!(copies.len(), 2, "the original and the redriven copy");
    assert!(copies.iter().all(|r| r.key.as_deref() == Some(&b"poison-key"[..])));
    assert!(
        copies[1].headers.iter().all(|(key, _)| !key.starts_with("dlq.")),
        "dead-letter headers are not carried back"
    );
    // Still poison: the service dead-letters the redriven copy too, with its new origin.
    let again = env
        .reader(&dead_letters)?
        .read_until(Duration::from_secs(60), |records| records.len() >= 2)
        .await?;
    let origin_offsets: Vec<String> = again
        .iter()
        .filter_map(|r| {
            r.headers
                .iter()
                .find(|(k, _)| k == "dlq.origin.offset")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert_eq!(origin_offsets.len(), 2);
    assert_ne!(origin_offsets[0], origin_offsets[1]);
    service.stop().await;
    Ok(())
}

// Multi-threaded: sagactl runs as a blocking child process while this test serves its requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_outbox_rows_are_listed_and_redriven_with_sagactl() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let migrator = saga_common::database::migrator(&sqlx::migrate::Migrator::DEFAULT);
    let database = saga_common::database::connect_and_migrate(&env.database_url("parked"), &migrator, 2).await?;
    let parked_id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO outbox_parked (event_id, position, event_type, partition_key, payload, traceparent, created_at, reason) \
         VALUES ($1, 7, 'order.created', 'order-7', '{}', 'tp', now(), 'permanent error: simulated')",
    )
    .bind(parked_id)
    .execute(&database)
    .await?;
    // The admin routes every service serves, over this database, for the test's keys (sagactl
    // sends the admin key).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let authenticator = std::sync::Arc::new(saga_common::auth::Authenticator::from_config(
        &saga_tests::credentials().service_auth(),
    )?);
    let server =
        tokio::spawn(axum::serve(listener, saga_common::admin::router(database.clone(), authenticator)).into_future());
    let order_url = format!("http://{address}");

    let listing = env.sagactl(&["outbox", "parked", "--service", "order", "--order-url", &order_url])?;
    assert!(listing.contains(&parked_id.to_string()), "{listing}");
    assert!(listing.contains("reason: permanent error: simulated"), "{listing}");
    assert!(listing.contains("1 parked outbox row(s) in order"), "{listing}");

    let unknown = uuid::Uuid::new_v4().to_string();
    let refused = env.sagactl(&[
        "outbox",
        "redrive",
        "--service",
        "order",
        "--order-url",
        &order_url,
        "--event-id",
        &unknown,
    ]);
    assert!(refused.is_err(), "redriving an event that is not parked fails");

    let redrive = env.sagactl(&["outbox", "redrive", "--service", "order", "--order-url", &order_url])?;
    assert!(redrive.contains(&format!("redriven {parked_id}")), "{redrive}");
    assert!(saga_common::outbox::list_parked(&database).await?.is_empty());
    let back: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT event_id FROM outbox")
        .fetch_all(&database)
        .await?;
    assert_eq!(back, vec![parked_id], "the row is back in the outbox");
    server.abort();
    Ok(())
}
