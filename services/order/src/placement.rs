//! Validation of an order request, as pure functions: a request either becomes a valid order
//! with its total computed in minor units, or is rejected naming the offending field.

use serde::{Deserialize, Serialize};

/// Body of `POST /orders`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlaceOrderRequest {
    /// The customer's id.
    pub customer_id: String,
    /// Where the outcome email goes.
    pub customer_email: String,
    /// ISO 4217 code, three upper-case letters.
    pub currency: String,
    /// Opaque token for the payment gateway.
    pub payment_token: String,
    /// At least one line.
    pub items: Vec<OrderLineRequest>,
}

/// One requested line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OrderLineRequest {
    /// Stock keeping unit.
    pub sku: String,
    /// Units, at least 1.
    pub quantity: i64,
    /// Price of one unit in minor units, not negative.
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
const MAX_TEXT: usize = 256;

/// Validates a request and computes its total.
pub fn validate(request: PlaceOrderRequest) -> Result<ValidOrder, FieldError> {
    if request.customer_id.trim().is_empty() || request.customer_id.len() > MAX_TEXT {
        return Err(reject("customer_id", "must be 1 to 256 characters"));
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
    if request.payment_token.trim().is_empty() || request.payment_token.len() > MAX_TEXT {
        return Err(reject("payment_token", "must be 1 to 256 characters"));
    }
    if request.items.is_empty() {
        return Err(reject("items", "must contain at least one line"));
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
        if line.unit_price_minor < 0 {
            return Err(reject(
                format!("items[{index}].unit_price_minor"),
                "must not be negative",
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

fn is_plausible_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && text.len() <= MAX_TEXT
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_total_that_overflows_is_rejected_not_wrapped() {
        let mut bad = request();
        bad.items[0].quantity = MAX_QUANTITY;
        bad.items[0].unit_price_minor = i64::MAX / 2;
        assert_eq!(field_of(bad), "items[0].unit_price_minor");
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
}
