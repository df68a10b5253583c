//! What the customer reads: the email for an order outcome, rendered by pure functions (no I/O),
//! and its deterministic Message-ID, the same on every resend so a receiver can drop duplicates.

use std::fmt;

use saga_contracts::{FailureReason, OrderId, OrderOutcome as RecordedOutcome};
use serde::{Deserialize, Serialize};

/// Domain of every Message-ID this service generates.
pub const MESSAGE_ID_DOMAIN: &str = "saga-platform.local";

/// The terminal outcome of an order that an email reports. At most one email per order and
/// outcome is ever recorded. Serialized as stored (see [`Outcome::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The order was confirmed (`order.confirmed`).
    Confirmed,
    /// The order failed (`order.failed`).
    Failed,
}

impl Outcome {
    /// The outcome as stored in the database and written into the Message-ID.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Confirmed => "confirmed",
            Outcome::Failed => "failed",
        }
    }
}

impl From<RecordedOutcome> for Outcome {
    /// The outcome a notification.sent or notification.failed event names.
    fn from(recorded: RecordedOutcome) -> Self {
        match recorded {
            RecordedOutcome::Confirmed => Outcome::Confirmed,
            RecordedOutcome::Failed => Outcome::Failed,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The facts of an order that its outcome email mentions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderOutcome<'a> {
    /// The order.
    pub order_id: OrderId,
    /// Order total in minor units of `currency`.
    pub total_minor: i64,
    /// ISO 4217 code.
    pub currency: &'a str,
    /// What happened; failures carry the saga's reason.
    pub result: OutcomeDetail,
}

/// Outcome plus, for failures, the saga's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeDetail {
    /// Confirmed.
    Confirmed,
    /// Failed for `reason`.
    Failed {
        /// Why the saga failed the order.
        reason: FailureReason,
    },
}

/// A rendered email, before addressing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedEmail {
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

impl OrderOutcome<'_> {
    /// Which outcome this is.
    pub fn outcome(&self) -> Outcome {
        match self.result {
            OutcomeDetail::Confirmed => Outcome::Confirmed,
            OutcomeDetail::Failed { .. } => Outcome::Failed,
        }
    }

    /// The deterministic Message-ID of this outcome's email.
    pub fn message_id(&self) -> String {
        message_id(self.order_id, self.outcome())
    }

    /// Subject and body of this outcome's email.
    pub fn render(&self) -> RenderedEmail {
        let order_id = self.order_id.to_string();
        let short = short_order_id(&order_id);
        let total = format_money(self.total_minor, self.currency);
        match self.result {
            OutcomeDetail::Confirmed => RenderedEmail {
                subject: format!("Order {short} confirmed"),
                body: format!(
                    "Hello,\n\n\
                     your order {order_id} is confirmed.\n\
                     Total charged: {total}.\n\n\
                     Thank you for your order.\n",
                ),
            },
            OutcomeDetail::Failed { reason } => RenderedEmail {
                subject: format!("Order {short} failed"),
                body: format!(
                    "Hello,\n\n\
                     we are sorry: your order {order_id} could not be completed because {why}.\n\
                     Order total: {total}. Nothing has been charged for it; any amount taken is refunded.\n",
                    why = reason_in_words(reason),
                ),
            },
        }
    }
}

/// `<{order_id}.{outcome}@saga-platform.local>`: one Message-ID per order outcome, the same on
/// every attempt, so a receiver that sees it twice can drop the second copy. The id is written
/// in its canonical (lowercase) form whatever its spelling in the event.
pub fn message_id(order_id: OrderId, outcome: Outcome) -> String {
    format!("<{order_id}.{outcome}@{MESSAGE_ID_DOMAIN}>")
}

/// The first 8 characters of the order id, as shown in subjects.
pub fn short_order_id(order_id: &str) -> &str {
    order_id
        .char_indices()
        .nth(8)
        .map_or(order_id, |(end, _)| &order_id[..end])
}

/// A saga failure reason as a customer reads it, completing "could not be completed because …".
pub fn reason_in_words(reason: FailureReason) -> &'static str {
    match reason {
        FailureReason::PaymentDeclined => "your payment was declined",
        FailureReason::OutOfStock => "an item is out of stock",
        FailureReason::DeadlineExceeded => "we could not complete it in time",
        FailureReason::OrderAlreadyFailed => "it had already been stopped",
        FailureReason::Unknown => "of an unexpected problem",
    }
}

/// Number of minor-unit digits of an ISO 4217 currency (2 unless listed otherwise).
pub fn minor_digits(currency: &str) -> u32 {
    match currency.to_ascii_uppercase().as_str() {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX" | "UYI" | "VND"
        | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        "CLF" | "UYW" => 4,
        _ => 2,
    }
}

/// An amount in integer minor units as a decimal with its currency code, without floats:
/// `3998 USD` → `"39.98 USD"`, `1500 JPY` → `"1500 JPY"`, `1234 KWD` → `"1.234 KWD"`.
pub fn format_money(minor: i64, currency: &str) -> String {
    let code = currency.to_ascii_uppercase();
    let digits = minor_digits(&code);
    let sign = if minor < 0 { "-" } else { "" };
    let magnitude = minor.unsigned_abs();
    if digits == 0 {
        return format!("{sign}{magnitude} {code}");
    }
    let scale = 10u64.pow(digits);
    let width = digits as usize;
    format!("{sign}{}.{:0width$} {code}", magnitude / scale, magnitude % scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER_ID: &str = "0f8e2c4a-1b2c-4d5e-8f90-123456789abc";

    fn order_id() -> OrderId {
        ORDER_ID.parse().expect("a UUID")
    }

    fn outcome(result: OutcomeDetail) -> OrderOutcome<'static> {
        OrderOutcome {
            order_id: order_id(),
            total_minor: 3998,
            currency: "USD",
            result,
        }
    }

    fn failed(reason: FailureReason) -> OrderOutcome<'static> {
        outcome(OutcomeDetail::Failed { reason })
    }

    #[test]
    fn the_outcome_a_delivery_event_names_is_the_one_stored() {
        for recorded in RecordedOutcome::ALL {
            assert_eq!(Outcome::from(recorded).as_str(), recorded.as_str());
        }
    }

    #[test]
    fn the_message_id_is_derived_from_order_and_outcome_only() {
        assert_eq!(
            message_id(order_id(), Outcome::Confirmed),
            format!("<{ORDER_ID}.confirmed@saga-platform.local>")
        );
        assert_eq!(
            message_id(order_id(), Outcome::Failed),
            format!("<{ORDER_ID}.failed@saga-platform.local>")
        );
        let confirmed = outcome(OutcomeDetail::Confirmed);
        assert_eq!(confirmed.message_id(), confirmed.clone().message_id());
        assert_ne!(confirmed.message_id(), failed(FailureReason::OutOfStock).message_id());
    }

    #[test]
    fn the_message_id_does_not_depend_on_how_the_event_spelled_the_order_id() {
        let shouted: OrderId = ORDER_ID.to_uppercase().parse().expect("a UUID");
        assert_eq!(
            message_id(shouted, Outcome::Confirmed),
            message_id(order_id(), Outcome::Confirmed)
        );
    }

    #[test]
    fn a_confirmation_names_the_short_order_id_the_full_id_and_the_total() {
        let email = outcome(OutcomeDetail::Confirmed).render();
        assert_eq!(email.subject, "Order 0f8e2c4a confirmed");
        assert!(email.body.contains(ORDER_ID), "{}", email.body);
        assert!(email.body.contains("39.98 USD"), "{}", email.body);
    }

    #[test]
    fn a_failure_email_says_why_in_words() {
        let email = failed(FailureReason::PaymentDeclined).render();
        assert_eq!(email.subject, "Order 0f8e2c4a failed");
        assert!(email.body.contains("your payment was declined"), "{}", email.body);
        assert!(email.body.contains(ORDER_ID), "{}", email.body);
        assert!(email.body.contains("39.98 USD"), "{}", email.body);
        assert!(failed(FailureReason::OutOfStock)
            .render()
            .body
            .contains("an item is out of stock"));
        assert!(failed(FailureReason::DeadlineExceeded)
            .render()
            .body
            .contains("we could not complete it in time"));
    }

    #[test]
    fn an_unknown_failure_reason_is_still_explained() {
        let body = failed(FailureReason::Unknown).render().body;
        assert!(body.contains("because of an unexpected problem."), "{body}");
    }

    #[test]
    fn money_is_formatted_from_minor_units_with_the_currency_exponent() {
        assert_eq!(format_money(3998, "USD"), "39.98 USD");
        assert_eq!(format_money(5, "EUR"), "0.05 EUR");
        assert_eq!(format_money(0, "USD"), "0.00 USD");
        assert_eq!(format_money(1500, "JPY"), "1500 JPY");
        assert_eq!(format_money(1234, "KWD"), "1.234 KWD");
        assert_eq!(format_money(7, "BHD"), "0.007 BHD");
        assert_eq!(format_money(-250, "usd"), "-2.50 USD");
        assert_eq!(format_money(i64::MIN, "USD"), "-92233720368547758.08 USD");
    }

    #[test]
    fn a_short_order_id_is_its_first_eight_characters() {
        assert_eq!(short_order_id(ORDER_ID), "0f8e2c4a");
        assert_eq!(short_order_id("abc"), "abc");
    }
}
