//! Rebuilding the notification service's `notifications` table from the topics, without sending
//! a single email.
//!
//! The rows are rebuilt in memory ([`RebuiltNotifications`]) by the code the live service runs
//! on its transaction: order outcomes go through [`handler::apply`], as live: the same rendering,
//! Message-ID and pending row. What the mailer then did (the SMTP server's answer) cannot be
//! recomputed, so it is taken from the notification.sent / notification.failed events the mailer
//! recorded: status, attempts, last error and the instant, exactly as the live row has them. No
//! SMTP transport exists here. What no event records stays as replay leaves it: an email the
//! live mailer is still retrying (its failed attempts so far) or an operator redrove and that was
//! not sent again yet (still `failed` when rebuilt).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use saga_common::consumer::{ConsumedEvent, HandlerError};
use saga_common::replay::memory::RebuiltTable;
use saga_common::replay::{Rebuild, Rebuilding, VerifiedTable};
use saga_contracts::{EventType, NotificationFailed, NotificationSent, OrderId, SagaEvent, Topic};

use crate::email::Outcome;
use crate::handler;
use crate::memory::{RebuiltEmail, RebuiltNotifications};
use crate::store::NotificationStore;

/// The notification service's part in replay: the rows it rebuilds.
#[derive(Debug, Default)]
pub struct Rebuilder {
    state: RebuiltNotifications,
}

/// The notification service's [`Rebuild`]; it needs no settings.
pub fn rebuilder() -> Rebuilder {
    Rebuilder::default()
}

/// The tables `sagactl verify` compares.
const TABLES: &[VerifiedTable] = &[VerifiedTable {
    name: "notifications",
    key: &["order_id", "outcome"],
    // created_at is when the handler processed the order event (live and replay process it at
    // different times); next_attempt_at, claimed_until and unclassified_failures are the
    // mailer's schedule, claims and retry budget, which no event records; traceparent names the
    // live consumer's span.
    ignored: &[
        "created_at",
        "next_attempt_at",
        "claimed_until",
        "unclassified_failures",
        "traceparent",
    ],
}];

/// What the rebuild reads, re-runs and compares.
static REBUILDING: Rebuilding = Rebuilding {
    service: crate::SPEC,
    migrations: &crate::MIGRATIONS,
    consumes: &[Topic::Orders],
    records_on: &[Topic::Notifications],
    // The emails follow from the order events alone; whether they went out is the SMTP
    // server's answer, taken from the events, not a decision replay re-runs.
    decisions: &[],
    tables: TABLES,
};

#[async_trait]
impl Rebuild for Rebuilder {
    fn rebuilding(&self) -> &'static Rebuilding {
        &REBUILDING
    }

    async fn apply(&mut self, consumed: &ConsumedEvent) -> Result<Vec<SagaEvent>, HandlerError> {
        let store = &mut self.state;
        match &consumed.event {
            SagaEvent::NotificationSent(sent) => apply_sent(store, sent).await?,
            SagaEvent::NotificationFailed(failed) => apply_failure(store, failed).await?,
            order_event => {
                handler::apply(store, order_event).await?;
            }
        }
        // The live handler emits nothing; the mailer's events are the recorded facts above.
        Ok(Vec::new())
    }

    fn rebuilt_tables(&mut self) -> Vec<&mut dyn RebuiltTable> {
        vec![&mut self.state.notifications]
    }
}

/// Marks the email sent as notification.sent tells.
async fn apply_sent(store: &mut RebuiltNotifications, sent: &NotificationSent) -> Result<(), HandlerError> {
    let email = RecordedEmail {
        event_type: EventType::NotificationSent,
        order_id: sent.envelope.order_id,
        outcome: sent.order_outcome.into(),
        recipient: &sent.recipient,
        subject: Some(&sent.subject),
        message_id: &sent.message_id,
    };
    let sent_at = instant(sent.envelope.occurred_at)?;
    let rebuilt = store
        .apply_recorded_sent(email.order_id, email.outcome, sent.attempts, sent_at)
        .await?;
    settle(store, &email, rebuilt).await
}

/// Sets the email aside as notification.failed tells.
async fn apply_failure(store: &mut RebuiltNotifications, failed: &NotificationFailed) -> Result<(), HandlerError> {
    let email = RecordedEmail {
        event_type: EventType::NotificationFailed,
        order_id: failed.envelope.order_id,
        outcome: failed.order_outcome.into(),
        recipient: &failed.recipient,
        subject: None,
        message_id: &failed.message_id,
    };
    let failed_at = instant(failed.envelope.occurred_at)?;
    let rebuilt = store
        .apply_recorded_failure(email.order_id, email.outcome, failed.attempts, &failed.error, failed_at)
        .await?;
    settle(store, &email, rebuilt).await
}

/// Checks what applying a delivery event found: the rebuilt email should be the one the event
/// names (a difference means the rendering changed since it was sent, and verify will show the
/// rows); no row changed is an older event published again, unless the email does not exist,
/// which the event cannot be applied without.
async fn settle(
    store: &mut RebuiltNotifications,
    email: &RecordedEmail<'_>,
    rebuilt: Option<RebuiltEmail>,
) -> Result<(), HandlerError> {
    let RecordedEmail {
        event_type,
        order_id,
        outcome,
        ..
    } = *email;
    match rebuilt {
        Some(rebuilt) => {
            let differing = differing_facts(&rebuilt, email);
            if !differing.is_empty() {
                tracing::warn!(%order_id, %outcome, ?differing, "{event_type} names another email than the one rebuilt");
            }
            Ok(())
        }
        None if store.email_exists(order_id, outcome).await? => {
            tracing::debug!(%order_id, %outcome, "{event_type} is older than the email's state; left alone");
            Ok(())
        }
        None => Err(HandlerError::permanent(format!(
            "{event_type} for order {order_id} ({outcome}): no email was recorded for this order outcome"
        ))),
    }
}

/// The email as a notification.sent or notification.failed names it.
#[derive(Debug, Clone, Copy)]
struct RecordedEmail<'a> {
    event_type: EventType,
    order_id: OrderId,
    outcome: Outcome,
    recipient: &'a str,
    /// notification.failed names no subject.
    subject: Option<&'a str>,
    message_id: &'a str,
}

/// The facts in which the rebuilt email and the one the event names differ.
fn differing_facts(rebuilt: &RebuiltEmail, recorded: &RecordedEmail<'_>) -> Vec<&'static str> {
    let mut differing = Vec::new();
    if rebuilt.recipient != recorded.recipient {
        differing.push("recipient");
    }
    if recorded.subject.is_some_and(|subject| subject != rebuilt.subject) {
        differing.push("subject");
    }
    if rebuilt.message_id != recorded.message_id {
        differing.push("message_id");
    }
    differing
}

/// An event's occurred_at as a timestamp; one out of range cannot be stored.
fn instant(occurred_at: i64) -> Result<DateTime<Utc>, HandlerError> {
    DateTime::from_timestamp_millis(occurred_at)
        .ok_or_else(|| HandlerError::permanent(format!("occurred_at {occurred_at} is not a representable instant")))
}

#[cfg(test)]
mod tests {
    use saga_contracts::{Envelope, OrderConfirmed};

    use super::*;
    use crate::memory::Status;

    fn consumed(event: impl Into<SagaEvent>) -> ConsumedEvent {
        ConsumedEvent {
            event: event.into(),
            topic: "orders".into(),
            partition: 0,
            offset: 0,
            traceparent: None,
        }
    }

    fn confirmed(email: &str) -> OrderConfirmed {
        OrderConfirmed {
            envelope: Envelope::for_command(OrderId::new()),
            customer_email: email.into(),
            total_minor: 3998,
            currency: "USD".into(),
        }
    }

    fn sent(order: &OrderConfirmed, attempts: i32, at: i64) -> NotificationSent {
        let order_id = order.envelope.order_id;
        NotificationSent {
            envelope: Envelope::caused_by_recorded(order_id, order.envelope.event_id).at(at),
            order_outcome: saga_contracts::OrderOutcome::Confirmed,
            recipient: order.customer_email.clone(),
            subject: format!("Order {} confirmed", &order_id.to_string()[..8]),
            message_id: crate::email::message_id(order_id, Outcome::Confirmed),
            attempts,
        }
    }

    fn failed(order: &OrderConfirmed, attempts: i32, at: i64) -> NotificationFailed {
        let order_id = order.envelope.order_id;
        NotificationFailed {
            envelope: Envelope::caused_by_recorded(order_id, order.envelope.event_id).at(at),
            order_outcome: saga_contracts::OrderOutcome::Confirmed,
            recipient: order.customer_email.clone(),
            message_id: crate::email::message_id(order_id, Outcome::Confirmed),
            attempts,
            error: "550 no such user".into(),
        }
    }

    /// Applies `event` as the replay runner does: keeps its changes, or undoes them if it is
    /// refused.
    async fn take(rebuilder: &mut Rebuilder, event: impl Into<SagaEvent>) -> Result<Vec<SagaEvent>, HandlerError> {
        let applied = rebuilder.apply(&consumed(event)).await;
        for table in rebuilder.rebuilt_tables() {
            table.end_event(applied.is_ok());
        }
        applied
    }

    #[tokio::test]
    async fn an_order_outcome_and_its_recorded_deliveries_rebuild_the_email_as_the_mailer_left_it(
    ) -> Result<(), HandlerError> {
        let mut rebuilder = rebuilder();
        let order = confirmed("ada@example.com");
        let order_id = order.envelope.order_id;
        assert!(take(&mut rebuilder, order.clone()).await?.is_empty());
        let key = (order_id, Outcome::Confirmed);
        let pending = rebuilder.state.notifications.get(&key).cloned().expect("the email");
        assert_eq!((pending.status, pending.attempts), (Status::Pending, 0));
        assert_eq!(pending.source_event_id, order.envelope.event_id);

        take(&mut rebuilder, failed(&order, 3, 1_700_000_000_000)).await?;
        take(&mut rebuilder, sent(&order, 4, 1_700_000_000_123)).await?;
        // The set-aside published again after the send: older, left alone.
        take(&mut rebuilder, failed(&order, 3, 1_700_000_000_000)).await?;

        let row = rebuilder.state.notifications.get(&key).expect("the email");
        assert_eq!((row.status, row.attempts), (Status::Sent, 4));
        assert_eq!(row.sent_at.map(|at| at.timestamp_millis()), Some(1_700_000_000_123));
        assert_eq!((row.failed_at, row.last_error.as_deref()), (None, None));
        assert_eq!((&row.subject, &row.body), (&pending.subject, &pending.body));
        Ok(())
    }

    #[tokio::test]
    async fn a_delivery_of_an_email_never_recorded_is_refused_and_leaves_no_row() {
        let mut rebuilder = rebuilder();
        let order = confirmed("ada@example.com");
        let refused = take(&mut rebuilder, sent(&order, 1, 1_700_000_000_123)).await;
        assert!(matches!(refused, Err(HandlerError::Permanent(_))), "{refused:?}");
        assert!(rebuilder.state.notifications.is_empty());
    }

    #[tokio::test]
    async fn an_outcome_that_cannot_be_emailed_is_refused_like_the_live_handler_dead_letters_it() {
        let mut rebuilder = rebuilder();
        let refused = take(&mut rebuilder, confirmed("not an address")).await;
        assert!(matches!(refused, Err(HandlerError::Permanent(_))), "{refused:?}");
        assert!(rebuilder.state.notifications.is_empty());
    }

    #[tokio::test]
    async fn the_rebuilt_emails_are_copied_once_then_upserted_by_order_and_outcome() -> anyhow::Result<()> {
        let mut rebuilder = rebuilder();
        let mut orders = Vec::new();
        for _ in 0..3 {
            let order = confirmed("ada@example.com");
            take(&mut rebuilder, order.clone()).await?;
            orders.push(order);
        }
        let mut tables = rebuilder.rebuilt_tables();
        let [notifications] = tables.as_mut_slice() else {
            panic!("one table expected");
        };
        let statements = notifications.take_changes()?;
        let [copy] = statements.as_slice() else {
            panic!("one statement expected: {statements:?}");
        };
        assert!(copy.sql.starts_with("COPY notifications"), "{}", copy.sql);
        assert_eq!(copy.parsed_rows().len(), 3);
        assert!(notifications.take_changes()?.is_empty(), "written once");
        drop(tables);

        // An email already written and then sent is written again by its key.
        take(&mut rebuilder, sent(&orders[0], 1, orders[0].envelope.occurred_at + 10)).await?;
        let mut tables = rebuilder.rebuilt_tables();
        let statements = tables[0].take_changes()?;
        let [upsert] = statements.as_slice() else {
            panic!("one statement expected: {statements:?}");
        };
        assert!(upsert.sql.starts_with("INSERT INTO notifications"), "{}", upsert.sql);
        assert!(
            upsert.sql.contains(r#"ON CONFLICT ("order_id", "outcome")"#),
            "{}",
            upsert.sql
        );
        assert_eq!(upsert.parsed_rows().len(), 1);
        assert!(tables[0].take_changes()?.is_empty(), "written once");
        Ok(())
    }

    fn rebuilt() -> RebuiltEmail {
        RebuiltEmail {
            recipient: "ada@example.com".into(),
            subject: "Order 0f8e2c4a confirmed".into(),
            message_id: "<0f8e2c4a-1b2c-4d5e-8f90-123456789abc.confirmed@saga-platform.local>".into(),
        }
    }

    fn recorded(email: &RebuiltEmail) -> RecordedEmail<'_> {
        RecordedEmail {
            event_type: EventType::NotificationSent,
            order_id: OrderId::new(),
            outcome: Outcome::Confirmed,
            recipient: &email.recipient,
            subject: Some(&email.subject),
            message_id: &email.message_id,
        }
    }

    #[test]
    fn an_event_naming_the_rebuilt_email_differs_in_nothing() {
        let email = rebuilt();
        assert!(differing_facts(&email, &recorded(&email)).is_empty());
    }

    #[test]
    fn a_subject_rendered_differently_since_the_email_was_sent_is_noticed() {
        let email = rebuilt();
        let event = RecordedEmail {
            subject: Some("Your order 0f8e2c4a is confirmed"),
            ..recorded(&email)
        };
        assert_eq!(differing_facts(&email, &event), ["subject"]);
    }

    #[test]
    fn a_failure_event_naming_no_subject_is_compared_on_recipient_and_message_id() {
        let email = rebuilt();
        let event = RecordedEmail {
            event_type: EventType::NotificationFailed,
            subject: None,
            recipient: "bob@example.com",
            message_id: "<other@saga-platform.local>",
            ..recorded(&email)
        };
        assert_eq!(differing_facts(&email, &event), ["recipient", "message_id"]);
    }

    #[test]
    fn an_occurred_at_becomes_the_same_instant_to_the_millisecond() -> Result<(), HandlerError> {
        assert_eq!(instant(1_700_000_000_123)?.timestamp_millis(), 1_700_000_000_123);
        assert!(matches!(instant(i64::MAX), Err(HandlerError::Permanent(_))));
        Ok(())
    }

    #[test]
    fn the_notifications_are_compared_by_order_outcome_without_the_mailers_bookkeeping() {
        let rebuilder = rebuilder();
        let [table] = rebuilder.tables() else {
            panic!("one table expected");
        };
        assert_eq!(table.name, "notifications");
        assert_eq!(table.key, ["order_id", "outcome"]);
        for compared in [
            "status",
            "attempts",
            "last_error",
            "sent_at",
            "failed_at",
            "body",
            "source_event_id",
        ] {
            assert!(!table.ignored.contains(&compared), "{compared}");
        }
        assert_eq!(rebuilder.consumes(), [Topic::Orders]);
        assert_eq!(rebuilder.records_on(), [Topic::Notifications]);
        assert!(rebuilder.decisions().is_empty());
    }
}
