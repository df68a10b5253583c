//! The saga decision, as a pure function: given what the order service knows about an order and
//! one new fact (a payment or inventory outcome, or the deadline passing), the new state and
//! whether the order is now confirmed, failed, or still waiting. The order is decided once; facts
//! arriving after the decision are recorded but decide nothing (participants compensate on
//! order.failed, which they always see after order.created of the same order).

use std::fmt;
use std::str::FromStr;

/// Lifecycle status of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    /// Waiting for payment and inventory outcomes.
    Pending,
    /// Paid and reserved; terminal.
    Confirmed,
    /// Failed for a reason; terminal.
    Failed,
}

impl OrderStatus {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Confirmed => "CONFIRMED",
            OrderStatus::Failed => "FAILED",
        }
    }
}

impl FromStr for OrderStatus {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "PENDING" => Ok(OrderStatus::Pending),
            "CONFIRMED" => Ok(OrderStatus::Confirmed),
            "FAILED" => Ok(OrderStatus::Failed),
            other => Err(format!("unknown order status {other:?}")),
        }
    }
}

/// Why an order failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// The payment gateway declined the charge.
    PaymentDeclined,
    /// At least one line could not be reserved.
    OutOfStock,
    /// The outcomes did not all arrive before the saga deadline.
    DeadlineExceeded,
}

impl FailureReason {
    /// The name used in events and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::PaymentDeclined => "payment_declined",
            FailureReason::OutOfStock => "out_of_stock",
            FailureReason::DeadlineExceeded => "deadline_exceeded",
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the payment service reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentOutcome {
    /// The total was captured.
    Captured,
    /// The charge was declined.
    Declined,
}

impl PaymentOutcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentOutcome::Captured => "captured",
            PaymentOutcome::Declined => "declined",
        }
    }

    /// Parses the stored name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "captured" => Some(PaymentOutcome::Captured),
            "declined" => Some(PaymentOutcome::Declined),
            _ => None,
        }
    }
}

/// What the inventory service reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InventoryOutcome {
    /// Every line was reserved.
    Reserved,
    /// Not every line could be reserved; nothing was.
    Unavailable,
}

impl InventoryOutcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            InventoryOutcome::Reserved => "reserved",
            InventoryOutcome::Unavailable => "unavailable",
        }
    }

    /// Parses the stored name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "reserved" => Some(InventoryOutcome::Reserved),
            "unavailable" => Some(InventoryOutcome::Unavailable),
            _ => None,
        }
    }
}

/// Everything the decision depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SagaState {
    /// Current status.
    pub status: OrderStatus,
    /// Why it failed, once failed.
    pub failure_reason: Option<FailureReason>,
    /// The payment outcome, once reported.
    pub payment: Option<PaymentOutcome>,
    /// The inventory outcome, once reported.
    pub inventory: Option<InventoryOutcome>,
}

impl SagaState {
    /// A new order waiting for both outcomes.
    pub fn pending() -> Self {
        Self {
            status: OrderStatus::Pending,
            failure_reason: None,
            payment: None,
            inventory: None,
        }
    }
}

/// A new fact about an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaInput {
    /// payment.success
    Payment(PaymentOutcome),
    /// inventory.reserved or inventory.reservation_failed
    Inventory(InventoryOutcome),
    /// The saga deadline passed.
    DeadlinePassed,
}

/// What the order service must do after applying a fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to emit (still waiting, or already decided).
    Wait,
    /// Emit order.confirmed.
    Confirm,
    /// Emit order.failed with the reason.
    Fail(FailureReason),
}

/// Applies one fact. Pure: no I/O, same answer for the same inputs.
pub fn decide(state: SagaState, input: SagaInput) -> (SagaState, Decision) {
    let mut next = state;
    match input {
        SagaInput::Payment(outcome) => next.payment = next.payment.or(Some(outcome)),
        SagaInput::Inventory(outcome) => next.inventory = next.inventory.or(Some(outcome)),
        SagaInput::DeadlinePassed => {}
    }
    if state.status != OrderStatus::Pending {
        return (next, Decision::Wait);
    }
    // While pending no failure has been recorded yet, so at most one of these is new.
    let failure = if next.payment == Some(PaymentOutcome::Declined) {
        Some(FailureReason::PaymentDeclined)
    } else if next.inventory == Some(InventoryOutcome::Unavailable) {
        Some(FailureReason::OutOfStock)
    } else if input == SagaInput::DeadlinePassed {
        Some(FailureReason::DeadlineExceeded)
    } else {
        None
    };
    if let Some(reason) = failure {
        next.status = OrderStatus::Failed;
        next.failure_reason = Some(reason);
        return (next, Decision::Fail(reason));
    }
    if next.payment == Some(PaymentOutcome::Captured) && next.inventory == Some(InventoryOutcome::Reserved) {
        next.status = OrderStatus::Confirmed;
        return (next, Decision::Confirm);
    }
    (next, Decision::Wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    use FailureReason::*;
    use InventoryOutcome::*;
    use PaymentOutcome::*;

    fn given(facts: &[SagaInput]) -> SagaState {
        facts
            .iter()
            .fold(SagaState::pending(), |state, fact| decide(state, *fact).0)
    }

    #[test]
    fn a_captured_payment_alone_waits_for_inventory() {
        let (state, decision) = decide(SagaState::pending(), SagaInput::Payment(Captured));
        assert_eq!(decision, Decision::Wait);
        assert_eq!(state.status, OrderStatus::Pending);
    }

    #[test]
    fn payment_then_reservation_confirms() {
        let state = given(&[SagaInput::Payment(Captured)]);
        let (state, decision) = decide(state, SagaInput::Inventory(Reserved));
        assert_eq!(decision, Decision::Confirm);
        assert_eq!(state.status, OrderStatus::Confirmed);
    }

    #[test]
    fn reservation_then_payment_confirms() {
        let state = given(&[SagaInput::Inventory(Reserved)]);
        assert_eq!(decide(state, SagaInput::Payment(Captured)).1, Decision::Confirm);
    }

    #[test]
    fn a_decline_fails_at_once_even_before_inventory_answers() {
        let (state, decision) = decide(SagaState::pending(), SagaInput::Payment(Declined));
        assert_eq!(decision, Decision::Fail(PaymentDeclined));
        assert_eq!(state.status, OrderStatus::Failed);
        assert_eq!(state.failure_reason, Some(PaymentDeclined));
    }

    #[test]
    fn out_of_stock_after_a_capture_fails_with_out_of_stock() {
        let state = given(&[SagaInput::Payment(Captured)]);
        assert_eq!(
            decide(state, SagaInput::Inventory(Unavailable)).1,
            Decision::Fail(OutOfStock)
        );
    }

    #[test]
    fn when_both_fail_only_the_first_failure_emits() {
        let state = given(&[SagaInput::Payment(Declined)]);
        let (state, decision) = decide(state, SagaInput::Inventory(Unavailable));
        assert_eq!(decision, Decision::Wait);
        assert_eq!(state.failure_reason, Some(PaymentDeclined));
        assert_eq!(state.inventory, Some(Unavailable), "the late fact is still recorded");
    }

    #[test]
    fn the_deadline_fails_a_pending_order() {
        let state = given(&[SagaInput::Payment(Captured)]);
        let (state, decision) = decide(state, SagaInput::DeadlinePassed);
        assert_eq!(decision, Decision::Fail(DeadlineExceeded));
        assert_eq!(state.status, OrderStatus::Failed);
    }

    #[test]
    fn the_deadline_does_nothing_to_a_decided_order() {
        let state = given(&[SagaInput::Payment(Captured), SagaInput::Inventory(Reserved)]);
        assert_eq!(decide(state, SagaInput::DeadlinePassed), (state, Decision::Wait));
    }

    #[test]
    fn a_late_success_after_the_deadline_decides_nothing() {
        let state = given(&[SagaInput::DeadlinePassed, SagaInput::Inventory(Reserved)]);
        let (state, decision) = decide(state, SagaInput::Payment(Captured));
        assert_eq!(decision, Decision::Wait);
        assert_eq!(state.status, OrderStatus::Failed);
        assert_eq!(state.failure_reason, Some(DeadlineExceeded));
    }

    #[test]
    fn a_repeated_outcome_never_decides_twice() {
        let state = given(&[SagaInput::Payment(Captured), SagaInput::Inventory(Reserved)]);
        assert_eq!(decide(state, SagaInput::Inventory(Reserved)).1, Decision::Wait);
        assert_eq!(decide(state, SagaInput::Payment(Captured)).1, Decision::Wait);
    }

    #[test]
    fn the_first_reported_outcome_sticks() {
        let state = given(&[SagaInput::Payment(Captured)]);
        let (state, decision) = decide(state, SagaInput::Payment(Declined));
        assert_eq!(state.payment, Some(Captured));
        assert_eq!(decision, Decision::Wait);
        assert_eq!(state.status, OrderStatus::Pending);
    }
}
