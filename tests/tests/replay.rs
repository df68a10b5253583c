//! Replay end to end: every branch of the saga runs on the four live services; then each
//! service is rebuilt from the topics into a new database with `sagactl replay`, and
//! `sagactl verify` finds the rebuilt database equal to the live one, also after the live one
//! moved on past the replay's end offsets. The replays publish
//! nothing and send no email; a rebuilt row changed by hand makes verify fail, naming it. An
//! interrupted replay resumes where it stopped, and the filters limit what it applies.

use std::time::Duration;

use saga_common::replay::{self, Rebuild, Rebuilding, ReplayOptions};
use saga_contracts::{FailureReason, OrderId, SagaEvent, Topic};
use saga_tests::platform::{exactly_mails, mail_to, unique_email, unique_sku, Platform};
use saga_tests::{fixtures, TestEnv};

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

    // The live system moves on: an order placed after the replays is in the live databases
    // only. Verify leaves its rows (and its SKU's stock row) out, and says so.
    let later = platform.place(&unique_email(), "tok_ok", &[(&sku, 1)]).await?;
    platform.terminal_order(&later).await?;
    for service in ["order", "inventory"] {
        let verified = env.sagactl(&[
            "verify",
            "--service",
            service,
            "--against",
            &env.database_url(&format!("rebuilt_{service}")),
            "--live",
            &env.database_url(service),
        ])?;
        assert!(verified.contains(": equal"), "{service}: {verified}");
        assert!(
            verified.contains("up to the replay's end offsets"),
            "{service}: {verified}"
        );
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

/// A rebuilder that dies (panics, as a crashed process would stop) when it meets its
/// `fatal`th event, and otherwise is the inventory service's.
struct CrashingRebuilder {
    inner: inventory_service::replay::Rebuilder,
    applied: usize,
    fatal: usize,
}

#[async_trait::async_trait]
impl Rebuild for CrashingRebuilder {
    fn rebuilding(&self) -> &'static Rebuilding {
        self.inner.rebuilding()
    }
    async fn apply(
        &mut self,
        event: &saga_common::consumer::ConsumedEvent,
    ) -> Result<Vec<SagaEvent>, saga_common::consumer::HandlerError> {
        self.applied += 1;
        assert!(self.applied < self.fatal, "simulated crash at event {}", self.applied);
        self.inner.apply(event).await
    }
    fn rebuilt_tables(&mut self) -> Vec<&mut dyn saga_common::replay::memory::RebuiltTable> {
        self.inner.rebuilt_tables()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_replay_resumes_where_it_stopped_and_filters_limit_what_it_applies() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let orders: Vec<_> = (0..6)
        .map(|_| fixtures::order_created_with(OrderId::new(), &[("REPLAY-SKU", 1)], fixtures::APPROVED_TOKEN))
        .collect();
    let events: Vec<SagaEvent> = orders.iter().map(|order| order.clone().into()).collect();
    env.produce_all(&events).await?;
    let options = ReplayOptions {
        batch_size: 2,
        ..ReplayOptions::default()
    };
    let mut crashing = CrashingRebuilder {
        inner: inventory_service::replay::rebuilder(),
        applied: 0,
        fatal: 5,
    };

    // The first run dies at the fifth event. A batch is written while the next one is applied,
    // and each write waits for the one before: the first batch's is committed by then.
    let interrupted_into = env.database_url("interrupted");
    let first = {
        let (env, into, options) = (env.clone(), interrupted_into.clone(), options.clone());
        tokio::spawn(
            async move { replay::run(&mut crashing, &env.kafka, &env.registry, &into, &options, |_| {}).await },
        )
    };
    assert!(first.await.is_err(), "the first run crashed");
    let interrupted = sqlx::PgPool::connect(&interrupted_into).await?;
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM reservations")
        .fetch_one(&interrupted)
        .await?;
    assert!(
        (1..6).contains(&kept),
        "some but not all orders applied before the crash: {kept}"
    );

    // The second run resumes: it reads only what the first did not commit.
    let mut rebuilder = inventory_service::replay::rebuilder();
    let resumed = replay::run(
        &mut rebuilder,
        &env.kafka,
        &env.registry,
        &interrupted_into,
        &options,
        |_| {},
    )
    .await?;
    assert!(resumed.resumed);
    assert_eq!(resumed.read + u64::try_from(kept)?, 6);

    // The same as a replay that was never interrupted.
    let straight_into = env.database_url("straight");
    let straight = replay::run(
        &mut rebuilder,
        &env.kafka,
        &env.registry,
        &straight_into,
        &options,
        |_| {},
    )
    .await?;
    assert!(!straight.resumed);
    let straight_db = sqlx::PgPool::connect(&straight_into).await?;
    assert_eq!(
        replay::verify(rebuilder.tables(), &straight_db, &interrupted).await?,
        vec![]
    );

    // --order-id applies that order's events only.
    let one_into = env.database_url("one_order");
    let only = ReplayOptions {
        order_id: Some(orders[2].envelope.order_id),
        ..options.clone()
    };
    let filtered = replay::run(&mut rebuilder, &env.kafka, &env.registry, &one_into, &only, |_| {}).await?;
    assert_eq!((filtered.applied, filtered.filtered), (1, 5));
    // --until before every event applies none of them.
    let until_into = env.database_url("until");
    let before_all = ReplayOptions {
        until_millis: Some(orders[0].envelope.occurred_at - 1),
        ..options
    };
    let none = replay::run(
        &mut rebuilder,
        &env.kafka,
        &env.registry,
        &until_into,
        &before_all,
        |_| {},
    )
    .await?;
    assert_eq!((none.applied, none.filtered), (0, 6));
    Ok(())
}

/// A deadline decided an order while its out-of-stock outcome was on its way, and a copy of an
/// earlier own event was published again (at least once, or by hand) with a later timestamp
/// than the decision's record behind it. Live, the order service took the outcome after its
/// decision and ignored it; the replay must too, so the copy, which it passes over, may not
/// hold the decision back behind the outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republished_copy_does_not_reorder_a_deadline_before_a_late_outcome() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let created = fixtures::order_created_with(OrderId::new(), &[("REPLAY-SCARCE", 1)], fixtures::APPROVED_TOKEN);
    let placed_at = created.envelope.occurred_at;
    let mut deadline = fixtures::order_failed(&created, FailureReason::DeadlineExceeded);
    deadline.envelope.causation_id = None;
    deadline.envelope.occurred_at = placed_at + 2_000;
    let mut out_of_stock = fixtures::inventory_reservation_failed(&created);
    out_of_stock.envelope.occurred_at = placed_at + 1_400;
    let (created, deadline, out_of_stock): (SagaEvent, SagaEvent, SagaEvent) =
        (created.into(), deadline.into(), out_of_stock.into());
    // On the orders partition: order.created, its copy published after the decision's record
    // was stamped, then the decision. The outcome's record is older than the decision's.
    env.produce_timed([
        (&created, Some(placed_at + 5)),
        (&out_of_stock, Some(placed_at + 1_500)),
        (&created, Some(placed_at + 3_000)),
        (&deadline, Some(placed_at + 2_000)),
    ])
    .await?;

    let into = env.database_url("rebuilt_order");
    let mut rebuilder = order_service::replay::Rebuilder::new(order_service::DEFAULT_SAGA_DEADLINE);
    let report = replay::run(
        &mut rebuilder,
        &env.kafka,
        &env.registry,
        &into,
        &ReplayOptions::default(),
        |_| {},
    )
    .await?;
    assert_eq!(report.findings, vec![], "the recorded decision is the re-run one");
    assert_eq!((report.applied, report.duplicates), (3, 1));
    let rebuilt = sqlx::PgPool::connect(&into).await?;
    let order_id = created.order_id().map(|id| id.to_string());
    let reason: Option<String> = sqlx::query_scalar("SELECT failure_reason FROM orders WHERE order_id = $1::uuid")
        .bind(order_id)
        .fetch_one(&rebuilt)
        .await?;
    assert_eq!(reason.as_deref(), Some("deadline_exceeded"));
    Ok(())
}
