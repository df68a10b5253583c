//! The simulated payment gateway: outcomes driven by the payment token, idempotent by key, with
//! its memory in its own `gateway_ledger` table so idempotency survives a restart.
//!
//! Token rules ([`decide_charge`]):
//! - `tok_decline…` is declined (`card_declined`); an empty token is declined (`invalid_token`);
//! - `tok_flaky…` fails transiently on the first [`FLAKY_TRANSIENT_FAILURES`] attempts per
//!   idempotency key, then is captured;
//! - `tok_slow_<millis>` (e.g. `tok_slow_5000`) is captured after that many milliseconds;
//! - any other token is captured.
//!
//! Every call first waits the configured latency, then fails transiently while an outage is on
//! ([`OutageSwitch`], for tests that take the gateway down and bring it back) or at the
//! configured rate, before it reaches the ledger (so before anything takes effect). A call repeated with an
//! idempotency key whose operation took effect returns the stored outcome and moves no money;
//! reusing a key for a different request is rejected. The ledger models an external system: the service's own
//! transactions never touch it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use sqlx::PgPool;

use super::{ChargeOutcome, ChargeRequest, GatewayError, PaymentGateway, RefundOutcome, RefundRequest};

/// Tokens starting with this are declined.
pub const DECLINE_PREFIX: &str = "tok_decline";
/// Tokens starting with this fail transiently at first.
pub const FLAKY_PREFIX: &str = "tok_flaky";
/// `tok_slow_<millis>` delays the charge by `<millis>`.
pub const SLOW_PREFIX: &str = "tok_slow_";
/// How many attempts per idempotency key a flaky token fails before it is captured.
pub const FLAKY_TRANSIENT_FAILURES: u32 = 2;
/// Decline reason of a `tok_decline…` token.
pub const CARD_DECLINED: &str = "card_declined";
/// Decline reason of an empty token.
pub const INVALID_TOKEN: &str = "invalid_token";

/// What the simulated gateway does with one charge attempt that has no recorded outcome yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeDecision {
    /// Fail transiently; nothing takes effect.
    FailTransiently,
    /// Decline the charge for `reason`.
    Decline {
        /// Why.
        reason: &'static str,
    },
    /// Capture the amount once `after` has passed.
    Capture {
        /// Processing time before the capture takes effect.
        after: Duration,
    },
}

/// The token rules: what attempt number `attempt` (1-based, per idempotency key) of a charge with
/// `token` does.
pub fn decide_charge(token: &str, attempt: u32) -> ChargeDecision {
    if token.is_empty() {
        return ChargeDecision::Decline { reason: INVALID_TOKEN };
    }
    if token.starts_with(DECLINE_PREFIX) {
        return ChargeDecision::Decline { reason: CARD_DECLINED };
    }
    if token.starts_with(FLAKY_PREFIX) && attempt <= FLAKY_TRANSIENT_FAILURES {
        return ChargeDecision::FailTransiently;
    }
    let after = token
        .strip_prefix(SLOW_PREFIX)
        .and_then(|millis| millis.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::ZERO);
    ChargeDecision::Capture { after }
}

/// Turns an outage of the simulated gateway on and off while it runs: during one, every call
/// fails transiently before it reaches the ledger. Cheap to clone; clones share the switch.
#[derive(Debug, Clone, Default)]
pub struct OutageSwitch {
    shared: Arc<Outage>,
}

#[derive(Debug, Default)]
struct Outage {
    on: AtomicBool,
    failed_calls: AtomicU64,
}

impl OutageSwitch {
    /// A switch with the outage off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the outage.
    pub fn start(&self) {
        self.shared.on.store(true, Ordering::SeqCst);
    }

    /// Ends the outage.
    pub fn end(&self) {
        self.shared.on.store(false, Ordering::SeqCst);
    }

    /// Whether the outage is on.
    pub fn is_on(&self) -> bool {
        self.shared.on.load(Ordering::SeqCst)
    }

    /// Calls the outage failed so far.
    pub fn failed_calls(&self) -> u64 {
        self.shared.failed_calls.load(Ordering::SeqCst)
    }

    /// Fails the call if the outage is on, and counts it.
    fn check(&self) -> Result<(), GatewayError> {
        if self.is_on() {
            self.shared.failed_calls.fetch_add(1, Ordering::SeqCst);
            return Err(GatewayError::Transient("simulated gateway outage".into()));
        }
        Ok(())
    }
}

/// The simulated gateway. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SimulatedGateway {
    ledger: PgPool,
    latency: Duration,
    transient_error_rate: f64,
    outage: OutageSwitch,
}

/// One row of `gateway_ledger`.
#[derive(Debug, sqlx::FromRow)]
struct LedgerEntry {
    operation: String,
    amount_minor: i64,
    currency: String,
    charge_reference: Option<String>,
    attempts: i32,
    outcome: Option<String>,
    reference: Option<String>,
    decline_reason: Option<String>,
}

const ENTRY_COLUMNS: &str =
    "operation, amount_minor, currency, charge_reference, attempts, outcome, reference, decline_reason";

fn ledger_unavailable(error: sqlx::Error) -> GatewayError {
    GatewayError::Transient(format!("gateway ledger: {error}"))
}

impl LedgerEntry {
    /// Whether the stored request is the one now repeated under the same key.
    fn same_request(&self, operation: &str, amount_minor: i64, currency: &str, charge_reference: Option<&str>) -> bool {
        self.operation == operation
            && self.amount_minor == amount_minor
            && self.currency == currency
            && self.charge_reference.as_deref() == charge_reference
    }

    fn charge_outcome(&self) -> Result<Option<ChargeOutcome>, GatewayError> {
        match (self.outcome.as_deref(), &self.reference, &self.decline_reason) {
            (None, _, _) => Ok(None),
            (Some("captured"), Some(reference), _) => Ok(Some(ChargeOutcome::Captured {
                gateway_reference: reference.clone(),
            })),
            (Some("declined"), _, Some(reason)) => Ok(Some(ChargeOutcome::Declined { reason: reason.clone() })),
            (Some(other), _, _) => Err(GatewayError::Transient(format!(
                "gateway ledger holds a corrupt charge ({other})"
            ))),
        }
    }
}

impl SimulatedGateway {
    /// A gateway keeping its ledger in `ledger`, adding `latency` to every call and failing a
    /// call transiently with probability `transient_error_rate`.
    pub fn new(ledger: PgPool, latency: Duration, transient_error_rate: f64) -> Self {
        Self {
            ledger,
            latency,
            transient_error_rate: transient_error_rate.clamp(0.0, 1.0),
            outage: OutageSwitch::new(),
        }
    }

    /// The same gateway, down while `outage` is on.
    pub fn with_outage(self, outage: OutageSwitch) -> Self {
        Self { outage, ..self }
    }

    async fn simulate_conditions(&self) -> Result<(), GatewayError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        self.outage.check()?;
        let draw: f64 = rand::thread_rng().gen();
        if draw < self.transient_error_rate {
            return Err(GatewayError::Transient("simulated gateway outage".into()));
        }
        Ok(())
    }

    /// Counts one call under `key`, creating its entry on the first, and returns the entry.
    async fn record_attempt(
        &self,
        operation: &str,
        key: &str,
        amount_minor: i64,
        currency: &str,
        charge_reference: Option<&str>,
    ) -> Result<LedgerEntry, GatewayError> {
        let statement = format!(
            "INSERT INTO gateway_ledger (idempotency_key, operation, amount_minor, currency, charge_reference) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (idempotency_key) DO UPDATE SET attempts = gateway_ledger.attempts + 1 \
             RETURNING {ENTRY_COLUMNS}"
        );
        let entry: LedgerEntry = sqlx::query_as(&statement)
            .bind(key)
            .bind(operation)
            .bind(amount_minor)
            .bind(currency)
            .bind(charge_reference)
            .fetch_one(&self.ledger)
            .await
            .map_err(ledger_unavailable)?;
        if !entry.same_request(operation, amount_minor, currency, charge_reference) {
            return Err(GatewayError::Rejected(format!(
                "idempotency key {key} was used before for a different {} request",
                entry.operation
            )));
        }
        Ok(entry)
    }

    async fn entry(&self, key: &str) -> Result<LedgerEntry, GatewayError> {
        let statement = format!("SELECT {ENTRY_COLUMNS} FROM gateway_ledger WHERE idempotency_key = $1");
        sqlx::query_as(&statement)
            .bind(key)
            .fetch_one(&self.ledger)
            .await
            .map_err(ledger_unavailable)
    }

    /// Stores a charge's outcome unless a concurrent call with the same key stored one first,
    /// and returns whichever is stored.
    async fn complete_charge(&self, key: &str, outcome: ChargeOutcome) -> Result<ChargeOutcome, GatewayError> {
        let (status, reference, reason) = match &outcome {
            ChargeOutcome::Captured { gateway_reference } => ("captured", Some(gateway_reference.as_str()), None),
            ChargeOutcome::Declined { reason } => ("declined", None, Some(reason.as_str())),
        };
        sqlx::query(
            "UPDATE gateway_ledger SET outcome = $2, reference = $3, decline_reason = $4, completed_at = now() \
             WHERE idempotency_key = $1 AND outcome IS NULL",
        )
        .bind(key)
        .bind(status)
        .bind(reference)
        .bind(reason)
        .execute(&self.ledger)
        .await
        .map_err(ledger_unavailable)?;
        self.entry(key)
            .await?
            .charge_outcome()?
            .ok_or_else(|| GatewayError::Transient("charge outcome was not stored".into()))
    }

    /// Refunds against the captured charge, never more than it captured in total, holding the
    /// charge's row locked so concurrent refunds of one charge are counted one after the other.
    async fn complete_refund(&self, request: &RefundRequest) -> Result<RefundOutcome, GatewayError> {
        let mut tx = self.ledger.begin().await.map_err(ledger_unavailable)?;
        let charge: Option<(i64, String)> = sqlx::query_as(
            "SELECT amount_minor, currency FROM gateway_ledger \
             WHERE operation = 'charge' AND outcome = 'captured' AND reference = $1 FOR UPDATE",
        )
        .bind(&request.gateway_reference)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ledger_unavailable)?;
        let Some((captured_minor, currency)) = charge else {
            return Err(GatewayError::Rejected(format!(
                "no captured charge {}",
                request.gateway_reference
            )));
        };
        // A concurrent call with the same key may have completed while this one waited for the lock.
        let done: Option<String> = sqlx::query_scalar(
            "SELECT reference FROM gateway_ledger WHERE idempotency_key = $1 AND outcome = 'refunded'",
        )
        .bind(&request.idempotency_key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ledger_unavailable)?;
        if let Some(refund_reference) = done {
            return Ok(RefundOutcome { refund_reference });
        }
        if currency != request.currency {
            return Err(GatewayError::Rejected(format!(
                "refund in {} of a charge in {currency}",
                request.currency
            )));
        }
        let refunded_minor: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(amount_minor), 0)::BIGINT FROM gateway_ledger \
             WHERE operation = 'refund' AND outcome = 'refunded' AND charge_reference = $1",
        )
        .bind(&request.gateway_reference)
        .fetch_one(&mut *tx)
        .await
        .map_err(ledger_unavailable)?;
        if refunded_minor + request.amount_minor > captured_minor {
            return Err(GatewayError::Rejected(format!(
                "refund of {} would exceed the capture of {captured_minor} ({refunded_minor} refunded already)",
                request.amount_minor
            )));
        }
        let refund_reference = format!("sim_re_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(
            "UPDATE gateway_ledger SET outcome = 'refunded', reference = $2, completed_at = now() \
             WHERE idempotency_key = $1 AND outcome IS NULL",
        )
        .bind(&request.idempotency_key)
        .bind(&refund_reference)
        .execute(&mut *tx)
        .await
        .map_err(ledger_unavailable)?;
        tx.commit().await.map_err(ledger_unavailable)?;
        Ok(RefundOutcome { refund_reference })
    }
}

#[async_trait]
impl PaymentGateway for SimulatedGateway {
    async fn charge(&self, request: ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        if request.amount_minor < 0 {
            return Err(GatewayError::Rejected(format!(
                "negative amount {}",
                request.amount_minor
            )));
        }
        self.simulate_conditions().await?;
        let entry = self
            .record_attempt(
                "charge",
                &request.idempotency_key,
                request.amount_minor,
                &request.currency,
                None,
            )
            .await?;
        if let Some(outcome) = entry.charge_outcome()? {
            return Ok(outcome);
        }
        let attempt = u32::try_from(entry.attempts).unwrap_or(u32::MAX);
        let outcome = match decide_charge(&request.token, attempt) {
            ChargeDecision::FailTransiently => {
                return Err(GatewayError::Transient(format!(
                    "simulated processor timeout (attempt {attempt})"
                )));
            }
            ChargeDecision::Decline { reason } => ChargeOutcome::Declined {
                reason: reason.to_string(),
            },
            ChargeDecision::Capture { after } => {
                if !after.is_zero() {
                    tokio::time::sleep(after).await;
                }
                ChargeOutcome::Captured {
                    gateway_reference: format!("sim_ch_{}", uuid::Uuid::new_v4().simple()),
                }
            }
        };
        self.complete_charge(&request.idempotency_key, outcome).await
    }

    async fn refund(&self, request: RefundRequest) -> Result<RefundOutcome, GatewayError> {
        if request.amount_minor <= 0 {
            return Err(GatewayError::Rejected(format!(
                "refund amount {} is not positive",
                request.amount_minor
            )));
        }
        self.simulate_conditions().await?;
        let entry = self
            .record_attempt(
                "refund",
                &request.idempotency_key,
                request.amount_minor,
                &request.currency,
                Some(&request.gateway_reference),
            )
            .await?;
        if let (Some("refunded"), Some(reference)) = (entry.outcome.as_deref(), entry.reference) {
            return Ok(RefundOutcome {
                refund_reference: reference,
            });
        }
        self.complete_refund(&request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_fails_calls_while_it_is_on_and_counts_them() {
        let outage = OutageSwitch::new();
        let shared = outage.clone();
        assert_eq!(outage.check(), Ok(()));
        shared.start();
        assert!(matches!(outage.check(), Err(GatewayError::Transient(_))));
        assert!(matches!(outage.check(), Err(GatewayError::Transient(_))));
        shared.end();
        assert_eq!(outage.check(), Ok(()));
        assert_eq!(shared.failed_calls(), 2);
    }

    #[test]
    fn an_ordinary_token_is_captured_at_once() {
        assert_eq!(
            decide_charge("tok_visa", 1),
            ChargeDecision::Capture { after: Duration::ZERO }
        );
    }

    #[test]
    fn a_decline_token_is_declined_as_card_declined_on_every_attempt() {
        for attempt in 1..=4 {
            assert_eq!(
                decide_charge("tok_decline", attempt),
                ChargeDecision::Decline { reason: CARD_DECLINED }
            );
            assert_eq!(
                decide_charge("tok_decline_insufficient_funds", attempt),
                ChargeDecision::Decline { reason: CARD_DECLINED }
            );
        }
    }

    #[test]
    fn an_empty_token_is_declined_as_invalid() {
        assert_eq!(decide_charge("", 1), ChargeDecision::Decline { reason: INVALID_TOKEN });
    }

    #[test]
    fn a_flaky_token_fails_transiently_twice_then_is_captured() {
        assert_eq!(decide_charge("tok_flaky", 1), ChargeDecision::FailTransiently);
        assert_eq!(decide_charge("tok_flaky_visa", 2), ChargeDecision::FailTransiently);
        assert_eq!(
            decide_charge("tok_flaky", 3),
            ChargeDecision::Capture { after: Duration::ZERO }
        );
        assert_eq!(
            decide_charge("tok_flaky", 9),
            ChargeDecision::Capture { after: Duration::ZERO }
        );
    }

    #[test]
    fn a_slow_token_is_captured_after_the_milliseconds_it_names() {
        assert_eq!(
            decide_charge("tok_slow_5000", 1),
            ChargeDecision::Capture {
                after: Duration::from_millis(5000)
            }
        );
        assert_eq!(
            decide_charge("tok_slow_0", 1),
            ChargeDecision::Capture { after: Duration::ZERO }
        );
    }

    #[test]
    fn a_slow_token_without_a_number_is_captured_at_once() {
        assert_eq!(
            decide_charge("tok_slow_", 1),
            ChargeDecision::Capture { after: Duration::ZERO }
        );
        assert_eq!(
            decide_charge("tok_slow_forever", 1),
            ChargeDecision::Capture { after: Duration::ZERO }
        );
    }

    #[test]
    fn the_rules_look_at_prefixes_only() {
        assert_eq!(
            decide_charge("my_tok_decline", 1),
            ChargeDecision::Capture { after: Duration::ZERO }
        );
        assert_eq!(
            decide_charge("x_tok_flaky", 1),
            ChargeDecision::Capture { after: Duration::ZERO }
        );
    }
}
