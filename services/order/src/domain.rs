//! The order service's decisions, as pure functions without I/O: whether a request is a valid
//! order (and its total), the order.created that announces it, and the saga decision: given
//! what is known about an order and one new fact (a payment or inventory outcome, or the
//! deadline passing), the new state and whether the order is now confirmed, failed, or still
//! waiting. An order is decided once; facts arriving after the decision are recorded but decide
//! nothing (participants compensate on order.failed, which they always see after order.created
//! of the same order). Replay reads the same facts back from the recorded events: the order an
//! order.created announces, and a recorded decision no replayed event re-runs.

use std::time::Duration;

use saga_contracts::{
    Envelope, FailureReason, OrderConfirmed, OrderCreated, OrderFailed, OrderId, OrderLine, SagaEvent,
};
use serde::{Deserialize, Serialize};

// ---- Placing an order: a request either becomes a valid order with its total computed in
// minor units, or is rejected naming the offending field.

/// Body of `POST /orders`. The `schema` attributes state the rules [`validate`] applies, so the
/// OpenAPI document promises exactly what is accepted (the module's tests hold them together).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PlaceOrderRequest {
    /// The customer's id: 1 to 256 characters, not blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub customer_id: String,
    /// Where the outcome email goes: an ASCII `local@domain`, the local part 1 to 64
    /// characters of dot-separated RFC 5322 atoms, the domain two or more dot-separated labels
    /// of letters, digits and inner hyphens; at most 256 characters.
    #[schema(schema_with = email_schema)]
    pub customer_email: String,
    /// ISO 4217 code, three upper-case letters.
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
    /// Opaque token for the payment gateway: 1 to 256 characters, not blank, no control
    /// characters.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub payment_token: String,
    /// 1 to 100 lines.
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<OrderLineRequest>,
}

/// The schema of `customer_email`, the rules of [`is_plausible_email`]: the address's shape,
/// and (a second pattern, as one without look-ahead cannot also count) a local part of 1 to 64
/// characters.
fn email_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Type};
    const ATOM: &str = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+";
    const LABEL: &str = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
    AllOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(MAX_TEXT))
                .pattern(Some(format!(r"^{ATOM}(\.{ATOM})*@{LABEL}(\.{LABEL})+$"))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[^@]{1,64}@")),
        )
        .description(Some(
            "Where the outcome email goes: an ASCII `local@domain`, the local part 1 to 64 characters of \
             dot-separated RFC 5322 atoms, the domain two or more dot-separated labels of letters, digits \
             and inner hyphens (1 to 63 each); at most 256 characters.",
        ))
        .examples([serde_json::json!("ada@example.com")])
        .build()
        .into()
}

/// One requested line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct OrderLineRequest {
    /// Stock keeping unit: 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$", example = "SKU-1")]
    pub sku: String,
    /// Units, 1 to 1000000.
    #[schema(minimum = 1, maximum = 1_000_000)]
    #[serde(deserialize_with = "saga_common::http::whole_number")]
    pub quantity: i64,
    /// Price of one unit in minor units, 0 to 10000000000.
    #[schema(minimum = 0, maximum = 10_000_000_000_i64)]
    #[serde(deserialize_with = "saga_common::http::whole_number")]
    pub unit_price_minor: i64,
}

/// A request that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidOrder {
    /// The request as given.
    pub request: PlaceOrderRequest,
    /// Sum of quantity × unit price, in minor units.
    pub total_minor: i64,
}

/// A rejected field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn reject(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

const MAX_QUANTITY: i64 = 1_000_000;
/// The highest unit price, in minor units; with at most [`MAX_LINES`] lines of at most
/// [`MAX_QUANTITY`] units each, no total can overflow.
const MAX_UNIT_PRICE_MINOR: i64 = 10_000_000_000;
const MAX_LINES: usize = 100;
const MAX_TEXT: usize = 256;

/// Whether `text` is 1 to [`MAX_TEXT`] characters of a line of text (see
/// [`saga_common::http::is_text_line`]).
fn is_short_text(text: &str) -> bool {
    saga_common::http::is_text_line(text) && text.chars().count() <= MAX_TEXT
}

/// Validates a request and computes its total.
pub fn validate(request: PlaceOrderRequest) -> Result<ValidOrder, FieldError> {
    if !is_short_text(&request.customer_id) {
        return Err(reject(
            "customer_id",
            "must be 1 to 256 characters, not blank, without control characters",
        ));
    }
    if !is_plausible_email(&request.customer_email) {
        return Err(reject(
            "customer_email",
            "must be an email address like name@example.com",
        ));
    }
    if request.currency.len() != 3 || !request.currency.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(reject(
            "currency",
            "must be an ISO 4217 code of three upper-case letters, e.g. USD",
        ));
    }
    if !is_short_text(&request.payment_token) {
        return Err(reject(
            "payment_token",
            "must be 1 to 256 characters, not blank, without control characters",
        ));
    }
    if request.items.is_empty() || request.items.len() > MAX_LINES {
        return Err(reject("items", "must contain 1 to 100 lines"));
    }
    let mut total: i64 = 0;
    for (index, line) in request.items.iter().enumerate() {
        let valid_sku = !line.sku.is_empty()
            && line.sku.len() <= 64
            && line
                .sku
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_sku {
            return Err(reject(
                format!("items[{index}].sku"),
                "must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.'",
            ));
        }
        if line.quantity < 1 || line.quantity > MAX_QUANTITY {
            return Err(reject(
                format!("items[{index}].quantity"),
                "must be between 1 and 1000000",
            ));
        }
        if !(0..=MAX_UNIT_PRICE_MINOR).contains(&line.unit_price_minor) {
            return Err(reject(
                format!("items[{index}].unit_price_minor"),
                "must be between 0 and 10000000000",
            ));
        }
        total = line
            .quantity
            .checked_mul(line.unit_price_minor)
            .and_then(|amount| total.checked_add(amount))
            .ok_or_else(|| reject(format!("items[{index}].unit_price_minor"), "order total is too large"))?;
    }
    Ok(ValidOrder {
        request,
        total_minor: total,
    })
}

/// How an order was placed, beyond its content: what a rebuilt order service needs to answer a
/// retried request and to fail the order in time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    /// The request's Idempotency-Key, if it had one.
    pub idempotency_key: Option<String>,
    /// [`request_hash`] of the request body that came with the key.
    pub request_hash: Option<String>,
    /// When the order fails with `deadline_exceeded` unless decided, Unix milliseconds.
    pub deadline_at: i64,
}

/// A stable hash of a request body (its JSON text): a name-based UUID (SHA-1), so a retry with
/// the same Idempotency-Key is told apart from a different request reusing the key, and an
/// event can carry the hash instead of the body.
pub fn request_hash(body_json: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, body_json.as_bytes()).to_string()
}

impl Placement {
    /// How the order `created` announces was placed. Events written before order.created carried
    /// the deadline have none: their order had to be decided `default_deadline` after it was
    /// placed.
    pub fn of(created: &OrderCreated, default_deadline: Duration) -> Self {
        Self {
            idempotency_key: created.idempotency_key.clone(),
            request_hash: created.request_hash.clone(),
            deadline_at: created
                .deadline_at
                .unwrap_or_else(|| deadline_after(created.envelope.occurred_at, default_deadline)),
        }
    }
}

/// The deadline of an order placed at `placed_at` (Unix milliseconds) that may wait
/// `saga_deadline` for its outcomes, in Unix milliseconds.
pub fn deadline_after(placed_at: i64, saga_deadline: Duration) -> i64 {
    placed_at.saturating_add(i64::try_from(saga_deadline.as_millis()).unwrap_or(i64::MAX))
}

impl ValidOrder {
    /// The order `created` announces, as it was when it passed validation. Not validated again:
    /// the event records an order that was accepted, whatever the rules are today.
    pub fn announced_by(created: &OrderCreated) -> Self {
        Self {
            request: PlaceOrderRequest {
                customer_id: created.customer_id.clone(),
                customer_email: created.customer_email.clone(),
                currency: created.currency.clone(),
                payment_token: created.payment_token.clone(),
                items: created
                    .items
                    .iter()
                    .map(|line| OrderLineRequest {
                        sku: line.sku.clone(),
                        quantity: i64::from(line.quantity),
                        unit_price_minor: line.unit_price_minor,
                    })
                    .collect(),
            },
            total_minor: created.total_minor,
        }
    }

    /// The order.created event announcing this order, with `envelope` (for the placing
    /// request's command) and how it was placed.
    pub fn created_event(&self, envelope: Envelope, placement: Placement) -> OrderCreated {
        let request = &self.request;
        OrderCreated {
            envelope,
            customer_id: request.customer_id.clone(),
            customer_email: request.customer_email.clone(),
            payment_token: request.payment_token.clone(),
            total_minor: self.total_minor,
            currency: request.currency.clone(),
            items: request
                .items
                .iter()
                .map(|line| OrderLine {
                    sku: line.sku.clone(),
                    // validated to be at most MAX_QUANTITY, well inside i32
                    quantity: i32::try_from(line.quantity).unwrap_or(i32::MAX),
                    unit_price_minor: line.unit_price_minor,
                })
                .collect(),
            sales_channel: "api".into(),
            idempotency_key: placement.idempotency_key,
            request_hash: placement.request_hash,
            deadline_at: Some(placement.deadline_at),
        }
    }
}

/// The characters of an email address's local part besides dots (RFC 5322 `atext`, ASCII).
const EMAIL_LOCAL_SPECIALS: &str = "!#$%&'*+/=?^_`{|}~-";

/// Whether `text` is an email address the notification service can send to: an ASCII
/// `local@domain` whose local part is 1 to 64 characters of dot-separated RFC 5322 atoms, and
/// whose domain is two or more dot-separated labels of letters, digits and inner hyphens (1 to
/// 63 each), at most 256 characters in all. Internationalised addresses are not taken: the
/// mailer cannot send to all of them.
fn is_plausible_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    let atom_char = |c: char| c.is_ascii_alphanumeric() || EMAIL_LOCAL_SPECIALS.contains(c);
    let local_ok = (1..=64).contains(&local.len())
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(atom_char));
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let domain_ok = domain.split('.').count() >= 2 && domain.split('.').all(label_ok);
    text.len() <= MAX_TEXT && local_ok && domain_ok
}

// ---- The saga decision.

/// Lifecycle status of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[schema(rename_all = "UPPERCASE")]
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

    /// Parses the stored name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "PENDING" => Some(OrderStatus::Pending),
            "CONFIRMED" => Some(OrderStatus::Confirmed),
            "FAILED" => Some(OrderStatus::Failed),
            _ => None,
        }
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

    /// The state after taking a recorded `decision` as a fact, for an order replay cannot decide
    /// itself (the deadline failed it, or the outcome that decided it precedes the replayed
    /// events): a pending order becomes confirmed, or failed with the recorded reason. `None`
    /// when the order is decided already: its decision stands. The outcomes stay as they are,
    /// since a decision does not say which outcomes had arrived. Pure.
    pub fn decided_as(self, decision: RecordedDecision) -> Option<Self> {
        if self.status != OrderStatus::Pending {
            return None;
        }
        let (status, failure_reason) = match decision {
            RecordedDecision::Confirmed => (OrderStatus::Confirmed, None),
            RecordedDecision::Failed(reason) => (OrderStatus::Failed, Some(reason)),
        };
        Some(Self {
            status,
            failure_reason,
            ..self
        })
    }
}

/// A decision the order service recorded on its topic: order.confirmed or order.failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordedDecision {
    /// order.confirmed
    Confirmed,
    /// order.failed, with its reason
    Failed(FailureReason),
}

impl RecordedDecision {
    /// The decision `event` records; `None` for any other event.
    pub fn of(event: &SagaEvent) -> Option<Self> {
        match event {
            SagaEvent::OrderConfirmed(_) => Some(RecordedDecision::Confirmed),
            SagaEvent::OrderFailed(failed) => Some(RecordedDecision::Failed(failed.reason())),
            _ => None,
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

/// An order as the saga sees it: its decision state, and what its order.confirmed or
/// order.failed carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// The order's id.
    pub order_id: OrderId,
    /// Recipient of the outcome email.
    pub customer_email: String,
    /// Order total in minor units.
    pub total_minor: i64,
    /// Currency of the total.
    pub currency: String,
    /// Saga state.
    pub state: SagaState,
}

impl Order {
    /// Applies one fact ([`decide`]): the order's new state, and the event to emit if the fact
    /// decided the order, with `envelope` (made by the caller: caused by the outcome event, or
    /// for the deadline command). Pure.
    pub fn apply(&self, input: SagaInput, envelope: Envelope) -> (SagaState, Option<SagaEvent>) {
        let (next, decision) = decide(self.state, input);
        let event = match decision {
            Decision::Wait => None,
            Decision::Confirm => Some(SagaEvent::OrderConfirmed(OrderConfirmed {
                envelope,
                customer_email: self.customer_email.clone(),
                total_minor: self.total_minor,
                currency: self.currency.clone(),
            })),
            Decision::Fail(reason) => Some(SagaEvent::OrderFailed(OrderFailed {
                envelope,
                // The order service's own failures have no more specific cause than the reason.
                reason: reason.to_string(),
                failure_reason: reason,
                customer_email: self.customer_email.clone(),
                total_minor: self.total_minor,
                currency: self.currency.clone(),
            })),
        };
        (next, event)
    }
}

#[cfg(test)]
mod tests {
    mod placing {
        use super::super::*;

        fn request() -> PlaceOrderRequest {
            PlaceOrderRequest {
                customer_id: "c-1".into(),
                customer_email: "a@example.com".into(),
                currency: "USD".into(),
                payment_token: "tok_ok".into(),
                items: vec![
                    OrderLineRequest {
                        sku: "SKU-1".into(),
                        quantity: 2,
                        unit_price_minor: 1999,
                    },
                    OrderLineRequest {
                        sku: "SKU-2".into(),
                        quantity: 1,
                        unit_price_minor: 500,
                    },
                ],
            }
        }

        fn field_of(request: PlaceOrderRequest) -> String {
            validate(request).expect_err("should be rejected").field
        }

        #[test]
        fn a_valid_order_gets_its_total_in_minor_units() {
            assert_eq!(validate(request()).expect("valid").total_minor, 2 * 1999 + 500);
        }

        #[test]
        fn a_zero_quantity_is_rejected_naming_the_line() {
            let mut bad = request();
            bad.items[1].quantity = 0;
            assert_eq!(field_of(bad), "items[1].quantity");
        }

        #[test]
        fn a_negative_price_is_rejected() {
            let mut bad = request();
            bad.items[0].unit_price_minor = -1;
            assert_eq!(field_of(bad), "items[0].unit_price_minor");
        }

        #[test]
        fn a_free_item_is_allowed() {
            let mut free = request();
            free.items[0].unit_price_minor = 0;
            assert_eq!(validate(free).expect("valid").total_minor, 500);
        }

        #[test]
        fn currencies_must_be_three_upper_case_letters() {
            for bad_currency in ["usd", "US", "USDT", "U$D", ""] {
                let mut bad = request();
                bad.currency = bad_currency.into();
                assert_eq!(field_of(bad), "currency", "{bad_currency:?}");
            }
        }

        #[test]
        fn empty_items_are_rejected() {
            let mut bad = request();
            bad.items.clear();
            assert_eq!(field_of(bad), "items");
        }

        #[test]
        fn implausible_emails_are_rejected() {
            for bad_email in [
                "",
                "a",
                "a@",
                "@example.com",
                "a@b",
                "a b@example.com",
                "a@@example.com",
                "a@example.",
            ] {
                let mut bad = request();
                bad.customer_email = bad_email.into();
                assert_eq!(field_of(bad), "customer_email", "{bad_email:?}");
            }
        }

        #[test]
        fn a_unit_price_above_the_highest_is_rejected() {
            let mut bad = request();
            bad.items[0].unit_price_minor = MAX_UNIT_PRICE_MINOR + 1;
            assert_eq!(field_of(bad), "items[0].unit_price_minor");
        }

        #[test]
        fn the_largest_order_allowed_has_a_total_that_fits() {
            let mut largest = request();
            largest.items = vec![
                OrderLineRequest {
                    sku: "SKU-1".into(),
                    quantity: MAX_QUANTITY,
                    unit_price_minor: MAX_UNIT_PRICE_MINOR,
                };
                MAX_LINES
            ];
            assert_eq!(
                validate(largest.clone()).expect("valid").total_minor,
                100 * 1_000_000 * 10_000_000_000
            );
            largest.items.push(largest.items[0].clone());
            assert_eq!(field_of(largest), "items");
        }

        #[test]
        fn control_characters_are_rejected_in_every_text_field() {
            for field in ["customer_id", "payment_token", "customer_email"] {
                let mut bad = request();
                let text = match field {
                    "customer_id" => &mut bad.customer_id,
                    "payment_token" => &mut bad.payment_token,
                    _ => &mut bad.customer_email,
                };
                text.insert(1, '\0');
                assert_eq!(field_of(bad), field);
            }
        }

        #[test]
        fn text_limits_count_characters_not_bytes() {
            let mut long = request();
            long.customer_id = "é".repeat(MAX_TEXT);
            assert!(validate(long.clone()).is_ok());
            long.customer_id.push('é');
            assert_eq!(field_of(long), "customer_id");
        }

        /// Addresses at the edges of the rules, each accepted only if the mailer can send to it.
        const EDGE_EMAILS: &[&str] = &[
            "a@b.c",
            "first.last@example.com",
            "x!#$%&'*+/=?^_`{|}~-y@mail-1.example.org",
            "a@b-c.d",
            "A@B.C",
            "1@2.3",
            "a..b@example.com",
            ".a@example.com",
            "a.@example.com",
            "a@-b.com",
            "a@b-.com",
            "a@b..com",
            "a@b_c.com",
            "a\"b@example.com",
            "a(b)@example.com",
            "a,b@example.com",
            "ü@example.com",
            "a@münchen.de",
            "a@[127.0.0.1]",
        ];

        #[test]
        fn every_email_accepted_is_one_the_mailer_can_send_to() {
            let long_local = format!("{}@example.com", "l".repeat(64));
            let long_label = format!("a@{}.com", "d".repeat(63));
            let longest = format!("a@{}.com", ["d".repeat(63), "e".repeat(63), "f".repeat(63)].join("."));
            let mut accepted = 0;
            for email in EDGE_EMAILS
                .iter()
                .copied()
                .chain([long_local.as_str(), long_label.as_str(), longest.as_str()])
            {
                if is_plausible_email(email) {
                    accepted += 1;
                    assert!(email.parse::<lettre::Address>().is_ok(), "{email:?} as an address");
                    assert!(
                        email.parse::<lettre::message::Mailbox>().is_ok(),
                        "{email:?} as a mailbox"
                    );
                }
            }
            assert_eq!(accepted, 9);
            assert!(!is_plausible_email(&format!("{}@example.com", "l".repeat(65))));
            assert!(!is_plausible_email(&format!("a@{}.com", "d".repeat(64))));
        }

        #[test]
        fn blank_customer_and_token_are_rejected() {
            let mut bad = request();
            bad.customer_id = "  ".into();
            assert_eq!(field_of(bad), "customer_id");
            let mut bad = request();
            bad.payment_token = String::new();
            assert_eq!(field_of(bad), "payment_token");
        }

        #[test]
        fn a_request_hash_is_stable_and_tells_bodies_apart() {
            assert_eq!(request_hash("{\"a\":1}"), request_hash("{\"a\":1}"));
            assert_ne!(request_hash("{\"a\":1}"), request_hash("{\"a\":2}"));
        }

        #[test]
        fn the_created_event_carries_the_lines_total_and_the_given_envelope() {
            let order = validate(request()).expect("valid");
            let envelope = Envelope::for_command(OrderId::new());
            let placement = Placement {
                idempotency_key: Some("key-1".into()),
                request_hash: Some(request_hash("{}")),
                deadline_at: envelope.occurred_at + 30_000,
            };
            let created = order.created_event(envelope, placement.clone());
            assert_eq!(created.envelope, envelope);
            assert_eq!(created.idempotency_key, placement.idempotency_key);
            assert_eq!(created.request_hash, placement.request_hash);
            assert_eq!(created.deadline_at, Some(envelope.occurred_at + 30_000));
            assert_eq!(created.total_minor, 2 * 1999 + 500);
            assert_eq!(created.currency, "USD");
            let lines: Vec<(&str, i32, i64)> = created
                .items
                .iter()
                .map(|line| (line.sku.as_str(), line.quantity, line.unit_price_minor))
                .collect();
            assert_eq!(lines, vec![("SKU-1", 2, 1999), ("SKU-2", 1, 500)]);
        }
    }

    mod replaying {
        use std::time::Duration;

        use super::super::*;

        fn created(placement: Placement) -> OrderCreated {
            let request = PlaceOrderRequest {
                customer_id: "c-1".into(),
                customer_email: "a@example.com".into(),
                currency: "USD".into(),
                payment_token: "tok_ok".into(),
                items: vec![OrderLineRequest {
                    sku: "SKU-1".into(),
                    quantity: 2,
                    unit_price_minor: 1999,
                }],
            };
            validate(request)
                .expect("valid")
                .created_event(Envelope::for_command(OrderId::new()), placement)
        }

        #[test]
        fn a_created_event_announces_exactly_the_order_it_was_made_from() {
            let order = validate(PlaceOrderRequest {
                customer_id: "c-2".into(),
                customer_email: "b@example.com".into(),
                currency: "EUR".into(),
                payment_token: "tok_2".into(),
                items: vec![
                    OrderLineRequest {
                        sku: "SKU-1".into(),
                        quantity: 3,
                        unit_price_minor: 250,
                    },
                    OrderLineRequest {
                        sku: "SKU-2".into(),
                        quantity: 1,
                        unit_price_minor: 0,
                    },
                ],
            })
            .expect("valid");
            let created = order.created_event(Envelope::for_command(OrderId::new()), Placement::default());
            assert_eq!(ValidOrder::announced_by(&created), order);
        }

        #[test]
        fn a_created_event_gives_back_the_placement_it_was_made_with() {
            let placement = Placement {
                idempotency_key: Some("key-1".into()),
                request_hash: Some(request_hash("{}")),
                deadline_at: 1_700_000_012_345,
            };
            let created = created(placement.clone());
            assert_eq!(Placement::of(&created, Duration::from_secs(30)), placement);
        }

        #[test]
        fn an_order_created_before_deadlines_were_recorded_is_due_the_default_after_it_was_placed() {
            let mut created = created(Placement::default());
            created.deadline_at = None;
            created.envelope.occurred_at = 1_700_000_000_000;
            let placement = Placement::of(&created, Duration::from_secs(30));
            assert_eq!(placement.deadline_at, 1_700_000_030_000);
            assert_eq!((placement.idempotency_key, placement.request_hash), (None, None));
        }

        #[test]
        fn a_recorded_deadline_failure_fails_a_pending_order_as_the_deadline_scanner_does() {
            let state = decide(SagaState::pending(), SagaInput::Payment(PaymentOutcome::Captured)).0;
            let recorded = state
                .decided_as(RecordedDecision::Failed(FailureReason::DeadlineExceeded))
                .expect("a pending order takes the decision");
            assert_eq!(recorded, decide(state, SagaInput::DeadlinePassed).0);
            assert_eq!(recorded.status, OrderStatus::Failed);
            assert_eq!(recorded.failure_reason, Some(FailureReason::DeadlineExceeded));
        }

        #[test]
        fn a_recorded_confirmation_confirms_a_pending_order_and_keeps_the_outcomes_it_knows() {
            let state = decide(SagaState::pending(), SagaInput::Inventory(InventoryOutcome::Reserved)).0;
            let recorded = state.decided_as(RecordedDecision::Confirmed).expect("pending");
            assert_eq!(recorded.status, OrderStatus::Confirmed);
            assert_eq!(recorded.failure_reason, None);
            assert_eq!(
                (recorded.payment, recorded.inventory),
                (None, Some(InventoryOutcome::Reserved))
            );
        }

        #[test]
        fn a_recorded_decision_leaves_an_order_decided_already_as_it_is() {
            let declined = decide(SagaState::pending(), SagaInput::Payment(PaymentOutcome::Declined)).0;
            assert_eq!(declined.decided_as(RecordedDecision::Confirmed), None);
            assert_eq!(
                declined.decided_as(RecordedDecision::Failed(FailureReason::PaymentDeclined)),
                None
            );
        }

        #[test]
        fn a_recorded_failure_is_read_with_its_reason_also_from_v1_text() {
            let failed = |failure_reason, reason: &str| {
                SagaEvent::OrderFailed(OrderFailed {
                    envelope: Envelope::for_command(OrderId::new()),
                    reason: reason.into(),
                    failure_reason,
                    customer_email: "a@example.com".into(),
                    total_minor: 100,
                    currency: "USD".into(),
                })
            };
            assert_eq!(
                RecordedDecision::of(&failed(FailureReason::DeadlineExceeded, "deadline_exceeded")),
                Some(RecordedDecision::Failed(FailureReason::DeadlineExceeded))
            );
            assert_eq!(
                RecordedDecision::of(&failed(FailureReason::Unknown, "out_of_stock")),
                Some(RecordedDecision::Failed(FailureReason::OutOfStock)),
                "v1 data names the reason only in its text"
            );
        }

        #[test]
        fn a_confirmation_is_a_recorded_decision_and_an_order_created_is_none() {
            let confirmed = SagaEvent::OrderConfirmed(OrderConfirmed {
                envelope: Envelope::for_command(OrderId::new()),
                customer_email: "a@example.com".into(),
                total_minor: 100,
                currency: "USD".into(),
            });
            assert_eq!(RecordedDecision::of(&confirmed), Some(RecordedDecision::Confirmed));
            assert_eq!(
                RecordedDecision::of(&SagaEvent::OrderCreated(created(Placement::default()))),
                None
            );
        }
    }

    mod deciding {
        use super::super::*;

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

        fn order(state: SagaState) -> Order {
            Order {
                order_id: OrderId::new(),
                customer_email: "a@example.com".into(),
                total_minor: 3_998,
                currency: "USD".into(),
                state,
            }
        }

        #[test]
        fn a_confirming_fact_emits_order_confirmed_with_the_given_envelope() {
            let order = order(given(&[SagaInput::Payment(Captured)]));
            let envelope = Envelope::for_command(order.order_id);
            let (state, event) = order.apply(SagaInput::Inventory(Reserved), envelope);
            assert_eq!(state.status, OrderStatus::Confirmed);
            let Some(SagaEvent::OrderConfirmed(confirmed)) = event else {
                panic!("expected order.confirmed: {event:?}");
            };
            assert_eq!(confirmed.envelope, envelope);
            assert_eq!((confirmed.total_minor, confirmed.currency.as_str()), (3_998, "USD"));
        }

        #[test]
        fn a_failing_fact_emits_order_failed_with_the_reason_as_enum_and_as_text() {
            let order = order(SagaState::pending());
            let (_, event) = order.apply(SagaInput::Inventory(Unavailable), Envelope::for_command(order.order_id));
            let Some(SagaEvent::OrderFailed(failed)) = event else {
                panic!("expected order.failed: {event:?}");
            };
            assert_eq!(failed.failure_reason, OutOfStock);
            assert_eq!(failed.reason, "out_of_stock");
            assert_eq!(failed.reason(), OutOfStock);
        }

        #[test]
        fn a_fact_that_decides_nothing_emits_nothing() {
            let order = order(SagaState::pending());
            let (state, event) = order.apply(SagaInput::Payment(Captured), Envelope::for_command(order.order_id));
            assert_eq!((state.status, event), (OrderStatus::Pending, None));
        }
    }
}
