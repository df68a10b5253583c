//! The `notifications` table, all SQL of the service: one row per order outcome, written by the
//! handler as the intent to send and moved by the mailer from `pending` to `sent`, or to
//! `failed` when retrying cannot deliver it (in replay: by the events the mailer recorded).
//!
//! What the handler and replay change goes through [`NotificationStore`], which the live
//! service's transaction implements with this SQL and a replay's in-memory rows
//! ([`crate::memory`]) implement alike. The mailer's claims, attempts and the operators' views are
//! live-only SQL.

use std::time::Duration;

use chrono::{DateTime, Utc};
use saga_common::telemetry;
use saga_contracts::OrderId;
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::domain::{DeliveryRecord, NewNotification};
use crate::email::Outcome;
use crate::error::Result;

/// The changes of the notifications that the handler and replay make, wherever the rows are
/// kept: in the live database (this module's SQL, within the caller's transaction) or in a
/// replay's memory ([`crate::memory::RebuiltNotifications`]). Both change the same rows the same
/// way.
#[allow(
    async_fn_in_trait,
    reason = "only called generically with a concrete store, whose futures are Send"
)]
pub trait NotificationStore {
    /// Records the email as pending, unless an email for its order outcome was recorded before
    /// (see [`record_intent`]); whether it did.
    async fn record_intent(&mut self, notification: &NewNotification) -> Result<bool>;

    /// Whether an email is recorded for this order outcome.
    async fn email_exists(&mut self, order_id: OrderId, outcome: Outcome) -> Result<bool>;
}

impl NotificationStore for PgConnection {
    async fn record_intent(&mut self, notification: &NewNotification) -> Result<bool> {
        Ok(record_intent(self, notification).await?)
    }

    async fn email_exists(&mut self, order_id: OrderId, outcome: Outcome) -> Result<bool> {
        Ok(email_exists(self, order_id, outcome.as_str()).await?)
    }
}

/// A pending email a mailer has claimed and is sending.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingNotification {
    /// The order.
    pub order_id: OrderId,
    /// `confirmed` or `failed`.
    pub outcome: String,
    /// The customer's address.
    pub recipient: String,
    /// Subject.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
    /// Deterministic Message-ID.
    pub message_id: String,
    /// Attempts before this one (all failed, or it would not be pending).
    pub attempts: i32,
    /// How many of those failed with an unclassified error.
    pub unclassified_failures: i32,
    /// W3C trace context of the span that recorded the email, when traces are exported.
    pub traceparent: Option<String>,
}

/// What an operator (or a test) sees of one email.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct NotificationView {
    /// The order.
    pub order_id: OrderId,
    /// `confirmed` or `failed`.
    pub outcome: String,
    /// The customer's address.
    pub recipient: String,
    /// Subject.
    pub subject: String,
    /// Deterministic Message-ID.
    pub message_id: String,
    /// `pending`, `sent`, or `failed` (set aside: retrying cannot deliver it).
    pub status: String,
    /// SMTP attempts so far.
    pub attempts: i32,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// When the SMTP server accepted it, if it did.
    pub sent_at: Option<DateTime<Utc>>,
    /// When it was set aside, if it was.
    pub failed_at: Option<DateTime<Utc>>,
}

const VIEW_COLUMNS: &str =
    "order_id, outcome, recipient, subject, message_id, status, attempts, last_error, sent_at, failed_at";

/// Records the intent to send within the caller's transaction. Returns `false` if an email for
/// this order outcome was recorded before (by another event with the same meaning).
pub async fn record_intent(tx: &mut PgConnection, notification: &NewNotification) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO notifications \
             (order_id, outcome, recipient, subject, body, message_id, status, source_event_id, traceparent) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8) \
         ON CONFLICT (order_id, outcome) DO NOTHING",
    )
    .bind(notification.order_id)
    .bind(notification.outcome.as_str())
    .bind(&notification.recipient)
    .bind(&notification.subject)
    .bind(&notification.body)
    .bind(&notification.message_id)
    .bind(notification.source_event_id)
    // The span recording the intent (the consumer's) is the parent of the mailer's work.
    .bind(telemetry::traceparent_of(&tracing::Span::current()))
    .execute(tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Claims the pending email that is due soonest and not claimed by another mailer, for `lease`,
/// and returns it. The claim is committed at once (one statement), so it holds even if this
/// connection is lost while the email is being sent.
pub async fn claim_due(pool: &PgPool, lease: Duration) -> Result<Option<PendingNotification>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE notifications SET claimed_until = now() + make_interval(secs => $1) \
         WHERE (order_id, outcome) = ( \
             SELECT order_id, outcome FROM notifications \
             WHERE status = 'pending' AND next_attempt_at <= now() \
               AND (claimed_until IS NULL OR claimed_until <= now()) \
             ORDER BY next_attempt_at, created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
         RETURNING order_id, outcome, recipient, subject, body, message_id, attempts, unclassified_failures, \
                   traceparent",
    )
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .await
}

/// Marks a claimed email as accepted by the SMTP server and ends the claim, within the
/// caller's transaction; returns what the notification.sent event tells. `sent_at` is kept to
/// the millisecond, the precision of the event's occurred_at, so that a replay setting it from
/// the event writes the same instant.
pub async fn mark_sent(tx: &mut PgConnection, order_id: OrderId, outcome: &str) -> Result<DeliveryRecord, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE notifications \
         SET status = 'sent', sent_at = date_trunc('milliseconds', now()), attempts = attempts + 1, \
             last_error = NULL, claimed_until = NULL \
         WHERE order_id = $1 AND outcome = $2 \
         RETURNING order_id, outcome, recipient, subject, message_id, attempts, source_event_id, sent_at AS at",
    )
    .bind(order_id)
    .bind(outcome)
    .fetch_one(tx)
    .await?;
    delivery_record(&row)
}

fn delivery_record(row: &PgRow) -> Result<DeliveryRecord, sqlx::Error> {
    Ok(DeliveryRecord {
        order_id: row.try_get("order_id")?,
        outcome: row.try_get("outcome")?,
        recipient: row.try_get("recipient")?,
        subject: row.try_get("subject")?,
        message_id: row.try_get("message_id")?,
        attempts: row.try_get("attempts")?,
        source_event_id: row.try_get("source_event_id")?,
        at: row.try_get("at")?,
    })
}

/// Counts a failed attempt on a claimed email (and whether nobody classified its error), ends
/// the claim and schedules the next attempt after `retry_in`.
pub async fn postpone(
    pool: &PgPool,
    order_id: OrderId,
    outcome: &str,
    error: &str,
    unclassified: bool,
    retry_in: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notifications \
         SET attempts = attempts + 1, unclassified_failures = unclassified_failures + $4::int, \
             last_error = $3, next_attempt_at = now() + make_interval(secs => $5), claimed_until = NULL \
         WHERE order_id = $1 AND outcome = $2",
    )
    .bind(order_id)
    .bind(outcome)
    .bind(error)
    .bind(i32::from(unclassified))
    .bind(retry_in.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// Counts a failed attempt on a claimed email, ends the claim and sets the email aside as
/// `failed` with `error`, within the caller's transaction: no mailer takes it again until it is
/// redriven. Returns what the notification.failed event tells. `failed_at` is kept to the
/// millisecond, like `sent_at` in [`mark_sent`].
pub async fn set_aside(
    tx: &mut PgConnection,
    order_id: OrderId,
    outcome: &str,
    error: &str,
) -> Result<DeliveryRecord, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE notifications \
         SET status = 'failed', failed_at = date_trunc('milliseconds', now()), attempts = attempts + 1, \
             last_error = $3, claimed_until = NULL \
         WHERE order_id = $1 AND outcome = $2 \
         RETURNING order_id, outcome, recipient, subject, message_id, attempts, source_event_id, failed_at AS at",
    )
    .bind(order_id)
    .bind(outcome)
    .bind(error)
    .fetch_one(tx)
    .await?;
    delivery_record(&row)
}

/// Whether an email is recorded for this order outcome.
pub async fn email_exists(tx: &mut PgConnection, order_id: OrderId, outcome: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM notifications WHERE order_id = $1 AND outcome = $2)")
        .bind(order_id)
        .bind(outcome)
        .fetch_one(tx)
        .await
}

/// Makes every pending email due now (on startup: whatever a previous run left unsent, or
/// postponed, is tried at once). Claims stay: another instance may be sending those emails, and
/// a dead mailer's claims expire by themselves. Returns how many are pending.
pub async fn make_all_pending_due(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("UPDATE notifications SET next_attempt_at = now() WHERE status = 'pending'")
            .execute(pool)
            .await?
            .rows_affected(),
    )
}

/// Every email recorded for an order, oldest first.
pub async fn list_for_order(pool: &PgPool, order_id: OrderId) -> Result<Vec<NotificationView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {VIEW_COLUMNS} FROM notifications WHERE order_id = $1 ORDER BY created_at, outcome"
    ))
    .bind(order_id)
    .fetch_all(pool)
    .await
}

/// Every email set aside as `failed`, in the order they were set aside.
pub async fn list_failed(pool: &PgPool) -> Result<Vec<NotificationView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {VIEW_COLUMNS} FROM notifications WHERE status = 'failed' ORDER BY failed_at, order_id, outcome"
    ))
    .fetch_all(pool)
    .await
}

/// Makes failed emails pending and due again, with a fresh unclassified budget: those of the
/// orders in `order_ids`, or all of them when it is `None`. Returns the Message-IDs redriven.
pub async fn redrive_failed(pool: &PgPool, order_ids: Option<&[OrderId]>) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE notifications \
         SET status = 'pending', failed_at = NULL, unclassified_failures = 0, next_attempt_at = now() \
         WHERE status = 'failed' AND ($1::uuid[] IS NULL OR order_id = ANY($1)) \
         RETURNING message_id",
    )
    .bind(order_ids)
    .fetch_all(pool)
    .await
}
