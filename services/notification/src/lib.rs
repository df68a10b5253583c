//! Notification service: emails each order's outcome to its customer exactly once.
//!
//! This file wires the parts together. The `orders` consumer ([`handler`]) only records the
//! intent to send ([`domain`] decides which email an event asks for, [`email`] renders it), in
//! one transaction with its inbox entry; the [`mailer`] sends recorded emails over SMTP
//! afterwards, retrying what may pass and setting aside, for operators ([`http`]), what
//! retrying cannot deliver; never dropping one. All SQL is in [`store`], the error policy in
//! [`error`]. Each email carries a deterministic Message-ID per order outcome, so the one resend
//! a crash can cause (after the SMTP server accepted the mail, before it was marked sent) is
//! recognisable by the receiver. [`replay`] rebuilds the table from the topics in memory
//! ([`memory`]) with the handler's code, sending nothing.
//! See docs/notification.md.

use std::sync::Arc;

use clap::Parser;
use saga_common::service::{BackgroundTask, RunningService, ServiceConfig, ServiceContext, ServiceSpec, Workload};
use saga_contracts::Topic;
use sqlx::migrate::Migrator;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub mod domain;
pub mod email;
pub mod error;
pub mod handler;
pub mod http;
pub mod mailer;
pub mod memory;
pub mod replay;
pub mod store;

pub use error::{Error, Result};
use handler::NotificationHandler;
use mailer::{Mailer, MailerConfig, SmtpConfig, SmtpSender};

/// The service's migrations, run by the live service and by replay on its target.
pub(crate) static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Name, default database and default port of this service.
pub const SPEC: ServiceSpec = ServiceSpec::new("notification-service", "saga_notification", 8084);

/// Configuration of the notification service.
#[derive(Debug, Clone, Parser)]
#[command(name = "notification-service", about = "Emails each order's outcome exactly once")]
pub struct Config {
    /// Settings shared by every service.
    #[command(flatten)]
    pub service: ServiceConfig,
    /// The SMTP server emails go to.
    #[command(flatten)]
    pub smtp: SmtpConfig,
    /// Polling and retry timing of the mailer.
    #[command(flatten)]
    pub mailer: MailerConfig,
}

impl Config {
    /// `service` with the default SMTP (local maildev) and mailer settings.
    pub fn new(service: ServiceConfig) -> Self {
        Self {
            service,
            smtp: SmtpConfig::default(),
            mailer: MailerConfig::default(),
        }
    }
}

/// Starts the service; `None` if `shutdown` was cancelled before it was up.
pub async fn start(config: &Config, shutdown: CancellationToken) -> anyhow::Result<Option<RunningService>> {
    // Invalid SMTP settings fail here, before anything is consumed.
    let sender = SmtpSender::new(&config.smtp)?;
    let Some(context) = ServiceContext::start(SPEC, &config.service, &MIGRATIONS, shutdown).await? else {
        return Ok(None);
    };
    tracing::info!(smtp = ?config.smtp, "emails go to this SMTP server");
    let listen = config.service.http_listen(&SPEC);
    let mailer_wake = Arc::new(Notify::new());
    let mailer = Mailer::new(
        context.database.clone(),
        context.relay.clone(),
        sender,
        mailer_wake.clone(),
        &config.mailer,
        context.policy,
    );
    let handler = NotificationHandler::new(context.database.clone(), mailer_wake);
    let routes = http::routes(context.database.clone());
    let workload = Workload {
        consumer: Some((vec![Topic::Orders], Arc::new(handler))),
        background: (0..config.mailer.concurrency.max(1))
            .map(|number| {
                BackgroundTask::new(
                    format!("mailer {}", number + 1),
                    mailer.clone().run(context.shutdown.clone()),
                )
            })
            .collect(),
    };
    let running = context.launch(listen, routes, http::document(), workload).await?;
    Ok(Some(running))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Config;

    #[test]
    fn the_command_line_is_well_formed() {
        Config::command().debug_assert();
    }
}
