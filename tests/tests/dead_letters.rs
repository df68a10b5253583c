//! `sagactl dead-letters` against a running service: a poison record is listed with its origin
//! and reason, and redriving it re-produces the same bytes to the topic it came from.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use saga_contracts::Topic;
use saga_tests::TestEnv;
use tokio_util::sync::CancellationToken;

fn sagactl(env: &TestEnv, args: &[&str]) -> anyhow::Result<String> {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let binary = target.join("debug/sagactl");
    anyhow::ensure!(
        binary.exists(),
        "{} missing: build the platform first (cargo build --bins)",
        binary.display()
    );
    let output = Command::new(binary)
        .args(args)
        .env("KAFKA_BOOTSTRAP_SERVERS", &env.kafka.bootstrap_servers)
        .env("TOPIC_PREFIX", &env.prefix)
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(
        output.status.success(),
        "sagactl {args:?} failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(text)
}

#[tokio::test]
async fn a_dead_letter_is_listed_and_redriven_to_its_origin_topic() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let config = payment_service::Config {
        service: env.service_config("payment"),
        gateway: payment_service::gateway::GatewayConfig::default(),
    };
    let service = payment_service::start(&config, CancellationToken::new())
        .await?
        .ok_or_else(|| anyhow::anyhow!("payment service did not start"))?;
    let poison = b"\xFFnot an event".to_vec();
    env.produce_raw(Topic::Orders, "poison-key", &poison).await?;
    let dead_letters = env.kafka.dead_letter_topic("payment-service");
    env.reader(&dead_letters)?
        .read_until(Duration::from_secs(60), |records| !records.is_empty())
        .await?;

    let listing = sagactl(&env, &["dead-letters", "list", "--service", "payment-service"])?;
    assert!(listing.contains("1 dead letter(s)"), "{listing}");
    assert!(
        listing.contains(&format!("from {}[", env.kafka.topic(Topic::Orders))),
        "{listing}"
    );

    let redrive = sagactl(&env, &["dead-letters", "redrive", "--service", "payment-service"])?;
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
