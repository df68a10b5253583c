//! One harness run from start to verdict: start the cluster, stock up, drive the load while the
//! fault schedule runs, heal whatever is still down, wait for quiescence, read the state, check
//! the invariants, and write the report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::cluster::{Cluster, ClusterConfig, MAILER_CONCURRENCY};
use super::faults::supervise_broker;
use super::faults::{schedule, FaultExecutor, FaultKind};
use super::invariants;
use super::load;
use super::observe::{self, Databases};
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
    /// Saga deadline of the order service, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub saga_deadline_secs: f64,
    /// How long the system may take to go quiet after the load; longer is a failure.
    #[arg(long, default_value_t = 300)]
    pub quiescence_timeout_secs: u64,
    /// Folder for logs, broker storage and the report (default: target/harness/<run id>).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Keep the run's databases after a passing run.
    #[arg(long)]
    pub keep_databases: bool,
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
            saga_deadline_secs: 10.0,
            quiescence_timeout_secs: 300,
            output: None,
            keep_databases: false,
        }
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Runs the harness and returns its report (also written as JSON next to the logs).
pub async fn run(config: &HarnessConfig) -> anyhow::Result<(Report, PathBuf)> {
    let started = Instant::now();
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    let run_dir = config
        .output
        .clone()
        .unwrap_or_else(|| target.join("harness").join(&run_id));
    let cache = std::env::var("SAGA_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env_or("HOME", "/root")).join(".cache/saga-platform"));
    let cluster_config = ClusterConfig {
        run_id: run_id.clone(),
        run_dir: run_dir.clone(),
        bin_dir: target.join("debug"),
        tansu: std::env::var("TANSU_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| cache.join("tansu-0.6.0/bin/tansu")),
        postgres_server: env_or("POSTGRES_SERVER_URL", "postgres://postgres@127.0.0.1:5432"),
        smtp: (
            env_or("SMTP_HOST", "127.0.0.1"),
            env_or("SMTP_PORT", "1025").parse().unwrap_or(1025),
        ),
        saga_deadline_secs: config.saga_deadline_secs,
        partitions: 6,
    };
    let maildev = env_or(
        "MAILDEV_API_URL",
        &format!("http://127.0.0.1:{}", env_or("MAILDEV_WEB_PORT", "1080")),
    );
    let mut cluster = Cluster::new(cluster_config)?;
    tracing::info!(run_id, dir = %run_dir.display(), "starting cluster");
    cluster.start_all().await?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let saga_deadline = Duration::from_secs_f64(config.saga_deadline_secs);
    let plan = load::plan(config.seed, &run_id, config.orders, saga_deadline);
    load::stock_up(&http, cluster.http["inventory-service"], &plan, &run_id).await?;

    let order_address = cluster.http["order-service"];
    let cluster = Arc::new(Mutex::new(cluster));
    let kinds: Vec<FaultKind> = match (config.no_faults, config.faults.is_empty()) {
        (true, _) => Vec::new(),
        (false, true) => FaultKind::ALL.to_vec(),
        (false, false) => config.faults.clone(),
    };
    let load_duration = Duration::from_secs_f64(config.orders as f64 / config.rate.max(0.1));
    let faults = schedule(
        config.seed,
        &kinds,
        load_duration,
        config.fault_interval_secs.map(Duration::from_secs_f64),
    );
    let mut executor = FaultExecutor::new(cluster.clone(), config.seed).await?;
    let supervising = CancellationToken::new();
    let supervisor = tokio::spawn(supervise_broker(cluster.clone(), supervising.clone()));
    let fault_log = executor.log.clone();
    let load_started = tokio::time::Instant::now();
    let (placed, ()) = tokio::join!(
        load::drive(&http, order_address, &plan, config.rate, config.concurrency),
        executor.run(faults, load_started),
    );
    let placed = placed?;
    let load_secs = load_started.elapsed().as_secs_f64();

    let mut notes = Vec::new();
    {
        let mut cluster = cluster.lock().await;
        cluster.resume_all().await;
        cluster.restart_stopped()?;
    }
    // Wait without holding the lock: the broker supervisor may need it meanwhile.
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
    )
    .await;
    let state = observe::snapshot(&view, &databases, &placed, "@harness.example.com", &maildev).await?;
    supervising.cancel();
    let supervision = supervisor.await.unwrap_or_default();
    let log = fault_log.lock().await.clone();
    let mut state = state;
    state.injected_poison = log.poison.clone();
    state.notification_kills = log.kills.get("notification-service").copied().unwrap_or(0);
    state.mailer_concurrency = MAILER_CONCURRENCY;
    // Mail of other runs shares the catcher; keep this run's (its addresses carry the run id).
    state.emails.retain(|mail| mail.to.contains(&format!(".{run_id}@")));
    notes.insert(0, format!("load placed {} orders in {load_secs:.1} s", placed.len()));
    if supervision.unresponsive_restarts > 0 {
        notes.push(format!(
            "the broker ran but stopped answering and was restarted {} time(s) \
             (a fault of the local broker, see docs/failure-injection.md)",
            supervision.unresponsive_restarts
        ));
    }
    if !supervision.repaired_groups.is_empty() {
        notes.push(format!(
            "groups led by a member no longer in them, put back to forming while the broker was stopped: {}",
            supervision.repaired_groups.join(", ")
        ));
    }
    for stuck in &supervision.stuck_group_restarts {
        notes.push(format!(
            "consumer groups stopped making progress, broker restarted to reload them: {stuck} \
             (a fault of the local broker's group coordinator, see docs/failure-injection.md)"
        ));
    }
    notes.extend(log.lines.iter().cloned());
    let quiescence_secs = match &quiescence {
        Ok(waited) => Some(waited.as_secs_f64()),
        Err(reasons) => {
            notes.push(format!(
                "did not quiesce within {} s: {}",
                config.quiescence_timeout_secs,
                reasons.join("; ")
            ));
            None
        }
    };
    let report = Report {
        seed: config.seed,
        orders_placed: placed.len(),
        outcomes: outcomes_of(&state),
        faults: log.counts.clone(),
        invariants: invariants::check(&state),
        quiescence_secs,
        duration_secs: started.elapsed().as_secs_f64(),
        notes,
    };
    report.write_json(&run_dir.join("report.json"))?;
    std::fs::write(run_dir.join("state.json"), serde_json::to_vec_pretty(&state)?)?;
    let mut cluster = cluster.lock().await;
    cluster.stop_all().await;
    if report.passed() && !config.keep_databases {
        cluster.drop_databases().await.ok();
    }
    Ok((report, run_dir))
}
