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

use futures::future::BoxFuture;
use tokio::task::JoinSet;

use crate::auth::{self, AuthConfig, Authenticator};
use crate::codec::EventCodec;
use crate::config::{redact_url, KafkaConfig, RegistryConfig, TelemetryConfig};
use crate::consumer::{ConsumerLoop, EventHandler};
use crate::health::{self, HealthState};
use crate::kafka::{self, Retention, TopicSpec};
use crate::outbox::{Relay, RelaySettings};
use crate::retry::{retry_until_ok, Backoff, ErrorPolicy};
use crate::{admin, database, metrics, openapi, Result};

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
    /// Who may call the HTTP API.
    #[command(flatten)]
    pub auth: AuthConfig,
    /// PostgreSQL URL of this service's own database.
    #[arg(long = "database-url", env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Address the HTTP server listens on.
    #[arg(long = "http-listen", env = "HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Largest number of pooled database connections. A service's work is its partition
    /// workers, the outbox relay and HTTP requests, each holding a connection only for one short
    /// transaction; 8 keeps both cores busy, and four services then hold at most 32 of
    /// PostgreSQL's connection slots. Connections idle for a minute are closed.
    #[arg(
        long = "database-max-connections",
        env = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 8
    )]
    pub database_max_connections: u32,
    /// How many times an event handler or an outbox row failing with an error nobody
    /// classified is tried before it is dead-lettered or parked like a permanent failure.
    #[arg(
        long = "unclassified-error-attempts",
        env = "UNCLASSIFIED_ERROR_ATTEMPTS",
        default_value_t = 5
    )]
    pub unclassified_error_attempts: u32,
    /// The most records of one partition a consumer applies in one database transaction, from
    /// those it has in hand (it never waits for more): one commit for many events when the
    /// service is busy, one per event when it is not. 1 applies every event on its own.
    #[arg(long = "consumer-batch-size", env = "CONSUMER_BATCH_SIZE", default_value_t = 64)]
    pub consumer_batch_size: usize,
    /// How long a consumer holding fewer records than a full batch waits for more before it
    /// applies them, in milliseconds: larger batches for that much latency. 0 applies what is
    /// in hand at once.
    #[arg(
        long = "consumer-batch-linger-ms",
        env = "CONSUMER_BATCH_LINGER_MS",
        default_value_t = 0
    )]
    pub consumer_batch_linger_ms: u64,
    /// The most outbox rows the relay publishes in one batch: one transaction and one wait for
    /// the broker's acknowledgements for all of them.
    #[arg(long = "outbox-batch-size", env = "OUTBOX_BATCH_SIZE", default_value_t = crate::outbox::DEFAULT_BATCH_SIZE)]
    pub outbox_batch_size: i64,
    /// How long the relay, woken by a commit, waits for more commits before it publishes, in
    /// milliseconds: larger batches for that much latency per event. 0 publishes at once.
    #[arg(long = "outbox-linger-ms", env = "OUTBOX_LINGER_MS", default_value_t = 0)]
    pub outbox_linger_ms: u64,
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
    /// Whether the service takes traffic while the broker or the registry is down (the order
    /// service does: its outbox holds accepted orders). `/health/ready` then needs only the
    /// database.
    pub ready_without_broker: bool,
}

impl ServiceSpec {
    /// A service named `name` whose database defaults to `default_database` on the local
    /// PostgreSQL and whose HTTP port defaults to `default_http_port`; ready only while its
    /// database, the broker and the registry answer.
    pub const fn new(name: &'static str, default_database: &'static str, default_http_port: u16) -> Self {
        Self {
            name,
            default_database,
            default_http_port,
            ready_without_broker: false,
        }
    }

    /// The same service, ready to take traffic while the broker or the registry is down.
    pub const fn ready_without_broker(self) -> Self {
        Self {
            ready_without_broker: true,
            ..self
        }
    }
}

impl ServiceConfig {
    /// The database URL, or the local default for `spec`.
    pub fn database_url(&self, spec: &ServiceSpec) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("postgres://postgres:postgres@127.0.0.1:5432/{}", spec.default_database))
    }

    /// The HTTP address, or the local default for `spec`.
    pub fn http_listen(&self, spec: &ServiceSpec) -> SocketAddr {
        self.http_listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], spec.default_http_port)))
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
    /// Publishes the outbox; call `relay.notify()` after committing events.
    pub relay: Relay,
    /// Cancelled when the service should stop.
    pub shutdown: CancellationToken,
    /// What workers do when an operation fails.
    pub policy: ErrorPolicy,
    /// Liveness of the service's tasks and the count of work set aside.
    pub health: Arc<HealthState>,
    /// Checks the credentials of HTTP requests.
    pub authenticator: Arc<Authenticator>,
    /// The most records a consumer applies in one transaction.
    pub consumer_batch_size: usize,
    /// How long a consumer waits to fill a batch.
    pub consumer_batch_linger: Duration,
}

impl ServiceContext {
    /// Connects to everything the service needs, retrying while a dependency is not up yet, and
    /// creates the saga topics and this service's dead-letter topic if missing.
    /// Returns `None` if shutdown was requested before startup finished.
    pub async fn start(
        spec: ServiceSpec,
        config: &ServiceConfig,
        service_migrations: &Migrator,
        shutdown: CancellationToken,
    ) -> Result<Option<Self>> {
        let authenticator = Arc::new(
            Authenticator::from_config(&config.auth).map_err(|error| crate::Error::Config(error.to_string()))?,
        );
        if authenticator.is_disabled() {
            tracing::warn!(
                service = spec.name,
                "HTTP authentication is off: anyone who reaches the service may call it"
            );
        }
        let backoff = Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(5),
        };
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
        if retry_until_ok("topic creation", backoff, &shutdown, || {
            kafka::ensure_topics(&config.kafka, &topics)
        })
        .await
        .is_none()
        {
            return Ok(None);
        }
        let http = reqwest::Client::new();
        tracing::info!(
            registry = %config.registry.url,
            user = config.registry.user_info.as_ref().map(|info| info.user()),
            "checking schema registry"
        );
        if retry_until_ok("schema registry probe", backoff, &shutdown, || {
            health::probe_registry(&http, &config.registry)
        })
        .await
        .is_none()
        {
            return Ok(None);
        }
        let codec = Arc::new(EventCodec::new(&config.registry, &config.kafka)?);
        let producer = kafka::producer(&config.kafka)?;
        let policy = ErrorPolicy {
            unclassified_attempts: config.unclassified_error_attempts.max(1),
            ..ErrorPolicy::default()
        };
        let health = Arc::new(HealthState::default());
        Ok(Some(Self {
            spec,
            relay: Relay::new(pool.clone(), producer.clone(), codec.clone(), policy, health.clone())
                .for_service(spec.name)
                .with_settings(RelaySettings {
                    batch_size: config.outbox_batch_size,
                    linger: Duration::from_millis(config.outbox_linger_ms),
                }),
            database: pool,
            kafka: config.kafka.clone(),
            registry: config.registry.clone(),
            codec,
            producer,
            shutdown,
            policy,
            health,
            authenticator,
            consumer_batch_size: config.consumer_batch_size.max(1),
            consumer_batch_linger: Duration::from_millis(config.consumer_batch_linger_ms),
        }))
    }

    /// The health routes for this service's dependencies and tasks.
    pub fn health_router(&self) -> Router {
        health::router(
            health::Dependencies {
                database: self.database.clone(),
                producer: self.producer.clone(),
                registry: self.registry.clone(),
                http: reqwest::Client::new(),
                ready_without_broker: self.spec.ready_without_broker,
            },
            self.health.clone(),
        )
    }

    /// Runs `task` as one of the service's watched tasks (see [`HealthState::watch`]).
    pub fn watched(
        &self,
        name: impl Into<std::borrow::Cow<'static, str>>,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.health.watch(name, self.shutdown.clone(), task)
    }

    /// The OpenAPI document the service serves: `own` with the shared routes, `/metrics` marked
    /// as needing a credential when the settings say so.
    fn served_document(&self, own: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
        let document = openapi::service_document(own);
        if self.authenticator.metrics_require_auth() {
            openapi::with_metrics_secured(document)
        } else {
            document
        }
    }

    /// Full name of this service's dead-letter topic.
    pub fn dead_letter_topic(&self) -> String {
        self.kafka.dead_letter_topic(self.spec.name)
    }
}

/// A service whose tasks run in the background.
pub struct RunningService {
    /// The address the HTTP server really bound.
    pub local_addr: SocketAddr,
    /// Cancel to stop the service gracefully.
    pub shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl RunningService {
    /// A running process made of `tasks`, serving HTTP on `local_addr`, stopped by `shutdown`.
    pub fn new(local_addr: SocketAddr, shutdown: CancellationToken, tasks: JoinSet<()>) -> Self {
        Self {
            local_addr,
            shutdown,
            tasks,
        }
    }

    /// Waits until every task of the service has stopped (after shutdown was requested).
    pub async fn wait(mut self) {
        while let Some(result) = self.tasks.join_next().await {
            if let Err(error) = result {
                tracing::error!(%error, "service task failed");
            }
        }
    }

    /// Requests a graceful shutdown and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

/// What a service runs besides its HTTP routes.
pub struct Workload {
    /// Topics the service consumes and the handler applying their events; `None` for a service
    /// that consumes nothing.
    pub consumer: Option<(Vec<Topic>, Arc<dyn EventHandler>)>,
    /// Further background tasks (deadline scanners, chargers, mailers); each must end on
    /// shutdown, and one that ends before makes `/health/live` fail.
    pub background: Vec<BackgroundTask>,
}

/// A named background task of a service.
pub struct BackgroundTask {
    /// How `/health/live` names it, e.g. `charger`; unique within the service.
    pub name: std::borrow::Cow<'static, str>,
    /// The task; it runs until shutdown.
    pub task: BoxFuture<'static, ()>,
}

impl BackgroundTask {
    /// A task named `name`.
    pub fn new(
        name: impl Into<std::borrow::Cow<'static, str>>,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            task: Box::pin(task),
        }
    }
}

impl ServiceContext {
    /// Binds HTTP on `listen` and spawns the server (routes plus health, the operator routes,
    /// `/metrics` and `/openapi.json`, every request counted), the outbox relay, the consumer
    /// loop and the background tasks. `document` describes `routes`; the document served is it
    /// with the shared routes merged in ([`openapi::service_document`]). On shutdown the server
    /// and the consumer stop taking new work and finish what they hold; the relay then
    /// publishes what is left.
    pub async fn launch(
        self,
        listen: SocketAddr,
        routes: Router,
        document: utoipa::openapi::OpenApi,
        workload: Workload,
    ) -> Result<RunningService> {
        let listener = bind(listen).await?;
        let local_addr = listener.local_addr().map_err(|e| crate::Error::Config(e.to_string()))?;
        // Everything that can commit outbox rows runs in `work`; the relay runs beside it and,
        // once all of `work` has stopped, publishes what the last of it committed.
        let mut work = JoinSet::new();
        // Health probes stay out of the traces: they would bury the sagas' spans.
        // A wrong method gets a JSON 405 too; the fallback goes on each method router before
        // a layer wraps it.
        let router = auth::install(routes, self.authenticator.clone())
            .merge(admin::router(self.database.clone(), self.authenticator.clone()))
            .method_not_allowed_fallback(crate::http::method_not_allowed)
            .layer(axum::middleware::from_fn(crate::telemetry::trace_http_request))
            .merge(self.health_router())
            .merge(metrics_router(&self.authenticator))
            .merge(openapi::router(&self.served_document(document)))
            .method_not_allowed_fallback(crate::http::method_not_allowed)
            .fallback(crate::http::unrouted);
        let router = metrics::record_http_requests(router, self.spec.name);
        let shutdown = self.shutdown.clone();
        work.spawn(async move {
            if let Err(error) = serve(listener, router, shutdown).await {
                tracing::error!(%error, "http server failed");
            }
        });
        if let Some((topics, handler)) = workload.consumer {
            let group_id = self.kafka.prefixed(self.spec.name);
            let names: Vec<String> = topics.iter().map(|t| self.kafka.topic(*t)).collect();
            let consumer_loop = ConsumerLoop {
                consumer: kafka::subscribed_consumer(&self.kafka, &group_id, &names)?,
                codec: self.codec.clone(),
                producer: self.producer.clone(),
                dead_letter_topic: self.dead_letter_topic(),
                group_id,
                policy: self.policy,
                health: self.health.clone(),
                batch_size: self.consumer_batch_size,
                batch_linger: self.consumer_batch_linger,
            };
            work.spawn(self.watched("consumer", consumer_loop.run(handler, self.shutdown.clone())));
        }
        for background in workload.background {
            work.spawn(self.watched(background.name, background.task));
        }
        let mut tasks = JoinSet::new();
        let relay = self.relay.clone();
        let shutdown = self.shutdown.clone();
        let health = self.health.clone();
        tasks.spawn(async move {
            let relaying = tokio::spawn(health.watch("outbox relay", shutdown.clone(), relay.clone().run(shutdown)));
            while let Some(result) = work.join_next().await {
                if let Err(error) = result {
                    tracing::error!(%error, "service task failed");
                }
            }
            let _ = relaying.await;
            if let Err(error) = relay.publish_batch().await {
                tracing::warn!(%error, "final outbox flush failed; the next start publishes the rest");
            }
        });
        Ok(RunningService {
            local_addr,
            shutdown: self.shutdown.clone(),
            tasks,
        })
    }
}

/// `/metrics`, behind the `read` or `admin` scope when the settings restrict it.
pub fn metrics_router(authenticator: &Arc<Authenticator>) -> Router {
    let router = metrics::router(metrics::install());
    if authenticator.metrics_require_auth() {
        router.route_layer(axum::middleware::from_fn_with_state(
            authenticator.clone(),
            auth::require::<auth::ReadSaga>,
        ))
    } else {
        router
    }
}

/// The saga's event topics (unlimited retention: replay reads them from the start) and the
/// service's dead-letter topic.
pub fn saga_topics(kafka: &KafkaConfig, service: &str) -> Vec<TopicSpec> {
    Topic::ALL
        .iter()
        .map(|topic| kafka.topic(*topic))
        .chain(std::iter::once(kafka.dead_letter_topic(service)))
        .map(|name| TopicSpec {
            name,
            partitions: kafka.topic_partitions,
            retention: Retention::Unlimited,
        })
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
    // Handlers may ask for the client's address (ConnectInfo), e.g. to rate-limit it.
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// The body of every service's `main`: sets up telemetry, starts the service with a token
/// cancelled on SIGTERM or Ctrl-C, and waits until it has stopped gracefully.
pub async fn run_until_stopped<F, Fut>(
    service: &'static str,
    telemetry: &TelemetryConfig,
    start: F,
) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<RunningService>>>,
{
    crate::telemetry::init(service, telemetry);
    let outcome = match start(shutdown_on_signal()).await {
        Ok(running) => {
            if let Some(running) = running {
                running.wait().await;
            }
            tracing::info!("stopped");
            Ok(())
        }
        Err(error) => Err(error),
    };
    // Spans still waiting in the exporter's batch go out before the process ends.
    crate::telemetry::shutdown();
    outcome
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

/// The `main` of a service binary: `saga_common::service_main!(order_service);` parses the
/// crate's `Config` from flags and environment and runs its `start` until SIGTERM or Ctrl-C
/// (see [`run_until_stopped`]). The crate must export `Config` (with a `service` field),
/// `SPEC` and `start`.
#[macro_export]
macro_rules! service_main {
    ($service:ident) => {
        #[tokio::main]
        async fn main() -> anyhow::Result<()> {
            let config = <$service::Config as clap::Parser>::parse();
            $crate::service::run_until_stopped($service::SPEC.name, &config.service.telemetry, |shutdown| {
                $service::start(&config, shutdown)
            })
            .await
        }
    };
}
