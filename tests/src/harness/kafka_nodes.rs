//! The harness's own Apache Kafka cluster: KRaft nodes started through `deploy/kafka/node.sh` in
//! the run's folder, on a free port range, each logging to its own file; readiness as the
//! cluster's metadata sees it; and the metadata the broker faults aim with (partition leaders,
//! in-sync replicas).

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;
use saga_common::config::KafkaConfig;

use super::isolation::NodeCgroup;
use super::processes::ManagedProcess;

/// Whether the local stack or its tools use `port` (Kafka 9092-9097, the registry 8081, the
/// services 8080-8084, the SMTP catcher 1025/1080); a harness cluster never takes them.
fn reserved_by_local_stack(port: u16) -> bool {
    matches!(port, 1025 | 1080 | 8080..=8084 | 9092..=9097)
}
/// Lowest base port the harness picks from.
const LOWEST_BASE_PORT: u16 = 20_000;

/// Replicas of every topic on a cluster of `nodes` brokers, as `deploy/kafka/node.sh` sets them:
/// min(n, 3).
pub fn replication_factor(nodes: usize) -> i32 {
    nodes.clamp(1, 3) as i32
}

/// One Kafka node (combined broker and controller) of the harness's cluster.
#[derive(Debug)]
pub struct KafkaNode {
    /// Its node id (1-based), as the cluster's metadata names it.
    pub id: i32,
    /// Port clients and the other brokers reach it on.
    pub client_port: u16,
    /// Port of its controller (KRaft quorum).
    pub controller_port: u16,
    /// The node's JVM (`node.sh` replaces itself with it, so signals reach the broker itself).
    pub process: ManagedProcess,
    /// The cgroup its process runs in, if the machine has cgroup v2 (lets the isolation fault
    /// cut off the node's own outgoing connections too).
    pub cgroup: Option<NodeCgroup>,
}

impl KafkaNode {
    /// Describes node `id` of a cluster of `count` nodes whose storage lives in `cluster_dir`;
    /// its log is `<run_dir>/kafka-<id>.log`. Starts nothing.
    pub fn new(
        node_script: &Path,
        cluster_dir: &Path,
        run_dir: &Path,
        id: i32,
        count: usize,
        base_port: u16,
        cgroup: Option<NodeCgroup>,
    ) -> Self {
        let client_port = base_port + 2 * (id as u16 - 1);
        let run_args = vec![
            node_script.display().to_string(),
            "run".to_string(),
            cluster_dir.display().to_string(),
            id.to_string(),
            count.to_string(),
            base_port.to_string(),
        ];
        // With a cgroup, a shell joins it and then becomes node.sh, which becomes the JVM: the
        // process id stays the broker's, and every socket the broker opens belongs to the cgroup.
        let (program, args) = match &cgroup {
            Some(cgroup) => {
                let mut args = vec![
                    "-c".to_string(),
                    r#"echo $$ > "$0" && exec "$@""#.to_string(),
                    cgroup.procs_file().display().to_string(),
                ];
                args.extend(run_args);
                (PathBuf::from("sh"), args)
            }
            None => (PathBuf::from("bash"), run_args),
        };
        Self {
            id,
            client_port,
            controller_port: client_port + 1,
            process: ManagedProcess::new(
                &format!("kafka-{id}"),
                program,
                args,
                BTreeMap::new(),
                run_dir.to_path_buf(),
            ),
            cgroup,
        }
    }

    /// `127.0.0.1:<client port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Its name in reports and logs: `kafka-<id>`.
    pub fn name(&self) -> &str {
        &self.process.name
    }
}

/// The comma-separated bootstrap list of `nodes`.
pub fn bootstrap_servers(nodes: &[KafkaNode]) -> String {
    nodes.iter().map(KafkaNode::address).collect::<Vec<_>>().join(",")
}

fn ephemeral_port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(str::parse::<u16>);
            Some((bounds.next()?.ok()?, bounds.next()?.ok()?))
        })
        .unwrap_or((32_768, 60_999))
}

fn is_free(port: u16) -> bool {
    !reserved_by_local_stack(port) && TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A base port for `nodes` nodes: a random even port from 20000 up to the start of the
/// kernel's ephemeral range (so no client connection can hold a node's port when it restarts),
/// with all 2n ports free and none of the local stack's.
pub fn pick_base_port(nodes: usize) -> anyhow::Result<u16> {
    let span = 2 * nodes as u16;
    let (ephemeral_start, ephemeral_end) = ephemeral_port_range();
    let (low, high) = if ephemeral_start > LOWEST_BASE_PORT + span {
        (LOWEST_BASE_PORT, ephemeral_start - span)
    } else {
        // An unusual ephemeral range: take the ports above it instead.
        (ephemeral_end.saturating_add(1).max(LOWEST_BASE_PORT), u16::MAX - span)
    };
    let mut rng = rand::thread_rng();
    for _ in 0..200 {
        let base = rng.gen_range(low..high) & !1;
        if (base..base + span).all(is_free) {
            return Ok(base);
        }
    }
    anyhow::bail!("found no {span} free consecutive ports between {low} and {high} for the Kafka nodes")
}

/// Broker ids the cluster's metadata lists now (registered and not fenced).
pub async fn listed_brokers(kafka: &KafkaConfig, timeout: Duration) -> anyhow::Result<BTreeSet<i32>> {
    Ok(saga_common::kafka::cluster_brokers(kafka, timeout)
        .await?
        .into_iter()
        .map(|broker| broker.id)
        .collect())
}

/// Waits until the cluster's metadata lists every broker of `expected`. The error names the
/// nodes that did not come up.
pub async fn wait_for_brokers(kafka: &KafkaConfig, expected: &[i32], timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_seen = BTreeSet::new();
    let mut last_error = None;
    loop {
        match listed_brokers(kafka, Duration::from_secs(5)).await {
            Ok(listed) if expected.iter().all(|id| listed.contains(id)) => return Ok(()),
            Ok(listed) => last_seen = listed,
            Err(error) => last_error = Some(format!("{error:#}")),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(nodes_not_up(expected, &last_seen, timeout, last_error));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The error for nodes of `expected` that `listed` lacks after `timeout`.
pub fn nodes_not_up(
    expected: &[i32],
    listed: &BTreeSet<i32>,
    timeout: Duration,
    last_error: Option<String>,
) -> anyhow::Error {
    let missing: Vec<String> = expected
        .iter()
        .filter(|id| !listed.contains(id))
        .map(|id| format!("kafka-{id}"))
        .collect();
    anyhow::anyhow!(
        "Kafka node(s) {} did not come up within {timeout:?} (the metadata listed {listed:?}{}); see their logs in the run's folder",
        missing.join(", "),
        last_error.map(|e| format!(", last error: {e}")).unwrap_or_default()
    )
}

/// One partition as the cluster's metadata describes it.
pub use saga_common::kafka::PartitionInfo as PartitionState;

/// Every partition of every topic, as the cluster's metadata describes it now.
pub async fn partitions(kafka: &KafkaConfig, timeout: Duration) -> anyhow::Result<Vec<PartitionState>> {
    Ok(saga_common::kafka::cluster_metadata(kafka, timeout).await?.partitions)
}

/// The broker leading the most partitions of `topics`, with that count; ties go to the lowest
/// id. `None` if no partition of them has a leader.
pub fn busiest_leader(partitions: &[PartitionState], topics: &[String]) -> Option<(i32, usize)> {
    let mut led: BTreeMap<i32, usize> = BTreeMap::new();
    for partition in partitions {
        if partition.leader >= 0 && topics.contains(&partition.topic) {
            *led.entry(partition.leader).or_default() += 1;
        }
    }
    led.into_iter()
        .max_by(|(a_id, a_count), (b_id, b_count)| a_count.cmp(b_count).then(b_id.cmp(a_id)))
}

/// Waits until no partition of the cluster is under-replicated; returns the ones still under
/// replicated when `timeout` passes (empty on success).
pub async fn wait_fully_replicated(kafka: &KafkaConfig, timeout: Duration) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let lagging: Vec<String> = match partitions(kafka, Duration::from_secs(5)).await {
            Ok(partitions) => partitions
                .iter()
                .filter(|p| p.under_replicated())
                .map(|p| format!("{}[{}] isr {:?} of {:?}", p.topic, p.partition, p.isr, p.replicas))
                .collect(),
            Err(error) => vec![format!("metadata unavailable: {error:#}")],
        };
        if lagging.is_empty() || tokio::time::Instant::now() >= deadline {
            return lagging;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(topic: &str, partition: i32, leader: i32) -> PartitionState {
        PartitionState {
            topic: topic.into(),
            partition,
            leader,
            replicas: vec![1, 2, 3],
            isr: vec![1, 2, 3],
        }
    }

    #[test]
    fn the_busiest_leader_leads_the_most_partitions_of_the_given_topics() {
        let partitions = vec![
            partition("h1.orders", 0, 1),
            partition("h1.orders", 1, 2),
            partition("h1.payments", 0, 2),
            partition("__consumer_offsets", 0, 3),
            partition("__consumer_offsets", 1, 3),
            partition("__consumer_offsets", 2, 3),
        ];
        let topics = vec!["h1.orders".to_string(), "h1.payments".to_string()];
        assert_eq!(busiest_leader(&partitions, &topics), Some((2, 2)));
    }

    #[test]
    fn a_tie_goes_to_the_lowest_id_and_leaderless_partitions_do_not_count() {
        let partitions = vec![
            partition("t", 0, 3),
            partition("t", 1, 1),
            partition("t", 2, -1),
            partition("t", 3, -1),
        ];
        assert_eq!(busiest_leader(&partitions, &["t".to_string()]), Some((1, 1)));
        assert_eq!(busiest_leader(&partitions, &["other".to_string()]), None);
    }

    #[test]
    fn a_partition_with_fewer_in_sync_replicas_than_replicas_is_under_replicated() {
        let mut state = partition("t", 0, 1);
        assert!(!state.under_replicated());
        state.isr = vec![1, 2];
        assert!(state.under_replicated());
    }

    #[test]
    fn the_base_port_leaves_every_node_port_free_and_avoids_the_local_stack() {
        let base = pick_base_port(3).expect("a free range");
        assert_eq!(base % 2, 0);
        assert!(base >= LOWEST_BASE_PORT);
        for port in base..base + 6 {
            assert!(!reserved_by_local_stack(port));
        }
        assert!(reserved_by_local_stack(9097) && reserved_by_local_stack(8081));
    }

    #[test]
    fn the_start_up_error_names_the_nodes_that_did_not_come_up() {
        let listed: BTreeSet<i32> = [2].into_iter().collect();
        let error = nodes_not_up(&[1, 2, 3], &listed, Duration::from_secs(180), None).to_string();
        assert!(
            error.starts_with("Kafka node(s) kafka-1, kafka-3 did not come up within 180s"),
            "{error}"
        );
    }

    #[test]
    fn three_nodes_or_more_get_three_replicas() {
        assert_eq!(replication_factor(1), 1);
        assert_eq!(replication_factor(2), 2);
        assert_eq!(replication_factor(3), 3);
        assert_eq!(replication_factor(5), 3);
    }
}
