//! The deadline scanner: orders still pending when their deadline passes fail with
//! `deadline_exceeded`, and their participants compensate whatever they did. A scan that fails
//! follows the service's error policy; one given up on is tried again at the next scan.

use std::time::Duration;

use saga_common::outbox::Relay;
use saga_common::retry::ErrorPolicy;
use saga_common::telemetry;
use saga_contracts::Envelope;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::domain::SagaInput;
use crate::error::Result;
use crate::metrics::DecisionRecord;
use crate::store;

/// How often overdue orders are looked for.
const SCAN_INTERVAL: Duration = Duration::from_millis(500);
/// Most orders failed per transaction.
const BATCH: i64 = 100;

/// Fails orders past their deadline.
pub struct DeadlineScanner {
    /// The order database.
    pub database: PgPool,
    /// Woken after order.failed events are committed.
    pub relay: Relay,
    /// What to do when a scan fails.
    pub policy: ErrorPolicy,
}

impl DeadlineScanner {
    /// Fails overdue orders until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match self
                .policy
                .run("deadline scan", &shutdown, || self.fail_overdue())
                .await
            {
                None => break,
                Some(Ok(0)) => {}
                Some(Ok(failed)) => {
                    self.relay.notify();
                    tracing::info!(failed, "failed orders past their deadline");
                    continue; // there may be more than one batch
                }
                Some(Err(gave_up)) => {
                    tracing::error!(error = %gave_up, "deadline scan gave up; trying again at the next scan");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(SCAN_INTERVAL) => {}
            }
        }
    }

    /// Fails one batch of overdue orders in one transaction; returns how many.
    pub async fn fail_overdue(&self) -> Result<usize> {
        let mut tx = self.database.begin().await?;
        let overdue = store::lock_overdue(&mut tx, BATCH).await?;
        let mut decisions = Vec::new();
        for (order, traceparent) in &overdue {
            // The decision continues the trace of the request that placed the order.
            let span = tracing::info_span!("deadline passed", order_id = %order.order_id);
            telemetry::continue_trace(&span, traceparent.as_deref());
            async {
                let (state, decided) = order.apply(SagaInput::DeadlinePassed, Envelope::for_command(order.order_id));
                store::save_state(&mut tx, order.order_id, &state).await?;
                if let Some(decided) = &decided {
                    store::emit_decision(&mut tx, decided, None).await?;
                    let created_at = store::created_at(&mut tx, order.order_id).await?;
                    decisions.extend(DecisionRecord::of(decided, created_at));
                }
                Ok::<_, crate::error::Error>(())
            }
            .instrument(span)
            .await?;
        }
        tx.commit().await?;
        decisions.iter().for_each(DecisionRecord::record);
        Ok(overdue.len())
    }
}
