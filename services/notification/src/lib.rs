//! Notification service: emails each order's outcome to its customer exactly once.

use clap::Parser;
use saga_common::service::{RunningService, ServiceConfig, ServiceContext, ServiceSpec, Workload};
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Name, default database and default port of this service.
pub const SPEC: ServiceSpec =
    ServiceSpec { name: "notification-service", default_database: "saga_notification", default_http_port: 8084 };

/// Configuration of the notification service.
#[derive(Debug, Clone, Parser)]
#[command(name = "notification-service", about = "Emails each order's outcome exactly once")]
pub struct Config {
    /// Settings shared by every service.
    #[command(flatten)]
    pub service: ServiceConfig,
}

/// Starts the service; `None` if `shutdown` was cancelled before it was up.
pub async fn start(config: &Config, shutdown: CancellationToken) -> anyhow::Result<Option<RunningService>> {
    let Some(context) = ServiceContext::start(SPEC, &config.service, &MIGRATIONS, shutdown).await? else {
        return Ok(None);
    };
    let listen = config.service.http_listen(&SPEC);
    let running = context.launch(listen, axum::Router::new(), Workload { consumer: None, background: Vec::new() }).await?;
    Ok(Some(running))
}
