//! Replay end to end: every branch of the saga runs on the four live services; then each
//! service is rebuilt from the topics into a new database with `sagactl replay`, and
//! `sagactl verify` finds the rebuilt database equal to the live one. The replays publish
//! nothing and send no email; a rebuilt row changed by hand makes verify fail, naming it.

use std::time::Duration;

use saga_contracts::Topic;
use saga_tests::platform::{exactly_mails, mail_to, unique_email, unique_sku, Platform};
use saga_tests::TestEnv;

const SERVICES: [&str; 4] = ["order", "payment", "inventory", "notification"];

/// Records on every topic of the test (saga topics and dead-letter topics), summed.
async fn records_on_every_topic(env: &TestEnv) -> anyhow::Result<i64> {
    let mut topics: Vec<String> = Topic::ALL.iter().map(|topic| env.kafka.topic(*topic)).collect();
    topics.extend(
        SERVICES
            .iter()
            .map(|service| env.kafka.dead_letter_topic(&format!("{service}-service"))),
    );
    let metadata = saga_common::kafka::cluster_metadata(&env.kafka, Duration::from_secs(10)).await?;
    let probe = saga_common::kafka::consumer(&env.kafka, &env.group("watermarks"))?;
    let partitions: Vec<(String, i32)> = metadata
        .partitions
        .into_iter()
        .filter(|partition| topics.contains(&partition.topic))
        .map(|partition| (partition.topic, partition.partition))
        .collect();
    tokio::task::spawn_blocking(move || {
        partitions.iter().try_fold(0, |sum, (topic, partition)| {
            use rdkafka::consumer::Consumer;
            let (_, high) = probe.fetch_watermarks(topic, *partition, Duration::from_secs(10))?;
            anyhow::Ok(sum + high)
        })
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_rebuilt_from_the_topics_verifies_equal_and_the_replay_has_no_side_effects() -> anyhow::Result<()>
{
    let platform = Platform::start(30.0).await?;
    let env = &platform.env;
    let (sku, scarce) = (unique_sku(), unique_sku());
    platform.restock(&sku, 5).await?;
    platform.restock(&scarce, 1).await?;
    let emails: Vec<String> = (0..4).map(|_| unique_email()).collect();
    // Confirmed; declined by the gateway; out of stock (its capture refunded); confirmed with
    // the last unit of a scarce SKU.
    let placed = [
        platform.place(&emails[0], "tok_ok", &[(&sku, 2)]).await?,
        platform.place(&emails[1], "tok_decline_card", &[(&sku, 1)]).await?,
        platform.place(&emails[2], "tok_ok", &[(&unique_sku(), 1)]).await?,
        platform.place(&emails[3], "tok_ok", &[(&scarce, 1)]).await?,
    ];
    for order_id in &placed {
        platform.terminal_order(order_id).await?;
    }
    platform.payment_when(&placed[2], "refunded").await?;
    for email in &emails {
        exactly_mails(email, 1).await?;
    }
    for service in SERVICES {
        env.outbox_drained(service).await?;
    }
    let records_before = records_on_every_topic(env).await?;

    for service in SERVICES {
        let rebuilt = env.database_url(&format!("rebuilt_{service}"));
        let replayed = env.sagactl(&["replay", "--service", service, "--into", &rebuilt])?;
        assert!(replayed.contains("events read"), "{replayed}");
        let verified = env.sagactl(&[
            "verify",
            "--service",
            service,
            "--against",
            &rebuilt,
            "--live",
            &env.database_url(service),
        ])?;
        assert!(verified.contains(": equal"), "{service}: {verified}");
    }

    // Nothing was published and no email sent by the replays.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(records_on_every_topic(env).await?, records_before);
    for email in &emails {
        assert_eq!(mail_to(email).await?.len(), 1, "{email}");
    }

    // A rebuilt row changed by hand: verify fails and names the table, the row and the column.
    let rebuilt = sqlx::PgPool::connect(&env.database_url("rebuilt_order")).await?;
    sqlx::query("UPDATE orders SET total_minor = total_minor + 1 WHERE order_id = $1::uuid")
        .bind(&placed[0])
        .execute(&rebuilt)
        .await?;
    let refused = env.sagactl(&[
        "verify",
        "--service",
        "order",
        "--against",
        &env.database_url("rebuilt_order"),
        "--live",
        &env.database_url("order"),
    ]);
    let error = refused.expect_err("verify must fail on a changed row").to_string();
    assert!(error.contains("orders"), "{error}");
    assert!(error.contains(&placed[0]), "{error}");
    assert!(error.contains("total_minor live 2500, rebuilt 2501"), "{error}");
    assert!(error.contains("1 difference(s)"), "{error}");

    // A replay into a database that already holds one is refused, not mixed in.
    let again = env.sagactl(&[
        "replay",
        "--service",
        "order",
        "--into",
        &env.database_url("rebuilt_order"),
    ]);
    assert!(again.is_err_and(|e| e.to_string().contains("finished replay")));
    platform.stop().await;
    Ok(())
}
