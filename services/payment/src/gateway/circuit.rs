//! The payment gateway's circuit breaker as the charger uses it: the pure state machine of
//! [`crate::breaker`] behind a lock, shared by all the charger's tasks.
//!
//! A task asks for leave before each gateway call ([`GatewayCircuit::permit`]). While the
//! breaker is open, or half-open with its probes out, the task waits there: it makes no call,
//! counts no failure and holds no concurrency slot, and its payment stays as it is (`pending` or
//! `refunding`), so an open breaker never declines or drops a payment. When the call ends the
//! task reports what it showed ([`CallPermit::record`]); a call abandoned at shutdown hands its
//! leave back when the permit is dropped.
//!
//! Each transition is announced once, under the lock so that announcements follow the
//! transitions' order: a log line (warn on opening, info otherwise) with the failure rate seen,
//! the state gauge and the transitions counter ([`saga_common::metrics`]), and a wake-up of the
//! waiting tasks. [`GatewayCircuit::status`] is what `GET /admin/gateway/circuit` serves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use saga_common::metrics::{label, GATEWAY_CIRCUIT_STATE, GATEWAY_CIRCUIT_TRANSITIONS};
use serde::Serialize;
use tokio::sync::Notify;

use crate::breaker::{Admission, BreakerSettings, CallHealth, CircuitBreaker, CircuitState, Permit, Transition};

/// The breaker shared by the charger's tasks; see the module docs.
#[derive(Debug)]
pub struct GatewayCircuit {
    breaker: Mutex<CircuitBreaker>,
    /// Woken on every transition and whenever a probe's place is freed.
    changed: Notify,
    transitions: AtomicU64,
}

/// What `GET /admin/gateway/circuit` serves.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CircuitStatus {
    /// `closed`, `half_open` or `open`.
    pub state: &'static str,
    /// Calls in the sliding window (closed only, else 0).
    pub window_calls: u32,
    /// Unwell calls among them.
    pub window_failures: u32,
    /// Milliseconds left until an open breaker lets probes through; `null` unless open.
    pub probes_in_ms: Option<u64>,
    /// Probes let through so far (half-open only, else 0).
    pub probes_admitted: u32,
    /// Healthy probes so far (half-open only, else 0).
    pub probes_succeeded: u32,
    /// State changes since the service started.
    pub transitions: u64,
    /// The settings in force.
    pub settings: CircuitSettingsView,
}

/// The breaker's settings as served.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CircuitSettingsView {
    /// Calls the failure rate is measured over.
    pub window: u32,
    /// Calls the window must hold before the breaker may open.
    pub minimum_calls: u32,
    /// Failure rate at which it opens.
    pub failure_rate: f64,
    /// Cool-down of an open breaker, in milliseconds.
    pub cool_down_ms: u64,
    /// Probes a half-open breaker lets through.
    pub half_open_probes: u32,
}

impl GatewayCircuit {
    /// A closed breaker with `settings`; sets the state gauge to closed.
    pub fn new(settings: BreakerSettings) -> Self {
        ::metrics::gauge!(GATEWAY_CIRCUIT_STATE).set(CircuitState::Closed.gauge_value());
        Self {
            breaker: Mutex::new(CircuitBreaker::new(settings)),
            changed: Notify::new(),
            transitions: AtomicU64::new(0),
        }
    }

    /// Waits until the breaker lets a call through, and returns the leave to make it.
    /// Cancel-safe: dropping the future while it waits takes nothing.
    pub async fn permit(&self) -> CallPermit<'_> {
        loop {
            // Registered before the breaker is asked, so a change right after is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let admission = {
                let mut breaker = self.lock();
                let (admission, transition) = breaker.admit(now());
                if let Some(transition) = transition {
                    self.announce(&breaker, &transition);
                }
                admission
            };
            match admission {
                Admission::Call(permit) => {
                    return CallPermit {
                        circuit: self,
                        permit: Some(permit),
                    }
                }
                Admission::WaitUntil(until) => {
                    tokio::select! {
                        _ = &mut changed => {}
                        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(until)) => {}
                    }
                }
                Admission::WaitForProbes => changed.await,
            }
        }
    }

    /// The breaker's state now.
    pub fn state(&self) -> CircuitState {
        self.lock().state()
    }

    /// The breaker's state, window, probes and settings.
    pub fn status(&self) -> CircuitStatus {
        let breaker = self.lock();
        let snapshot = breaker.snapshot();
        let settings = breaker.settings();
        let probes_in_ms = snapshot.open_until.map(|until| {
            let left = until.saturating_duration_since(now());
            u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
        });
        CircuitStatus {
            state: snapshot.state.as_str(),
            window_calls: snapshot.window_calls,
            window_failures: snapshot.window_failures,
            probes_in_ms,
            probes_admitted: snapshot.probes_admitted,
            probes_succeeded: snapshot.probes_succeeded,
            transitions: self.transitions.load(Ordering::Relaxed),
            settings: CircuitSettingsView {
                window: settings.window,
                minimum_calls: settings.minimum_calls,
                failure_rate: settings.failure_rate,
                cool_down_ms: u64::try_from(settings.cool_down.as_millis()).unwrap_or(u64::MAX),
                half_open_probes: settings.half_open_probes,
            },
        }
    }

    fn lock(&self) -> MutexGuard<'_, CircuitBreaker> {
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Logs, counts and publishes `transition`, and wakes the waiting tasks. Called with the
    /// lock held.
    fn announce(&self, breaker: &CircuitBreaker, transition: &Transition) {
        self.transitions.fetch_add(1, Ordering::Relaxed);
        ::metrics::gauge!(GATEWAY_CIRCUIT_STATE).set(transition.to.gauge_value());
        ::metrics::counter!(
            GATEWAY_CIRCUIT_TRANSITIONS,
            label::FROM => transition.from.as_str(),
            label::TO => transition.to.as_str()
        )
        .increment(1);
        let settings = breaker.settings();
        let from = transition.from.as_str();
        let cause = &transition.cause;
        let failure_rate = transition.failure_rate();
        match transition.to {
            CircuitState::Open => tracing::warn!(
                from,
                %cause,
                failure_rate,
                cool_down_ms = u64::try_from(settings.cool_down.as_millis()).unwrap_or(u64::MAX),
                "payment gateway circuit opened: gateway calls wait for the cool-down; payments stay pending or \
                 refunding, none is declined"
            ),
            CircuitState::HalfOpen => tracing::info!(
                from,
                %cause,
                probes = settings.half_open_probes,
                "payment gateway circuit half-open: letting probe calls through"
            ),
            CircuitState::Closed => tracing::info!(
                from,
                %cause,
                failure_rate,
                "payment gateway circuit closed: gateway calls go through again"
            ),
        }
        self.changed.notify_waiters();
    }
}

/// Leave to make one gateway call; see [`GatewayCircuit::permit`].
#[derive(Debug)]
pub struct CallPermit<'a> {
    circuit: &'a GatewayCircuit,
    /// `None` once recorded.
    permit: Option<Permit>,
}

impl CallPermit<'_> {
    /// Reports what the call showed about the gateway (see [`CallHealth::of`]).
    pub fn record(mut self, health: CallHealth) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let circuit = self.circuit;
        let mut breaker = circuit.lock();
        if let Some(transition) = breaker.record(permit, health, now()) {
            circuit.announce(&breaker, &transition);
        }
    }
}

impl Drop for CallPermit<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            if self.circuit.lock().abandon(permit) {
                self.circuit.changed.notify_waiters();
            }
        }
    }
}

/// The time the breaker is given: tokio's clock, which tests can pause.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::breaker::CallHealth::{Healthy, Unwell};

    const COOL_DOWN: Duration = Duration::from_millis(200);

    fn circuit() -> Arc<GatewayCircuit> {
        Arc::new(GatewayCircuit::new(BreakerSettings {
            window: 4,
            minimum_calls: 2,
            failure_rate: 0.5,
            cool_down: COOL_DOWN,
            half_open_probes: 1,
        }))
    }

    async fn open(circuit: &GatewayCircuit) {
        for _ in 0..2 {
            circuit.permit().await.record(Unwell);
        }
        assert_eq!(circuit.state(), CircuitState::Open);
    }

    #[tokio::test]
    async fn a_caller_waits_while_the_circuit_is_open_and_goes_through_as_a_probe_after_the_cool_down() {
        let circuit = circuit();
        open(&circuit).await;
        let asked = std::time::Instant::now();
        let waited = tokio::time::timeout(Duration::from_millis(50), circuit.permit()).await;
        assert!(waited.is_err(), "no leave while open");
        let probe = circuit.permit().await;
        assert!(asked.elapsed() >= COOL_DOWN, "let through after {:?}", asked.elapsed());
        assert_eq!(circuit.state(), CircuitState::HalfOpen);
        probe.record(Healthy);
        assert_eq!(circuit.state(), CircuitState::Closed);
        let status = circuit.status();
        assert_eq!((status.state, status.transitions), ("closed", 3));
    }

    #[tokio::test]
    async fn callers_waiting_behind_a_probe_go_through_once_it_closes_the_circuit() -> anyhow::Result<()> {
        let circuit = circuit();
        open(&circuit).await;
        tokio::time::sleep(COOL_DOWN).await;
        let probe = circuit.permit().await;
        let waiting: Vec<_> = (0..5)
            .map(|_| {
                let circuit = circuit.clone();
                tokio::spawn(async move { circuit.permit().await.record(Healthy) })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            waiting.iter().all(|task| !task.is_finished()),
            "only the probe goes through"
        );
        probe.record(Healthy);
        for task in waiting {
            tokio::time::timeout(Duration::from_secs(5), task).await??;
        }
        assert_eq!(circuit.state(), CircuitState::Closed);
        Ok(())
    }

    #[tokio::test]
    async fn a_probe_dropped_unfinished_lets_the_next_caller_probe() -> anyhow::Result<()> {
        let circuit = circuit();
        open(&circuit).await;
        tokio::time::sleep(COOL_DOWN).await;
        let probe = circuit.permit().await;
        let next = tokio::spawn({
            let circuit = circuit.clone();
            async move { circuit.permit().await.record(Healthy) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!next.is_finished());
        drop(probe);
        tokio::time::timeout(Duration::from_secs(5), next).await??;
        assert_eq!(circuit.state(), CircuitState::Closed);
        Ok(())
    }

    #[tokio::test]
    async fn the_status_shows_an_open_circuit_and_when_it_lets_probes_through() {
        let circuit = circuit();
        open(&circuit).await;
        let status = circuit.status();
        assert_eq!(status.state, "open");
        assert!(status.probes_in_ms.is_some_and(|ms| ms <= 200), "{status:?}");
        assert_eq!(status.settings.cool_down_ms, 200);
        assert_eq!(status.transitions, 1);
    }
}
