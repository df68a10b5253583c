//! The `notifications` table: one row per order outcome, written by the event handler as the
//! intent to send and updated by the mailer as attempts happen. All SQL of the service lives here.

use std::time::Duration;

use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::email::Outcome;

/// An email to send, as the handler records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    /// The order.
    pub order_id: Uuid,
    /// Which outcome the email reports.
    pub outcome: Outcome,
    /// The customer's address.
    pub recipient: String,
    /// Rendered subject.
    pub subject: String,
    /// Rendered plain-text body.
    pub body: String,
    /// Deterministic Message-ID.
    pub message_id: String,
    /// The event that asked for the email.
    pub source_event_id: Uuid,
}

/// A pending email a mailer has claimed and is sending.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingNotification {
    /// The order.
    pub order_id: Uuid,
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
    /// Attempts before this one.
    pub attempts: i32,
}

/// What an operator (or a test) sees of one email.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct NotificationView {
    /// `confirmed` or `failed`.
    pub outcome: String,
    /// The customer's address.
    pub recipient: String,
    /// Subject.
    pub subject: String,
    /// Deterministic Message-ID.
    pub message_id: String,
    /// `pending` or `sent`.
    pub status: String,
    /// SMTP attempts so far.
    pub attempts: i32,
    /// When the SMTP server accepted it, if it did.
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Records the intent to send within the caller's transaction. Returns `false` if an email for
/// this order outcome was recorded before (by another event with the same meaning).
pub async fn record_intent(tx: &mut PgConnection, notification: &NewNotification) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO notifications \
             (order_id, outcome, recipient, subject, body, message_id, status, source_event_id) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7) \
         ON CONFLICT (order_id, outcome) DO NOTHING",
    )
    .bind(notification.order_id)
    .bind(notification.outcome.as_str())
    .bind(&notification.recipient)
    .bind(&notification.subject)
    .bind(&notification.body)
    .bind(&notification.message_id)
    .bind(notification.source_event_id)
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
         RETURNING order_id, outcome, recipient, subject, body, message_id, attempts",
    )
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .await
}

/// Marks a claimed email as accepted by the SMTP server and ends the claim.
pub async fn mark_sent(tx: &mut PgConnection, order_id: Uuid, outcome: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notifications \
         SET status = 'sent', sent_at = now(), attempts = attempts + 1, last_error = NULL, claimed_until = NULL \
         WHERE order_id = $1 AND outcome = $2",
    )
    .bind(order_id)
    .bind(outcome)
    .execute(tx)
    .await?;
    Ok(())
}

/// Counts a failed attempt on a claimed email, ends the claim and schedules the next attempt
/// after `retry_in`.
pub async fn mark_failed(
    tx: &mut PgConnection,
    order_id: Uuid,
    outcome: &str,
    error: &str,
    retry_in: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notifications \
         SET attempts = attempts + 1, last_error = $3, next_attempt_at = now() + make_interval(secs => $4), \
             claimed_until = NULL \
         WHERE order_id = $1 AND outcome = $2",
    )
    .bind(order_id)
    .bind(outcome)
    .bind(error)
    .bind(retry_in.as_secs_f64())
    .execute(tx)
    .await?;
    Ok(())
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
pub async fn list_for_order(pool: &PgPool, order_id: Uuid) -> Result<Vec<NotificationView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT outcome, recipient, subject, message_id, status, attempts, sent_at FROM notifications \
         WHERE order_id = $1 ORDER BY created_at, outcome",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await
}
