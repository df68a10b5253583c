//! The charger: a background task that makes the gateway calls payments wait for, many payments
//! at once, and records each outcome in a transaction of its own, so a slow gateway call never
//! holds up another order (the consumer only records state, see [`crate::handler`]). A pending
//! payment is charged; a refunding one (a capture whose order failed) is given back: this is the
//! one place money is refunded, whichever came first, the capture or the failure.
//!
//! Guarantees:
//! - every payment waiting for the gateway is worked on until it settles: the handler hands each
//!   committed one over at once, and a scan at startup and every [`RESCAN_INTERVAL`] picks up the
//!   ones not in flight here (left by a crash, a shutdown, or another instance that stopped);
//! - at most [`GatewayConfig::charge_concurrency`](crate::gateway::GatewayConfig) gateway calls
//!   run at once, and one order is worked on by at most one task per instance (the in-flight set);
//! - money moves at most once: a charge uses the order id as idempotency key and a refund
//!   `refund-<order_id>`, so a call repeated after a crash, a shutdown or by a second instance
//!   gets the first outcome back;
//! - every gateway call first asks the circuit breaker ([`GatewayCircuit`]): while it is open,
//!   or half-open with its probes out, the call waits there without being made, without counting
//!   as a failure and without holding a concurrency slot, and the payment stays as it is; the
//!   call's outcome is reported to the breaker (a decline is a healthy call);
//! - failures follow the service's [`ErrorPolicy`]: a transient one (gateway outage, lost
//!   database connection) is retried with backoff, never turned into a decline; when the policy
//!   gives up (the gateway refused the call, the outcome cannot be recorded) the payment is left as
//!   it is, marked stalled with the reason for an operator, logged at error level, and tried
//!   again only after [`STALL_PAUSE`]; the other payments go on;
//! - each outcome is recorded once, with its events, through [`settle`] ([`store::transition`]),
//!   which decides under the payment's row lock: a payment another instance settled meanwhile is
//!   left alone;
//! - outcomes that arrive together are recorded together: one task takes every outcome waiting
//!   (up to [`SETTLE_BATCH`]) and records them in one transaction, one commit for all. If any of
//!   them fails, that transaction rolls back and each is recorded in a transaction of its own,
//!   its error going to its payment alone (recording again is safe: the decision is made
//!   against the state as it is then).
//!
//! On shutdown, gateway calls in progress are abandoned (the payment stays as it was and is
//! resumed idempotently at the next start), a recording in progress commits, and the task ends.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use saga_common::outbox::Relay;
use saga_common::retry::{ErrorPolicy, GaveUp};
use saga_common::telemetry;
use saga_contracts::OrderId;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::breaker::CallHealth;
use crate::domain::{self, GatewayCall, Input};
use crate::error::Result;
use crate::gateway::{GatewayCircuit, PaymentGateway};
use crate::store::{self, PaymentStore, Transition};

/// How often the charger looks for payments waiting for the gateway that it is not working on.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(2);
/// How long a payment the charger gave up on is left alone before it is tried again (an
/// operator may have resolved the cause at the gateway meanwhile).
pub const STALL_PAUSE: Duration = Duration::from_secs(300);
/// Most payments picked up per scan (the oldest first); the rest come with later scans.
const RESCAN_BATCH: i64 = 1_000;
/// Most gateway outcomes recorded in one transaction.
pub const SETTLE_BATCH: usize = 64;

/// Hands payments that wait for the gateway, once committed, to the charger. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ChargeQueue {
    orders: mpsc::UnboundedSender<OrderId>,
}

impl ChargeQueue {
    /// Asks for the payment of `order_id` to be worked on now. If the charger has stopped, the
    /// payment stays as it is and the next start's scan picks it up.
    pub fn submit(&self, order_id: OrderId) {
        if self.orders.send(order_id).is_err() {
            tracing::debug!(%order_id, "charger stopped; the payment is worked on at the next start");
        }
    }
}

/// The background task making the gateway calls payments wait for; see the module docs.
pub struct Charger {
    shared: Arc<Shared>,
    orders: mpsc::UnboundedReceiver<OrderId>,
    /// Taken by [`Charger::run`]'s recording task.
    settlements: Option<mpsc::UnboundedReceiver<Settlement>>,
}

/// A gateway outcome waiting to be recorded, and the payment's task waiting for the result.
struct Settlement {
    order_id: OrderId,
    outcome: Input,
    /// The span the outcome is recorded in (the payment's `settle`): its events continue the
    /// order's trace.
    span: tracing::Span,
    recorded: oneshot::Sender<Result<Transition>>,
}

struct Shared {
    database: PgPool,
    gateway: Arc<dyn PaymentGateway>,
    circuit: Arc<GatewayCircuit>,
    relay: Relay,
    policy: ErrorPolicy,
    slots: Semaphore,
    /// Orders being worked on by this instance.
    in_flight: Mutex<HashSet<OrderId>>,
    /// Where outcomes go to be recorded together (see [`record_together`]).
    settlements: mpsc::UnboundedSender<Settlement>,
}

/// Why the charger stops working on a payment.
enum Stop {
    /// It waits for no gateway call.
    Settled,
    /// The service is shutting down.
    Shutdown,
    /// The error policy gave up on an operation.
    GaveUp(GaveUp),
}

impl Charger {
    /// A charger working on `database`, calling `gateway` when `circuit` lets it, at most
    /// `concurrency` times at once, retrying by `policy` and waking `relay` after each recorded
    /// outcome, and the queue that feeds it.
    pub fn new(
        database: PgPool,
        gateway: Arc<dyn PaymentGateway>,
        circuit: Arc<GatewayCircuit>,
        relay: Relay,
        policy: ErrorPolicy,
        concurrency: usize,
    ) -> (ChargeQueue, Charger) {
        let (sender, orders) = mpsc::unbounded_channel();
        let (settle_sender, settlements) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            database,
            gateway,
            circuit,
            relay,
            policy,
            slots: Semaphore::new(concurrency.max(1)),
            in_flight: Mutex::new(HashSet::new()),
            settlements: settle_sender,
        });
        (
            ChargeQueue { orders: sender },
            Charger {
                shared,
                orders,
                settlements: Some(settlements),
            },
        )
    }

    /// Works on what it is handed and what the scans find until `shutdown` is cancelled, then
    /// waits for its tasks to end (see the module docs).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let recorder = self.settlements.take().map(|settlements| {
            tokio::spawn(record_together(
                self.shared.database.clone(),
                self.shared.relay.clone(),
                settlements,
            ))
        });
        let mut tasks = JoinSet::new();
        // The first tick is immediate: the startup scan resumes what an earlier run left.
        let mut rescan = tokio::time::interval(RESCAN_INTERVAL);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(order_id) = self.orders.recv() => self.start(order_id, &mut tasks, &shutdown),
                _ = rescan.tick() => self.resume_waiting(&mut tasks, &shutdown).await,
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => log_join(joined),
            }
        }
        while let Some(joined) = tasks.join_next().await {
            log_join(joined);
        }
        // Every payment's task has ended, so no outcome waits to be recorded.
        if let Some(recorder) = recorder {
            recorder.abort();
        }
        tracing::info!("charger stopped");
    }

    async fn resume_waiting(&self, tasks: &mut JoinSet<()>, shutdown: &CancellationToken) {
        match store::awaiting_gateway(&self.shared.database, RESCAN_BATCH, STALL_PAUSE).await {
            Ok(order_ids) => {
                for order_id in order_ids {
                    self.start(order_id, tasks, shutdown);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "could not look for payments waiting for the gateway; trying again later")
            }
        }
    }

    /// Starts working on `order_id` unless this instance is working on it already.
    fn start(&self, order_id: OrderId, tasks: &mut JoinSet<()>, shutdown: &CancellationToken) {
        let Some(claim) = InFlight::claim(&self.shared, order_id) else {
            return;
        };
        let shared = self.shared.clone();
        let shutdown = shutdown.clone();
        let span = tracing::info_span!("charger", %order_id);
        tasks.spawn(
            async move {
                shared.work_on(order_id, &shutdown).await;
                drop(claim);
            }
            .instrument(span),
        );
    }
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined {
        // The payment stays as it was; the next scan picks it up again.
        tracing::error!(%error, "charger task failed");
    }
}

/// An order in this instance's in-flight set, removed when dropped (also if the task panics).
struct InFlight {
    shared: Arc<Shared>,
    order_id: OrderId,
}

impl InFlight {
    fn claim(shared: &Arc<Shared>, order_id: OrderId) -> Option<Self> {
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
    /// Makes the gateway calls the payment of `order_id` waits for, one after another (a charge,
    /// then possibly a refund), recording each outcome, until it waits for none; on shutdown it
    /// leaves the payment as it is, and when the policy gives up it marks the payment stalled.
    async fn work_on(&self, order_id: OrderId, shutdown: &CancellationToken) {
        let stop = loop {
            if let Err(stop) = self.step(order_id, shutdown).await {
                break stop;
            }
        };
        if let Stop::GaveUp(gave_up) = stop {
            self.stall(order_id, &gave_up, shutdown).await;
        }
    }

    /// One gateway call the payment waits for, and its outcome recorded.
    async fn step(&self, order_id: OrderId, shutdown: &CancellationToken) -> Result<(), Stop> {
        // A first look without a lock: the call is made outside any transaction, and the outcome
        // is recorded under the lock against the state as it is then.
        let state = policy_outcome(
            self.policy
                .run("payment lookup", shutdown, || store::load(&self.database, order_id))
                .await,
        )?;
        let call = state.gateway_call().ok_or(Stop::Settled)?;
        // The call and its recording continue the trace of the order.created that asked for the
        // payment; the events recorded are children of this span.
        let span = tracing::info_span!(
            "settle",
            otel.name = %format_args!("{} payment", call.operation()),
            %order_id,
        );
        let traceparent = state
            .payment
            .as_ref()
            .and_then(|payment| payment.traceparent.as_deref());
        telemetry::continue_trace(&span, traceparent);
        async {
            let outcome = self.call_gateway(&call, shutdown).await?;
            let transition = policy_outcome(
                self.policy
                    .run("payment settlement", shutdown, || self.record(order_id, &outcome))
                    .await,
            )?;
            log_transition(&transition);
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Makes `call` until the gateway answers or the policy gives up; abandons it on shutdown
    /// (it is repeated with the same idempotency key when the payment is resumed).
    async fn call_gateway(&self, call: &GatewayCall, shutdown: &CancellationToken) -> Result<Input, Stop> {
        let attempt = || async {
            // While the circuit is open the call waits here, before taking a slot: it is not
            // made, and it is no failure for the error policy to count.
            let permit = self.circuit.permit().await;
            // A slot is held only while the gateway works: a call waiting to be retried leaves it
            // to the other payments.
            let _slot = self.slots.acquire().await;
            let span = tracing::info_span!(
                "gateway call",
                otel.name = %format_args!("payment gateway {}", call.operation()),
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                payment.operation = call.operation(),
                error.type = tracing::field::Empty,
            );
            let answered = match call {
                GatewayCall::Charge(request) => self
                    .gateway
                    .charge(request.clone())
                    .instrument(span.clone())
                    .await
                    .map(Input::Charged),
                GatewayCall::Refund(request) => self
                    .gateway
                    .refund(request.clone())
                    .instrument(span.clone())
                    .await
                    .map(|refund| {
                        tracing::debug!(refund_reference = %refund.refund_reference, "gateway refunded");
                        Input::RefundMade
                    }),
            };
            permit.record(CallHealth::of(&answered));
            if let Err(error) = &answered {
                span.record("otel.status_code", "ERROR");
                span.record("error.type", tracing::field::display(error));
            }
            answered
        };
        let what = match call {
            GatewayCall::Charge(_) => "gateway charge",
            GatewayCall::Refund(_) => "gateway refund",
        };
        tokio::select! {
            _ = shutdown.cancelled() => Err(Stop::Shutdown),
            outcome = self.policy.run(what, shutdown, attempt) => policy_outcome(outcome),
        }
    }

    /// Records the gateway's `outcome` for the payment of `order_id`, with its events, with the
    /// other outcomes that arrive meanwhile (see [`record_together`]); alone if that task is
    /// gone.
    async fn record(&self, order_id: OrderId, outcome: &Input) -> Result<Transition> {
        let (recorded, result) = oneshot::channel();
        let settlement = Settlement {
            order_id,
            outcome: outcome.clone(),
            span: tracing::Span::current(),
            recorded,
        };
        if self.settlements.send(settlement).is_ok() {
            if let Ok(result) = result.await {
                return result;
            }
        }
        record_alone(&self.database, &self.relay, order_id, outcome).await
    }

    /// Marks the payment of `order_id` stalled: the policy gave up on it.
    async fn stall(&self, order_id: OrderId, gave_up: &GaveUp, shutdown: &CancellationToken) {
        tracing::error!(
            error = %gave_up,
            "charger gave up on the payment; it stays as it is until an operator resolves the cause \
             (tried again in {STALL_PAUSE:?})"
        );
        let reason = gave_up.to_string();
        let marked = self
            .policy
            .run("payment stall", shutdown, || {
                store::stall(&self.database, order_id, &reason)
            })
            .await;
        if let Some(Err(error)) = marked {
            // Unmarked, the next scan tries the payment again: that only costs gateway calls.
            tracing::error!(%error, "could not mark the payment stalled");
        }
    }
}

/// Records the gateway outcomes sent to `settlements` until every sender is gone: every outcome
/// waiting (up to [`SETTLE_BATCH`]) in one transaction; if any fails, each in a transaction of
/// its own (see the module docs).
async fn record_together(database: PgPool, relay: Relay, mut settlements: mpsc::UnboundedReceiver<Settlement>) {
    let mut batch = Vec::with_capacity(SETTLE_BATCH);
    while settlements.recv_many(&mut batch, SETTLE_BATCH).await > 0 {
        if batch.len() > 1 {
            match record_in_one_transaction(&database, &batch).await {
                Ok(transitions) => {
                    saga_common::metrics::record_transaction_batch("settlement", batch.len());
                    if transitions.iter().any(|transition| !transition.events.is_empty()) {
                        relay.notify();
                    }
                    for (settlement, transition) in batch.drain(..).zip(transitions) {
                        settlement.recorded.send(Ok(transition)).ok();
                    }
                    continue;
                }
                Err(error) => {
                    tracing::debug!(%error, outcomes = batch.len(), "recording outcomes together failed; recording each alone");
                }
            }
        }
        for settlement in batch.drain(..) {
            let result = record_alone(&database, &relay, settlement.order_id, &settlement.outcome)
                .instrument(settlement.span)
                .await;
            settlement.recorded.send(result).ok();
        }
    }
}

/// Records every outcome of `batch` with its events in one transaction; the first failure
/// rolls it back.
async fn record_in_one_transaction(database: &PgPool, batch: &[Settlement]) -> Result<Vec<Transition>> {
    let mut tx = database.begin().await?;
    let mut transitions = Vec::with_capacity(batch.len());
    for settlement in batch {
        let transition = settle_and_enqueue(&mut tx, settlement.order_id, &settlement.outcome)
            .instrument(settlement.span.clone())
            .await?;
        transitions.push(transition);
    }
    tx.commit().await?;
    Ok(transitions)
}

/// Applies the gateway's `outcome` to the payment of `order_id` inside `tx` and writes the
/// events of the transition to the outbox.
async fn settle_and_enqueue(tx: &mut PgConnection, order_id: OrderId, outcome: &Input) -> Result<Transition> {
    let transition = settle(&mut *tx, order_id, outcome.clone()).await?;
    store::enqueue(tx, &transition).await?;
    Ok(transition)
}

/// Records the gateway's `outcome` for the payment of `order_id`, with its events, in a
/// transaction of its own.
async fn record_alone(database: &PgPool, relay: &Relay, order_id: OrderId, outcome: &Input) -> Result<Transition> {
    let mut tx = database.begin().await?;
    let transition = settle_and_enqueue(&mut tx, order_id, outcome).await?;
    tx.commit().await?;
    saga_common::metrics::record_transaction_batch("settlement", 1);
    if !transition.events.is_empty() {
        relay.notify();
    }
    Ok(transition)
}

/// Applies the gateway's `outcome` ([`Input::Charged`] or [`Input::RefundMade`]) to the payment of
/// `order_id` in `store`, without the outbox: the transition the charger records in its
/// transaction once the gateway answered, and the one replay ([`crate::replay`]) makes in memory
/// from the answer its events recorded.
pub async fn settle<S: PaymentStore>(store: &mut S, order_id: OrderId, outcome: Input) -> Result<Transition> {
    store::transition(store, order_id, |state| domain::decide(state, outcome)).await
}

fn policy_outcome<T>(outcome: Option<std::result::Result<T, GaveUp>>) -> Result<T, Stop> {
    match outcome {
        None => Err(Stop::Shutdown),
        Some(Ok(value)) => Ok(value),
        Some(Err(gave_up)) => Err(Stop::GaveUp(gave_up)),
    }
}

fn log_transition(transition: &Transition) {
    let Some(payment) = &transition.after.payment else {
        return;
    };
    if transition.before == transition.after {
        tracing::info!(
            state = transition.after.name(),
            "payment settled meanwhile by another instance"
        );
        return;
    }
    tracing::info!(
        payment_id = %payment.payment_id,
        amount_minor = payment.amount_minor,
        from = transition.before.name(),
        to = transition.after.name(),
        "payment state changed"
    );
}
