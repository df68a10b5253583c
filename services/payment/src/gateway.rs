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

pub mod metered;
pub mod simulated;

pub use metered::MeteredGateway;
pub use simulated::SimulatedGateway;

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
}

/// Default of [`GatewayConfig::charge_concurrency`].
pub const DEFAULT_CHARGE_CONCURRENCY: u32 = 32;

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            kind: GatewayKind::Simulated,
            latency_ms: 0,
            transient_error_rate: 0.0,
            charge_concurrency: DEFAULT_CHARGE_CONCURRENCY,
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
}
