//! Starting the inventory service for a test, and speaking to its stock API.

use anyhow::Context;
use reqwest::StatusCode;
use saga_common::service::RunningService;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::TestEnv;

/// The inventory service's name: its consumer group and dead-letter topic stem.
pub const INVENTORY_SERVICE: &str = inventory_service::SPEC.name;

/// One started inventory service with an HTTP client pointed at it.
pub struct Inventory {
    /// The service; stop it with [`Inventory::stop`].
    pub running: RunningService,
    /// `http://host:port` of its HTTP API.
    pub base_url: String,
    http: reqwest::Client,
}

impl Inventory {
    /// Starts the inventory service on `env`'s topics and a database of its own. Several
    /// started on one `env` share the database and the consumer group, like instances of one
    /// deployment.
    pub async fn start(env: &TestEnv) -> anyhow::Result<Self> {
        let config = inventory_service::Config {
            service: env.service_config("inventory"),
        };
        let running = inventory_service::start(&config, CancellationToken::new())
            .await?
            .context("the inventory service stopped before it was up")?;
        Ok(Self {
            base_url: format!("http://{}", running.local_addr),
            running,
            http: crate::http(),
        })
    }

    /// Stops the service gracefully.
    pub async fn stop(self) {
        self.running.stop().await;
    }

    /// Posts `body` as JSON to `POST /stock/{sku}/adjustments` and returns the status and the
    /// JSON answer.
    pub async fn adjust(&self, sku: &str, body: Value) -> anyhow::Result<(StatusCode, Value)> {
        let response = self
            .http
            .post(format!("{}/stock/{sku}/adjustments", self.base_url))
            .json(&body)
            .send()
            .await?;
        Ok((response.status(), response.json().await?))
    }

    /// Posts raw `body` with a JSON content type to `POST /stock/{sku}/adjustments`.
    pub async fn adjust_raw(&self, sku: &str, body: &'static str) -> anyhow::Result<(StatusCode, Value)> {
        let response = self
            .http
            .post(format!("{}/stock/{sku}/adjustments", self.base_url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        Ok((response.status(), response.json().await?))
    }

    /// Adds (or, negative, removes) `delta` units of `sku`, expecting success.
    pub async fn restock(&self, sku: &str, delta: i64) -> anyhow::Result<Value> {
        let (status, body) = self.adjust(sku, json!({"delta": delta, "reason": "restock"})).await?;
        anyhow::ensure!(
            status == StatusCode::CREATED,
            "restock of {sku} answered {status}: {body}"
        );
        Ok(body)
    }

    /// The answer of `GET /health/live`: its status and JSON body (tasks, dead letters counted).
    pub async fn live(&self) -> anyhow::Result<(StatusCode, Value)> {
        let response = self.http.get(format!("{}/health/live", self.base_url)).send().await?;
        Ok((response.status(), response.json().await?))
    }

    /// The stock levels of `sku` as (available, reserved, committed); `None` if it was never
    /// stocked (404).
    pub async fn levels(&self, sku: &str) -> anyhow::Result<Option<(i64, i64, i64)>> {
        let response = self.http.get(format!("{}/stock/{sku}", self.base_url)).send().await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        anyhow::ensure!(
            response.status() == StatusCode::OK,
            "GET /stock/{sku} answered {}",
            response.status()
        );
        let body: Value = response.json().await?;
        anyhow::ensure!(body["sku"] == sku, "GET /stock/{sku} named another sku: {body}");
        let number = |field: &str| {
            body[field]
                .as_i64()
                .with_context(|| format!("{field} missing in {body}"))
        };
        Ok(Some((number("available")?, number("reserved")?, number("committed")?)))
    }
}
