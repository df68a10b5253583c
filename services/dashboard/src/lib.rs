//! The saga dashboard: a web page that lists recent orders with their status and draws one
//! order's timeline (a lane per service, each event a mark at its time, compensations set
//! apart, the time each step took), beside throughput, the outcome mix, consumer lag and
//! dead-letter counts.
//!
//! It only observes: it reads the saga topics without joining any consumer group, keeps what it
//! read in memory (no database), and never writes to Kafka. `model` holds the pure picture of
//! the sagas, `reader` feeds it from the topics, `broker_figures` reads lag and dead letters,
//! `http` serves the page and its JSON, `view` is that JSON.

pub mod broker_figures;
pub mod http;
pub mod model;
pub mod reader;
pub mod view;

use saga_common::auth::{AuthConfig, Authenticator};
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use clap::Parser;
use saga_common::codec::EventCodec;
use saga_common::config::{KafkaConfig, RegistryConfig, TelemetryConfig};
use saga_common::health::HealthState;
use saga_common::service;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::broker_figures::BrokerFigures;
use crate::model::SagaModel;
use crate::reader::{SagaReader, StartAt};

/// The service's name, as its log lines carry it.
pub const NAME: &str = "dashboard-service";

/// Configuration of the dashboard.
#[derive(Debug, Clone, Parser)]
#[command(name = "dashboard-service", about = "Serves the saga dashboard")]
pub struct Config {
    /// Broker settings; the topic prefix says which deployment's topics to read.
    #[command(flatten)]
    pub kafka: KafkaConfig,
    /// Registry settings, to decode the events.
    #[command(flatten)]
    pub registry: RegistryConfig,
    /// Logging settings.
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
    /// Who may read the dashboard's JSON (the `read` or `admin` scope); the page itself asks
    /// for a key.
    #[command(flatten)]
    pub auth: AuthConfig,
    /// Address the HTTP server listens on.
    #[arg(long = "http-listen", env = "HTTP_LISTEN", default_value = "127.0.0.1:8085")]
    pub http_listen: SocketAddr,
    /// How far back to start reading the topics, in seconds (ignored with
    /// `--dashboard-from-beginning`).
    #[arg(
        long = "dashboard-window-secs",
        env = "DASHBOARD_WINDOW_SECS",
        default_value_t = 86_400
    )]
    pub window_secs: u64,
    /// Read the topics from their beginning instead of the window.
    #[arg(long = "dashboard-from-beginning", env = "DASHBOARD_FROM_BEGINNING")]
    pub from_beginning: bool,
    /// The most orders kept in memory; the oldest are evicted beyond it.
    #[arg(
        long = "dashboard-max-orders",
        env = "DASHBOARD_MAX_ORDERS",
        default_value_t = 10_000
    )]
    pub max_orders: usize,
    /// How often consumer lag and dead letters are read from the broker, in milliseconds.
    #[arg(
        long = "dashboard-broker-poll-ms",
        env = "DASHBOARD_BROKER_POLL_MS",
        default_value_t = 3_000
    )]
    pub broker_poll_ms: u64,
}

impl Config {
    /// Settings for the given broker, registry and credentials with every other setting at its
    /// default.
    pub fn new(kafka: KafkaConfig, registry: RegistryConfig, auth: AuthConfig) -> Self {
        Self {
            kafka,
            registry,
            auth,
            telemetry: TelemetryConfig {
                log_format: "json".into(),
                otlp_endpoint: None,
            },
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8085)),
            window_secs: 86_400,
            from_beginning: false,
            max_orders: 10_000,
            broker_poll_ms: 3_000,
        }
    }

    fn start_at(&self) -> StartAt {
        if self.from_beginning {
            StartAt::Beginning
        } else {
            StartAt::Window(Duration::from_secs(self.window_secs))
        }
    }
}

/// What the reader, the broker poller and the HTTP handlers share.
pub struct DashboardState {
    model: Mutex<SagaModel>,
    /// Whether the first read reached the end offsets found at start.
    pub caught_up: AtomicBool,
    /// The last consumer lag and dead-letter figures.
    pub broker_figures: Arc<RwLock<BrokerFigures>>,
    /// Liveness of the reader and the poller.
    pub health: Arc<HealthState>,
    /// The window the reader started from; `None` when it read from the beginning.
    pub window_secs: Option<u64>,
}

impl DashboardState {
    /// The model, locked; hold it briefly.
    pub fn lock_model(&self) -> MutexGuard<'_, SagaModel> {
        self.model.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A started dashboard: its address, its stop token and its tasks.
pub type RunningDashboard = saga_common::service::RunningService;

/// Binds HTTP and starts reading the topics and the broker's figures; the page answers at once
/// and `/health/ready` once the first read is done. Stops when `shutdown` is cancelled.
pub async fn start(config: &Config, shutdown: CancellationToken) -> anyhow::Result<RunningDashboard> {
    let authenticator = Arc::new(Authenticator::from_config(&config.auth)?);
    let codec = Arc::new(EventCodec::new(&config.registry, &config.kafka)?);
    let state = Arc::new(DashboardState {
        model: Mutex::new(SagaModel::new(config.max_orders)),
        caught_up: AtomicBool::new(false),
        broker_figures: Arc::new(RwLock::new(BrokerFigures::default())),
        health: Arc::new(HealthState::default()),
        window_secs: (!config.from_beginning).then_some(config.window_secs),
    });
    let listener = service::bind(config.http_listen).await?;
    let local_addr = listener.local_addr()?;
    let mut tasks = JoinSet::new();
    let reader = SagaReader {
        kafka: config.kafka.clone(),
        codec,
        state: state.clone(),
        start_at: config.start_at(),
    };
    tasks.spawn(
        state
            .health
            .watch("topic reader", shutdown.clone(), reader.run(shutdown.clone())),
    );
    tasks.spawn(state.health.watch(
        "broker figures",
        shutdown.clone(),
        broker_figures::poll(
            config.kafka.clone(),
            Duration::from_millis(config.broker_poll_ms.max(100)),
            state.broker_figures.clone(),
            shutdown.clone(),
        ),
    ));
    let router = http::routes(state, authenticator);
    let serving = shutdown.clone();
    tasks.spawn(async move {
        if let Err(error) = service::serve(listener, router, serving).await {
            tracing::error!(%error, "http server failed");
        }
    });
    tracing::info!(address = %local_addr, topic_prefix = %config.kafka.topic_prefix, "dashboard started");
    Ok(RunningDashboard::new(local_addr, shutdown, tasks))
}
