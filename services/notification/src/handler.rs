//! Consumes `orders`: for `order.confirmed` and `order.failed` it records, in one transaction with
//! the inbox entry, the intent to send one email per order outcome, then wakes the mailer. It
//! never talks to SMTP itself, so a redelivered event or a crash anywhere in here can neither
//! lose nor double an email. Every other event is ignored without touching the database.
//!
//! The state change itself is [`apply`], which replay runs as well; it emits no event (the
//! mailer records notification.sent / notification.failed once it has tried).

use std::sync::Arc;

use async_trait::async_trait;
use saga_common::consumer::{self, AfterCommit, BatchHandler, ConsumedEvent, EventHandler, HandlerError};
use saga_contracts::SagaEvent;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;

use crate::domain::{self, NewNotification};
use crate::error::Result;
use crate::store::NotificationStore;

/// What an order event did to the notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The event asks for no email.
    Ignored,
    /// The email it asks for is recorded as pending: the mailer has work.
    Queued(NewNotification),
    /// An email for this order outcome was recorded before, by another event with the same
    /// meaning: nothing changed.
    AlreadyQueued(NewNotification),
}

/// Applies an order event to `store`: records the email it asks for ([`domain::email_for`]) as
/// pending. The same code for the live handler (its transaction) and for replay (the rows it
/// rebuilds in memory). An outcome whose customer email is not an address fails with
/// [`crate::Error::Undeliverable`].
pub async fn apply<S: NotificationStore>(store: &mut S, event: &SagaEvent) -> Result<Applied> {
    let Some(notification) = domain::email_for(event)? else {
        return Ok(Applied::Ignored);
    };
    if store.record_intent(&notification).await? {
        Ok(Applied::Queued(notification))
    } else {
        Ok(Applied::AlreadyQueued(notification))
    }
}

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
}

#[async_trait]
impl BatchHandler for NotificationHandler {
    fn database(&self) -> &PgPool {
        &self.database
    }

    /// Only decisions ask for an email; other events get no inbox row.
    fn wants(&self, consumed: &ConsumedEvent) -> bool {
        domain::asks_for_email(&consumed.event)
    }

    #[tracing::instrument(
        skip_all,
        fields(
            order_id = consumed.event.order_id().map(tracing::field::display),
            event_id = %consumed.event.event_id(),
        )
    )]
    async fn apply(
        &self,
        tx: &mut PgConnection,
        consumed: &ConsumedEvent,
    ) -> Result<Option<AfterCommit>, HandlerError> {
        match apply(&mut *tx, &consumed.event).await? {
            Applied::Queued(notification) => {
                tracing::info!(outcome = %notification.outcome, message_id = %notification.message_id, "email queued");
                let mailer_wake = self.mailer_wake.clone();
                Ok(Some(Box::new(move || mailer_wake.notify_one())))
            }
            Applied::AlreadyQueued(notification) => {
                tracing::info!(outcome = %notification.outcome, "email for this order outcome already queued");
                Ok(None)
            }
            Applied::Ignored => Ok(None),
        }
    }
}

#[async_trait]
impl EventHandler for NotificationHandler {
    async fn handle(&self, consumed: &ConsumedEvent) -> Result<(), HandlerError> {
        consumer::handle_alone(self, consumed).await
    }

    fn batched(&self) -> Option<&dyn BatchHandler> {
        Some(self)
    }
}
