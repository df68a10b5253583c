//! Liveness and readiness endpoints: `/health/live` answers while the process runs;
//! `/health/ready` answers 200 only if the database, the broker and the schema registry are
//! all reachable right now, and 503 naming the failing dependency otherwise.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;

use crate::config::{KafkaConfig, RegistryConfig};
use crate::kafka::probe_broker;

/// The dependencies a readiness probe checks.
#[derive(Clone)]
pub struct Dependencies {
    /// The service's database.
    pub database: PgPool,
    /// The broker.
    pub kafka: KafkaConfig,
    /// The schema registry.
    pub registry: RegistryConfig,
    /// Shared HTTP client for the registry probe.
    pub http: reqwest::Client,
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Routes `/health/live` and `/health/ready`.
pub fn router(dependencies: Dependencies) -> Router {
    Router::new()
        .route("/health/live", get(|| async { Json(json!({"status": "live"})) }))
        .route("/health/ready", get(ready))
        .with_state(dependencies)
}

async fn ready(State(deps): State<Dependencies>) -> (StatusCode, Json<serde_json::Value>) {
    let (database, broker, registry) = tokio::join!(
        probe_database(&deps.database),
        probe_broker(&deps.kafka, PROBE_TIMEOUT),
        probe_registry(&deps.http, &deps.registry),
    );
    let checks = json!({
        "database": describe(database.map_err(|e| e.to_string())),
        "broker": describe(broker.map_err(|e| e.to_string())),
        "schema_registry": describe(registry),
    });
    let all_up = checks.as_object().is_some_and(|c| c.values().all(|v| v == "up"));
    let status = if all_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"status": if all_up { "ready" } else { "not ready" }, "checks": checks})),
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

/// Checks the registry answers `GET /subjects` with a success status.
pub async fn probe_registry(http: &reqwest::Client, registry: &RegistryConfig) -> Result<(), String> {
    let url = format!("{}/subjects", registry.url.trim_end_matches('/'));
    let response = http
        .get(url)
        .timeout(PROBE_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("status {}", response.status()))
    }
}
