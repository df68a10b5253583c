//! The payment of one order as one state machine, in pure functions: [`decide`] takes what the
//! service knows about an order ([`PaymentState`]) and one new fact ([`Input`]: order.created,
//! order.failed, or the gateway's answer to a charge or a refund) and returns the new state and
//! the events it causes; [`PaymentState::gateway_call`] says which gateway call a state waits
//! for. No I/O: the handler and the charger load the state, decide, and store the result through
//! [`crate::store::transition`].
//!
//! ```text
//!            order.created          charged: captured            order.failed
//!   (none) ───────────────> pending ─────────────────> captured ──────────────> refunding
//!                              │  └──── charged: captured, order failed meanwhile ───┘ │
//!                              └─ charged: declined ─> declined          refund made │
//!                                                                                    v
//!                                                                                refunded
//! ```
//!
//! Whatever the payment's state, the first order.failed is remembered: an order that failed
//! before its order.created is never charged, and the capture of a failed order is given back
//! through `refunding`, whether the capture or the failure came first. That is the one way money
//! is given back. A fact that no longer applies (a second order.created, a charge outcome for a
//! payment another instance settled) changes nothing and causes nothing.

use saga_contracts::{
    Envelope, EventId, FailureReason, OrderCreated, OrderFailed, OrderId, PaymentFailed, PaymentId, PaymentRefunded,
    PaymentSucceeded, SagaEvent,
};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::gateway::{ChargeOutcome, ChargeRequest, RefundRequest};

/// What the service knows about one order: its payment, if order.created was recorded, and its
/// failure, if order.failed was seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentState {
    /// The order's payment.
    pub payment: Option<Payment>,
    /// The first order.failed seen for the order.
    pub failure: Option<OrderFailure>,
}

/// One order's payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// The order paid for; also the charge's idempotency key.
    pub order_id: OrderId,
    /// The payment's own id, as in payment.success and payment.refunded.
    pub payment_id: PaymentId,
    /// The order total charged (or attempted), in minor units.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// W3C trace context of the order.created that asked for it, continued by the events the
    /// payment causes.
    pub traceparent: Option<String>,
    /// Where it stands.
    pub status: PaymentStatus,
}

/// The states of a payment, with what each needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentStatus {
    /// Being charged (or waiting to be, after a restart); nothing is known to be taken yet.
    Pending {
        /// The customer's payment token.
        token: String,
        /// The order.created that asked for the charge: the cause of its outcome's event.
        requested_by: EventId,
    },
    /// The order total was taken.
    Captured {
        /// The gateway's id of the capture.
        capture: String,
    },
    /// The gateway declined; nothing was taken.
    Declined {
        /// The gateway's decline code, e.g. `card_declined`.
        reason: String,
    },
    /// The order failed and the capture is being given back.
    Refunding {
        /// The capture to refund.
        capture: String,
    },
    /// The capture was given back in full because the order failed.
    Refunded {
        /// The capture that was refunded.
        capture: String,
    },
}

impl PaymentStatus {
    /// The status as stored and served: `pending`, `captured`, `declined`, `refunding`,
    /// `refunded`.
    pub fn as_str(&self) -> &'static str {
        match self {
            PaymentStatus::Pending { .. } => "pending",
            PaymentStatus::Captured { .. } => "captured",
            PaymentStatus::Declined { .. } => "declined",
            PaymentStatus::Refunding { .. } => "refunding",
            PaymentStatus::Refunded { .. } => "refunded",
        }
    }
}

impl Payment {
    /// How much of the capture was given back, in minor units.
    pub fn refunded_minor(&self) -> i64 {
        match self.status {
            PaymentStatus::Refunded { .. } => self.amount_minor,
            _ => 0,
        }
    }
}

/// What the service remembers of an order.failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderFailure {
    /// The order.failed event: the cause of the payment.refunded it leads to. `None` for
    /// failures recorded before the event id was kept.
    pub event_id: Option<EventId>,
    /// Why the order failed.
    pub reason: FailureReason,
}

impl From<&OrderFailed> for OrderFailure {
    fn from(failed: &OrderFailed) -> Self {
        Self {
            event_id: Some(failed.envelope.event_id),
            reason: failed.reason(),
        }
    }
}

/// What order.created asks for: a payment of the order total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPayment {
    /// The order to charge.
    pub order_id: OrderId,
    /// The id the payment gets.
    pub payment_id: PaymentId,
    /// The customer's payment token.
    pub token: String,
    /// The order total, in minor units.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// The order.created event.
    pub requested_by: EventId,
    /// Its W3C trace context, if it had one.
    pub traceparent: Option<String>,
}

impl NewPayment {
    /// The payment `order` asks for, with the order's payment id ([`payment_id_for`]);
    /// [`Error::InvalidOrder`] if its total is negative or its currency not an ISO 4217
    /// alphabetic code.
    pub fn for_order(order: &OrderCreated, traceparent: Option<String>) -> Result<Self> {
        let (amount_minor, currency) = (order.total_minor, &order.currency);
        if amount_minor < 0 {
            return Err(Error::InvalidOrder(format!("total_minor {amount_minor} is negative")));
        }
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Error::InvalidOrder(format!(
                "currency {currency:?} is not an ISO 4217 code"
            )));
        }
        Ok(Self {
            order_id: order.envelope.order_id,
            payment_id: payment_id_for(order.envelope.order_id),
            token: order.payment_token.clone(),
            amount_minor,
            currency: currency.clone(),
            requested_by: order.envelope.event_id,
            traceparent,
        })
    }
}

/// Namespace of the payment ids derived from order ids (a fixed random UUID: changing it changes
/// the id of every payment made from then on).
const PAYMENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5d0f_3c2e_9a41_4f6b_8e27_61c4_b0d9_a3f5);

/// The id of the payment of `order_id`: derived from the order id (UUID version 5), so the payment
/// rebuilt from the order's events by replay gets the id the live service gave it, whichever
/// instance or run makes it. An order has at most one payment, so the ids are unique too.
pub fn payment_id_for(order_id: OrderId) -> PaymentId {
    PaymentId::from(Uuid::new_v5(&PAYMENT_ID_NAMESPACE, order_id.uuid().as_bytes()))
}

/// A new fact about an order's payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// order.created: charge the order.
    OrderCreated(NewPayment),
    /// order.failed: give back what was taken.
    OrderFailed(OrderFailure),
    /// The gateway's outcome of the pending charge.
    Charged(ChargeOutcome),
    /// The gateway gave the capture back.
    RefundMade,
}

/// A gateway call a state waits for; the charger makes it and feeds the outcome back as an
/// [`Input`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayCall {
    /// Charge the pending payment (keyed by the order id).
    Charge(ChargeRequest),
    /// Refund the capture (keyed by `refund-<order_id>`).
    Refund(RefundRequest),
}

impl GatewayCall {
    /// `charge` or `refund`.
    pub fn operation(&self) -> &'static str {
        match self {
            GatewayCall::Charge(_) => "charge",
            GatewayCall::Refund(_) => "refund",
        }
    }
}

impl PaymentState {
    /// The gateway call this state waits for: a charge while pending, a refund while refunding.
    pub fn gateway_call(&self) -> Option<GatewayCall> {
        let payment = self.payment.as_ref()?;
        match &payment.status {
            PaymentStatus::Pending { token, .. } => Some(GatewayCall::Charge(ChargeRequest {
                idempotency_key: payment.order_id.to_string(),
                token: token.clone(),
                amount_minor: payment.amount_minor,
                currency: payment.currency.clone(),
            })),
            PaymentStatus::Refunding { capture } => Some(GatewayCall::Refund(RefundRequest {
                idempotency_key: format!("refund-{}", payment.order_id),
                gateway_reference: capture.clone(),
                amount_minor: payment.amount_minor,
                currency: payment.currency.clone(),
            })),
            PaymentStatus::Captured { .. } | PaymentStatus::Declined { .. } | PaymentStatus::Refunded { .. } => None,
        }
    }

    /// A short name of the state, for logs: the payment's status, `failed before charging`, or
    /// `none`.
    pub fn name(&self) -> &'static str {
        match (&self.payment, &self.failure) {
            (Some(payment), _) => payment.status.as_str(),
            (None, Some(_)) => "failed before charging",
            (None, None) => "none",
        }
    }
}

/// Applies one fact to an order's payment: the new state and the events it causes, in the order
/// they are published. Pure, apart from the new events' ids and times.
pub fn decide(state: PaymentState, input: Input) -> (PaymentState, Vec<SagaEvent>) {
    let PaymentState { payment, failure } = state;
    match (payment, input) {
        // A failed order is not charged; a second order.created changes nothing.
        (None, Input::OrderCreated(new)) if failure.is_none() => (
            PaymentState {
                payment: Some(Payment {
                    order_id: new.order_id,
                    payment_id: new.payment_id,
                    amount_minor: new.amount_minor,
                    currency: new.currency,
                    traceparent: new.traceparent,
                    status: PaymentStatus::Pending {
                        token: new.token,
                        requested_by: new.requested_by,
                    },
                }),
                failure,
            },
            vec![],
        ),
        // The first failure is kept; a capture with something to give back starts its refund.
        (payment, Input::OrderFailed(new_failure)) if failure.is_none() => {
            let payment = payment.map(|payment| match payment.status {
                PaymentStatus::Captured { capture } if payment.amount_minor > 0 => Payment {
                    status: PaymentStatus::Refunding { capture },
                    ..payment
                },
                _ => payment,
            });
            (
                PaymentState {
                    payment,
                    failure: Some(new_failure),
                },
                vec![],
            )
        }
        (Some(payment), Input::Charged(outcome)) => match payment.status {
            PaymentStatus::Pending { requested_by, .. } => settle(payment, requested_by, outcome, failure),
            _ => unchanged(Some(payment), failure),
        },
        (Some(payment), Input::RefundMade) => match payment.status {
            PaymentStatus::Refunding { capture } => {
                let refunded = Payment {
                    status: PaymentStatus::Refunded { capture },
                    ..payment
                };
                let event = payment_refunded(&refunded, failure.as_ref());
                (
                    PaymentState {
                        payment: Some(refunded),
                        failure,
                    },
                    vec![event],
                )
            }
            _ => unchanged(Some(payment), failure),
        },
        (payment, _) => unchanged(payment, failure),
    }
}

fn unchanged(payment: Option<Payment>, failure: Option<OrderFailure>) -> (PaymentState, Vec<SagaEvent>) {
    (PaymentState { payment, failure }, vec![])
}

/// A pending payment settled with the gateway's `outcome`. A decline is recorded as such whether
/// or not the order failed (nothing was taken); a capture of a failed order is recorded and its
/// refund started, unless nothing was taken (a zero total).
fn settle(
    payment: Payment,
    requested_by: EventId,
    outcome: ChargeOutcome,
    failure: Option<OrderFailure>,
) -> (PaymentState, Vec<SagaEvent>) {
    let (status, event) = match outcome {
        ChargeOutcome::Declined { reason } => {
            let event = SagaEvent::PaymentFailed(PaymentFailed {
                envelope: Envelope::caused_by_recorded(payment.order_id, requested_by),
                reason: reason.clone(),
                failure_reason: FailureReason::PaymentDeclined,
                amount_minor: payment.amount_minor,
                currency: payment.currency.clone(),
            });
            (PaymentStatus::Declined { reason }, event)
        }
        ChargeOutcome::Captured { gateway_reference } => {
            let event = SagaEvent::PaymentSucceeded(PaymentSucceeded {
                envelope: Envelope::caused_by_recorded(payment.order_id, requested_by),
                payment_id: payment.payment_id,
                amount_minor: payment.amount_minor,
                currency: payment.currency.clone(),
                gateway_reference: Some(gateway_reference.clone()),
            });
            let status = if failure.is_some() && payment.amount_minor > 0 {
                PaymentStatus::Refunding {
                    capture: gateway_reference,
                }
            } else {
                PaymentStatus::Captured {
                    capture: gateway_reference,
                }
            };
            (status, event)
        }
    };
    (
        PaymentState {
            payment: Some(Payment { status, ..payment }),
            failure,
        },
        vec![event],
    )
}

/// payment.refunded for `payment`, caused by the order's failure.
fn payment_refunded(payment: &Payment, failure: Option<&OrderFailure>) -> SagaEvent {
    let envelope = match failure.and_then(|failure| failure.event_id) {
        Some(event_id) => Envelope::caused_by_recorded(payment.order_id, event_id),
        // A failure recorded before its event id was kept.
        None => Envelope::for_command(payment.order_id),
    };
    let reason = failure.map_or(FailureReason::Unknown, |failure| failure.reason);
    SagaEvent::PaymentRefunded(PaymentRefunded {
        envelope,
        payment_id: payment.payment_id,
        amount_minor: payment.refunded_minor(),
        currency: payment.currency.clone(),
        reason: reason.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use saga_contracts::{EventType, OrderLine};

    use super::*;

    const TOTAL: i64 = 3998;

    fn order_created(total_minor: i64, currency: &str) -> OrderCreated {
        OrderCreated {
            envelope: Envelope::for_command(OrderId::new()),
            customer_id: "customer-1".into(),
            customer_email: "buyer@example.com".into(),
            payment_token: "tok_visa".into(),
            total_minor,
            currency: currency.into(),
            items: vec![OrderLine {
                sku: "SKU-1".into(),
                quantity: 2,
                unit_price_minor: 1999,
            }],
            sales_channel: "api".into(),
            idempotency_key: None,
            request_hash: None,
            deadline_at: None,
        }
    }

    fn new_payment(total_minor: i64) -> NewPayment {
        NewPayment::for_order(&order_created(total_minor, "USD"), None).expect("valid order")
    }

    fn failure(reason: FailureReason) -> OrderFailure {
        OrderFailure {
            event_id: Some(EventId::new()),
            reason,
        }
    }

    fn captured() -> ChargeOutcome {
        ChargeOutcome::Captured {
            gateway_reference: "sim_ch_1".into(),
        }
    }

    fn declined() -> ChargeOutcome {
        ChargeOutcome::Declined {
            reason: "card_declined".into(),
        }
    }

    /// The state after `inputs`, applied in order to an order the service knows nothing about.
    fn given(inputs: impl IntoIterator<Item = Input>) -> PaymentState {
        inputs
            .into_iter()
            .fold(PaymentState::default(), |state, input| decide(state, input).0)
    }

    fn types(events: &[SagaEvent]) -> Vec<EventType> {
        events.iter().map(SagaEvent::event_type).collect()
    }

    fn status(state: &PaymentState) -> Option<&PaymentStatus> {
        state.payment.as_ref().map(|payment| &payment.status)
    }

    #[test]
    fn order_created_makes_a_pending_payment_of_the_order_total_waiting_for_its_charge() {
        let new = new_payment(TOTAL);
        let (state, events) = decide(PaymentState::default(), Input::OrderCreated(new.clone()));
        assert!(events.is_empty());
        assert_eq!(state.name(), "pending");
        assert_eq!(
            state.gateway_call(),
            Some(GatewayCall::Charge(ChargeRequest {
                idempotency_key: new.order_id.to_string(),
                token: "tok_visa".into(),
                amount_minor: TOTAL,
                currency: "USD".into(),
            }))
        );
    }

    #[test]
    fn a_second_order_created_changes_nothing() {
        let state = given([Input::OrderCreated(new_payment(TOTAL))]);
        let (after, events) = decide(state.clone(), Input::OrderCreated(new_payment(TOTAL)));
        assert_eq!(after, state);
        assert!(events.is_empty());
    }

    #[test]
    fn an_order_that_failed_before_order_created_is_never_charged() {
        let state = given([Input::OrderFailed(failure(FailureReason::DeadlineExceeded))]);
        let (after, events) = decide(state, Input::OrderCreated(new_payment(TOTAL)));
        assert_eq!(after.payment, None);
        assert_eq!(after.name(), "failed before charging");
        assert_eq!(after.gateway_call(), None);
        assert!(events.is_empty());
    }

    #[test]
    fn a_capture_emits_payment_success_caused_by_order_created() {
        let new = new_payment(TOTAL);
        let state = given([Input::OrderCreated(new.clone())]);
        let (after, events) = decide(state, Input::Charged(captured()));
        assert_eq!(
            status(&after),
            Some(&PaymentStatus::Captured {
                capture: "sim_ch_1".into()
            })
        );
        assert_eq!(after.gateway_call(), None);
        let [SagaEvent::PaymentSucceeded(success)] = events.as_slice() else {
            panic!("expected payment.success, got {events:?}");
        };
        assert_eq!(success.envelope.order_id, new.order_id);
        assert_eq!(success.envelope.causation_id, Some(new.requested_by));
        assert_eq!(success.payment_id, new.payment_id);
        assert_eq!((success.amount_minor, success.currency.as_str()), (TOTAL, "USD"));
    }

    #[test]
    fn a_decline_emits_payment_failed_with_the_decline_code_and_the_payment_declined_reason() {
        let new = new_payment(TOTAL);
        let (after, events) = decide(given([Input::OrderCreated(new.clone())]), Input::Charged(declined()));
        assert_eq!(
            status(&after),
            Some(&PaymentStatus::Declined {
                reason: "card_declined".into()
            })
        );
        let [SagaEvent::PaymentFailed(failed)] = events.as_slice() else {
            panic!("expected payment.failed, got {events:?}");
        };
        assert_eq!(failed.envelope.causation_id, Some(new.requested_by));
        assert_eq!(failed.reason, "card_declined");
        assert_eq!(failed.failure_reason, FailureReason::PaymentDeclined);
        assert_eq!(failed.amount_minor, TOTAL);
    }

    #[test]
    fn order_failed_after_a_capture_starts_the_refund_of_the_whole_capture() {
        let state = given([Input::OrderCreated(new_payment(TOTAL)), Input::Charged(captured())]);
        let (after, events) = decide(state, Input::OrderFailed(failure(FailureReason::OutOfStock)));
        assert!(events.is_empty(), "nothing is given back before the gateway refunded");
        let Some(GatewayCall::Refund(refund)) = after.gateway_call() else {
            panic!("expected a refund call, got {after:?}");
        };
        assert_eq!(refund.gateway_reference, "sim_ch_1");
        assert_eq!(refund.amount_minor, TOTAL);
        assert_eq!(
            refund.idempotency_key,
            format!("refund-{}", after.payment.expect("payment").order_id)
        );
    }

    #[test]
    fn a_capture_of_an_order_that_failed_while_it_was_charged_emits_payment_success_and_starts_the_refund() {
        let state = given([
            Input::OrderCreated(new_payment(TOTAL)),
            Input::OrderFailed(failure(FailureReason::DeadlineExceeded)),
        ]);
        assert_eq!(state.name(), "pending", "the charge goes on");
        let (after, events) = decide(state, Input::Charged(captured()));
        assert_eq!(types(&events), [EventType::PaymentSucceeded]);
        assert_eq!(after.name(), "refunding");
        assert!(matches!(after.gateway_call(), Some(GatewayCall::Refund(_))));
    }

    #[test]
    fn the_refund_made_emits_payment_refunded_caused_by_the_failure_with_its_reason() {
        let order_failed = failure(FailureReason::DeadlineExceeded);
        let state = given([
            Input::OrderCreated(new_payment(TOTAL)),
            Input::Charged(captured()),
            Input::OrderFailed(order_failed.clone()),
        ]);
        let payment_id = state.payment.as_ref().expect("payment").payment_id;
        let (after, events) = decide(state, Input::RefundMade);
        assert_eq!(after.name(), "refunded");
        assert_eq!(after.payment.as_ref().map(Payment::refunded_minor), Some(TOTAL));
        assert_eq!(after.gateway_call(), None);
        let [SagaEvent::PaymentRefunded(refunded)] = events.as_slice() else {
            panic!("expected payment.refunded, got {events:?}");
        };
        assert_eq!(refunded.envelope.causation_id, order_failed.event_id);
        assert_eq!(refunded.payment_id, payment_id);
        assert_eq!(refunded.amount_minor, TOTAL);
        assert_eq!(refunded.reason, "deadline_exceeded");
    }

    #[test]
    fn a_failure_recorded_without_its_event_id_still_gets_its_refund() {
        let state = given([
            Input::OrderCreated(new_payment(TOTAL)),
            Input::Charged(captured()),
            Input::OrderFailed(OrderFailure {
                event_id: None,
                reason: FailureReason::OutOfStock,
            }),
        ]);
        let (_, events) = decide(state, Input::RefundMade);
        let [SagaEvent::PaymentRefunded(refunded)] = events.as_slice() else {
            panic!("expected payment.refunded, got {events:?}");
        };
        assert_eq!(refunded.envelope.causation_id, None);
        assert_eq!(refunded.reason, "out_of_stock");
    }

    #[test]
    fn only_the_first_order_failed_counts() {
        let first = failure(FailureReason::DeadlineExceeded);
        let state = given([
            Input::OrderCreated(new_payment(TOTAL)),
            Input::Charged(captured()),
            Input::OrderFailed(first.clone()),
        ]);
        let (after, events) = decide(state.clone(), Input::OrderFailed(failure(FailureReason::OutOfStock)));
        assert_eq!(after, state);
        assert_eq!(after.failure, Some(first));
        assert!(events.is_empty());
    }

    #[test]
    fn a_declined_payment_has_nothing_to_give_back_when_its_order_fails() {
        let state = given([Input::OrderCreated(new_payment(TOTAL)), Input::Charged(declined())]);
        let (after, events) = decide(state, Input::OrderFailed(failure(FailureReason::PaymentDeclined)));
        assert_eq!(after.name(), "declined");
        assert_eq!(
            after.failure.as_ref().map(|failure| failure.reason),
            Some(FailureReason::PaymentDeclined)
        );
        assert_eq!(after.gateway_call(), None);
        assert!(events.is_empty());
    }

    #[test]
    fn a_decline_of_an_order_that_failed_meanwhile_is_recorded_declined() {
        let state = given([
            Input::OrderCreated(new_payment(TOTAL)),
            Input::OrderFailed(failure(FailureReason::OutOfStock)),
        ]);
        let (after, events) = decide(state, Input::Charged(declined()));
        assert_eq!(after.name(), "declined");
        assert_eq!(types(&events), [EventType::PaymentFailed]);
    }

    #[test]
    fn a_zero_capture_of_a_failed_order_has_nothing_to_give_back() {
        let failed_first = given([
            Input::OrderCreated(new_payment(0)),
            Input::OrderFailed(failure(FailureReason::OutOfStock)),
            Input::Charged(captured()),
        ]);
        let failed_after = given([
            Input::OrderCreated(new_payment(0)),
            Input::Charged(captured()),
            Input::OrderFailed(failure(FailureReason::OutOfStock)),
        ]);
        for state in [failed_first, failed_after] {
            assert_eq!(state.name(), "captured");
            assert_eq!(state.gateway_call(), None);
        }
    }

    #[test]
    fn a_charge_outcome_for_a_payment_settled_meanwhile_changes_nothing() {
        let state = given([Input::OrderCreated(new_payment(TOTAL)), Input::Charged(captured())]);
        for outcome in [captured(), declined()] {
            let (after, events) = decide(state.clone(), Input::Charged(outcome));
            assert_eq!(after, state);
            assert!(events.is_empty());
        }
    }

    #[test]
    fn a_refund_made_for_a_payment_refunded_meanwhile_changes_nothing() {
        let state = given([
            Input::OrderCreated(new_payment(TOTAL)),
            Input::Charged(captured()),
            Input::OrderFailed(failure(FailureReason::OutOfStock)),
            Input::RefundMade,
        ]);
        let (after, events) = decide(state.clone(), Input::RefundMade);
        assert_eq!(after, state);
        assert!(events.is_empty());
    }

    #[test]
    fn gateway_outcomes_for_an_order_without_a_payment_change_nothing() {
        for input in [Input::Charged(captured()), Input::RefundMade] {
            let (after, events) = decide(PaymentState::default(), input);
            assert_eq!(after, PaymentState::default());
            assert!(events.is_empty());
        }
    }

    #[test]
    fn the_payment_id_is_derived_from_the_order_id_alone() {
        let order = order_created(TOTAL, "USD");
        let first = NewPayment::for_order(&order, None).expect("valid order");
        let again = NewPayment::for_order(&order, Some("00-trace".into())).expect("valid order");
        assert_eq!(first.payment_id, payment_id_for(order.envelope.order_id));
        assert_eq!(again.payment_id, first.payment_id);
        assert_ne!(payment_id_for(OrderId::new()), first.payment_id);
        assert_ne!(first.payment_id.uuid(), order.envelope.order_id.uuid());
    }

    #[test]
    fn the_payment_id_of_an_order_stays_what_it_was_when_ids_were_first_derived() {
        // Live databases hold ids derived so; replay must derive the same ones.
        let order_id: OrderId = "0b7a6f3e-2d1c-4e5f-9a8b-7c6d5e4f3a2b".parse().expect("uuid");
        assert_eq!(
            payment_id_for(order_id).to_string(),
            "08366bee-f94a-58cf-8e72-3d5c28662614"
        );
    }

    #[test]
    fn an_order_total_in_an_iso_currency_can_be_charged() {
        assert!(NewPayment::for_order(&order_created(TOTAL, "USD"), None).is_ok());
        assert!(NewPayment::for_order(&order_created(0, "EUR"), None).is_ok());
    }

    #[test]
    fn a_negative_total_or_a_malformed_currency_cannot_be_charged() {
        for (total, currency) in [(-1, "USD"), (100, "usd"), (100, "DOLLAR")] {
            assert!(
                matches!(
                    NewPayment::for_order(&order_created(total, currency), None),
                    Err(Error::InvalidOrder(_))
                ),
                "{total} {currency}"
            );
        }
    }
}
