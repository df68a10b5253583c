//! The per-client limit on placing orders: each client (its credential: the API key's name or
//! the JWT's subject; its address when authentication is off) may place `per_second` orders a
//! second, with bursts of up to `burst`, as a generic
//! cell rate algorithm (the `governor` crate) keeps count. A client over its limit is told how
//! long to wait. Retries of an accepted order with its Idempotency-Key are answered before the
//! limit is consulted, so they are never charged twice.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

/// The limit's settings.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct OrderRateLimitConfig {
    /// Orders one client (one API key or JWT subject; one address without) may place per second through `POST /orders`; 0 turns the
    /// limit off.
    #[arg(
        long = "order-rate-limit-per-second",
        env = "ORDER_RATE_LIMIT_PER_SECOND",
        default_value_t = 1000
    )]
    pub per_second: u32,
    /// Orders a client may place at once before the rate applies.
    #[arg(
        long = "order-rate-limit-burst",
        env = "ORDER_RATE_LIMIT_BURST",
        default_value_t = 2000
    )]
    pub burst: u32,
}

/// Whom the limit counts an order against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Client {
    /// A caller with a credential, by the credential's name: every address using one key
    /// shares its limit.
    Credential(String),
    /// A caller without one (authentication off), by address.
    Address(IpAddr),
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Client::Credential(name) => write!(f, "{name}"),
            Client::Address(address) => write!(f, "{address}"),
        }
    }
}

/// Counts each client's orders.
pub struct OrderRateLimit {
    limiter: DefaultKeyedRateLimiter<Client>,
    clock: DefaultClock,
}

impl OrderRateLimit {
    /// The limit the settings ask for; `None` when they turn it off.
    pub fn new(config: OrderRateLimitConfig) -> Option<Self> {
        let per_second = NonZeroU32::new(config.per_second)?;
        let burst = NonZeroU32::new(config.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        Some(Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            clock: DefaultClock::default(),
        })
    }

    /// Counts one order of `client`: `Ok` if it is within the limit, else how long the client
    /// should wait before its next order is accepted (at least a second, as `Retry-After` counts
    /// whole seconds).
    pub fn charge(&self, client: &Client) -> Result<(), Duration> {
        self.limiter.check_key(client).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            Duration::from_secs(wait.as_secs_f64().ceil().max(1.0) as u64)
        })
    }

    /// Forgets clients whose allowance has refilled, so the table does not grow for good.
    pub fn forget_idle_clients(&self) {
        self.limiter.retain_recent();
    }
}

/// Forgets idle clients of `limit` once a minute until `shutdown`.
pub async fn forget_idle_clients_until(limit: Arc<OrderRateLimit>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(60)) => limit.forget_idle_clients(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: u32, burst: u32) -> OrderRateLimit {
        OrderRateLimit::new(OrderRateLimitConfig { per_second, burst }).expect("a limit")
    }

    #[test]
    fn a_client_may_place_its_burst_at_once_and_then_waits() {
        let limit = limit(1, 3);
        let client = Client::Credential("order-api-key".into());
        for _ in 0..3 {
            assert_eq!(limit.charge(&client), Ok(()));
        }
        assert_eq!(limit.charge(&client), Err(Duration::from_secs(1)));
    }

    #[test]
    fn clients_are_counted_apart() {
        let limit = limit(1, 1);
        let first = Client::Credential("team-a".into());
        assert_eq!(limit.charge(&first), Ok(()));
        assert!(limit.charge(&first).is_err());
        assert_eq!(limit.charge(&Client::Credential("team-b".into())), Ok(()));
        assert_eq!(limit.charge(&Client::Address(IpAddr::from([10, 0, 0, 2]))), Ok(()));
    }

    #[test]
    fn a_slow_rate_asks_for_a_longer_wait() {
        let limit = OrderRateLimit {
            limiter: RateLimiter::keyed(
                Quota::with_period(Duration::from_secs(10))
                    .expect("a period")
                    .allow_burst(NonZeroU32::MIN),
            ),
            clock: DefaultClock::default(),
        };
        let client = Client::Address(IpAddr::from([10, 0, 0, 1]));
        assert_eq!(limit.charge(&client), Ok(()));
        let wait = limit.charge(&client).expect_err("over the limit");
        assert!(
            (Duration::from_secs(9)..=Duration::from_secs(10)).contains(&wait),
            "{wait:?}"
        );
    }

    #[test]
    fn a_rate_of_zero_turns_the_limit_off() {
        assert!(OrderRateLimit::new(OrderRateLimitConfig {
            per_second: 0,
            burst: 10
        })
        .is_none());
    }
}
