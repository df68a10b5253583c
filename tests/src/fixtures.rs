//! Events the tests feed to services, built once here: an order and the events that follow it
//! in the saga, each caused by the one before through the contracts' envelope constructor.

use saga_contracts::{
    Envelope, FailureReason, InventoryReservationFailed, InventoryReserved, OrderConfirmed, OrderCreated, OrderFailed,
    OrderId, OrderLine, PaymentFailed, PaymentId, PaymentSucceeded, StockLine,
};

/// The price of every unit in [`order_created`]'s lines, in minor units.
pub const UNIT_PRICE_MINOR: i64 = 1_250;
/// The currency of every fixture.
pub const CURRENCY: &str = "EUR";
/// A payment token the simulated gateway approves.
pub const APPROVED_TOKEN: &str = "tok_visa";

/// A new order of `lines` (sku, quantity) at [`UNIT_PRICE_MINOR`] a unit, paid with `token`.
pub fn order_created_with(order_id: OrderId, lines: &[(&str, i32)], token: &str) -> OrderCreated {
    let items: Vec<OrderLine> = lines
        .iter()
        .map(|(sku, quantity)| OrderLine {
            sku: (*sku).to_owned(),
            quantity: *quantity,
            unit_price_minor: UNIT_PRICE_MINOR,
        })
        .collect();
    OrderCreated {
        envelope: Envelope::for_command(order_id),
        customer_id: "customer-1".into(),
        customer_email: format!("{order_id}@example.com"),
        payment_token: token.into(),
        total_minor: items
            .iter()
            .map(|line| line.unit_price_minor * i64::from(line.quantity))
            .sum(),
        currency: CURRENCY.into(),
        items,
        sales_channel: "api".into(),
        idempotency_key: None,
        request_hash: None,
        deadline_at: None,
    }
}

/// A new order of two units of `SKU-1`, paid with a token the gateway approves.
pub fn order_created() -> OrderCreated {
    order_created_with(OrderId::new(), &[("SKU-1", 2)], APPROVED_TOKEN)
}

/// The payment service's success for `order`.
pub fn payment_succeeded(order: &OrderCreated) -> PaymentSucceeded {
    PaymentSucceeded {
        envelope: Envelope::caused_by(order),
        payment_id: PaymentId::new(),
        amount_minor: order.total_minor,
        currency: order.currency.clone(),
        gateway_reference: Some(format!("gw-{}", order.envelope.order_id)),
    }
}

/// The payment service's decline of `order`.
pub fn payment_failed(order: &OrderCreated) -> PaymentFailed {
    PaymentFailed {
        envelope: Envelope::caused_by(order),
        reason: "card_declined".into(),
        failure_reason: FailureReason::PaymentDeclined,
        amount_minor: order.total_minor,
        currency: order.currency.clone(),
    }
}

/// The inventory service's reservation of all of `order`'s lines.
pub fn inventory_reserved(order: &OrderCreated) -> InventoryReserved {
    InventoryReserved {
        envelope: Envelope::caused_by(order),
        items: stock_lines(order),
    }
}

/// The inventory service's refusal of `order`: its first line's SKU is out of stock.
pub fn inventory_reservation_failed(order: &OrderCreated) -> InventoryReservationFailed {
    InventoryReservationFailed {
        envelope: Envelope::caused_by(order),
        reason: FailureReason::OutOfStock.to_string(),
        failure_reason: FailureReason::OutOfStock,
        unavailable_skus: order.items.iter().take(1).map(|line| line.sku.clone()).collect(),
    }
}

/// The order service's confirmation of `order`.
pub fn order_confirmed(order: &OrderCreated) -> OrderConfirmed {
    OrderConfirmed {
        envelope: Envelope::caused_by(order),
        customer_email: order.customer_email.clone(),
        total_minor: order.total_minor,
        currency: order.currency.clone(),
    }
}

/// The order service's failure of `order` for `reason`.
pub fn order_failed(order: &OrderCreated, reason: FailureReason) -> OrderFailed {
    OrderFailed {
        envelope: Envelope::caused_by(order),
        reason: reason.to_string(),
        failure_reason: reason,
        customer_email: order.customer_email.clone(),
        total_minor: order.total_minor,
        currency: order.currency.clone(),
    }
}

/// `order`'s lines as (sku, quantity) stock lines.
pub fn stock_lines(order: &OrderCreated) -> Vec<StockLine> {
    order
        .items
        .iter()
        .map(|line| StockLine {
            sku: line.sku.clone(),
            quantity: line.quantity,
        })
        .collect()
}

/// The inventory service's commit of `order`'s reserved lines (it follows order.confirmed).
pub fn inventory_committed(order: &OrderCreated) -> saga_contracts::InventoryCommitted {
    saga_contracts::InventoryCommitted {
        envelope: Envelope::caused_by(order),
        items: stock_lines(order),
    }
}
