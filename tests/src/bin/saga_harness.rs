//! `saga-harness`: the failure-injection harness as a command. Prints the report, writes it as
//! JSON into the run's folder, and exits non-zero on any invariant violation or if the system
//! does not go quiet in time.

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
    let (report, run_dir) = run(&cli.config).await?;
    println!("{}", report.render_text());
    println!("report: {}", run_dir.join("report.json").display());
    if !report.passed() {
        std::process::exit(1);
    }
    Ok(())
}
