//! The `notifications` table as a replay rebuilds it, in memory: the [`NotificationStore`] the
//! rebuild runs the handler's code on, changing each row as the SQL of [`crate::store`] does.

use chrono::{DateTime, Utc};
use saga_common::replay::memory::{MemoryTable, Row};
use saga_contracts::{EventId, OrderId};
use serde::{Deserialize, Serialize};

use crate::domain::NewNotification;
use crate::email::Outcome;
use crate::error::Result;
use crate::store::NotificationStore;

/// What a rebuilt row says about an email that a notification.sent or notification.failed
/// repeats: replay checks the event against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuiltEmail {
    /// The customer's address.
    pub recipient: String,
    /// Subject.
    pub subject: String,
    /// Deterministic Message-ID.
    pub message_id: String,
}

/// Where an email stands, as the `status` column holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Recorded, not sent yet.
    Pending,
    /// The SMTP server accepted it.
    Sent,
    /// Set aside: retrying cannot deliver it.
    Failed,
}

/// A row of `notifications` as replay writes it. The mailer's bookkeeping, which no event
/// records, is left out and takes its column defaults when the row is first written:
/// `created_at` and `next_attempt_at` the time of that write, no `claimed_until`, no
/// `unclassified_failures`; the SQL replay mirrors leaves them at those defaults too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRow {
    /// The order.
    pub order_id: OrderId,
    /// Which outcome the email reports.
    pub outcome: Outcome,
    /// The customer's address.
    pub recipient: String,
    /// Subject.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
    /// Deterministic Message-ID.
    pub message_id: String,
    /// Where the email stands.
    pub status: Status,
    /// SMTP attempts so far.
    pub attempts: i32,
    /// The order event that asked for the email.
    pub source_event_id: EventId,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// When the SMTP server accepted it, if it did.
    pub sent_at: Option<DateTime<Utc>>,
    /// When it was set aside, if it was.
    pub failed_at: Option<DateTime<Utc>>,
}

impl Row for NotificationRow {
    type Key = (OrderId, Outcome);
    const TABLE: &'static str = "notifications";
    const KEY_COLUMNS: &'static [&'static str] = &["order_id", "outcome"];

    fn key(&self) -> Self::Key {
        (self.order_id, self.outcome)
    }
}

impl NotificationRow {
    fn rebuilt_email(&self) -> RebuiltEmail {
        RebuiltEmail {
            recipient: self.recipient.clone(),
            subject: self.subject.clone(),
            message_id: self.message_id.clone(),
        }
    }
}

/// The notification service's rebuilt state: its one table.
///
/// `message_id` is unique in the database too, but it is derived from the key (order and
/// outcome, [`crate::email::message_id`]), so no row the key lets in can collide on it and no
/// index of it is kept here.
#[derive(Debug, Default)]
pub struct RebuiltNotifications {
    /// One row per order outcome.
    pub notifications: MemoryTable<NotificationRow>,
}

impl RebuiltNotifications {
    /// Applies a recorded delivery to the email, as the replay SQL's `UPDATE ... WHERE attempts
    /// <= $attempts` does: only if the row exists and counts no more attempts than the event.
    fn apply_delivery(
        &mut self,
        key: (OrderId, Outcome),
        attempts: i32,
        change: impl FnOnce(&mut NotificationRow),
    ) -> Option<RebuiltEmail> {
        let current = self.notifications.get(&key)?;
        if current.attempts > attempts {
            return None;
        }
        self.notifications.update(&key, |row| {
            row.attempts = attempts;
            change(row);
        });
        self.notifications.get(&key).map(NotificationRow::rebuilt_email)
    }
}

impl NotificationStore for RebuiltNotifications {
    async fn record_intent(&mut self, notification: &NewNotification) -> Result<bool> {
        Ok(self.notifications.insert_new(NotificationRow {
            order_id: notification.order_id,
            outcome: notification.outcome,
            recipient: notification.recipient.clone(),
            subject: notification.subject.clone(),
            body: notification.body.clone(),
            message_id: notification.message_id.clone(),
            status: Status::Pending,
            attempts: 0,
            source_event_id: notification.source_event_id,
            last_error: None,
            sent_at: None,
            failed_at: None,
        }))
    }

    async fn email_exists(&mut self, order_id: OrderId, outcome: Outcome) -> Result<bool> {
        Ok(self.notifications.contains(&(order_id, outcome)))
    }
}

/// The deliveries replay takes from the service's own events; the live mailer records them as
/// it sends, so they are no part of [`NotificationStore`].
impl RebuiltNotifications {
    /// Marks the email sent after `attempts` attempts at `sent_at`, as a recorded
    /// notification.sent tells: no error, no claim. Returns the rebuilt email, or `None` if no
    /// row changed: there is no such email, or its row already counts more attempts (attempts
    /// only grow, so the event is an older one published again; the later one stands).
    pub async fn apply_recorded_sent(
        &mut self,
        order_id: OrderId,
        outcome: Outcome,
        attempts: i32,
        sent_at: DateTime<Utc>,
    ) -> Result<Option<RebuiltEmail>> {
        Ok(self.apply_delivery((order_id, outcome), attempts, |row| {
            row.status = Status::Sent;
            row.sent_at = Some(sent_at);
            row.last_error = None;
            row.failed_at = None;
        }))
    }

    /// Sets the email aside after `attempts` attempts at `failed_at` with `error`, as a recorded
    /// notification.failed tells. Returns like [`Self::apply_recorded_sent`].
    pub async fn apply_recorded_failure(
        &mut self,
        order_id: OrderId,
        outcome: Outcome,
        attempts: i32,
        error: &str,
        failed_at: DateTime<Utc>,
    ) -> Result<Option<RebuiltEmail>> {
        Ok(self.apply_delivery((order_id, outcome), attempts, |row| {
            row.status = Status::Failed;
            row.last_error = Some(error.to_owned());
            row.failed_at = Some(failed_at);
            row.sent_at = None;
        }))
    }
}

#[cfg(test)]
mod tests {
    use saga_common::replay::memory::RebuiltTable;
    use serde_json::json;

    use super::*;

    fn notification(outcome: Outcome) -> NewNotification {
        let order_id: OrderId = "0f8e2c4a-1b2c-4d5e-8f90-123456789abc".parse().expect("a UUID");
        NewNotification {
            order_id,
            outcome,
            recipient: "ada@example.com".into(),
            subject: format!("Order 0f8e2c4a {outcome}"),
            body: "Hello".into(),
            message_id: crate::email::message_id(order_id, outcome),
            source_event_id: EventId::new(),
        }
    }

    fn at(millis: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(millis).expect("a valid instant")
    }

    #[tokio::test]
    async fn a_second_email_for_the_same_order_outcome_is_not_recorded() -> Result<()> {
        let mut state = RebuiltNotifications::default();
        let first = notification(Outcome::Confirmed);
        assert!(state.record_intent(&first).await?);
        let again = NewNotification {
            source_event_id: EventId::new(),
            ..first.clone()
        };
        assert!(!state.record_intent(&again).await?);
        let row = state
            .notifications
            .get(&(first.order_id, first.outcome))
            .expect("a row");
        assert_eq!(row.source_event_id, first.source_event_id);
        assert_eq!((row.status, row.attempts), (Status::Pending, 0));
        assert!(state.email_exists(first.order_id, Outcome::Confirmed).await?);
        assert!(!state.email_exists(first.order_id, Outcome::Failed).await?);
        Ok(())
    }

    #[tokio::test]
    async fn a_recorded_send_after_a_set_aside_attempt_makes_the_email_sent_and_clears_the_failure() -> Result<()> {
        let mut state = RebuiltNotifications::default();
        let email = notification(Outcome::Failed);
        state.record_intent(&email).await?;
        let set_aside = state
            .apply_recorded_failure(email.order_id, email.outcome, 2, "550 no such user", at(1_000))
            .await?;
        assert_eq!(set_aside.map(|email| email.message_id), Some(email.message_id.clone()));
        let sent = state
            .apply_recorded_sent(email.order_id, email.outcome, 3, at(2_000))
            .await?;
        assert!(sent.is_some());
        let row = state
            .notifications
            .get(&(email.order_id, email.outcome))
            .expect("a row");
        assert_eq!((row.status, row.attempts), (Status::Sent, 3));
        assert_eq!(
            (row.sent_at, row.failed_at, row.last_error.as_deref()),
            (Some(at(2_000)), None, None)
        );
        Ok(())
    }

    #[tokio::test]
    async fn an_older_delivery_published_again_changes_nothing() -> Result<()> {
        let mut state = RebuiltNotifications::default();
        let email = notification(Outcome::Confirmed);
        state.record_intent(&email).await?;
        state
            .apply_recorded_sent(email.order_id, email.outcome, 3, at(2_000))
            .await?;
        let older = state
            .apply_recorded_failure(email.order_id, email.outcome, 2, "550 no such user", at(1_000))
            .await?;
        assert_eq!(older, None);
        let row = state
            .notifications
            .get(&(email.order_id, email.outcome))
            .expect("a row");
        assert_eq!(
            (row.status, row.attempts, row.sent_at),
            (Status::Sent, 3, Some(at(2_000)))
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_delivery_of_an_email_never_recorded_changes_nothing() -> Result<()> {
        let mut state = RebuiltNotifications::default();
        let email = notification(Outcome::Confirmed);
        let sent = state
            .apply_recorded_sent(email.order_id, email.outcome, 1, at(1_000))
            .await?;
        assert_eq!(sent, None);
        assert!(state.notifications.is_empty());
        Ok(())
    }

    #[test]
    fn a_row_is_written_with_its_columns_as_postgresql_reads_them() -> Result<(), Box<dyn std::error::Error>> {
        let email = notification(Outcome::Confirmed);
        let row = NotificationRow {
            order_id: email.order_id,
            outcome: email.outcome,
            recipient: email.recipient,
            subject: email.subject,
            body: email.body,
            message_id: email.message_id,
            status: Status::Sent,
            attempts: 1,
            source_event_id: email.source_event_id,
            last_error: None,
            sent_at: Some(at(1_700_000_000_123)),
            failed_at: None,
        };
        let written = serde_json::to_value(&row)?;
        assert_eq!(written["outcome"], "confirmed");
        assert_eq!(written["status"], "sent");
        assert_eq!(written["order_id"], email.order_id.to_string());
        assert_eq!(written["sent_at"], "2023-11-14T22:13:20.123Z");
        assert!(written["failed_at"].is_null());
        let mut columns: Vec<&str> = written
            .as_object()
            .ok_or("an object")?
            .keys()
            .map(String::as_str)
            .collect();
        columns.sort_unstable();
        assert_eq!(
            columns,
            [
                "attempts",
                "body",
                "failed_at",
                "last_error",
                "message_id",
                "order_id",
                "outcome",
                "recipient",
                "sent_at",
                "source_event_id",
                "status",
                "subject"
            ]
        );
        Ok(())
    }

    #[test]
    fn a_row_reads_back_from_what_to_jsonb_gives_with_the_mailers_columns() -> Result<(), Box<dyn std::error::Error>> {
        let order_id = OrderId::new();
        let loaded = json!({
            "order_id": order_id.to_string(),
            "outcome": "failed",
            "recipient": "ada@example.com",
            "subject": "Order failed",
            "body": "Sorry",
            "message_id": crate::email::message_id(order_id, Outcome::Failed),
            "status": "failed",
            "attempts": 4,
            "source_event_id": EventId::new().to_string(),
            "created_at": "2026-12-02T06:04:20.288882+00:00",
            "next_attempt_at": "2026-12-02T06:04:20.288882+00:00",
            "last_error": "550 no such user",
            "sent_at": null,
            "claimed_until": null,
            "failed_at": "2026-12-02T06:04:21.123+00:00",
            "unclassified_failures": 0
        });
        let mut table = MemoryTable::<NotificationRow>::default();
        table.load(vec![loaded])?;
        let row = table.get(&(order_id, Outcome::Failed)).ok_or("the row")?;
        assert_eq!((row.status, row.attempts), (Status::Failed, 4));
        assert_eq!(row.failed_at.map(|at| at.timestamp_millis()), Some(1_796_191_461_123));
        Ok(())
    }
}
