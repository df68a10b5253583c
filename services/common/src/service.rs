//! The skeleton every service binary shares: configuration, startup in a fixed order
//! (database + migrations, topics, registry, HTTP), and shutdown on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use rdkafka::producer::FutureProducer;
use saga_contracts::Topic;
use sqlx::migrate::Migrator;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::codec::EventCodec;
use crate::config::{redact_url, KafkaConfig, RegistryConfig, TelemetryConfig};
use crate::health;
use crate::kafka::{self, Retention, TopicSpec};
use crate::retry::{retry_until_ok, Backoff};
use crate::{database, Result};

/// Configuration every service accepts; defaults for the database and the port come from the
/// service's [`ServiceSpec`].
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceConfig {
    /// Broker settings.
    #[command(flatten)]
    pub kafka: KafkaConfig,
    /// Registry settings.
    #[command(flatten)]
    pub registry: RegistryConfig,
    /// Logging settings.
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
    /// PostgreSQL URL of this service's own database.
    #[arg(long = "database-url", env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Address the HTTP server listens on.
    #[arg(long = "http-listen", env = "HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Largest number of pooled database connections.
    #[arg(long = "database-max-connections", env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,
}

/// What distinguishes one service binary from another at startup.
#[derive(Debug, Clone, Copy)]
pub struct ServiceSpec {
    /// Service name; also its consumer group and dead-letter topic stem.
    pub name: &'static str,
    /// Default database name on the local PostgreSQL.
    pub default_database: &'static str,
    /// Default HTTP port.
    pub default_http_port: u16,
}

impl ServiceConfig {
    /// The database URL, or the local default for `spec`.
    pub fn database_url(&self, spec: &ServiceSpec) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("postgres://postgres@127.0.0.1:5432/{}", spec.default_database))
    }

    /// The HTTP address, or the local default for `spec`.
    pub fn http_listen(&self, spec: &ServiceSpec) -> SocketAddr {
        self.http_listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], spec.default_http_port)))
    }
}

/// A started service's shared resources.
#[derive(Clone)]
pub struct ServiceContext {
    /// The service's description.
    pub spec: ServiceSpec,
    /// Its database pool (migrated).
    pub database: PgPool,
    /// Broker settings.
    pub kafka: KafkaConfig,
    /// Registry settings.
    pub registry: RegistryConfig,
    /// Event codec.
    pub codec: Arc<EventCodec>,
    /// Idempotent producer.
    pub producer: FutureProducer,
    /// Cancelled when the process should stop.
    pub shutdown: CancellationToken,
}

impl ServiceContext {
    /// Connects to everything the service needs, retrying while a dependency is not up yet, and
    /// creates the saga topics and this service's dead-letter topic if missing.
    /// Returns `None` if shutdown was requested before startup finished.
    pub async fn start(spec: ServiceSpec, config: &ServiceConfig, service_migrations: &Migrator) -> Result<Option<Self>> {
        let shutdown = shutdown_on_signal();
        let backoff = Backoff { initial: Duration::from_millis(250), max: Duration::from_secs(5) };
        let url = config.database_url(&spec);
        tracing::info!(service = spec.name, database = %redact_url(&url), "connecting to database");
        let migrator = database::migrator(service_migrations);
        let Some(pool) = retry_until_ok("database connect", backoff, &shutdown, || {
            database::connect_and_migrate(&url, &migrator, config.database_max_connections)
        })
        .await
        else {
            return Ok(None);
        };
        let topics = saga_topics(&config.kafka, spec.name);
        tracing::info!(bootstrap = %config.kafka.bootstrap_servers, "ensuring topics");
        if retry_until_ok("topic creation", backoff, &shutdown, || kafka::ensure_topics(&config.kafka, &topics))
            .await
            .is_none()
        {
            return Ok(None);
        }
        let http = reqwest::Client::new();
        tracing::info!(registry = %config.registry.url, "checking schema registry");
        if retry_until_ok("schema registry probe", backoff, &shutdown, || health::probe_registry(&http, &config.registry))
            .await
            .is_none()
        {
            return Ok(None);
        }
        Ok(Some(Self {
            spec,
            database: pool,
            kafka: config.kafka.clone(),
            registry: config.registry.clone(),
            codec: Arc::new(EventCodec::new(&config.registry, &config.kafka)?),
            producer: kafka::producer(&config.kafka)?,
            shutdown,
        }))
    }

    /// The health routes for this service's dependencies.
    pub fn health_router(&self) -> Router {
        health::router(health::Dependencies {
            database: self.database.clone(),
            kafka: self.kafka.clone(),
            registry: self.registry.clone(),
            http: reqwest::Client::new(),
        })
    }

    /// Full name of this service's dead-letter topic.
    pub fn dead_letter_topic(&self) -> String {
        self.kafka.dead_letter_topic(self.spec.name)
    }
}

/// The saga's event topics (unlimited retention: replay reads them from the start) and the
/// service's dead-letter topic.
pub fn saga_topics(kafka: &KafkaConfig, service: &str) -> Vec<TopicSpec> {
    Topic::ALL
        .iter()
        .map(|topic| kafka.topic(*topic))
        .chain(std::iter::once(kafka.dead_letter_topic(service)))
        .map(|name| TopicSpec { name, partitions: kafka.topic_partitions, retention: Retention::Unlimited })
        .collect()
}

/// Binds the HTTP listener, reporting the address really bound (port 0 picks a free one).
pub async fn bind(address: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| crate::Error::Config(format!("cannot listen on {address}: {e}")))?;
    if let Ok(bound) = listener.local_addr() {
        tracing::info!(address = %bound, "http listening");
    }
    Ok(listener)
}

/// Serves `router` until `shutdown` is cancelled, letting in-flight requests finish.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

/// A token cancelled on SIGTERM or Ctrl-C.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = terminate => {},
        }
        tracing::info!("shutdown requested");
        trigger.cancel();
    });
    token
}
