//! One harness run from start to verdict: start the cluster (or join an existing one), stock up,
//! drive the load while the fault schedule runs, heal whatever is still down, wait for
//! quiescence (failing on a stalled consumer group), read the state, check the invariants, and
//! write the report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use saga_common::config::RegistryUserInfo;
use tokio::sync::Mutex;

use super::cluster::{Cluster, ClusterConfig, ClusterSecurity, KafkaSource, MAILER_CONCURRENCY};
use super::faults::{schedule, FaultExecutor, FaultKind};
use super::invariants;
use super::isolation::require_nft;
use super::kafka_nodes::{listed_brokers, replication_factor};
use super::load;
use super::observe::{self, Databases, NotQuiet};
use super::replay;
use super::report::{outcomes_of, Report};

/// Settings of a run.
#[derive(Debug, Clone, clap::Args)]
pub struct HarnessConfig {
    /// Seed of the order mix and the fault schedule; the same seed reproduces both.
    #[arg(long, env = "HARNESS_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Orders to place.
    #[arg(long, env = "HARNESS_ORDERS", default_value_t = 100)]
    pub orders: usize,
    /// Orders placed per second.
    #[arg(long, env = "HARNESS_RATE", default_value_t = 10.0)]
    pub rate: f64,
    /// Most POST /orders in flight.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Fault kinds to inject (each at least once); all by default.
    #[arg(long = "fault", value_enum)]
    pub faults: Vec<FaultKind>,
    /// Inject no faults at all.
    #[arg(long)]
    pub no_faults: bool,
    /// Besides one of each kind, inject a random fault every this many seconds.
    #[arg(long, env = "HARNESS_FAULT_INTERVAL_SECS")]
    pub fault_interval_secs: Option<f64>,
    /// Kafka nodes of the cluster the harness starts (KRaft, broker and controller each).
    #[arg(long, env = "HARNESS_KAFKA_NODES", default_value_t = 3)]
    pub kafka_nodes: usize,
    /// Use this running Kafka cluster (comma-separated bootstrap list) instead of starting one;
    /// broker and registry faults are then not available. Needs --registry-url.
    #[arg(long, requires = "registry_url")]
    pub bootstrap_servers: Option<String>,
    /// The schema registry of the cluster given with --bootstrap-servers.
    #[arg(long, requires = "bootstrap_servers")]
    pub registry_url: Option<String>,
    /// Credentials (`user:password`) for the registry given with --registry-url, if it requires
    /// them. The harness's own registry gets credentials made up for the run instead.
    #[arg(
        long,
        env = RegistryUserInfo::ENV,
        hide_env_values = true
    )]
    pub registry_user_info: Option<RegistryUserInfo>,
    /// Saga deadline of the order service, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub saga_deadline_secs: f64,
    /// How long the system may take to go quiet after the load; longer is a failure.
    #[arg(long, default_value_t = 300)]
    pub quiescence_timeout_secs: u64,
    /// A consumer group with lag whose committed offsets do not move for this many seconds while
    /// the harness waits for quiescence fails the run.
    #[arg(long, default_value_t = 60)]
    pub stall_timeout_secs: u64,
    /// Folder for logs, Kafka storage and the report (default: target/harness/<run id>).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Keep the run's databases and Kafka storage after a passing run.
    #[arg(long)]
    pub keep_databases: bool,
    /// After quiescence, rebuild every service from the topics into a new database and verify
    /// it equal to the live one (sagactl replay and verify); a difference fails the run.
    #[arg(long)]
    pub verify_replay: bool,
    /// Instances of every service, sharing its database and consumer group; orders go to each
    /// order-service instance in turn, and a kill or a pause hits one instance.
    #[arg(long, env = "HARNESS_INSTANCES", default_value_t = 1)]
    pub instances: usize,
}

impl Default for HarnessConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            orders: 100,
            rate: 10.0,
            concurrency: 16,
            faults: Vec::new(),
            no_faults: false,
            fault_interval_secs: None,
            kafka_nodes: 3,
            bootstrap_servers: None,
            registry_url: None,
            registry_user_info: None,
            saga_deadline_secs: 10.0,
            quiescence_timeout_secs: 300,
            stall_timeout_secs: 60,
            output: None,
            keep_databases: false,
            verify_replay: false,
            instances: 1,
        }
    }
}

/// The workspace's root folder.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The folder of the built service binaries: the one this program was built into (its own
/// folder, or the parent of a test's `deps`), which holds them after `cargo build --bins`; else
/// `<target>/debug`. A target folder shared by several checkouts makes the compile-time source
/// path an unreliable guide, the running program's location is not.
pub fn service_binaries(target: &std::path::Path) -> PathBuf {
    let own_folder = std::env::current_exe().ok().and_then(|exe| {
        let folder = exe.parent()?.to_path_buf();
        Some(if folder.ends_with("deps") {
            folder.parent()?.to_path_buf()
        } else {
            folder
        })
    });
    own_folder
        .filter(|folder| folder.join("order-service").exists())
        .unwrap_or_else(|| target.join("debug"))
}

/// The environment variable `name`, or `default` when it is unset.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The fault kinds of a run: those asked for, or every kind the cluster allows. Asking for a
/// broker or registry fault on a cluster the harness did not start is an error; by default they
/// are left out with a note.
fn fault_kinds(config: &HarnessConfig, owns_kafka: bool, notes: &mut Vec<String>) -> anyhow::Result<Vec<FaultKind>> {
    if config.no_faults {
        return Ok(Vec::new());
    }
    if !config.faults.is_empty() {
        let unavailable: Vec<&str> = config
            .faults
            .iter()
            .filter(|kind| kind.needs_own_cluster() && !owns_kafka)
            .map(|kind| kind.as_str())
            .collect();
        anyhow::ensure!(
            unavailable.is_empty(),
            "{} need(s) the Kafka cluster and registry the harness starts itself, not an existing one (--bootstrap-servers)",
            unavailable.join(", ")
        );
        return Ok(config.faults.clone());
    }
    let (kinds, left_out): (Vec<FaultKind>, Vec<FaultKind>) = FaultKind::ALL
        .into_iter()
        .partition(|kind| owns_kafka || !kind.needs_own_cluster());
    if !left_out.is_empty() {
        notes.push(format!(
            "left out on a cluster the harness did not start: {}",
            left_out.iter().map(|kind| kind.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(kinds)
}

/// Runs the harness and returns its report (also written as JSON next to the logs).
pub async fn run(config: &HarnessConfig) -> anyhow::Result<(Report, PathBuf)> {
    let started = Instant::now();
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    let bin_dir = service_binaries(&target);
    // Runs go beside the binaries they run.
    let target = bin_dir.parent().map(PathBuf::from).unwrap_or(target);
    let run_dir = config
        .output
        .clone()
        .unwrap_or_else(|| target.join("harness").join(&run_id));
    let mut notes = Vec::new();
    if config.instances > 1 {
        notes.push(format!(
            "{} instances of every service; the instances of a service share its database and consumer group",
            config.instances
        ));
    }
    let (kafka, replication) = match (&config.bootstrap_servers, &config.registry_url) {
        (Some(bootstrap_servers), Some(registry_url)) => {
            let brokers = listed_brokers(
                &saga_common::config::KafkaConfig::new(bootstrap_servers.clone()),
                Duration::from_secs(10),
            )
            .await
            .map_err(|error| anyhow::anyhow!("the Kafka cluster at {bootstrap_servers} does not answer: {error:#}"))?;
            notes.push(format!(
                "on an existing cluster ({} broker(s) at {bootstrap_servers}, registry {registry_url})",
                brokers.len()
            ));
            (
                KafkaSource::Existing {
                    bootstrap_servers: bootstrap_servers.clone(),
                    registry_url: registry_url.clone(),
                    registry_user_info: config.registry_user_info.clone(),
                },
                replication_factor(brokers.len()),
            )
        }
        _ => (
            KafkaSource::Own {
                nodes: config.kafka_nodes,
                node_script: workspace_root().join("deploy/kafka/node.sh"),
            },
            replication_factor(config.kafka_nodes),
        ),
    };
    let owns_kafka = matches!(kafka, KafkaSource::Own { .. });
    let kinds = fault_kinds(config, owns_kafka, &mut notes)?;
    if kinds.contains(&FaultKind::IsolateBroker) {
        require_nft()?;
    }
    let cluster_config = ClusterConfig {
        run_id: run_id.clone(),
        run_dir: run_dir.clone(),
        bin_dir,
        kafka,
        replication_factor: replication,
        // The run's topics and groups never mix with another run's on a shared cluster.
        topic_prefix: format!("h{run_id}."),
        postgres_server: env_or("POSTGRES_SERVER_URL", "postgres://postgres:postgres@127.0.0.1:5432"),
        smtp: (
            env_or("SMTP_HOST", "127.0.0.1"),
            env_or("SMTP_PORT", "1025").parse().unwrap_or(1025),
        ),
        saga_deadline_secs: config.saga_deadline_secs,
        partitions: 6,
        instances: config.instances.max(1),
        security: ClusterSecurity::Plaintext,
    };
    let maildev = env_or(
        "MAILDEV_API_URL",
        &format!("http://127.0.0.1:{}", env_or("MAILDEV_WEB_PORT", "1080")),
    );
    let mut cluster = Cluster::new(cluster_config)?;
    tracing::info!(run_id, dir = %run_dir.display(), "starting cluster");
    cluster.start_all().await?;
    let kafka_nodes = cluster.kafka_nodes.len();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let saga_deadline = Duration::from_secs_f64(config.saga_deadline_secs);
    let plan = load::plan(config.seed, &run_id, config.orders, saga_deadline);
    let api_keys = cluster.api_keys.clone();
    load::stock_up(&http, &api_keys, cluster.http["inventory-service"], &plan, &run_id).await?;

    let order_addresses = cluster.order_service_addresses();
    let cluster = Arc::new(Mutex::new(cluster));
    let load_duration = Duration::from_secs_f64(config.orders as f64 / config.rate.max(0.1));
    let faults = schedule(
        config.seed,
        &kinds,
        load_duration,
        config.fault_interval_secs.map(Duration::from_secs_f64),
        kafka_nodes,
        config.instances.max(1),
    );
    let mut executor = FaultExecutor::new(cluster.clone(), config.seed).await?;
    let fault_log = executor.log.clone();
    let load_started = tokio::time::Instant::now();
    let placing = async {
        let placed = load::drive(
            &http,
            &api_keys,
            &order_addresses,
            &plan,
            config.rate,
            config.concurrency,
        )
        .await;
        (placed, load_started.elapsed().as_secs_f64())
    };
    let ((placed, load_secs), ()) = tokio::join!(placing, executor.run(faults, load_started));
    let placed = placed?;
    let faults_secs = load_started.elapsed().as_secs_f64();

    cluster.lock().await.restart_stopped().await?;
    let (view, http_addresses) = {
        let cluster = cluster.lock().await;
        (cluster.view(), cluster.http.clone())
    };
    for (name, address) in &http_addresses {
        let url = format!("http://{address}/health/ready");
        let ready = crate::eventually(&format!("{name} ready"), Duration::from_secs(300), || async {
            http.get(&url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        })
        .await;
        if let Err(error) = ready {
            notes.push(format!("after the faults: {error:#}"));
        }
    }
    let databases = Databases::connect(&view).await?;
    let quiescence = observe::wait_for_quiescence(
        &view,
        &databases,
        &placed,
        Duration::from_secs(config.quiescence_timeout_secs),
        Duration::from_secs(config.stall_timeout_secs),
    )
    .await;
    let state = observe::snapshot(&view, &databases, &placed, "@harness.example.com", &maildev).await?;
    let log = fault_log.lock().await.clone();
    let mut state = state;
    state.injected_poison = log.poison.clone();
    state.notification_kills = log.kills.get("notification-service").copied().unwrap_or(0);
    state.mailer_concurrency = MAILER_CONCURRENCY;
    // Mail of other runs shares the catcher; keep this run's (its addresses carry the run id).
    state.emails.retain(|mail| mail.to.contains(&format!(".{run_id}@")));
    notes.insert(
        0,
        format!(
            "load placed {} orders in {load_secs:.1} s; the last fault ended {faults_secs:.1} s after the load began",
            placed.len()
        ),
    );
    notes.extend(log.lines.iter().cloned());
    let mut stalled_groups = Vec::new();
    let quiescence_secs = match quiescence {
        Ok(waited) => Some(waited.as_secs_f64()),
        Err(NotQuiet::TimedOut(reasons)) => {
            notes.push(format!(
                "did not quiesce within {} s: {}",
                config.quiescence_timeout_secs,
                reasons.join("; ")
            ));
            None
        }
        Err(NotQuiet::Stalled(groups)) => {
            stalled_groups = groups;
            None
        }
    };
    let parked_outbox_rows = observe::parked_outbox_rows(&view, &databases).await?;
    let replay_checks = if config.verify_replay && quiescence_secs.is_some() {
        replay::rebuild_and_verify(&view).await?
    } else {
        Vec::new()
    };
    let report = Report {
        seed: config.seed,
        orders_placed: placed.len(),
        outcomes: outcomes_of(&state),
        faults: log.counts.clone(),
        invariants: invariants::check(&state),
        quiescence_secs,
        stalled_groups,
        parked_outbox_rows,
        replay_checks,
        duration_secs: started.elapsed().as_secs_f64(),
        notes,
    };
    report.write_json(&run_dir.join("report.json"))?;
    std::fs::write(run_dir.join("state.json"), serde_json::to_vec_pretty(&state)?)?;
    let mut cluster = cluster.lock().await;
    cluster.stop_all().await;
    if report.passed() && !config.keep_databases {
        cluster.drop_databases().await.ok();
        cluster.remove_kafka_storage().ok();
    }
    Ok((report, run_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(faults: &[FaultKind]) -> HarnessConfig {
        HarnessConfig {
            faults: faults.to_vec(),
            ..HarnessConfig::default()
        }
    }

    #[test]
    fn every_kind_runs_by_default_on_the_harness_s_own_cluster() {
        let mut notes = Vec::new();
        assert_eq!(
            fault_kinds(&config(&[]), true, &mut notes).unwrap(),
            FaultKind::ALL.to_vec()
        );
        assert!(notes.is_empty());
    }

    #[test]
    fn on_an_existing_cluster_broker_faults_are_left_out_with_a_note() {
        let mut notes = Vec::new();
        let kinds = fault_kinds(&config(&[]), false, &mut notes).unwrap();
        assert!(kinds.iter().all(|kind| !kind.needs_own_cluster()));
        assert!(kinds.contains(&FaultKind::KillService));
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("kill_partition_leader"), "{notes:?}");
    }

    #[test]
    fn asking_for_a_broker_fault_on_an_existing_cluster_is_an_error() {
        let error = fault_kinds(&config(&[FaultKind::PauseBroker]), false, &mut Vec::new()).unwrap_err();
        assert!(error.to_string().contains("pause_broker"), "{error}");
        assert_eq!(
            fault_kinds(&config(&[FaultKind::Poison]), false, &mut Vec::new()).unwrap(),
            vec![FaultKind::Poison]
        );
    }

    #[test]
    fn no_faults_means_none() {
        let config = HarnessConfig {
            no_faults: true,
            ..HarnessConfig::default()
        };
        assert!(fault_kinds(&config, true, &mut Vec::new()).unwrap().is_empty());
    }
}
