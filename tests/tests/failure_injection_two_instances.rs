//! The CI-sized failure-injection run with two instances of every service (sharing each
//! service's database and consumer group), a second instance killed and another paused: every
//! invariant holds, no consumer group stalls, and every service rebuilt from the topics
//! verifies equal to its live database. Its own test binary, so it never runs beside the
//! one-instance run (`failure_injection.rs`) on the same cores.

use saga_tests::harness::run::{run, HarnessConfig};

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_of_every_service_keep_every_invariant_under_faults() -> anyhow::Result<()> {
    let config = HarnessConfig {
        // This seed kills order-service-2 and pauses notification-service-2 (20 s of load).
        seed: 20261125,
        orders: 200,
        rate: 10.0,
        kafka_nodes: 3,
        verify_replay: true,
        instances: 2,
        ..HarnessConfig::default()
    };
    let (report, run_dir) = run(&config).await?;
    println!("{}", report.render_text());
    let faulted_second_instances = report
        .notes
        .iter()
        .filter(|note| note.contains("kill_service") || note.contains("pause_service"))
        .filter(|note| note.contains("-service-2"))
        .count();
    assert!(
        faulted_second_instances >= 1,
        "a second instance was killed or paused: {:?}",
        report.notes
    );
    report.assert_passed_with_replay_verified(&run_dir);
    Ok(())
}
