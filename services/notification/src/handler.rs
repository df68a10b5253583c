//! Consumes `orders`: for `order.confirmed` and `order.failed` it records, in one transaction with
//! the inbox entry, the intent to send one email per order outcome, then wakes the mailer. It
//! never talks to SMTP itself, so a redelivered event or a crash anywhere in here can neither
//! lose nor double an email. Every other event is ignored without touching the database.

use std::sync::Arc;

use async_trait::async_trait;
use saga_common::consumer::{ConsumedEvent, EventHandler, HandlerError};
use saga_common::inbox;
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::domain::{self, NewNotification};
use crate::store;

/// The `orders` consumer of the notification service.
pub struct NotificationHandler {
    database: PgPool,
    mailer_wake: Arc<Notify>,
}

impl NotificationHandler {
    /// A handler writing to `database` and waking the mailer through `mailer_wake`.
    pub fn new(database: PgPool, mailer_wake: Arc<Notify>) -> Self {
        Self { database, mailer_wake }
    }

    #[tracing::instrument(
        skip_all,
        fields(order_id = %notification.order_id, event_id = %notification.source_event_id)
    )]
    async fn record(&self, consumed: &ConsumedEvent, notification: NewNotification) -> Result<(), HandlerError> {
        let mut tx = self.database.begin().await?;
        if !inbox::record(&mut tx, consumed).await? {
            return Ok(());
        }
        let recorded = store::record_intent(&mut tx, &notification).await?;
        tx.commit().await?;
        if recorded {
            tracing::info!(outcome = %notification.outcome, message_id = %notification.message_id, "email queued");
            self.mailer_wake.notify_one();
        } else {
            tracing::info!(outcome = %notification.outcome, "email for this order outcome already queued");
        }
        Ok(())
    }
}

#[async_trait]
impl EventHandler for NotificationHandler {
    async fn handle(&self, consumed: &ConsumedEvent) -> Result<(), HandlerError> {
        match domain::email_for(&consumed.event)? {
            Some(notification) => self.record(consumed, notification).await,
            None => Ok(()),
        }
    }
}
