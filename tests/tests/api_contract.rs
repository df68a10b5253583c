//! Every service's HTTP API against its OpenAPI document: the platform (and the dashboard)
//! started in-process on the test's own topics and databases, then schemathesis (the Python CLI
//! from tests/requirements.txt) run against each `/openapi.json` with every check on: no 5xx,
//! every status code, content type, header and body as documented, schema-valid requests
//! accepted, schema-violating ones refused with a 4xx, undocumented methods answered 405.
//! Requests carry the test client's key (every scope); schemathesis's `ignored_auth` check also
//! sends every secured operation without a credential and with a made-up one, and fails unless
//! it is refused.
//!
//! The fuzzer calls everything, state-changing routes included (orders placed, stock adjusted,
//! parked rows and failed emails redriven): all of it lands in this test's databases and topics.
//! Each request has a timeout and each run a deadline, and afterwards every service must still
//! be live. `API_CONTRACT_MAX_EXAMPLES` (default 25) bounds the examples per operation and
//! phase; `API_CONTRACT_REPORT_DIR` keeps each service's full report there. A failing run
//! prints schemathesis's report, whose seed and `st replay` line reproduce it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use dashboard_service::{Config, RunningDashboard};
use saga_tests::platform::Platform;
use saga_tests::services::order::LONG_DEADLINE_SECS;
use saga_tests::TestEnv;
use tokio_util::sync::CancellationToken;

/// Examples per operation and phase unless `API_CONTRACT_MAX_EXAMPLES` says otherwise: enough
/// for the coverage phase's boundary values and some fuzzing, few enough for the whole test to
/// take about a minute on two cores.
const DEFAULT_MAX_EXAMPLES: u32 = 25;
/// The longest one request may take before schemathesis reports it (and moves on).
const REQUEST_TIMEOUT_SECS: u32 = 10;
/// The longest one service's run may take; past it the run is killed and the test fails.
const RUN_DEADLINE: Duration = Duration::from_secs(300);

async fn start_dashboard(env: &TestEnv) -> anyhow::Result<RunningDashboard> {
    let config = Config {
        http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        broker_poll_ms: 500,
        ..Config::new(
            env.kafka.clone(),
            env.registry.clone(),
            saga_tests::credentials().service_auth(),
        )
    };
    dashboard_service::start(&config, CancellationToken::new()).await
}

/// What one schemathesis run printed, if it did not pass.
struct Failed {
    service: &'static str,
    report: String,
}

/// Runs `schemathesis run` against the document `address` serves; `Ok(None)` if it exited 0.
async fn schemathesis(service: &'static str, address: SocketAddr, workdir: &Path) -> anyhow::Result<Option<Failed>> {
    let max_examples = std::env::var("API_CONTRACT_MAX_EXAMPLES")
        .ok()
        .and_then(|value| value.parse::<u32>().ok())
        .unwrap_or(DEFAULT_MAX_EXAMPLES);
    let started = Instant::now();
    // `python3 -m schemathesis.cli` rather than the `schemathesis` script: pip may put scripts in
    // a directory that is not on PATH. Nothing is excluded: /metrics (text/plain) and
    // /openapi.json are checked like the rest.
    let child = tokio::process::Command::new("python3")
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("http://{address}/openapi.json"))
        .args(["--checks", "all"])
        .args(["--max-examples", &max_examples.to_string()])
        .args(["--request-timeout", &REQUEST_TIMEOUT_SECS.to_string()])
        .args([
            "--header",
            &format!(
                "Authorization: Bearer {}",
                saga_tests::credentials().every_scope().expose()
            ),
        ])
        .arg("--no-color")
        // Its example database (.hypothesis/) goes to the scratch directory, not the repository.
        .current_dir(workdir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| {
            anyhow::anyhow!("cannot run python3 -m schemathesis.cli ({error}); install tests/requirements.txt with pip")
        })?;
    let output = tokio::time::timeout(RUN_DEADLINE, child.wait_with_output())
        .await
        .map_err(|_| anyhow::anyhow!("schemathesis against {service} ran past {RUN_DEADLINE:?}"))??;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if let Ok(dir) = std::env::var("API_CONTRACT_REPORT_DIR") {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(Path::new(&dir).join(format!("{service}.txt")), &report)?;
    }
    let verdict = report
        .lines()
        .rev()
        .find(|line| line.starts_with('='))
        .unwrap_or("no summary line")
        .trim_matches(|c: char| c == '=' || c.is_whitespace())
        .to_string();
    println!(
        "schemathesis against {service} ({address}): exit {:?} in {:.1?}: {verdict}",
        output.status.code(),
        started.elapsed()
    );
    if report.contains("No module named schemathesis") {
        anyhow::bail!("schemathesis is not installed: pip install -r tests/requirements.txt\n{report}");
    }
    Ok((!output.status.success()).then_some(Failed { service, report }))
}

/// Whether `GET /health/live` on `address` answers 200.
async fn live(address: SocketAddr) -> anyhow::Result<bool> {
    let response = saga_tests::http()
        .get(format!("http://{address}/health/live"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?;
    Ok(response.status().is_success())
}

/// A wrong method and an unknown path get JSON answers that say so, like every other error.
async fn wrong_method_and_unknown_path_say_why(address: SocketAddr) -> anyhow::Result<()> {
    let http = saga_tests::http();
    let wrong_method = http.delete(format!("http://{address}/orders")).send().await?;
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(wrong_method.headers()["allow"], "POST");
    let body: serde_json::Value = wrong_method.json().await?;
    assert_eq!(body["error"], "DELETE is not allowed on /orders");
    let unknown = http.get(format!("http://{address}/nowhere")).send().await?;
    assert_eq!(unknown.status(), 404);
    let body: serde_json::Value = unknown.json().await?;
    assert_eq!(body["error"], "no route for GET /nowhere");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_service_answers_as_its_openapi_document_says() -> anyhow::Result<()> {
    let platform = Platform::start(LONG_DEADLINE_SECS).await?;
    let dashboard = start_dashboard(&platform.env).await?;
    let workdir = std::env::temp_dir().join(format!("api-contract-{}", platform.env.prefix.trim_end_matches('.')));
    std::fs::create_dir_all(&workdir)?;
    wrong_method_and_unknown_path_say_why(platform.order.local_addr).await?;
    let services: [(&'static str, SocketAddr); 5] = [
        // The order service first: the orders it takes give the others payments, stock
        // movements and emails to show.
        ("order-service", platform.order.local_addr),
        ("payment-service", platform.payment.local_addr),
        ("inventory-service", platform.inventory.local_addr),
        ("notification-service", platform.notification.local_addr),
        ("dashboard-service", dashboard.local_addr),
    ];
    let mut failures = Vec::new();
    for (service, address) in services {
        if let Some(failed) = schemathesis(service, address, &workdir).await? {
            failures.push(failed);
        }
    }
    let mut dead = Vec::new();
    for (service, address) in services {
        if !live(address).await.unwrap_or(false) {
            dead.push(service);
        }
    }
    dashboard.stop().await;
    platform.stop().await;
    let _ = std::fs::remove_dir_all(&workdir);
    for failed in &failures {
        println!("==== schemathesis against {} ====\n{}", failed.service, failed.report);
    }
    assert!(dead.is_empty(), "not live after the fuzzing: {dead:?}");
    assert!(
        failures.is_empty(),
        "schemathesis found contract violations in {:?} (reports above)",
        failures.iter().map(|failed| failed.service).collect::<Vec<_>>()
    );
    Ok(())
}
