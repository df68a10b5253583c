//! Exponential backoff for transient failures: retry forever (never skip), with a ceiling on
//! the delay, until the operation succeeds or shutdown is requested.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

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

#[cfg(test)]
mod tests {
    use super::*;

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
