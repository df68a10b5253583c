//! Replay of the payment service ([`Rebuilder`]): its payments rebuilt from the `orders` topic it
//! consumes and the `payments` topic it writes, with the live service's state machine and store
//! code, and without a gateway.
//!
//! An order event goes through [`handler::apply`], the live handler's own state change (pending
//! payment, failure recorded, capture moved to refunding). The gateway's answers are facts of the
//! outside world that replay cannot ask for again: it takes them from the payment.success,
//! payment.failed and payment.refunded the charger recorded, and applies them through
//! [`charger::settle`], the charger's own state change, so each payment ends captured, declined,
//! refunding or refunded as it did live. The service decides nothing replay re-runs: no decision
//! of its is compared.

use async_trait::async_trait;
use saga_common::consumer::{ConsumedEvent, HandlerError};
use saga_common::replay::{Rebuild, Rebuilding, VerifiedTable};
use saga_contracts::{OrderId, PaymentId, SagaEvent, Topic};
use sqlx::PgConnection;

use crate::domain::Input;
use crate::gateway::ChargeOutcome;
use crate::{charger, handler, store, MIGRATIONS, SPEC};

/// The capture reference a rebuilt payment gets when its payment.success (v1) did not carry the
/// gateway's: the real one is only in the live database and at the gateway. A refund naming it
/// is refused by the gateway, so a payment rebuilt with it and later refunded stalls for an
/// operator instead of refunding some other capture.
pub const UNRECORDED_CAPTURE: &str = "unrecorded";

/// Rebuilds the payment service's state; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rebuilder;

/// The payment service's [`Rebuilder`].
pub fn rebuilder() -> Rebuilder {
    Rebuilder
}

/// The tables `sagactl verify` compares. Not `gateway_ledger`: it is the simulated gateway's
/// memory, a stand-in for the provider's systems (the outside world), not the service's state,
/// so it is neither rebuilt nor verified.
const TABLES: &[VerifiedTable] = &[
    VerifiedTable {
        name: "payments",
        key: &["order_id"],
        // When the live and the replaying service processed the events, and the charger's
        // notes on a payment it gave up on for a while (replay calls no gateway, so never gives up).
        ignored: &["created_at", "updated_at", "stalled_reason", "stalled_at"],
    },
    VerifiedTable {
        name: "failed_orders",
        key: &["order_id"],
        // When the service processed the order.failed.
        ignored: &["failed_at"],
    },
];

/// What the rebuild reads, re-runs and compares.
static REBUILDING: Rebuilding = Rebuilding {
    service: SPEC,
    migrations: &MIGRATIONS,
    consumes: &[Topic::Orders],
    records_on: &[Topic::Payments],
    // payment.success/failed/refunded report the gateway's answers, which replay takes as
    // recorded rather than deciding again.
    decisions: &[],
    tables: TABLES,
};

#[async_trait]
impl Rebuild for Rebuilder {
    fn rebuilding(&self) -> &'static Rebuilding {
        &REBUILDING
    }

    #[tracing::instrument(skip_all, fields(
        order_id = %consumed.event.order_id().map(|id| id.to_string()).unwrap_or_default(),
        event_id = %consumed.event.event_id(),
        event_type = consumed.event.event_type().as_str(),
    ))]
    async fn apply(&self, tx: &mut PgConnection, consumed: &ConsumedEvent) -> Result<Vec<SagaEvent>, HandlerError> {
        let Some(recorded) = RecordedOutcome::of(&consumed.event) else {
            let transition = handler::apply(tx, consumed).await?;
            return Ok(transition.map(|transition| transition.events).unwrap_or_default());
        };
        if let Some(payment_id) = recorded.payment_id {
            store::adopt_published_payment_id(&mut *tx, recorded.order_id, payment_id).await?;
        }
        let transition = charger::settle(tx, recorded.order_id, recorded.outcome).await?;
        if transition.before.payment.is_none() {
            tracing::warn!("recorded gateway outcome for an order without a rebuilt payment; ignored");
        } else if transition.before == transition.after {
            tracing::debug!(
                state = transition.after.name(),
                "recorded gateway outcome applied before"
            );
        }
        // The events this outcome causes are the recorded ones: nothing to compare.
        Ok(Vec::new())
    }
}

/// A gateway answer as the service's own event recorded it, as the input the charger fed the
/// state machine when the gateway gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RecordedOutcome {
    order_id: OrderId,
    /// The payment id the event published; payment.failed names none.
    payment_id: Option<PaymentId>,
    outcome: Input,
}

impl RecordedOutcome {
    /// The gateway answer `event` records: payment.success a capture, payment.failed a decline
    /// (its `reason` is the gateway's decline code), payment.refunded a refund made; `None` for
    /// any other event.
    fn of(event: &SagaEvent) -> Option<Self> {
        let (order_id, payment_id, outcome) = match event {
            SagaEvent::PaymentSucceeded(success) => {
                let gateway_reference = success
                    .gateway_reference
                    .clone()
                    .unwrap_or_else(|| UNRECORDED_CAPTURE.to_owned());
                (
                    success.envelope.order_id,
                    Some(success.payment_id),
                    Input::Charged(ChargeOutcome::Captured { gateway_reference }),
                )
            }
            SagaEvent::PaymentFailed(failed) => (
                failed.envelope.order_id,
                None,
                Input::Charged(ChargeOutcome::Declined {
                    reason: failed.reason.clone(),
                }),
            ),
            SagaEvent::PaymentRefunded(refunded) => {
                (refunded.envelope.order_id, Some(refunded.payment_id), Input::RefundMade)
            }
            _ => return None,
        };
        Some(Self {
            order_id,
            payment_id,
            outcome,
        })
    }
}

#[cfg(test)]
mod tests {
    use saga_contracts::{
        Envelope, FailureReason, OrderConfirmed, OrderId, PaymentFailed, PaymentId, PaymentRefunded, PaymentSucceeded,
    };

    use super::*;

    fn success(gateway_reference: Option<&str>) -> PaymentSucceeded {
        PaymentSucceeded {
            envelope: Envelope::for_command(OrderId::new()),
            payment_id: PaymentId::new(),
            amount_minor: 3998,
            currency: "USD".into(),
            gateway_reference: gateway_reference.map(str::to_owned),
        }
    }

    #[test]
    fn a_recorded_payment_success_is_the_capture_it_names_with_its_payment_id() {
        let success = success(Some("sim_ch_1"));
        let recorded = RecordedOutcome::of(&SagaEvent::PaymentSucceeded(success.clone()));
        assert_eq!(
            recorded,
            Some(RecordedOutcome {
                order_id: success.envelope.order_id,
                payment_id: Some(success.payment_id),
                outcome: Input::Charged(ChargeOutcome::Captured {
                    gateway_reference: "sim_ch_1".into()
                }),
            })
        );
    }

    #[test]
    fn a_payment_success_without_the_gateway_reference_is_a_capture_of_an_unrecorded_reference() {
        let recorded = RecordedOutcome::of(&SagaEvent::PaymentSucceeded(success(None))).expect("an outcome");
        assert_eq!(
            recorded.outcome,
            Input::Charged(ChargeOutcome::Captured {
                gateway_reference: UNRECORDED_CAPTURE.into()
            })
        );
    }

    #[test]
    fn a_recorded_payment_failed_is_a_decline_with_its_decline_code_and_no_payment_id() {
        let failed = PaymentFailed {
            envelope: Envelope::for_command(OrderId::new()),
            reason: "card_declined".into(),
            failure_reason: FailureReason::PaymentDeclined,
            amount_minor: 3998,
            currency: "USD".into(),
        };
        let recorded = RecordedOutcome::of(&SagaEvent::PaymentFailed(failed.clone()));
        assert_eq!(
            recorded,
            Some(RecordedOutcome {
                order_id: failed.envelope.order_id,
                payment_id: None,
                outcome: Input::Charged(ChargeOutcome::Declined {
                    reason: "card_declined".into()
                }),
            })
        );
    }

    #[test]
    fn a_recorded_payment_refunded_is_the_refund_made_with_its_payment_id() {
        let refunded = PaymentRefunded {
            envelope: Envelope::for_command(OrderId::new()),
            payment_id: PaymentId::new(),
            amount_minor: 3998,
            currency: "USD".into(),
            reason: "out_of_stock".into(),
        };
        let recorded = RecordedOutcome::of(&SagaEvent::PaymentRefunded(refunded.clone()));
        assert_eq!(
            recorded,
            Some(RecordedOutcome {
                order_id: refunded.envelope.order_id,
                payment_id: Some(refunded.payment_id),
                outcome: Input::RefundMade,
            })
        );
    }

    #[test]
    fn an_order_event_records_no_gateway_outcome() {
        let confirmed = SagaEvent::OrderConfirmed(OrderConfirmed {
            envelope: Envelope::for_command(OrderId::new()),
            customer_email: "buyer@example.com".into(),
            total_minor: 3998,
            currency: "USD".into(),
        });
        assert_eq!(RecordedOutcome::of(&confirmed), None);
    }

    #[test]
    fn every_verified_table_is_keyed_by_order_and_the_gateway_ledger_is_not_verified() {
        let tables = rebuilder().tables();
        let names: Vec<_> = tables.iter().map(|table| table.name).collect();
        assert_eq!(names, ["payments", "failed_orders"]);
        assert!(tables.iter().all(|table| table.key == ["order_id"]));
    }
}
