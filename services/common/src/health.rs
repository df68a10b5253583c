//! Health that tells the truth.
//!
//! - `/health/live` fails (503) when a task the service cannot work without (the consumer loop,
//!   the outbox relay, a charger or mailer) has died, by panic or by returning before shutdown;
//!   restarting the process is then the cure. Its body also counts what the error policy set
//!   aside: records dead-lettered and outbox rows parked since start.
//! - `/health/ready` answers 200 when no watched task died and the dependencies the service
//!   needs to take traffic answer right now, 503 naming the failing one otherwise. The order service needs only its
//!   database (the outbox holds accepted orders while the broker is away); the others need the
//!   broker and the registry too. The probes reuse the service's clients.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use futures::FutureExt;
use rdkafka::producer::{FutureProducer, Producer};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use utoipa::{OpenApi, ToSchema};

use crate::config::RegistryConfig;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a watched task is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// Working.
    Running,
    /// Ended after shutdown was requested.
    Stopped,
    /// Ended while the service was meant to run; the text says how.
    Died(String),
}

/// The service's liveness: its watched tasks and the count of work set aside.
#[derive(Debug, Default)]
pub struct HealthState {
    tasks: Mutex<BTreeMap<Cow<'static, str>, TaskState>>,
    dead_lettered: AtomicU64,
    parked: AtomicU64,
}

impl HealthState {
    /// Runs `task` as `name`, recording when it ends: stopped if `shutdown` was cancelled by
    /// then, died (with the panic message, if it panicked) otherwise. Panics are caught here so
    /// the rest of the service keeps running and reports the death.
    pub fn watch(
        self: &Arc<Self>,
        name: impl Into<Cow<'static, str>>,
        shutdown: CancellationToken,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let name = name.into();
        self.set(name.clone(), TaskState::Running);
        let health = self.clone();
        async move {
            let ended = AssertUnwindSafe(task).catch_unwind().await;
            let state = match ended {
                Ok(()) if shutdown.is_cancelled() => TaskState::Stopped,
                Ok(()) => TaskState::Died("returned while the service was running".into()),
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic without a message".into());
                    TaskState::Died(format!("panicked: {message}"))
                }
            };
            if let TaskState::Died(how) = &state {
                tracing::error!(task = %name, how, "service task died; /health/live now fails");
            }
            health.set(name, state);
        }
    }

    fn set(&self, name: Cow<'static, str>, state: TaskState) {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).insert(name, state);
    }

    /// Each watched task and its state.
    pub fn tasks(&self) -> BTreeMap<Cow<'static, str>, TaskState> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counts a record sent to the dead-letter topic.
    pub fn count_dead_letter(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts outbox rows set aside in the parked table.
    pub fn count_parked(&self, rows: u64) {
        self.parked.fetch_add(rows, Ordering::Relaxed);
    }

    /// Records dead-lettered since start.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }

    /// Outbox rows parked since start.
    pub fn parked(&self) -> u64 {
        self.parked.load(Ordering::Relaxed)
    }
}

/// What `/health/ready` checks.
#[derive(Clone)]
pub struct Dependencies {
    /// The service's database; always needed.
    pub database: PgPool,
    /// The service's producer, whose client answers the broker probe.
    pub producer: FutureProducer,
    /// The schema registry.
    pub registry: RegistryConfig,
    /// Shared HTTP client for the registry probe.
    pub http: reqwest::Client,
    /// Whether the service can take traffic while the broker or the registry is down.
    pub ready_without_broker: bool,
}

#[derive(Clone)]
pub(crate) struct HealthRoutes {
    dependencies: Dependencies,
    state: Arc<HealthState>,
}

/// Routes `/health/live` and `/health/ready`.
pub fn router(dependencies: Dependencies, state: Arc<HealthState>) -> Router {
    routes().with_state(HealthRoutes { dependencies, state })
}

pub(crate) fn routes() -> Router<HealthRoutes> {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
}

/// The OpenAPI description of the health routes.
pub(crate) fn document() -> utoipa::openapi::OpenApi {
    #[derive(OpenApi)]
    #[openapi(paths(live, ready))]
    struct HealthApi;
    HealthApi::openapi()
}

/// Whether the service is live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// No watched task died.
    Live,
    /// A watched task died; restarting the process is the cure.
    Dead,
}

/// The body of `/health/live`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LiveBody {
    /// `live`, or `dead` once a watched task died.
    pub status: Liveness,
    /// Each watched task by name: `running`, `stopped`, or `died: <how>`.
    pub tasks: BTreeMap<String, String>,
    /// Records dead-lettered since start.
    pub dead_lettered: u64,
    /// Outbox rows parked since start.
    pub outbox_parked: u64,
}

/// Whether the service can take traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Readiness {
    /// Every needed dependency answers and no watched task died.
    #[serde(rename = "ready")]
    Ready,
    /// A needed dependency is down or a watched task died.
    #[serde(rename = "not ready")]
    NotReady,
}

/// Each dependency's state: `up`, or `down: <why>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DependencyChecks {
    /// The service's database.
    pub database: String,
    /// The Kafka cluster.
    pub broker: String,
    /// The schema registry.
    pub schema_registry: String,
}

/// The body of `/health/ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReadyBody {
    /// `ready` or `not ready`.
    pub status: Readiness,
    /// Each dependency's state.
    pub checks: DependencyChecks,
    /// The dependencies readiness needs: the database, and the broker and registry unless the
    /// service takes traffic without them.
    pub needs: Vec<String>,
    /// The watched tasks that died.
    pub dead_tasks: Vec<String>,
}

/// Liveness: 503 once a task the service cannot work without has died.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "health",
    responses(
        (status = 200, description = "Every watched task runs", body = LiveBody),
        (status = 503, description = "A watched task died; restart the process", body = LiveBody),
    )
)]
async fn live(State(routes): State<HealthRoutes>) -> (StatusCode, Json<LiveBody>) {
    let tasks = routes.state.tasks();
    let dead = tasks.values().any(|state| matches!(state, TaskState::Died(_)));
    let described = tasks
        .iter()
        .map(|(name, state)| {
            let text = match state {
                TaskState::Running => "running".to_owned(),
                TaskState::Stopped => "stopped".to_owned(),
                TaskState::Died(how) => format!("died: {how}"),
            };
            (name.to_string(), text)
        })
        .collect();
    let status = if dead {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(LiveBody {
            status: if dead { Liveness::Dead } else { Liveness::Live },
            tasks: described,
            dead_lettered: routes.state.dead_lettered(),
            outbox_parked: routes.state.parked(),
        }),
    )
}

/// Readiness: 200 while the service can take traffic, 503 naming what fails otherwise.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "health",
    responses(
        (status = 200, description = "The needed dependencies answer and no watched task died", body = ReadyBody),
        (status = 503, description = "A needed dependency is down or a watched task died", body = ReadyBody),
    )
)]
async fn ready(State(routes): State<HealthRoutes>) -> (StatusCode, Json<ReadyBody>) {
    let deps = &routes.dependencies;
    let (database, broker, registry) = tokio::join!(
        probe_database(&deps.database),
        probe_broker(&deps.producer),
        probe_registry(&deps.http, &deps.registry),
    );
    let database = describe(database.map_err(|e| e.to_string()));
    let broker = describe(broker);
    let registry = describe(registry);
    // A service with a dead task is not fit for traffic either, whatever its dependencies say.
    let dead_tasks: Vec<String> = routes
        .state
        .tasks()
        .into_iter()
        .filter(|(_, state)| matches!(state, TaskState::Died(_)))
        .map(|(name, _)| name.into_owned())
        .collect();
    let all_up = dead_tasks.is_empty()
        && database == "up"
        && (deps.ready_without_broker || (broker == "up" && registry == "up"));
    let status = if all_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let needs: &[&str] = if deps.ready_without_broker {
        &["database"]
    } else {
        &["database", "broker", "schema_registry"]
    };
    (
        status,
        Json(ReadyBody {
            status: if all_up { Readiness::Ready } else { Readiness::NotReady },
            checks: DependencyChecks {
                database,
                broker,
                schema_registry: registry,
            },
            needs: needs.iter().map(|need| (*need).to_owned()).collect(),
            dead_tasks,
        }),
    )
}

fn describe(result: Result<(), String>) -> String {
    match result {
        Ok(()) => "up".to_string(),
        Err(error) => format!("down: {error}"),
    }
}

async fn probe_database(pool: &PgPool) -> Result<(), sqlx::Error> {
    tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(pool))
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)?
        .map(|_| ())
}

/// Asks the cluster for its broker list through the producer's own client (a blocking call,
/// so on the blocking pool), instead of connecting a new client per probe.
async fn probe_broker(producer: &FutureProducer) -> Result<(), String> {
    let producer = producer.clone();
    let fetched = tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(None, PROBE_TIMEOUT)
            .map(|metadata| metadata.brokers().len())
    })
    .await
    .map_err(|e| e.to_string())?;
    match fetched {
        Ok(0) => Err("the cluster lists no brokers".into()),
        Ok(_) => Ok(()),
        Err(error) => Err(error.to_string()),
    }
}

/// Checks the registry answers `GET /subjects` with a success status, with the configured
/// credentials (so a registry that refuses them is not ready for this service either).
pub async fn probe_registry(http: &reqwest::Client, registry: &RegistryConfig) -> Result<(), String> {
    let url = format!("{}/subjects", registry.url.trim_end_matches('/'));
    let response = registry
        .authorize(http.get(url))
        .timeout(PROBE_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match response.status() {
        status if status.is_success() => Ok(()),
        status @ (reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN) => {
            let env = crate::config::RegistryUserInfo::ENV;
            Err(match &registry.user_info {
                Some(info) => format!("status {status}: the registry refuses user '{}' ({env})", info.user()),
                None => format!("status {status}: the registry requires credentials; set {env}"),
            })
        }
        status => Err(format!("status {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_or_returns_early_is_dead_and_one_stopped_on_shutdown_is_not() {
        let health = Arc::new(HealthState::default());
        let shutdown = CancellationToken::new();
        tokio::spawn(health.watch("panicker", shutdown.clone(), async { panic!("boom") }))
            .await
            .expect("the watcher catches the panic");
        health.watch("quitter", shutdown.clone(), async {}).await;
        shutdown.cancel();
        health.watch("graceful", shutdown.clone(), async {}).await;
        let tasks = health.tasks();
        assert_eq!(tasks["panicker"], TaskState::Died("panicked: boom".into()));
        assert_eq!(
            tasks["quitter"],
            TaskState::Died("returned while the service was running".into())
        );
        assert_eq!(tasks["graceful"], TaskState::Stopped);
    }

    #[test]
    fn set_aside_work_is_counted() {
        let health = HealthState::default();
        health.count_dead_letter();
        health.count_parked(3);
        assert_eq!((health.dead_lettered(), health.parked()), (1, 3));
    }
}
