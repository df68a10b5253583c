//! A CI-sized run of the failure-injection harness on a three-node Apache Kafka cluster of its
//! own: a few hundred orders with every fault kind (broker faults included) injected at least
//! once; every invariant of the saga must hold afterwards, no consumer group may stall, and
//! every service rebuilt from the run's topics must verify equal to its live database
//! (`--verify-replay`).

use saga_tests::harness::faults::FaultKind;
use saga_tests::harness::run::{run, HarnessConfig};

#[tokio::test(flavor = "multi_thread")]
async fn the_saga_keeps_every_invariant_under_every_kind_of_fault() -> anyhow::Result<()> {
    let config = HarnessConfig {
        seed: std::env::var("HARNESS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20261121),
        orders: 300,
        rate: 10.0,
        kafka_nodes: 3,
        verify_replay: true,
        ..HarnessConfig::default()
    };
    let (report, run_dir) = run(&config).await?;
    println!("{}", report.render_text());
    for kind in FaultKind::ALL {
        assert!(
            report.faults.get(kind.as_str()).copied().unwrap_or(0) >= 1,
            "{} was not injected; see {}",
            kind.as_str(),
            run_dir.display()
        );
    }
    report.assert_passed_with_replay_verified(&run_dir);
    Ok(())
}
