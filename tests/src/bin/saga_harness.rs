//! `saga-harness`: the failure-injection harness as a command. Prints the report, writes it as
//! JSON into the run's folder, and exits non-zero on any invariant violation or if the system
//! does not go quiet in time. Interrupted (Ctrl-C, SIGTERM), it stops the processes it started
//! and removes any firewall rule it added.

use clap::Parser;
use saga_tests::harness::run::{run, HarnessConfig};

#[derive(Debug, Parser)]
#[command(
    name = "saga-harness",
    about = "Saga failure-injection harness: load + faults, then the invariants"
)]
struct Cli {
    #[command(flatten)]
    config: HarnessConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_target(false)
        .init();
    let (report, run_dir) = tokio::select! {
        outcome = run(&cli.config) => outcome?,
        signal = interrupted() => {
            // Returning drops the run and its tasks, and with them every child process (each is
            // killed on drop).
            anyhow::bail!("interrupted by {signal}; the run's processes are stopped, its databases kept");
        }
    };
    println!("{}", report.render_text());
    println!("report: {}", run_dir.join("report.json").display());
    if !report.passed() {
        std::process::exit(1);
    }
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM, with its name.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    }
}
