//! Exponential backoff, and the one place where the error policy (see [`crate::error`]) is
//! carried out: transient failures retry forever with backoff, unclassified ones within a
//! budget, permanent ones not at all.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::{Classify, ErrorClass};

/// Delays between attempts: doubling from `initial` up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Largest delay between two attempts.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Runs `operation` until it succeeds, sleeping with backoff between failures.
/// Returns `None` only if `shutdown` is cancelled first.
pub async fn retry_until_ok<T, E, F, Fut>(
    what: &str,
    backoff: Backoff,
    shutdown: &CancellationToken,
    mut operation: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 0;
    loop {
        match operation().await {
            Ok(value) => return Some(value),
            Err(error) => {
                attempt += 1;
                let delay = backoff.delay(attempt);
                tracing::warn!(%error, attempt, delay_ms = delay.as_millis() as u64, "{what} failed, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// How a worker treats a failed operation, by the error's [`ErrorClass`].
#[derive(Debug, Clone, Copy)]
pub struct ErrorPolicy {
    /// Delays between retries.
    pub backoff: Backoff,
    /// How many times an operation failing with unclassified errors is tried before it is
    /// given up like a permanent failure.
    pub unclassified_attempts: u32,
}

impl Default for ErrorPolicy {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            unclassified_attempts: 5,
        }
    }
}

/// An operation the policy stopped retrying: its last error was permanent, or unclassified
/// errors used up the budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaveUp {
    /// The last error's class.
    pub class: ErrorClass,
    /// How many times the operation ran.
    pub attempts: u32,
    /// The last error, as text.
    pub error: String,
}

impl std::fmt::Display for GaveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} error after {} attempt(s): {}",
            self.class, self.attempts, self.error
        )
    }
}

impl ErrorPolicy {
    /// Runs `operation` until it succeeds or the policy gives up on it. Returns `None` only if
    /// `shutdown` is cancelled while waiting to retry.
    pub async fn run<T, E, F, Fut>(
        &self,
        what: &str,
        shutdown: &CancellationToken,
        operation: F,
    ) -> Option<Result<T, GaveUp>>
    where
        E: Classify + std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run_reporting_retries(what, shutdown, || {}, operation).await
    }

    /// [`Self::run`], calling `on_retry` each time a failed attempt is going to be retried (to
    /// count retries).
    pub async fn run_reporting_retries<T, E, F, Fut>(
        &self,
        what: &str,
        shutdown: &CancellationToken,
        mut on_retry: impl FnMut(),
        mut operation: F,
    ) -> Option<Result<T, GaveUp>>
    where
        E: Classify + std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempts = 0;
        let mut unclassified = 0;
        loop {
            let error = match operation().await {
                Ok(value) => return Some(Ok(value)),
                Err(error) => error,
            };
            attempts += 1;
            let class = error.class();
            if class == ErrorClass::Unclassified {
                unclassified += 1;
            }
            if class == ErrorClass::Permanent || unclassified >= self.unclassified_attempts {
                return Some(Err(GaveUp {
                    class,
                    attempts,
                    error: error.to_string(),
                }));
            }
            let delay = self.backoff.delay(attempts);
            tracing::warn!(%error, %class, attempt = attempts, delay_ms = delay.as_millis() as u64, "{what} failed, retrying");
            on_retry();
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test error of a chosen class.
    #[derive(Debug)]
    struct Failure(ErrorClass);

    impl Classify for Failure {
        fn class(&self) -> ErrorClass {
            self.0
        }
    }

    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{} failure", self.0)
        }
    }

    fn quick_policy(unclassified_attempts: u32) -> ErrorPolicy {
        ErrorPolicy {
            backoff: Backoff {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(2),
            },
            unclassified_attempts,
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_past_any_budget_until_success() {
        let mut calls = 0;
        let outcome = quick_policy(2)
            .run("flaky", &CancellationToken::new(), || {
                calls += 1;
                let result = if calls < 10 {
                    Err(Failure(ErrorClass::Transient))
                } else {
                    Ok(calls)
                };
                async move { result }
            })
            .await;
        assert_eq!(outcome, Some(Ok(10)));
    }

    #[tokio::test]
    async fn a_permanent_failure_is_given_up_at_once() {
        let mut calls = 0;
        let outcome: Option<Result<(), GaveUp>> = quick_policy(5)
            .run("doomed", &CancellationToken::new(), || {
                calls += 1;
                async { Err(Failure(ErrorClass::Permanent)) }
            })
            .await;
        assert_eq!(calls, 1);
        let gave_up = outcome.expect("not interrupted").expect_err("gave up");
        assert_eq!((gave_up.class, gave_up.attempts), (ErrorClass::Permanent, 1));
        assert_eq!(
            gave_up.to_string(),
            "permanent error after 1 attempt(s): permanent failure"
        );
    }

    #[tokio::test]
    async fn unclassified_failures_are_retried_within_the_budget_then_given_up() {
        let mut calls = 0;
        let outcome: Option<Result<(), GaveUp>> = quick_policy(3)
            .run("unknown", &CancellationToken::new(), || {
                calls += 1;
                // Transient failures in between do not use up the budget.
                let class = if calls % 2 == 0 {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Unclassified
                };
                async move { Err(Failure(class)) }
            })
            .await;
        let gave_up = outcome.expect("not interrupted").expect_err("gave up");
        assert_eq!(
            (gave_up.class, gave_up.attempts, calls),
            (ErrorClass::Unclassified, 5, 5)
        );
    }

    #[tokio::test]
    async fn each_retry_is_reported_and_the_final_attempt_is_not() {
        let (mut calls, mut retries) = (0, 0);
        let outcome: Option<Result<(), GaveUp>> = quick_policy(3)
            .run_reporting_retries(
                "counted",
                &CancellationToken::new(),
                || retries += 1,
                || {
                    calls += 1;
                    let class = if calls == 1 {
                        ErrorClass::Transient
                    } else {
                        ErrorClass::Unclassified
                    };
                    async move { Err(Failure(class)) }
                },
            )
            .await;
        assert!(matches!(outcome, Some(Err(_))));
        // One transient and two unclassified failures were retried; the third unclassified one
        // used up the budget.
        assert_eq!((calls, retries), (4, 3));
    }

    #[tokio::test]
    async fn the_policy_stops_waiting_on_shutdown() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let outcome: Option<Result<(), GaveUp>> = quick_policy(5)
            .run("down", &shutdown, || async { Err(Failure(ErrorClass::Transient)) })
            .await;
        assert_eq!(outcome, None);
    }

    #[test]
    fn delays_double_up_to_the_ceiling() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(backoff.delay(1), Duration::from_millis(100));
        assert_eq!(backoff.delay(2), Duration::from_millis(200));
        assert_eq!(backoff.delay(4), Duration::from_millis(800));
        assert_eq!(backoff.delay(5), Duration::from_secs(1));
        assert_eq!(backoff.delay(1000), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn retries_until_the_operation_succeeds() {
        let backoff = Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
        };
        let mut calls = 0;
        let result = retry_until_ok("flaky", backoff, &CancellationToken::new(), || {
            calls += 1;
            let outcome = if calls < 3 { Err("not yet") } else { Ok(calls) };
            async move { outcome }
        })
        .await;
        assert_eq!(result, Some(3));
    }

    #[tokio::test]
    async fn gives_up_only_on_shutdown() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let result: Option<()> = retry_until_ok("never", Backoff::default(), &shutdown, || async {
            Err::<(), _>("down")
        })
        .await;
        assert_eq!(result, None);
    }
}
