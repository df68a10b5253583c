//! The saga deadline: orders still pending when their deadline passes fail with
//! `deadline_exceeded`, and their participants compensate whatever they did.

use std::time::Duration;

use saga_common::outbox::Relay;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::saga::SagaInput;
use crate::store;

/// How often overdue orders are looked for.
const SCAN_INTERVAL: Duration = Duration::from_millis(500);
/// Most orders failed per transaction.
const BATCH: i64 = 100;

/// Fails overdue orders until `shutdown`.
pub async fn run(database: PgPool, relay: Relay, shutdown: CancellationToken) {
    loop {
        match fail_overdue(&database).await {
            Ok(0) => {}
            Ok(failed) => {
                relay.notify();
                tracing::info!(failed, "failed orders past their deadline");
                continue;
            }
            Err(error) => tracing::warn!(error = format!("{error:#}"), "deadline scan failed, retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(SCAN_INTERVAL) => {}
        }
    }
}

/// Fails one batch of overdue orders; returns how many.
pub async fn fail_overdue(database: &PgPool) -> anyhow::Result<usize> {
    let mut tx = database.begin().await?;
    // SKIP LOCKED: orders being decided by an outcome right now are left to that transaction.
    let overdue: Vec<Uuid> = sqlx::query_scalar(
        "SELECT order_id FROM orders WHERE status = 'PENDING' AND deadline_at <= now() \
         ORDER BY deadline_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    for order_id in &overdue {
        if let Some(order) = store::lock_order(&mut tx, *order_id).await? {
            store::apply_fact(&mut tx, &order, SagaInput::DeadlinePassed, None, None).await?;
        }
    }
    tx.commit().await?;
    Ok(overdue.len())
}
