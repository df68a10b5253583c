//! The payment gateway's circuit breaker as a pure state machine: no I/O, no clock of its own
//! (every step is given the time), so each transition is unit-tested without waiting.
//!
//! - **Closed**: every call goes through. The breaker keeps the health of the last
//!   [`BreakerSettings::window`] calls; once it holds at least [`BreakerSettings::minimum_calls`]
//!   of them and the share of unwell ones reaches [`BreakerSettings::failure_rate`], it opens.
//! - **Open**: no call goes through until [`BreakerSettings::cool_down`] has passed since it
//!   opened. Callers are told how long to wait; nothing is refused for good.
//! - **Half-open**: the first caller after the cool-down, and up to
//!   [`BreakerSettings::half_open_probes`] callers in all, are let through as probes; the others
//!   wait. When every probe came back healthy the breaker closes with an empty window; the first
//!   unwell probe opens it again for a fresh cool-down.
//!
//! Only a call that says the gateway is unwell counts against it ([`CallHealth::of`]): a
//! transient failure (outage, timeout). A decline is a healthy call with a negative answer, and a
//! request the gateway rejects as malformed shows a gateway that answers.
//!
//! Every call let through carries a [`Permit`] naming the breaker's phase it was let through in.
//! The outcome of a call let through in an earlier phase (a call made while closed that ends
//! after the breaker opened) changes nothing: only probes decide a half-open breaker. A probe
//! given back unfinished ([`CircuitBreaker::abandon`]) frees its place for another caller.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::gateway::GatewayError;

/// When the breaker opens, for how long, and how it closes again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// How many of the latest calls the failure rate is measured over (at least 1).
    pub window: u32,
    /// How many calls the window must hold before the breaker may open; more than the window
    /// counts as the whole window.
    pub minimum_calls: u32,
    /// Share of unwell calls in the window (above 0.0, at most 1.0) at which the breaker opens.
    pub failure_rate: f64,
    /// How long an open breaker lets no call through.
    pub cool_down: Duration,
    /// How many probe calls a half-open breaker lets through; all must succeed to close it (at
    /// least 1).
    pub half_open_probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl BreakerSettings {
    /// The defaults: over the last 50 calls, with at least 20 of them, open at half failed; cool
    /// down for 10 s; close after 3 healthy probes.
    pub const DEFAULT: Self = Self {
        window: 50,
        minimum_calls: 20,
        failure_rate: 0.5,
        cool_down: Duration::from_secs(10),
        half_open_probes: 3,
    };

    fn window_len(&self) -> usize {
        usize::try_from(self.window.max(1)).unwrap_or(usize::MAX)
    }

    fn minimum_len(&self) -> usize {
        usize::try_from(self.minimum_calls)
            .unwrap_or(usize::MAX)
            .clamp(1, self.window_len())
    }

    fn probes(&self) -> u32 {
        self.half_open_probes.max(1)
    }
}

/// The breaker's state as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// A few probe calls go through; the others wait.
    HalfOpen,
    /// No call goes through until the cool-down is over.
    Open,
}

impl CircuitState {
    /// The state's name in logs, metric labels and the status API.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Open => "open",
        }
    }

    /// The state as the value of the state gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge_value(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        }
    }
}

/// What one finished gateway call says about the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallHealth {
    /// The gateway answered: a capture, a decline, a refund, or a rejected request.
    Healthy,
    /// The gateway could not be reached or failed before acting (a transient failure).
    Unwell,
}

impl CallHealth {
    /// The health a gateway call's `result` shows. Declines are `Ok` outcomes and so healthy.
    pub fn of<T>(result: &Result<T, GatewayError>) -> Self {
        match result {
            Err(GatewayError::Transient(_)) => CallHealth::Unwell,
            Ok(_) | Err(GatewayError::Rejected(_)) => CallHealth::Healthy,
        }
    }
}

/// Leave to make one gateway call; hand it back with [`CircuitBreaker::record`] once the call
/// ended, or with [`CircuitBreaker::abandon`] if it never ended.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a permit must be recorded or abandoned"]
pub struct Permit {
    /// The phase the call was let through in.
    phase: u64,
    /// Whether it is a half-open breaker's probe.
    probe: bool,
}

/// The answer to a caller asking to make a call.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Make the call.
    Call(Permit),
    /// The breaker is open: ask again at this instant (or on a transition).
    WaitUntil(Instant),
    /// The breaker is half-open and its probes are out: ask again on a transition or when a
    /// probe is abandoned.
    WaitForProbes,
}

/// Why the breaker changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// `failures` of the last `calls` calls were unwell, at or over the threshold.
    FailureRate {
        /// Unwell calls in the window.
        failures: u32,
        /// Calls in the window.
        calls: u32,
    },
    /// The cool-down is over; a caller asked.
    CoolDownOver,
    /// A probe was unwell after `succeeded` healthy ones.
    ProbeFailed {
        /// Healthy probes before it.
        succeeded: u32,
    },
    /// Every one of the `probes` probes was healthy.
    ProbesSucceeded {
        /// How many.
        probes: u32,
    },
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::FailureRate { failures, calls } => write!(f, "{failures} of the last {calls} calls failed"),
            Cause::CoolDownOver => write!(f, "the cool-down is over"),
            Cause::ProbeFailed { succeeded } => write!(f, "a probe failed after {succeeded} healthy one(s)"),
            Cause::ProbesSucceeded { probes } => write!(f, "all {probes} probe(s) succeeded"),
        }
    }
}

/// A change of state, to be logged and counted once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state left.
    pub from: CircuitState,
    /// The state entered.
    pub to: CircuitState,
    /// Why.
    pub cause: Cause,
}

impl Transition {
    /// The share of unwell calls among those that decided the transition; `None` for the end of
    /// a cool-down, which no call decided.
    pub fn failure_rate(&self) -> Option<f64> {
        match self.cause {
            Cause::FailureRate { failures, calls } => Some(rate(failures, calls)),
            Cause::CoolDownOver => None,
            Cause::ProbeFailed { succeeded } => Some(rate(1, succeeded + 1)),
            Cause::ProbesSucceeded { .. } => Some(0.0),
        }
    }
}

fn rate(failures: u32, calls: u32) -> f64 {
    if calls == 0 {
        0.0
    } else {
        f64::from(failures) / f64::from(calls)
    }
}

/// What the breaker holds now, for the status API.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    /// The state.
    pub state: CircuitState,
    /// Calls in the window (closed), else 0.
    pub window_calls: u32,
    /// Unwell calls in the window (closed), else 0.
    pub window_failures: u32,
    /// When an open breaker lets probes through.
    pub open_until: Option<Instant>,
    /// Probes let through and not yet abandoned (half-open), else 0.
    pub probes_admitted: u32,
    /// Healthy probes so far (half-open), else 0.
    pub probes_succeeded: u32,
}

#[derive(Debug)]
enum Phase {
    Closed {
        /// Health of the latest calls, oldest first; `true` for unwell.
        unwell: VecDeque<bool>,
        failures: u32,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        admitted: u32,
        succeeded: u32,
    },
}

/// The state machine; see the module docs.
#[derive(Debug)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    phase: Phase,
    /// Counts phases; a permit from an earlier one is stale.
    phase_number: u64,
}

impl CircuitBreaker {
    /// A closed breaker with an empty window.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            phase: Self::closed(&settings),
            phase_number: 0,
        }
    }

    fn closed(settings: &BreakerSettings) -> Phase {
        Phase::Closed {
            unwell: VecDeque::with_capacity(settings.window_len()),
            failures: 0,
        }
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    /// The current state (an open breaker whose cool-down is over stays open until a caller
    /// asks).
    pub fn state(&self) -> CircuitState {
        match self.phase {
            Phase::Closed { .. } => CircuitState::Closed,
            Phase::Open { .. } => CircuitState::Open,
            Phase::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// What the breaker holds now.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot {
            state: self.state(),
            window_calls: 0,
            window_failures: 0,
            open_until: None,
            probes_admitted: 0,
            probes_succeeded: 0,
        };
        match &self.phase {
            Phase::Closed { unwell, failures } => {
                snapshot.window_calls = u32::try_from(unwell.len()).unwrap_or(u32::MAX);
                snapshot.window_failures = *failures;
            }
            Phase::Open { until } => snapshot.open_until = Some(*until),
            Phase::HalfOpen { admitted, succeeded } => {
                snapshot.probes_admitted = *admitted;
                snapshot.probes_succeeded = *succeeded;
            }
        }
        snapshot
    }

    /// Asks, at `now`, to make a call; with the transition this caused (an open breaker whose
    /// cool-down is over turns half-open and lets the caller through as its first probe).
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        let probes = self.settings.probes();
        match &mut self.phase {
            Phase::Closed { .. } => (Admission::Call(self.permit(false)), None),
            Phase::Open { until } if now < *until => (Admission::WaitUntil(*until), None),
            Phase::Open { .. } => {
                let transition = self.enter(Phase::HalfOpen {
                    admitted: 1,
                    succeeded: 0,
                });
                (
                    Admission::Call(self.permit(true)),
                    Some(transition.because(Cause::CoolDownOver)),
                )
            }
            Phase::HalfOpen { admitted, .. } if *admitted < probes => {
                *admitted += 1;
                (Admission::Call(self.permit(true)), None)
            }
            Phase::HalfOpen { .. } => (Admission::WaitForProbes, None),
        }
    }

    /// Records, at `now`, the `health` of the call made with `permit`; with the transition it
    /// caused. A stale permit (from an earlier phase) changes nothing.
    pub fn record(&mut self, permit: Permit, health: CallHealth, now: Instant) -> Option<Transition> {
        if permit.phase != self.phase_number {
            return None;
        }
        let settings = self.settings;
        let is_unwell = health == CallHealth::Unwell;
        match &mut self.phase {
            Phase::Closed { unwell, failures } => {
                if unwell.len() == settings.window_len() && unwell.pop_front() == Some(true) {
                    *failures -= 1;
                }
                unwell.push_back(is_unwell);
                *failures += u32::from(is_unwell);
                let calls = u32::try_from(unwell.len()).unwrap_or(u32::MAX);
                let failures = *failures;
                let tripped = unwell.len() >= settings.minimum_len() && rate(failures, calls) >= settings.failure_rate;
                tripped.then(|| {
                    self.enter(Phase::Open {
                        until: now + settings.cool_down,
                    })
                    .because(Cause::FailureRate { failures, calls })
                })
            }
            Phase::HalfOpen { succeeded, .. } if is_unwell => {
                let succeeded = *succeeded;
                Some(
                    self.enter(Phase::Open {
                        until: now + settings.cool_down,
                    })
                    .because(Cause::ProbeFailed { succeeded }),
                )
            }
            Phase::HalfOpen { succeeded, .. } => {
                *succeeded += 1;
                (*succeeded >= settings.probes()).then(|| {
                    self.enter(Self::closed(&settings)).because(Cause::ProbesSucceeded {
                        probes: settings.probes(),
                    })
                })
            }
            // No permit is given out while open, and entering open starts a new phase.
            Phase::Open { .. } => None,
        }
    }

    /// Hands back `permit` of a call that never ended (abandoned at shutdown): a probe's place
    /// goes to another caller. Returns whether a place was freed.
    pub fn abandon(&mut self, permit: Permit) -> bool {
        if permit.phase != self.phase_number || !permit.probe {
            return false;
        }
        match &mut self.phase {
            Phase::HalfOpen { admitted, .. } if *admitted > 0 => {
                *admitted -= 1;
                true
            }
            _ => false,
        }
    }

    fn permit(&self, probe: bool) -> Permit {
        Permit {
            phase: self.phase_number,
            probe,
        }
    }

    /// Enters `phase`, starting a new phase number; returns the change of state without a cause.
    fn enter(&mut self, phase: Phase) -> StateChange {
        let from = self.state();
        self.phase = phase;
        self.phase_number = self.phase_number.wrapping_add(1);
        StateChange { from, to: self.state() }
    }
}

/// A change of state waiting for its cause.
struct StateChange {
    from: CircuitState,
    to: CircuitState,
}

impl StateChange {
    fn because(self, cause: Cause) -> Transition {
        Transition {
            from: self.from,
            to: self.to,
            cause,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::{ChargeOutcome, RefundOutcome};

    use CallHealth::{Healthy, Unwell};

    const COOL_DOWN: Duration = Duration::from_secs(10);

    /// Window 10, at least 4 calls, opens at half of them unwell, 2 probes.
    fn settings() -> BreakerSettings {
        BreakerSettings {
            window: 10,
            minimum_calls: 4,
            failure_rate: 0.5,
            cool_down: COOL_DOWN,
            half_open_probes: 2,
        }
    }

    /// A breaker and a clock for it.
    struct Given {
        breaker: CircuitBreaker,
        now: Instant,
    }

    impl Given {
        fn closed() -> Self {
            Self {
                breaker: CircuitBreaker::new(settings()),
                now: Instant::now(),
            }
        }

        /// A breaker opened by four unwell calls, at `self.now`.
        fn open() -> Self {
            let mut given = Self::closed();
            let transitions = given.calls(&[Unwell; 4]);
            assert_eq!(transitions.last().map(|t| t.to), Some(CircuitState::Open));
            given
        }

        /// An open breaker whose cool-down is over, turned half-open by a first probe; returns
        /// that probe's permit.
        fn half_open() -> (Self, Permit) {
            let mut given = Self::open();
            given.later(COOL_DOWN);
            let (admission, transition) = given.breaker.admit(given.now);
            assert_eq!(
                transition.map(|t| (t.from, t.to, t.cause)),
                Some((CircuitState::Open, CircuitState::HalfOpen, Cause::CoolDownOver))
            );
            (given, expect_call(admission))
        }

        fn later(&mut self, by: Duration) {
            self.now += by;
        }

        /// Makes one call with the given health, which must be let through.
        fn call(&mut self, health: CallHealth) -> Option<Transition> {
            let (admission, transition) = self.breaker.admit(self.now);
            assert_eq!(transition, None, "a call that changes the state: {transition:?}");
            let permit = expect_call(admission);
            self.breaker.record(permit, health, self.now)
        }

        /// Makes the calls, in order; returns the transitions they caused.
        fn calls(&mut self, healths: &[CallHealth]) -> Vec<Transition> {
            healths.iter().filter_map(|health| self.call(*health)).collect()
        }

        fn state(&self) -> CircuitState {
            self.breaker.state()
        }
    }

    fn expect_call(admission: Admission) -> Permit {
        match admission {
            Admission::Call(permit) => permit,
            other => panic!("expected the call to be let through, got {other:?}"),
        }
    }

    #[test]
    fn a_new_breaker_is_closed_and_lets_calls_through() {
        let mut given = Given::closed();
        assert_eq!(given.state(), CircuitState::Closed);
        assert!(given.calls(&[Healthy; 20]).is_empty());
        assert_eq!(given.state(), CircuitState::Closed);
    }

    #[test]
    fn the_breaker_stays_closed_under_the_minimum_calls_even_if_all_failed() {
        let mut given = Given::closed();
        assert!(given.calls(&[Unwell; 3]).is_empty());
        assert_eq!(given.state(), CircuitState::Closed);
        assert_eq!(given.breaker.snapshot().window_failures, 3);
    }

    #[test]
    fn the_breaker_opens_when_the_failure_rate_reaches_the_threshold() {
        let mut given = Given::closed();
        // 1 of 4, then 2 of 5 are under half; 3 of 6 is half.
        assert!(given.calls(&[Healthy, Healthy, Unwell, Healthy, Unwell]).is_empty());
        assert_eq!(given.state(), CircuitState::Closed);
        let transition = given.call(Unwell).expect("the breaker opens");
        assert_eq!(
            (transition.from, transition.to, transition.cause),
            (
                CircuitState::Closed,
                CircuitState::Open,
                Cause::FailureRate { failures: 3, calls: 6 }
            )
        );
        assert_eq!(transition.failure_rate(), Some(0.5));
        assert_eq!(given.state(), CircuitState::Open);
    }

    #[test]
    fn declines_and_rejected_requests_do_not_count_as_failures() {
        let declined: Result<ChargeOutcome, GatewayError> = Ok(ChargeOutcome::Declined {
            reason: "card_declined".into(),
        });
        let rejected: Result<RefundOutcome, GatewayError> = Err(GatewayError::Rejected("no such charge".into()));
        let outage: Result<ChargeOutcome, GatewayError> = Err(GatewayError::Transient("timeout".into()));
        assert_eq!(CallHealth::of(&declined), Healthy);
        assert_eq!(CallHealth::of(&rejected), Healthy);
        assert_eq!(CallHealth::of(&outage), Unwell);

        // A run of declines among a few outages keeps the breaker closed.
        let mut given = Given::closed();
        let mut healths = vec![CallHealth::of(&declined); 10];
        healths.extend([CallHealth::of(&outage); 4]);
        assert!(given.calls(&healths).is_empty());
        assert_eq!(given.state(), CircuitState::Closed);
    }

    #[test]
    fn an_open_breaker_lets_no_call_through_until_the_cool_down_is_over() {
        let mut given = Given::open();
        let opened = given.now;
        for _ in 0..3 {
            let (admission, transition) = given.breaker.admit(given.now);
            assert_eq!(admission, Admission::WaitUntil(opened + COOL_DOWN));
            assert_eq!(transition, None);
            given.later(Duration::from_secs(3));
        }
        assert_eq!(given.state(), CircuitState::Open);
        assert_eq!(given.breaker.snapshot().open_until, Some(opened + COOL_DOWN));
        given.later(Duration::from_secs(1));
        let (admission, transition) = given.breaker.admit(given.now);
        let _probe = expect_call(admission);
        assert_eq!(transition.map(|t| t.to), Some(CircuitState::HalfOpen));
    }

    #[test]
    fn a_half_open_breaker_lets_only_the_configured_probes_through() {
        let (mut given, _first) = Given::half_open();
        let (second, _) = given.breaker.admit(given.now);
        let _second = expect_call(second);
        for _ in 0..5 {
            assert_eq!(given.breaker.admit(given.now), (Admission::WaitForProbes, None));
        }
        let snapshot = given.breaker.snapshot();
        assert_eq!((snapshot.state, snapshot.probes_admitted), (CircuitState::HalfOpen, 2));
    }

    #[test]
    fn the_breaker_closes_once_every_probe_succeeded() {
        let (mut given, first) = Given::half_open();
        let second = expect_call(given.breaker.admit(given.now).0);
        assert_eq!(given.breaker.record(first, Healthy, given.now), None);
        assert_eq!(given.state(), CircuitState::HalfOpen);
        let transition = given.breaker.record(second, Healthy, given.now).expect("closes");
        assert_eq!(
            (transition.from, transition.to, transition.cause),
            (
                CircuitState::HalfOpen,
                CircuitState::Closed,
                Cause::ProbesSucceeded { probes: 2 }
            )
        );
        assert_eq!(transition.failure_rate(), Some(0.0));
        // The window starts empty: the failures that opened the breaker are forgotten.
        assert_eq!(given.breaker.snapshot().window_calls, 0);
        assert!(given.calls(&[Unwell; 3]).is_empty());
        assert_eq!(given.state(), CircuitState::Closed);
    }

    #[test]
    fn a_failed_probe_opens_the_breaker_again_for_a_fresh_cool_down() {
        let (mut given, first) = Given::half_open();
        let second = expect_call(given.breaker.admit(given.now).0);
        assert_eq!(given.breaker.record(first, Healthy, given.now), None);
        given.later(Duration::from_secs(2));
        let transition = given.breaker.record(second, Unwell, given.now).expect("opens");
        assert_eq!(
            (transition.from, transition.to, transition.cause),
            (
                CircuitState::HalfOpen,
                CircuitState::Open,
                Cause::ProbeFailed { succeeded: 1 }
            )
        );
        assert_eq!(transition.failure_rate(), Some(0.5));
        assert_eq!(
            given.breaker.admit(given.now),
            (Admission::WaitUntil(given.now + COOL_DOWN), None)
        );
    }

    #[test]
    fn the_window_slides_so_old_failures_drop_out() {
        let mut given = Given::closed();
        // 4 unwell among 10, under half all along. Then 10 healthy calls push them all out.
        let mut healths = vec![
            Healthy, Healthy, Unwell, Healthy, Healthy, Unwell, Healthy, Unwell, Healthy, Unwell,
        ];
        healths.extend([Healthy; 10]);
        assert!(given.calls(&healths).is_empty());
        assert_eq!(given.breaker.snapshot().window_calls, 10);
        assert_eq!(given.breaker.snapshot().window_failures, 0);
        // 4 unwell now make 4 of 10: still closed; a fifth makes half.
        assert!(given.calls(&[Unwell; 4]).is_empty());
        let transition = given.call(Unwell).expect("opens");
        assert_eq!(transition.cause, Cause::FailureRate { failures: 5, calls: 10 });
    }

    #[test]
    fn a_late_outcome_of_a_call_let_through_before_the_breaker_opened_changes_nothing() {
        let mut given = Given::closed();
        let (admission, _) = given.breaker.admit(given.now);
        let early = expect_call(admission);
        given.calls(&[Unwell; 4]);
        assert_eq!(given.state(), CircuitState::Open);
        given.later(COOL_DOWN);
        let probe = expect_call(given.breaker.admit(given.now).0);
        // The early call ends unwell while the breaker is half-open: it is no probe.
        assert_eq!(given.breaker.record(early, Unwell, given.now), None);
        assert_eq!(given.state(), CircuitState::HalfOpen);
        assert_eq!(given.breaker.record(probe, Healthy, given.now), None);
        assert_eq!(given.state(), CircuitState::HalfOpen);
    }

    #[test]
    fn an_abandoned_probe_frees_its_place_for_another_caller() {
        let (mut given, first) = Given::half_open();
        let _second = expect_call(given.breaker.admit(given.now).0);
        assert_eq!(given.breaker.admit(given.now).0, Admission::WaitForProbes);
        assert!(given.breaker.abandon(first));
        let _third = expect_call(given.breaker.admit(given.now).0);
        assert_eq!(given.breaker.admit(given.now).0, Admission::WaitForProbes);
    }

    #[test]
    fn abandoning_a_call_of_a_closed_breaker_changes_nothing() {
        let mut given = Given::closed();
        let permit = expect_call(given.breaker.admit(given.now).0);
        assert!(!given.breaker.abandon(permit));
        assert_eq!(given.breaker.snapshot().window_calls, 0);
    }

    #[test]
    fn a_minimum_above_the_window_counts_as_the_whole_window() {
        let mut given = Given {
            breaker: CircuitBreaker::new(BreakerSettings {
                window: 3,
                minimum_calls: 100,
                ..settings()
            }),
            now: Instant::now(),
        };
        assert!(given.calls(&[Unwell; 2]).is_empty());
        assert_eq!(given.call(Unwell).map(|t| t.to), Some(CircuitState::Open));
    }
}
