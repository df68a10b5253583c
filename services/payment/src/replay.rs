//! Replay of the payment service ([`Rebuilder`]): its payments rebuilt from the `orders` topic it
//! consumes and the `payments` topic it writes, with the live service's state machine and store
//! code, and without a gateway.
//!
//! The rebuilt tables are held in memory ([`RebuiltPayments`], a [`crate::store::PaymentStore`]
//! like the live service's transaction). An order event goes through [`handler::apply`], the live
//! handler's own state change (pending payment, failure recorded, capture moved to refunding).
//! The gateway's answers are facts of the outside world that replay cannot ask for again: it
//! takes them from the payment.success, payment.failed and payment.refunded the charger
//! recorded, and applies them through [`charger::settle`], the charger's own state change, so
//! each payment ends captured, declined, refunding or refunded as it did live. Neither writes the
//! outbox: that is the live callers' part. The service decides nothing replay re-runs: no
//! decision of its is compared.

use async_trait::async_trait;
use saga_common::consumer::{ConsumedEvent, HandlerError};
use saga_common::replay::memory::RebuiltTable;
use saga_common::replay::{Rebuild, Rebuilding, VerifiedTable};
use saga_contracts::{OrderId, PaymentId, SagaEvent, Topic};

use crate::domain::Input;
use crate::gateway::ChargeOutcome;
use crate::rebuilt::RebuiltPayments;
use crate::{charger, handler, MIGRATIONS, SPEC};

/// The capture reference a rebuilt payment gets when its payment.success (v1) did not carry the
/// gateway's: the real one is only in the live database and at the gateway. A refund naming it
/// is refused by the gateway, so a payment rebuilt with it and later refunded stalls for an
/// operator instead of refunding some other capture.
pub const UNRECORDED_CAPTURE: &str = "unrecorded";

/// Rebuilds the payment service's state; see the module docs.
#[derive(Debug, Default)]
pub struct Rebuilder {
    tables: RebuiltPayments,
}

impl Rebuilder {
    /// The tables rebuilt so far.
    pub fn rebuilt(&self) -> &RebuiltPayments {
        &self.tables
    }
}

/// The payment service's [`Rebuilder`].
pub fn rebuilder() -> Rebuilder {
    Rebuilder::default()
}

/// The tables `sagactl verify` compares. Not `gateway_ledger`: it is the simulated gateway's
/// memory, a stand-in for the provider's systems (the outside world), not the service's state,
/// so it is neither rebuilt nor verified.
const TABLES: &[VerifiedTable] = &[
    VerifiedTable {
        name: "payments",
        key: &["order_id"],
        // When the live and the replaying service processed the events, the charger's notes
        // on a payment it gave up on for a while (replay calls no gateway, so never gives up),
        // and the trace context (the live one names the span of the live consumer).
        ignored: &[
            "created_at",
            "updated_at",
            "stalled_reason",
            "stalled_at",
            "traceparent",
        ],
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
    async fn apply(&mut self, consumed: &ConsumedEvent) -> Result<Vec<SagaEvent>, HandlerError> {
        let Some(recorded) = RecordedOutcome::of(&consumed.event) else {
            let transition = handler::apply(&mut self.tables, consumed).await?;
            return Ok(transition.map(|transition| transition.events).unwrap_or_default());
        };
        if let Some(payment_id) = recorded.payment_id {
            self.tables.adopt_published_payment_id(recorded.order_id, payment_id)?;
        }
        let transition = charger::settle(&mut self.tables, recorded.order_id, recorded.outcome).await?;
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

    fn rebuilt_tables(&mut self) -> Vec<&mut dyn RebuiltTable> {
        self.tables.tables()
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
        Envelope, FailureReason, OrderConfirmed, OrderCreated, OrderFailed, OrderId, OrderLine, PaymentFailed,
        PaymentId, PaymentRefunded, PaymentSucceeded,
    };

    use super::*;
    use crate::domain::payment_id_for;

    const TOTAL: i64 = 3998;

    fn order_created(order_id: OrderId, total_minor: i64) -> SagaEvent {
        SagaEvent::OrderCreated(OrderCreated {
            envelope: Envelope::for_command(order_id),
            customer_id: "customer-1".into(),
            customer_email: "buyer@example.com".into(),
            payment_token: "tok_visa".into(),
            total_minor,
            currency: "USD".into(),
            items: vec![OrderLine {
                sku: "SKU-1".into(),
                quantity: 2,
                unit_price_minor: 1999,
            }],
            sales_channel: "api".into(),
            idempotency_key: None,
            request_hash: None,
            deadline_at: None,
        })
    }

    fn order_failed(order_id: OrderId) -> OrderFailed {
        OrderFailed {
            envelope: Envelope::for_command(order_id),
            reason: "out_of_stock".into(),
            failure_reason: FailureReason::OutOfStock,
            customer_email: "buyer@example.com".into(),
            total_minor: TOTAL,
            currency: "USD".into(),
        }
    }

    /// Applies `events` as the replay runner does: each one's changes kept if it was applied,
    /// undone if it was refused; what each application returned.
    async fn replay(rebuilder: &mut Rebuilder, events: Vec<SagaEvent>) -> Vec<Result<Vec<SagaEvent>, HandlerError>> {
        let mut results = Vec::new();
        for (offset, event) in (0..).zip(events) {
            let consumed = ConsumedEvent {
                event,
                topic: "orders".into(),
                partition: 0,
                offset,
                traceparent: None,
            };
            let applied = rebuilder.apply(&consumed).await;
            for table in rebuilder.rebuilt_tables() {
                table.end_event(applied.is_ok());
            }
            results.push(applied);
        }
        results
    }

    #[tokio::test]
    async fn a_capture_of_an_order_that_failed_is_rebuilt_refunded_under_its_published_payment_id() {
        let order_id = OrderId::new();
        // Published before payment ids were derived from the order id.
        let published_id = PaymentId::new();
        let failed = order_failed(order_id);
        let events = vec![
            order_created(order_id, TOTAL),
            SagaEvent::PaymentSucceeded(PaymentSucceeded {
                envelope: Envelope::for_command(order_id),
                payment_id: published_id,
                amount_minor: TOTAL,
                currency: "USD".into(),
                gateway_reference: Some("sim_ch_1".into()),
            }),
            SagaEvent::OrderFailed(failed.clone()),
            SagaEvent::PaymentRefunded(PaymentRefunded {
                envelope: Envelope::for_command(order_id),
                payment_id: published_id,
                amount_minor: TOTAL,
                currency: "USD".into(),
                reason: "out_of_stock".into(),
            }),
        ];
        let mut rebuilder = rebuilder();

        let results = replay(&mut rebuilder, events).await;

        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let payment = rebuilder.rebuilt().payments.get(&order_id).expect("a payment");
        assert_ne!(payment_id_for(order_id), published_id);
        assert_eq!(payment.payment_id, published_id);
        assert_eq!(payment.status, "refunded");
        assert_eq!(payment.refunded_minor, TOTAL);
        assert_eq!(payment.gateway_reference.as_deref(), Some("sim_ch_1"));
        assert_eq!(payment.payment_token, None);
        let failure = rebuilder.rebuilt().failed_orders.get(&order_id).expect("a failure");
        assert_eq!(failure.reason, "out_of_stock");
        assert_eq!(failure.event_id, Some(failed.envelope.event_id));
    }

    #[tokio::test]
    async fn an_order_created_rebuilds_a_pending_payment_with_the_id_derived_from_its_order() {
        let order_id = OrderId::new();
        let mut rebuilder = rebuilder();

        let results = replay(&mut rebuilder, vec![order_created(order_id, TOTAL)]).await;

        assert!(matches!(results.as_slice(), [Ok(emitted)] if emitted.is_empty()));
        let payment = rebuilder.rebuilt().payments.get(&order_id).expect("a payment");
        assert_eq!(payment.status, "pending");
        assert_eq!(payment.payment_id, payment_id_for(order_id));
        assert_eq!(payment.payment_token.as_deref(), Some("tok_visa"));
    }

    #[tokio::test]
    async fn an_order_that_cannot_be_charged_is_refused_for_good_and_leaves_no_row() {
        let order_id = OrderId::new();
        let mut rebuilder = rebuilder();

        let results = replay(&mut rebuilder, vec![order_created(order_id, -1)]).await;

        assert!(matches!(results.as_slice(), [Err(HandlerError::Permanent(_))]));
        assert!(rebuilder.rebuilt().payments.is_empty());
    }

    #[tokio::test]
    async fn a_payment_success_naming_another_orders_payment_id_is_refused_and_records_no_capture() {
        // Two payments, then a payment.success naming the first's id for the second: the live
        // database refuses it by the unique payment id, and the capture is not recorded either.
        let (first, second) = (OrderId::new(), OrderId::new());
        let mut rebuilder = rebuilder();
        let taken = payment_id_for(first);
        let results = replay(
            &mut rebuilder,
            vec![
                order_created(first, TOTAL),
                order_created(second, TOTAL),
                SagaEvent::PaymentSucceeded(PaymentSucceeded {
                    envelope: Envelope::for_command(second),
                    payment_id: taken,
                    amount_minor: TOTAL,
                    currency: "USD".into(),
                    gateway_reference: Some("sim_ch_2".into()),
                }),
            ],
        )
        .await;

        assert!(matches!(results.last(), Some(Err(HandlerError::Permanent(_)))));
        let payment = rebuilder.rebuilt().payments.get(&second).expect("a payment");
        assert_eq!(payment.status, "pending");
        assert_eq!(payment.payment_id, payment_id_for(second));
    }

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
