//! `sagactl`: the operator CLI of the saga platform. Prepares a deployment (topics, databases,
//! schemas) and reports on it; every command is safe to run again.

mod bench;
mod dead_letters;
mod demo;
mod endpoints;
mod order_timeline;
mod outbox;
mod replay;
mod replay_bench;

use std::time::Duration;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use saga_common::config::{KafkaConfig, RegistryConfig};
use saga_common::{database, kafka, service};
use saga_contracts::EventType;
use serde_json::json;

/// Services and their default databases on the local stack.
const SERVICES: [(&str, &str); 4] = [
    ("order-service", "saga_order"),
    ("payment-service", "saga_payment"),
    ("inventory-service", "saga_inventory"),
    ("notification-service", "saga_notification"),
];

/// Compatibility every event subject is held to.
const SUBJECT_COMPATIBILITY: &str = "BACKWARD_TRANSITIVE";

#[derive(Debug, Parser)]
#[command(name = "sagactl", about = "Operator CLI of the saga platform")]
struct Cli {
    #[command(flatten)]
    kafka: KafkaConfig,
    #[command(flatten)]
    registry: RegistryConfig,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The Kafka cluster.
    Kafka {
        #[command(subcommand)]
        command: KafkaCommand,
    },
    /// Topic administration.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Database administration.
    Databases {
        #[command(subcommand)]
        command: DatabasesCommand,
    },
    /// Schema administration.
    Schemas {
        #[command(subcommand)]
        command: SchemasCommand,
    },
    /// Dead letters of a service: list them, or redrive them to the topics they came from.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// Outbox rows a service's relay parked because retrying could not publish them: list them,
    /// or move them back to the outbox once the cause is fixed.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Rebuilds one service's state from the topics into an empty (or new) database, with the
    /// service's own domain code and none of its side effects; resumes an interrupted replay
    /// into the same database.
    Replay {
        /// The service: order, payment, inventory or notification.
        #[arg(long)]
        service: String,
        /// PostgreSQL URL of the database to rebuild into (created if missing).
        #[arg(long)]
        into: String,
        /// Only events that occurred up to this time (RFC 3339, or Unix milliseconds).
        #[arg(long)]
        until: Option<String>,
        /// Only the events of this order (and events of no order, stock adjustments).
        #[arg(long = "order-id")]
        order_id: Option<saga_contracts::OrderId>,
        /// Events whose changes are written per transaction (with the progress).
        #[arg(long = "batch-size", default_value_t = saga_common::replay::ReplayOptions::default().batch_size)]
        batch_size: usize,
    },
    /// Compares a service's live database with a rebuilt one, table by table and row by row,
    /// ignoring only bookkeeping columns; exits 1 listing every difference.
    Verify {
        /// The service: order, payment, inventory or notification.
        #[arg(long)]
        service: String,
        /// PostgreSQL URL of the rebuilt database.
        #[arg(long)]
        against: String,
        /// PostgreSQL URL of the live database; by default the service's database on
        /// POSTGRES_SERVER_URL.
        #[arg(long)]
        live: Option<String>,
        /// The PostgreSQL server of the live databases.
        #[arg(
            long = "server-url",
            env = "POSTGRES_SERVER_URL",
            default_value = "postgres://postgres:postgres@127.0.0.1:5432"
        )]
        server_url: String,
    },
    /// Writes a synthetic, consistent saga history of N orders onto fresh topics, replays each
    /// service from it into a fresh database, and prints events/s per service; fails if a replay
    /// finds anything. Deletes what it made unless --keep.
    ReplayBench {
        /// Orders in the history.
        #[arg(long, default_value_t = 100_000)]
        orders: u64,
        /// The services to replay, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "order,payment,inventory,notification")]
        services: Vec<String>,
        /// The PostgreSQL server the replay databases are created on.
        #[arg(
            long = "database-url-base",
            env = "POSTGRES_SERVER_URL",
            default_value = "postgres://postgres:postgres@127.0.0.1:5432"
        )]
        database_url_base: String,
        /// Keep the topics, schema subjects and databases afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// One order's timeline from the dashboard: its trace id, status, a lane per service and
    /// one line per event with the time each step took, compensations marked.
    Order {
        /// The order id.
        order_id: String,
        #[command(flatten)]
        endpoints: endpoints::Endpoints,
    },
    /// Readiness of every service.
    Status {
        #[command(flatten)]
        endpoints: endpoints::Endpoints,
    },
    /// Pushes orders through every branch of the saga and prints their outcomes and timelines.
    Demo {
        #[command(flatten)]
        endpoints: endpoints::Endpoints,
        /// Seconds to wait for each order's outcome.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Places many orders and reports throughput and latency percentiles: closed loop
    /// (`--concurrency` orders in flight, saturation) by default, open loop with `--rate`.
    Bench {
        #[command(flatten)]
        endpoints: endpoints::Endpoints,
        /// Number of orders (closed loop).
        #[arg(long, default_value_t = 1000, conflicts_with = "rate")]
        orders: usize,
        /// Concurrent HTTP clients (closed loop).
        #[arg(long, default_value_t = 16, conflicts_with = "rate")]
        concurrency: usize,
        /// Open loop: orders per second, each sent at its scheduled time whatever the answers
        /// to earlier ones; rate x --duration-secs orders in all.
        #[arg(long, requires = "duration_secs")]
        rate: Option<f64>,
        /// Open loop: seconds orders are sent for.
        #[arg(long = "duration-secs", requires = "rate")]
        duration_secs: Option<f64>,
        /// Seconds to wait for each order's outcome.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
        /// Fresh SKUs the orders are spread over (order i takes one unit of SKU i mod N). One
        /// SKU measures its row lock: every reservation of it waits for the one before.
        #[arg(long, default_value_t = 100)]
        skus: usize,
        /// Print one JSON object with every figure (progress goes to standard error).
        #[arg(long)]
        json: bool,
    },
    /// Measures this machine's limits the same way on every run: PostgreSQL commits/s (pgbench,
    /// one INSERT per transaction, 8 clients) and Kafka produce-to-consume round trips/s with
    /// acks=all; scratch database and topic are removed afterwards.
    BenchLimits {
        /// The PostgreSQL server of the service databases (the scratch database goes there).
        #[arg(
            long = "server-url",
            env = "POSTGRES_SERVER_URL",
            default_value = "postgres://postgres:postgres@127.0.0.1:5432"
        )]
        server_url: String,
        /// Seconds each measurement runs.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Kafka records in flight at most (produced, not yet consumed back).
        #[arg(long = "kafka-window", default_value_t = 1000)]
        kafka_window: usize,
        /// Print one JSON object with every figure.
        #[arg(long)]
        json: bool,
    },
    /// Prints, as one JSON object, the counters a benchmark costs a saga with: transactions
    /// committed in the four service databases and records on the saga topics.
    BenchCounters {
        /// The PostgreSQL server of the service databases.
        #[arg(
            long = "server-url",
            env = "POSTGRES_SERVER_URL",
            default_value = "postgres://postgres:postgres@127.0.0.1:5432"
        )]
        server_url: String,
        /// First wait until the saga topics stop growing (two readings 3 s apart agree), at
        /// most this many seconds: a run's last follow-up events land after its decisions.
        #[arg(long = "settle-secs")]
        settle_secs: Option<u64>,
    },
    /// Prints the benchmark's one table from the JSON files of a run (`stack.sh bench`): each
    /// figure, its goal, and the platform's load as fractions of the machine's limits.
    BenchReport {
        /// `sagactl bench-limits --json` output.
        #[arg(long)]
        limits: std::path::PathBuf,
        /// Closed-loop `sagactl bench --json` output.
        #[arg(long)]
        saturation: std::path::PathBuf,
        /// Open-loop output of the high rate (the POST /orders p99 goal: 500/s).
        #[arg(long = "open-loop-high")]
        open_loop_high: std::path::PathBuf,
        /// Open-loop output of the low rate (the decision p99 goal: 100/s).
        #[arg(long = "open-loop-low")]
        open_loop_low: std::path::PathBuf,
        /// `sagactl bench-counters` output before the saturation run.
        #[arg(long = "counters-before")]
        counters_before: std::path::PathBuf,
        /// `sagactl bench-counters` output after the saturation run.
        #[arg(long = "counters-after")]
        counters_after: std::path::PathBuf,
        /// Directory of the services' pid files (peak memory is read from /proc/<pid>/status).
        #[arg(long = "pids-dir", default_value = ".local/pids")]
        pids_dir: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLettersCommand {
    /// Lists every dead letter with its origin and the reason it was dead-lettered.
    List {
        /// The consuming service, e.g. payment or payment-service.
        #[arg(long)]
        service: String,
    },
    /// Re-produces dead letters to their origin topics, keys, values and original headers kept.
    Redrive {
        /// The consuming service, e.g. payment or payment-service.
        #[arg(long)]
        service: String,
        /// Only the dead letter at this partition of the dead-letter topic (with --offset).
        #[arg(long, requires = "offset")]
        partition: Option<i32>,
        /// Only the dead letter at this offset (with --partition).
        #[arg(long, requires = "partition")]
        offset: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Lists the parked rows with the reason each was parked.
    Parked {
        /// The service, e.g. order or order-service.
        #[arg(long)]
        service: String,
        #[command(flatten)]
        endpoints: endpoints::Endpoints,
    },
    /// Moves parked rows back to the end of the outbox so the relay publishes them.
    Redrive {
        /// The service, e.g. order or order-service.
        #[arg(long)]
        service: String,
        /// Only these events (repeatable); all parked rows when absent.
        #[arg(long = "event-id")]
        event_ids: Vec<uuid::Uuid>,
        #[command(flatten)]
        endpoints: endpoints::Endpoints,
    },
}

#[derive(Debug, Subcommand)]
enum KafkaCommand {
    /// Waits until the cluster's metadata lists the expected number of brokers, then lists
    /// them; fails after the timeout naming what is missing.
    Ready {
        /// Brokers the cluster must have.
        #[arg(long, default_value_t = 1)]
        brokers: usize,
        /// Seconds to wait.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Creates the event topics and every service's dead-letter topic if missing.
    Create,
}

#[derive(Debug, Subcommand)]
enum DatabasesCommand {
    /// Creates each service's database if missing.
    Create {
        /// Server URL without a database name.
        #[arg(
            long,
            env = "POSTGRES_SERVER_URL",
            default_value = "postgres://postgres:postgres@127.0.0.1:5432"
        )]
        server_url: String,
    },
}

#[derive(Debug, Subcommand)]
enum SchemasCommand {
    /// Registers every version of every event schema under its subject (topic + record name),
    /// oldest first, after setting the subject's compatibility level.
    Register,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Kafka {
            command: KafkaCommand::Ready { brokers, timeout_secs },
        } => kafka_ready(&cli.kafka, brokers, Duration::from_secs(timeout_secs)).await,
        Command::Topics {
            command: TopicsCommand::Create,
        } => create_topics(&cli.kafka).await,
        Command::Databases {
            command: DatabasesCommand::Create { server_url },
        } => create_databases(&server_url).await,
        Command::Schemas {
            command: SchemasCommand::Register,
        } => register_schemas(&cli.kafka, &cli.registry).await,
        Command::Status { endpoints } => status(&endpoints).await,
        Command::Order { order_id, endpoints } => order_timeline::run(&endpoints, &order_id).await,
        Command::DeadLetters {
            command: DeadLettersCommand::List { service },
        } => dead_letters::list(&cli.kafka, &service_name(&service)),
        Command::DeadLetters {
            command:
                DeadLettersCommand::Redrive {
                    service,
                    partition,
                    offset,
                },
        } => dead_letters::redrive(&cli.kafka, &service_name(&service), partition.zip(offset)).await,
        Command::Outbox {
            command: OutboxCommand::Parked { service, endpoints },
        } => outbox::parked(&endpoints, &service).await,
        Command::Outbox {
            command:
                OutboxCommand::Redrive {
                    service,
                    event_ids,
                    endpoints,
                },
        } => outbox::redrive(&endpoints, &service, &event_ids).await,
        Command::Replay {
            service,
            into,
            until,
            order_id,
            batch_size,
        } => {
            let request = replay::ReplayRequest {
                service: &service,
                into: &into,
                until: until.as_deref(),
                order_id,
                batch_size,
            };
            replay::replay(&cli.kafka, &cli.registry, &request).await
        }
        Command::Verify {
            service,
            against,
            live,
            server_url,
        } => {
            let live = match live {
                Some(url) => url,
                None => {
                    let database = replay::rebuilder(&service)?.spec().default_database;
                    format!("{}/{database}", server_url.trim_end_matches('/'))
                }
            };
            replay::verify(&cli.kafka, &cli.registry, &service, &live, &against).await
        }
        Command::ReplayBench {
            orders,
            services,
            database_url_base,
            keep,
        } => {
            let request = replay_bench::BenchRequest {
                orders,
                services: &services,
                database_url_base: &database_url_base,
                keep,
            };
            replay_bench::run(&cli.kafka, &cli.registry, &request).await
        }
        Command::Demo {
            endpoints,
            timeout_secs,
        } => demo::run(&endpoints, Duration::from_secs(timeout_secs)).await,
        Command::Bench {
            endpoints,
            orders,
            concurrency,
            rate,
            duration_secs,
            timeout_secs,
            skus,
            json,
        } => {
            let output = bench::Output { json };
            let skus = skus.max(1);
            let timeout = Duration::from_secs(timeout_secs);
            match rate.zip(duration_secs) {
                Some((rate, seconds)) => {
                    let duration = Duration::try_from_secs_f64(seconds)
                        .map_err(|_| anyhow::anyhow!("--duration-secs must be a non-negative number of seconds"))?;
                    let schedule = bench::stats::Schedule::new(rate, duration)?;
                    bench::open_loop::run(&endpoints, schedule, skus, timeout, output).await
                }
                None => bench::run(&endpoints, orders, concurrency.max(1), skus, timeout, output).await,
            }
        }
        Command::BenchLimits {
            server_url,
            seconds,
            kafka_window,
            json,
        } => {
            let request = bench::limits::LimitsRequest {
                server_url: &server_url,
                duration: Duration::from_secs(seconds.max(1)),
                kafka_window,
            };
            bench::limits::run(&cli.kafka, &request, bench::Output { json }).await
        }
        Command::BenchCounters {
            server_url,
            settle_secs,
        } => {
            let counters = match settle_secs {
                Some(seconds) => {
                    bench::counters::read_settled(&cli.kafka, &server_url, Duration::from_secs(seconds)).await?
                }
                None => bench::counters::read(&cli.kafka, &server_url).await?,
            };
            println!("{}", counters.to_json());
            Ok(())
        }
        Command::BenchReport {
            limits,
            saturation,
            open_loop_high,
            open_loop_low,
            counters_before,
            counters_after,
            pids_dir,
        } => bench::report::run(&bench::report::ReportFiles {
            limits,
            saturation,
            open_loop_high,
            open_loop_low,
            counters_before,
            counters_after,
            pids_dir,
        }),
    }
}

/// A service's full name (its consumer group and dead-letter topic stem): `payment` and
/// `payment-service` both give `payment-service`.
fn service_name(service: &str) -> String {
    format!("{}-service", service.trim_end_matches("-service"))
}

async fn kafka_ready(kafka: &KafkaConfig, expected: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let last = loop {
        let seen = kafka::cluster_brokers(kafka, Duration::from_secs(5)).await;
        match &seen {
            Ok(brokers) if brokers.len() >= expected => {
                for broker in brokers {
                    println!("    broker {} at {}", broker.id, broker.address);
                }
                return Ok(());
            }
            _ if tokio::time::Instant::now() >= deadline => break seen,
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    match last {
        Ok(brokers) => {
            let ids: Vec<String> = brokers.iter().map(|broker| broker.id.to_string()).collect();
            bail!(
                "after {} s the cluster at {} lists {} of {expected} brokers (ids: {})",
                timeout.as_secs(),
                kafka.bootstrap_servers,
                brokers.len(),
                if ids.is_empty() {
                    "none".to_string()
                } else {
                    ids.join(", ")
                }
            )
        }
        Err(error) => bail!(
            "after {} s no broker at {} answers a metadata request: {error}",
            timeout.as_secs(),
            kafka.bootstrap_servers
        ),
    }
}

async fn create_topics(kafka: &KafkaConfig) -> anyhow::Result<()> {
    let mut topics = Vec::new();
    for (name, _) in SERVICES {
        for topic in service::saga_topics(kafka, name) {
            if !topics.iter().any(|t: &kafka::TopicSpec| t.name == topic.name) {
                topics.push(topic);
            }
        }
    }
    kafka::ensure_topics(kafka, &topics).await.context("creating topics")?;
    for topic in &topics {
        println!("    topic {} ({} partitions)", topic.name, topic.partitions);
    }
    Ok(())
}

async fn create_databases(server_url: &str) -> anyhow::Result<()> {
    for (_, name) in SERVICES {
        let url = format!("{}/{name}", server_url.trim_end_matches('/'));
        database::create_database_if_missing(&url).await.with_context(|| {
            format!(
                "creating database {name} on {}",
                saga_common::config::redact_url(server_url)
            )
        })?;
        println!("    database {name}");
    }
    Ok(())
}

async fn register_schemas(kafka: &KafkaConfig, registry: &RegistryConfig) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let base = registry.url.trim_end_matches('/');
    for event_type in EventType::ALL {
        let subject = format!("{}-{}", kafka.topic(event_type.topic()), event_type.record_name());
        let config = registry
            .authorize(http.put(format!("{base}/config/{subject}")))
            .json(&json!({"compatibility": SUBJECT_COMPATIBILITY}))
            .send()
            .await
            .with_context(|| format!("schema registry at {base} unreachable"))?;
        if !config.status().is_success() {
            bail!(
                "setting compatibility of {subject}: {} {}",
                config.status(),
                config.text().await?
            );
        }
        for version in event_type.versions() {
            let response = registry
                .authorize(http.post(format!("{base}/subjects/{subject}/versions")))
                .header("content-type", "application/vnd.schemaregistry.v1+json")
                .json(&json!({"schema": version.json}))
                .send()
                .await?;
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            if !status.is_success() {
                bail!("registering {subject} v{}: {status} {body}", version.version);
            }
            println!("    {subject} v{} -> schema id {}", version.version, body["id"]);
        }
    }
    Ok(())
}

async fn status(endpoints: &endpoints::Endpoints) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let mut all_ready = true;
    for (name, base) in endpoints.all() {
        let url = format!("{base}/health/ready");
        match http.get(&url).send().await {
            Ok(response) => {
                let ready = response.status().is_success();
                all_ready &= ready;
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                println!(
                    "{:<22} {:<10} {}",
                    name,
                    if ready { "ready" } else { "NOT READY" },
                    body["checks"]
                );
            }
            Err(error) => {
                all_ready = false;
                println!("{name:<22} {:<10} {error}", "DOWN");
            }
        }
    }
    if !all_ready {
        bail!("not every service is ready");
    }
    Ok(())
}
