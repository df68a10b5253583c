//! The charger: a background task that charges pending payments through the gateway, many at
//! once, and settles each in a transaction of its own, so a slow charge never holds up another
//! order (the consumer only records the pending payment, see [`crate::handler`]).
//!
//! Guarantees:
//! - every pending payment is charged until it settles: the handler hands each committed one
//!   over at once, and a scan at startup and every [`RESCAN_INTERVAL`] picks up the pending
//!   payments not in flight here (left by a crash, a shutdown, or another instance that stopped);
//! - at most [`GatewayConfig::charge_concurrency`](crate::gateway::GatewayConfig) charges run
//!   at once, and one order is charged by at most one task per instance (the in-flight set);
//! - a charge is charged at most once: every call uses the order id as idempotency key, so a
//!   charge repeated after a crash, a shutdown or by a second instance gets the first outcome back;
//!   a transient gateway failure is retried with backoff, never turned into a decline;
//! - a payment settles exactly once, with its event(s) in the same transaction: the settlement
//!   locks the row and only changes it if it is still pending;
//! - a capture whose order failed meanwhile is given back: the failure is read under the row lock
//!   (the order.failed handler takes the same lock before committing it), and if it is there the
//!   capture is refunded at the gateway (key `refund-<order_id>`) before the payment is recorded
//!   captured-and-refunded with payment.success and payment.refunded together.
//!
//! On shutdown, gateway calls in progress are abandoned (the payment stays pending and is resumed
//! idempotently at the next start), a settlement in progress commits, and the task ends.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use saga_common::outbox::{self, Relay};
use saga_common::retry::{retry_until_ok, Backoff};
use saga_contracts::{PaymentFailed, PaymentRefunded, PaymentSucceeded, SagaEvent};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::gateway::{ChargeOutcome, ChargeRequest, GatewayError, PaymentGateway, RefundOutcome, RefundRequest};
use crate::payments::{self, FailedOrder, PendingCharge, Settled};

/// How often the charger looks for pending payments it is not charging.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(2);
/// Most pending payments picked up per scan (the oldest first); the rest come with later scans.
const RESCAN_BATCH: i64 = 1_000;
/// Backoff between attempts of a gateway call that failed transiently.
const TRANSIENT_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(5),
};
/// Backoff between attempts of a gateway call the gateway rejected: it will not succeed until an
/// operator has looked, so it is retried rarely, and the payment stays pending meanwhile.
const REJECTED_BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(5),
    max: Duration::from_secs(300),
};
/// Backoff between attempts of a database operation.
const DATABASE_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(5),
};
/// Reason on a payment.refunded whose order's failure reason is not known (cannot happen: the
/// charger only refunds for a recorded failure).
const UNKNOWN_FAILURE: &str = "order_failed";

/// What settling a pending payment does with a charge outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Record the payment so: payment.success, payment.failed, or (captured and refunded)
    /// payment.success followed by payment.refunded.
    Record(Settled),
    /// The order failed and the capture must be given back: refund it at the gateway, then settle
    /// again with the refund made.
    RefundFirst {
        /// The capture to refund.
        gateway_reference: String,
    },
}

/// The settlement of a pending payment of `amount_minor`, given the charge `outcome`, whether its
/// order is known to have failed, and whether the capture was refunded at the gateway already.
///
/// A failed order's capture is given back as on order.failed ([`payments::on_order_failed`]): in
/// full, unless nothing was taken (a zero amount). A decline is recorded as such whether or not
/// the order failed: nothing was taken.
pub fn settlement(outcome: &ChargeOutcome, amount_minor: i64, order_failed: bool, refunded: bool) -> Settlement {
    match outcome {
        ChargeOutcome::Declined { reason } => Settlement::Record(Settled::Declined { reason: reason.clone() }),
        // A refund is only made for a failed order, and a failure is never undone.
        ChargeOutcome::Captured { gateway_reference } if refunded => Settlement::Record(Settled::Refunded {
            gateway_reference: gateway_reference.clone(),
        }),
        ChargeOutcome::Captured { gateway_reference } if order_failed && amount_minor > 0 => Settlement::RefundFirst {
            gateway_reference: gateway_reference.clone(),
        },
        ChargeOutcome::Captured { gateway_reference } => Settlement::Record(Settled::Captured {
            gateway_reference: gateway_reference.clone(),
        }),
    }
}

/// Hands pending payments, once committed, to the charger. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ChargeQueue {
    orders: mpsc::UnboundedSender<Uuid>,
}

impl ChargeQueue {
    /// Asks for the pending payment of `order_id` to be charged now. If the charger has stopped,
    /// the payment stays pending and the next start's scan charges it.
    pub fn submit(&self, order_id: Uuid) {
        if self.orders.send(order_id).is_err() {
            tracing::debug!(%order_id, "charger stopped; the pending payment is charged at the next start");
        }
    }
}

/// The background task charging pending payments; see the module docs.
pub struct Charger {
    shared: Arc<Shared>,
    orders: mpsc::UnboundedReceiver<Uuid>,
}

struct Shared {
    database: PgPool,
    gateway: Arc<dyn PaymentGateway>,
    relay: Relay,
    slots: Arc<Semaphore>,
    /// Orders being charged by this instance.
    in_flight: Mutex<HashSet<Uuid>>,
}

/// What a settlement attempt left to do.
enum Step {
    /// The payment is settled (by this attempt or by someone else).
    Done,
    /// Refund this at the gateway, then settle again.
    Refund(RefundRequest),
}

impl Charger {
    /// A charger working on `database`, charging through `gateway` at most `concurrency` orders
    /// at once and waking `relay` after each settlement, and the queue that feeds it.
    pub fn new(
        database: PgPool,
        gateway: Arc<dyn PaymentGateway>,
        relay: Relay,
        concurrency: usize,
    ) -> (ChargeQueue, Charger) {
        let (sender, orders) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            database,
            gateway,
            relay,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            in_flight: Mutex::new(HashSet::new()),
        });
        (ChargeQueue { orders: sender }, Charger { shared, orders })
    }

    /// Charges what it is handed and what the scans find until `shutdown` is cancelled, then
    /// waits for its charges to end (see the module docs).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut charges = JoinSet::new();
        // The first tick is immediate: the startup scan resumes what an earlier run left pending.
        let mut rescan = tokio::time::interval(RESCAN_INTERVAL);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(order_id) = self.orders.recv() => self.start(order_id, &mut charges, &shutdown),
                _ = rescan.tick() => self.resume_pending(&mut charges, &shutdown).await,
                Some(joined) = charges.join_next(), if !charges.is_empty() => log_join(joined),
            }
        }
        while let Some(joined) = charges.join_next().await {
            log_join(joined);
        }
        tracing::info!("charger stopped");
    }

    async fn resume_pending(&self, charges: &mut JoinSet<()>, shutdown: &CancellationToken) {
        match payments::pending_orders(&self.shared.database, RESCAN_BATCH).await {
            Ok(order_ids) => {
                for order_id in order_ids {
                    self.start(order_id, charges, shutdown);
                }
            }
            Err(error) => tracing::warn!(%error, "could not look for pending payments; trying again later"),
        }
    }

    /// Starts charging `order_id` unless this instance is charging it already.
    fn start(&self, order_id: Uuid, charges: &mut JoinSet<()>, shutdown: &CancellationToken) {
        let Some(claim) = InFlight::claim(&self.shared, order_id) else {
            return;
        };
        let shared = self.shared.clone();
        let shutdown = shutdown.clone();
        let span = tracing::info_span!("charge", %order_id);
        charges.spawn(
            async move {
                shared.charge(order_id, &shutdown).await;
                drop(claim);
            }
            .instrument(span),
        );
    }
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined {
        // The payment stays pending; the next scan charges it again.
        tracing::error!(%error, "charge task failed");
    }
}

/// An order in this instance's in-flight set, removed when dropped (also if the task panics).
struct InFlight {
    shared: Arc<Shared>,
    order_id: Uuid,
}

impl InFlight {
    fn claim(shared: &Arc<Shared>, order_id: Uuid) -> Option<Self> {
        let mut in_flight = shared.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        in_flight.insert(order_id).then(|| Self {
            shared: shared.clone(),
            order_id,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut in_flight = self.shared.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        in_flight.remove(&self.order_id);
    }
}

impl Shared {
    /// Charges and settles one pending payment; returns early, leaving it pending, on shutdown.
    async fn charge(&self, order_id: Uuid, shutdown: &CancellationToken) {
        let Some(permit) = self.slot(shutdown).await else {
            return;
        };
        let mut slot = Some(permit);
        let found = retry_until_ok("pending payment lookup", DATABASE_BACKOFF, shutdown, || {
            payments::pending_charge(&self.database, order_id)
        })
        .await;
        let Some(charge) = found.flatten() else {
            // Settled already: by another instance, or by this one just before a scan listed it.
            return;
        };
        let request = ChargeRequest {
            idempotency_key: order_id.to_string(),
            token: charge.token.clone(),
            amount_minor: charge.amount_minor,
            currency: charge.currency.clone(),
        };
        let charged = self
            .call_gateway("charge", shutdown, &mut slot, || self.gateway.charge(request.clone()))
            .await;
        let Some(outcome) = charged else {
            return;
        };
        let mut refund = None;
        loop {
            let step = retry_until_ok("payment settlement", DATABASE_BACKOFF, shutdown, || async {
                // With its cause chain: the retry logs it.
                self.settle(order_id, &outcome, refund.as_ref())
                    .await
                    .map_err(|error| format!("{error:#}"))
            })
            .await;
            match step {
                None | Some(Step::Done) => return,
                Some(Step::Refund(request)) => {
                    let refunded = self
                        .call_gateway("refund", shutdown, &mut slot, || self.gateway.refund(request.clone()))
                        .await;
                    let Some(refunded) = refunded else {
                        return;
                    };
                    tracing::debug!(refund_reference = %refunded.refund_reference, "gateway refunded");
                    refund = Some(refunded);
                }
            }
        }
    }

    async fn slot(&self, shutdown: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            _ = shutdown.cancelled() => None,
            permit = self.slots.clone().acquire_owned() => permit.ok(),
        }
    }

    /// Calls the gateway until it answers, holding `slot` during each call and giving it up while
    /// waiting to retry; `None` on shutdown, abandoning a call in progress (it is repeated with
    /// the same idempotency key when the payment is resumed).
    async fn call_gateway<T, F, Fut>(
        &self,
        operation: &str,
        shutdown: &CancellationToken,
        slot: &mut Option<OwnedSemaphorePermit>,
        mut call: F,
    ) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, GatewayError>>,
    {
        let mut failures = 0;
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return None,
                result = call() => result,
            };
            failures += 1;
            let delay = match result {
                Ok(value) => return Some(value),
                Err(error @ GatewayError::Transient(_)) => {
                    let delay = TRANSIENT_BACKOFF.delay(failures);
                    tracing::warn!(
                        %error,
                        operation,
                        attempt = failures,
                        delay_ms = millis(delay),
                        "payment gateway failed transiently; will retry"
                    );
                    delay
                }
                Err(error @ GatewayError::Rejected(_)) => {
                    // Before the charger, this dead-lettered order.created; now the event is long
                    // committed, so the payment stays pending (the order's deadline fails it) and
                    // the call is retried rarely until an operator resolves it at the gateway.
                    let delay = REJECTED_BACKOFF.delay(failures);
                    tracing::error!(
                        %error,
                        operation,
                        attempt = failures,
                        delay_ms = millis(delay),
                        "payment gateway rejected the request; the payment stays pending until an operator resolves it"
                    );
                    delay
                }
            };
            // Another charge may use the slot while this one waits.
            *slot = None;
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            *slot = Some(self.slot(shutdown).await?);
        }
    }

    /// Settles the payment of `order_id` with the charge `outcome` (and the `refund` made for it,
    /// if any) in one transaction, or says which refund to make first.
    async fn settle(
        &self,
        order_id: Uuid,
        outcome: &ChargeOutcome,
        refund: Option<&RefundOutcome>,
    ) -> anyhow::Result<Step> {
        let mut tx = self.database.begin().await.context("begin")?;
        // The row lock orders this settlement with the order.failed handler, which locks the row
        // before committing the failure: if it committed first, its failure is visible to the
        // next statement (READ COMMITTED reads as of each statement); if it comes second, it
        // waits, then finds the payment settled and refunds a capture itself.
        let Some(charge) = payments::lock_pending(&mut tx, order_id)
            .await
            .context("lock payment")?
        else {
            tracing::info!("payment settled meanwhile by another instance");
            return Ok(Step::Done);
        };
        let failure = payments::failure(&mut *tx, order_id).await.context("read failure")?;
        let settled = match settlement(outcome, charge.amount_minor, failure.is_some(), refund.is_some()) {
            Settlement::Record(settled) => settled,
            Settlement::RefundFirst { gateway_reference } => {
                // The refund is a gateway call, so it is made without holding the row lock or the
                // transaction. The decision still holds when the refund is back: only a charger
                // settles a pending payment (a second instance doing the same refunds with the
                // same key and settles first, which this one then sees), and a failure is never
                // undone. A crash before the next commit leaves the payment pending: it is
                // charged and refunded again with the same keys, which move no money twice.
                tracing::info!(
                    reason = failure.as_ref().map_or(UNKNOWN_FAILURE, |f| f.reason.as_str()),
                    "order failed while it was being charged; refunding the capture"
                );
                return Ok(Step::Refund(RefundRequest {
                    idempotency_key: format!("refund-{order_id}"),
                    gateway_reference,
                    amount_minor: charge.amount_minor,
                    currency: charge.currency,
                }));
            }
        };
        if !payments::settle(&mut tx, order_id, &settled)
            .await
            .context("settle payment")?
        {
            anyhow::bail!("payment of {order_id} was not pending under its row lock");
        }
        for event in events(&charge, &settled, failure.as_ref()) {
            enqueue(&mut tx, &event, charge.traceparent.as_deref()).await?;
        }
        tx.commit().await.context("commit")?;
        self.relay.notify();
        match &settled {
            Settled::Captured { .. } => {
                tracing::info!(payment_id = %charge.payment_id, amount_minor = charge.amount_minor, "payment captured")
            }
            Settled::Declined { reason } => tracing::info!(payment_id = %charge.payment_id, reason, "payment declined"),
            Settled::Refunded { .. } => tracing::info!(
                payment_id = %charge.payment_id,
                amount_minor = charge.amount_minor,
                "payment captured and refunded: its order had failed"
            ),
        }
        Ok(Step::Done)
    }
}

/// The events a settlement causes, in the order they are published.
fn events(charge: &PendingCharge, settled: &Settled, failure: Option<&FailedOrder>) -> Vec<SagaEvent> {
    let order_id = charge.order_id.to_string();
    let success = || {
        SagaEvent::PaymentSucceeded(PaymentSucceeded {
            event_id: Uuid::new_v4().to_string(),
            order_id: order_id.clone(),
            causation_id: Some(charge.causation_id.to_string()),
            occurred_at: now_millis(),
            payment_id: charge.payment_id.to_string(),
            amount_minor: charge.amount_minor,
            currency: charge.currency.clone(),
        })
    };
    match settled {
        Settled::Captured { .. } => vec![success()],
        Settled::Declined { reason } => vec![SagaEvent::PaymentFailed(PaymentFailed {
            event_id: Uuid::new_v4().to_string(),
            order_id: order_id.clone(),
            causation_id: Some(charge.causation_id.to_string()),
            occurred_at: now_millis(),
            reason: reason.clone(),
            amount_minor: charge.amount_minor,
            currency: charge.currency.clone(),
        })],
        Settled::Refunded { .. } => vec![
            success(),
            SagaEvent::PaymentRefunded(PaymentRefunded {
                event_id: Uuid::new_v4().to_string(),
                order_id: order_id.clone(),
                causation_id: failure.and_then(|f| f.event_id).map(|id| id.to_string()),
                occurred_at: now_millis(),
                payment_id: charge.payment_id.to_string(),
                amount_minor: charge.amount_minor,
                currency: charge.currency.clone(),
                reason: failure.map_or(UNKNOWN_FAILURE, |f| f.reason.as_str()).to_string(),
            }),
        ],
    }
}

async fn enqueue(tx: &mut PgConnection, event: &SagaEvent, traceparent: Option<&str>) -> anyhow::Result<()> {
    outbox::enqueue(tx, event, traceparent).await.context("outbox enqueue")
}

fn millis(delay: Duration) -> u64 {
    u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured() -> ChargeOutcome {
        ChargeOutcome::Captured {
            gateway_reference: "sim_ch_1".into(),
        }
    }

    #[test]
    fn a_capture_of_an_order_still_running_is_recorded_captured() {
        assert_eq!(
            settlement(&captured(), 3998, false, false),
            Settlement::Record(Settled::Captured {
                gateway_reference: "sim_ch_1".into()
            })
        );
    }

    #[test]
    fn a_capture_of_an_order_that_failed_meanwhile_is_refunded_before_it_is_recorded() {
        assert_eq!(
            settlement(&captured(), 3998, true, false),
            Settlement::RefundFirst {
                gateway_reference: "sim_ch_1".into()
            }
        );
    }

    #[test]
    fn a_refunded_capture_is_recorded_captured_and_refunded() {
        assert_eq!(
            settlement(&captured(), 3998, true, true),
            Settlement::Record(Settled::Refunded {
                gateway_reference: "sim_ch_1".into()
            })
        );
    }

    #[test]
    fn a_decline_is_recorded_declined_whether_or_not_the_order_failed() {
        let declined = ChargeOutcome::Declined {
            reason: "card_declined".into(),
        };
        for failed in [false, true] {
            assert_eq!(
                settlement(&declined, 3998, failed, false),
                Settlement::Record(Settled::Declined {
                    reason: "card_declined".into()
                })
            );
        }
    }

    #[test]
    fn a_zero_capture_of_a_failed_order_has_nothing_to_give_back() {
        assert_eq!(
            settlement(&captured(), 0, true, false),
            Settlement::Record(Settled::Captured {
                gateway_reference: "sim_ch_1".into()
            })
        );
    }

    fn pending() -> PendingCharge {
        PendingCharge {
            order_id: Uuid::new_v4(),
            payment_id: Uuid::new_v4(),
            token: "tok_visa".into(),
            amount_minor: 3998,
            currency: "USD".into(),
            causation_id: Uuid::new_v4(),
            traceparent: None,
        }
    }

    #[test]
    fn a_capture_and_refund_emits_payment_success_then_payment_refunded_caused_by_the_failure() {
        let charge = pending();
        let failure = FailedOrder {
            reason: "deadline_exceeded".into(),
            event_id: Some(Uuid::new_v4()),
        };
        let settled = Settled::Refunded {
            gateway_reference: "sim_ch_1".into(),
        };
        let emitted = events(&charge, &settled, Some(&failure));
        let [SagaEvent::PaymentSucceeded(success), SagaEvent::PaymentRefunded(refunded)] = emitted.as_slice() else {
            panic!("expected payment.success then payment.refunded, got {emitted:?}");
        };
        assert_eq!(success.causation_id, Some(charge.causation_id.to_string()));
        assert_eq!(success.amount_minor, 3998);
        assert_eq!(refunded.causation_id, failure.event_id.map(|id| id.to_string()));
        assert_eq!(refunded.reason, "deadline_exceeded");
        assert_eq!(refunded.amount_minor, 3998);
        assert_eq!(refunded.payment_id, success.payment_id);
    }

    #[test]
    fn a_decline_emits_payment_failed_caused_by_order_created() {
        let charge = pending();
        let emitted = events(
            &charge,
            &Settled::Declined {
                reason: "card_declined".into(),
            },
            None,
        );
        let [SagaEvent::PaymentFailed(failed)] = emitted.as_slice() else {
            panic!("expected payment.failed, got {emitted:?}");
        };
        assert_eq!(failed.causation_id, Some(charge.causation_id.to_string()));
        assert_eq!(failed.reason, "card_declined");
    }
}
