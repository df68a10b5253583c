//! A [`PaymentGateway`] wrapper that records every call of the gateway it wraps: how many, how
//! long each took and how it ended (metrics named in [`saga_common::metrics`]). It changes no
//! outcome. The live service wraps its gateway in it; replay has no gateway at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use saga_common::metrics::{label, GATEWAY_CALLS, GATEWAY_CALL_DURATION, GATEWAY_ERRORS};

use super::{ChargeOutcome, ChargeRequest, GatewayError, PaymentGateway, RefundOutcome, RefundRequest};

/// Records the calls of the gateway it wraps.
pub struct MeteredGateway {
    inner: Arc<dyn PaymentGateway>,
}

impl MeteredGateway {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn PaymentGateway>) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl PaymentGateway for MeteredGateway {
    async fn charge(&self, request: ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        let started = Instant::now();
        let outcome = self.inner.charge(request).await;
        let label = match &outcome {
            Ok(ChargeOutcome::Captured { .. }) => Ok("captured"),
            Ok(ChargeOutcome::Declined { .. }) => Ok("declined"),
            Err(error) => Err(error),
        };
        record("charge", label, started.elapsed());
        outcome
    }

    async fn refund(&self, request: RefundRequest) -> Result<RefundOutcome, GatewayError> {
        let started = Instant::now();
        let outcome = self.inner.refund(request).await;
        record("refund", outcome.as_ref().map(|_| "refunded"), started.elapsed());
        outcome
    }
}

/// Records one call of `operation` that ended with `outcome` (its label, or the error).
fn record(operation: &'static str, outcome: Result<&'static str, &GatewayError>, duration: Duration) {
    let outcome_label = match outcome {
        Ok(label) => label,
        Err(error) => {
            ::metrics::counter!(GATEWAY_ERRORS, label::OPERATION => operation, label::KIND => error_kind(error))
                .increment(1);
            "error"
        }
    };
    ::metrics::counter!(GATEWAY_CALLS, label::OPERATION => operation, label::OUTCOME => outcome_label).increment(1);
    ::metrics::histogram!(GATEWAY_CALL_DURATION, label::OPERATION => operation).record(duration);
}

/// The `kind` label of a gateway error.
fn error_kind(error: &GatewayError) -> &'static str {
    match error {
        GatewayError::Transient(_) => "transient",
        GatewayError::Rejected(_) => "rejected",
    }
}
