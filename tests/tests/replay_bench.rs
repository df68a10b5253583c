//! The replay benchmark's synthetic history is one the live platform could have recorded:
//! `sagactl replay-bench` writes it for a few hundred orders and replays every service from it
//! with no finding. A generator or a service drifting from the saga fails here.

use anyhow::Context;
use saga_tests::TestEnv;

#[tokio::test]
async fn every_service_replays_the_benchmarks_synthetic_history_without_a_finding() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let server =
        std::env::var("POSTGRES_SERVER_URL").unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432".into());
    // Fails (exits non-zero) on any finding.
    let output = env.sagactl(&["replay-bench", "--orders", "300", "--database-url-base", &server])?;
    for service in ["order", "payment", "inventory", "notification"] {
        let row = output
            .lines()
            .find(|line| line.starts_with(&format!("{service} ")))
            .with_context(|| format!("no row for {service} in:\n{output}"))?;
        let columns: Vec<&str> = row.split_whitespace().collect();
        let events_read: u64 = columns[2].parse().with_context(|| format!("events read in {row:?}"))?;
        assert!(events_read >= 900, "{service} read {events_read} events:\n{output}");
        assert_eq!(columns.last(), Some(&"none"), "{output}");
    }
    assert!(output.contains("dropped the replay databases"), "{output}");
    Ok(())
}
