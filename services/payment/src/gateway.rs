//! The payment gateway the service charges and refunds through, and the choice of implementation
//! from configuration.
//!
//! Every call carries an idempotency key, and an implementation must honour it: a call repeated
//! with the same key returns the first call's result and moves no money again. The service relies
//! on that, because it calls the gateway before its own database commit: after a crash in between
//! it calls again with the same key. Calls with one key may also overlap (two service instances
//! resuming the same pending charge): an implementation must then give both the same outcome, or
//! fail the later one transiently until the first has completed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;

pub mod circuit;
pub mod metered;
pub mod simulated;

pub use circuit::GatewayCircuit;
pub use metered::MeteredGateway;
pub use simulated::{OutageSwitch, SimulatedGateway};

use crate::breaker::BreakerSettings;

/// A request to capture an amount from a payment token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    /// Identifies the charge across retries: the same key never charges twice. The order id.
    pub idempotency_key: String,
    /// The customer's payment token.
    pub token: String,
    /// Amount in minor units of `currency`.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
}

/// What the gateway did with a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// The amount was taken; `gateway_reference` names the capture for a later refund.
    Captured {
        /// The gateway's id of the capture.
        gateway_reference: String,
    },
    /// The gateway refused the charge; nothing was taken. A business outcome, final for the key.
    Declined {
        /// Why, e.g. `card_declined`.
        reason: String,
    },
}

/// A request to give back (part of) a captured amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// Identifies the refund across retries: the same key never refunds twice
    /// (`refund-<order_id>`).
    pub idempotency_key: String,
    /// The capture to refund, as returned in [`ChargeOutcome::Captured`].
    pub gateway_reference: String,
    /// Amount in minor units of `currency`.
    pub amount_minor: i64,
    /// ISO 4217 code; must be the capture's.
    pub currency: String,
}

/// A refund that took effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundOutcome {
    /// The gateway's id of the refund.
    pub refund_reference: String,
}

/// Why a gateway call did not produce an outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The gateway could not be reached or failed before the operation took effect (or cannot
    /// tell). Retry the same request with the same idempotency key, with backoff; never treat it
    /// as a decline.
    #[error("payment gateway unavailable: {0}")]
    Transient(String),
    /// The gateway refuses the request as malformed, and always will: the idempotency key was
    /// used before with other parameters, or a refund names no captured charge or exceeds it.
    /// Permanent: the charger leaves the payment stalled for an operator to look at.
    #[error("payment gateway rejected the request: {0}")]
    Rejected(String),
}

/// A payment gateway. Implementations must be idempotent by key (see the module docs).
#[async_trait]
pub trait PaymentGateway: Send + Sync {
    /// Captures `request.amount_minor` from `request.token`, or returns the outcome of the
    /// earlier charge with the same idempotency key.
    async fn charge(&self, request: ChargeRequest) -> Result<ChargeOutcome, GatewayError>;

    /// Refunds `request.amount_minor` of the capture `request.gateway_reference`, or returns the
    /// outcome of the earlier refund with the same idempotency key.
    async fn refund(&self, request: RefundRequest) -> Result<RefundOutcome, GatewayError>;
}

/// Which gateway implementation the service uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum GatewayKind {
    /// The simulated gateway: token-driven outcomes, its ledger in the service's database.
    #[default]
    Simulated,
}

/// Gateway settings.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayConfig {
    /// The gateway implementation.
    #[arg(long = "payment-gateway", env = "PAYMENT_GATEWAY", value_enum, default_value_t = GatewayKind::Simulated)]
    pub kind: GatewayKind,
    /// Simulated gateway: delay added to every call, in milliseconds.
    #[arg(
        long = "payment-gateway-latency-ms",
        env = "PAYMENT_GATEWAY_LATENCY_MS",
        default_value_t = 0
    )]
    pub latency_ms: u64,
    /// Simulated gateway: probability (0.0 to 1.0) that a call fails transiently before taking
    /// effect.
    #[arg(
        long = "payment-gateway-transient-error-rate",
        env = "PAYMENT_GATEWAY_TRANSIENT_ERROR_RATE",
        default_value_t = 0.0,
        value_parser = parse_probability
    )]
    pub transient_error_rate: f64,
    /// How many gateway calls (charges and refunds) run at once: each holds one slot while the
    /// gateway works on it, so a slow charge delays no other one unless all slots are taken.
    #[arg(
        long = "payment-charge-concurrency",
        env = "PAYMENT_CHARGE_CONCURRENCY",
        default_value_t = DEFAULT_CHARGE_CONCURRENCY,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub charge_concurrency: u32,
    /// The circuit breaker around the gateway.
    #[command(flatten)]
    pub breaker: BreakerConfig,
}

/// Default of [`GatewayConfig::charge_concurrency`].
pub const DEFAULT_CHARGE_CONCURRENCY: u32 = 32;

/// Settings of the circuit breaker around the gateway (see [`crate::breaker`]).
#[derive(Debug, Clone, clap::Args)]
pub struct BreakerConfig {
    /// Circuit breaker: how many of the latest gateway calls the failure rate is measured over.
    #[arg(
        long = "payment-gateway-breaker-window",
        env = "PAYMENT_GATEWAY_BREAKER_WINDOW",
        default_value_t = DEFAULT_BREAKER.window,
        value_parser = clap::value_parser!(u32).range(1..=100_000)
    )]
    pub window: u32,
    /// Circuit breaker: how many calls the window must hold before the breaker may open (more
    /// than the window counts as the whole window).
    #[arg(
        long = "payment-gateway-breaker-minimum-calls",
        env = "PAYMENT_GATEWAY_BREAKER_MINIMUM_CALLS",
        default_value_t = DEFAULT_BREAKER.minimum_calls,
        value_parser = clap::value_parser!(u32).range(1..=100_000)
    )]
    pub minimum_calls: u32,
    /// Circuit breaker: share of failed calls in the window (above 0.0, at most 1.0) at which
    /// it opens. Only transient failures count; declines never do.
    #[arg(
        long = "payment-gateway-breaker-failure-rate",
        env = "PAYMENT_GATEWAY_BREAKER_FAILURE_RATE",
        default_value_t = DEFAULT_BREAKER.failure_rate,
        value_parser = parse_failure_rate
    )]
    pub failure_rate: f64,
    /// Circuit breaker: how long an open breaker lets no call through, in milliseconds.
    #[arg(
        long = "payment-gateway-breaker-cool-down-ms",
        env = "PAYMENT_GATEWAY_BREAKER_COOL_DOWN_MS",
        default_value_t = DEFAULT_BREAKER_COOL_DOWN_MS,
        value_parser = clap::value_parser!(u64).range(1..=3_600_000)
    )]
    pub cool_down_ms: u64,
    /// Circuit breaker: how many probe calls a half-open breaker lets through; all must succeed
    /// for it to close.
    #[arg(
        long = "payment-gateway-breaker-half-open-probes",
        env = "PAYMENT_GATEWAY_BREAKER_HALF_OPEN_PROBES",
        default_value_t = DEFAULT_BREAKER.half_open_probes,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub half_open_probes: u32,
}

const DEFAULT_BREAKER: BreakerSettings = BreakerSettings::DEFAULT;
const DEFAULT_BREAKER_COOL_DOWN_MS: u64 = DEFAULT_BREAKER.cool_down.as_millis() as u64;

impl Default for BreakerConfig {
    fn default() -> Self {
        Self::from(DEFAULT_BREAKER)
    }
}

impl From<BreakerSettings> for BreakerConfig {
    fn from(settings: BreakerSettings) -> Self {
        Self {
            window: settings.window,
            minimum_calls: settings.minimum_calls,
            failure_rate: settings.failure_rate,
            cool_down_ms: u64::try_from(settings.cool_down.as_millis()).unwrap_or(u64::MAX),
            half_open_probes: settings.half_open_probes,
        }
    }
}

impl BreakerConfig {
    /// The breaker's settings.
    pub fn settings(&self) -> BreakerSettings {
        BreakerSettings {
            window: self.window,
            minimum_calls: self.minimum_calls,
            failure_rate: self.failure_rate,
            cool_down: Duration::from_millis(self.cool_down_ms),
            half_open_probes: self.half_open_probes,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            kind: GatewayKind::Simulated,
            latency_ms: 0,
            transient_error_rate: 0.0,
            charge_concurrency: DEFAULT_CHARGE_CONCURRENCY,
            breaker: BreakerConfig::default(),
        }
    }
}

impl GatewayConfig {
    /// The configured gateway. The simulated one keeps its ledger in `database`.
    pub fn build(&self, database: PgPool) -> Arc<dyn PaymentGateway> {
        match self.kind {
            GatewayKind::Simulated => Arc::new(SimulatedGateway::new(
                database,
                Duration::from_millis(self.latency_ms),
                self.transient_error_rate,
            )),
        }
    }
}

fn parse_probability(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("not a number: {e}"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not between 0.0 and 1.0"))
    }
}

fn parse_failure_rate(text: &str) -> Result<f64, String> {
    let value = parse_probability(text)?;
    if value > 0.0 {
        Ok(value)
    } else {
        Err("a failure rate of 0 would open the breaker on healthy calls".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transient_error_rate_must_be_a_probability() {
        assert_eq!(parse_probability("0"), Ok(0.0));
        assert_eq!(parse_probability("0.25"), Ok(0.25));
        assert_eq!(parse_probability("1.0"), Ok(1.0));
        assert!(parse_probability("1.5").is_err());
        assert!(parse_probability("-0.1").is_err());
        assert!(parse_probability("often").is_err());
    }

    #[test]
    fn a_breaker_failure_rate_must_be_above_zero_and_at_most_one() {
        assert_eq!(parse_failure_rate("0.5"), Ok(0.5));
        assert_eq!(parse_failure_rate("1"), Ok(1.0));
        assert!(parse_failure_rate("0").is_err());
        assert!(parse_failure_rate("1.01").is_err());
    }

    #[test]
    fn the_breaker_settings_default_to_the_documented_values() {
        let config = <crate::Config as clap::Parser>::try_parse_from(["payment-service"]).expect("defaults parse");
        let settings = config.gateway.breaker.settings();
        assert_eq!(settings, BreakerSettings::default());
        assert_eq!(
            (
                settings.window,
                settings.minimum_calls,
                settings.failure_rate,
                settings.cool_down,
                settings.half_open_probes
            ),
            (50, 20, 0.5, Duration::from_secs(10), 3)
        );
    }

    #[test]
    fn the_breaker_settings_are_read_from_flags() {
        let config = <crate::Config as clap::Parser>::try_parse_from([
            "payment-service",
            "--payment-gateway-breaker-window",
            "10",
            "--payment-gateway-breaker-minimum-calls",
            "5",
            "--payment-gateway-breaker-failure-rate",
            "0.25",
            "--payment-gateway-breaker-cool-down-ms",
            "1500",
            "--payment-gateway-breaker-half-open-probes",
            "1",
        ])
        .expect("flags parse");
        assert_eq!(
            config.gateway.breaker.settings(),
            BreakerSettings {
                window: 10,
                minimum_calls: 5,
                failure_rate: 0.25,
                cool_down: Duration::from_millis(1500),
                half_open_probes: 1,
            }
        );
        let zero_window = <crate::Config as clap::Parser>::try_parse_from([
            "payment-service",
            "--payment-gateway-breaker-window",
            "0",
        ]);
        assert!(zero_window.is_err());
    }
}
