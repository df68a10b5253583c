//! The whole saga end to end: the four services running against the real broker, registry,
//! PostgreSQL and SMTP server, driven through their HTTP APIs. Every branch of the saga is
//! checked in all four services and in the mail the SMTP server received.

use std::time::Duration;

use saga_contracts::Topic;
use saga_tests::platform::{exactly_mails, unique_email, unique_sku, Platform};
use serde_json::{json, Value};

fn timeline_types(view: &Value) -> Vec<String> {
    view["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["event_type"].as_str().map(String::from))
        .collect()
}

#[tokio::test]
async fn a_paid_and_reserved_order_is_confirmed_committed_and_emailed_once() -> anyhow::Result<()> {
    let platform = Platform::start(30.0).await?;
    let (sku, email) = (unique_sku(), unique_email());
    platform.restock(&sku, 5).await?;
    let order_id = platform.place(&email, "tok_ok", &[(&sku, 2)]).await?;
    let view = platform.terminal_order(&order_id).await?;
    assert_eq!(view["status"], "CONFIRMED", "{view}");
    assert_eq!(view["total_minor"], 2500);
    let payment = platform.payment(&order_id).await?;
    assert_eq!(payment["status"], "captured");
    assert_eq!(payment["amount_minor"], 2500);
    platform.stock_settles(&sku, 3, 0, 2).await?;
    let mails = exactly_mails(&email, 1).await?;
    assert!(
        mails[0]["subject"].as_str().unwrap_or_default().contains("confirmed"),
        "{}",
        mails[0]["subject"]
    );
    let types = timeline_types(&platform.terminal_order(&order_id).await?);
    for expected in [
        "order.created",
        "payment.success",
        "inventory.reserved",
        "order.confirmed",
    ] {
        assert!(
            types.contains(&expected.to_string()),
            "{expected} missing from {types:?}"
        );
    }
    platform.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_declined_payment_after_stock_was_reserved_releases_the_stock() -> anyhow::Result<()> {
    let platform = Platform::start(30.0).await?;
    let (sku, email) = (unique_sku(), unique_email());
    platform.restock(&sku, 5).await?;
    let order_id = platform.place(&email, "tok_decline_e2e", &[(&sku, 2)]).await?;
    let view = platform.terminal_order(&order_id).await?;
    assert_eq!(view["status"], "FAILED");
    assert_eq!(view["failure_reason"], "payment_declined");
    // The stock's refusal alone may decide the order before the gateway answered; the payment
    // is declined all the same.
    platform.payment_when(&order_id, "declined").await?;
    platform.stock_settles(&sku, 5, 0, 0).await?;
    let mails = exactly_mails(&email, 1).await?;
    assert!(
        mails[0]["subject"].as_str().unwrap_or_default().contains("failed"),
        "{}",
        mails[0]["subject"]
    );
    platform.stop().await;
    Ok(())
}

#[tokio::test]
async fn out_of_stock_after_the_payment_was_captured_refunds_it() -> anyhow::Result<()> {
    let platform = Platform::start(30.0).await?;
    let (sku, email) = (unique_sku(), unique_email());
    platform.restock(&sku, 1).await?;
    let order_id = platform.place(&email, "tok_ok", &[(&sku, 2)]).await?;
    let view = platform.terminal_order(&order_id).await?;
    assert_eq!(view["status"], "FAILED");
    assert_eq!(view["failure_reason"], "out_of_stock");
    let payment = platform.payment_when(&order_id, "refunded").await?;
    assert_eq!(payment["refunded_minor"], payment["amount_minor"]);
    platform.stock_settles(&sku, 1, 0, 0).await?;
    exactly_mails(&email, 1).await?;
    platform.stop().await;
    Ok(())
}

#[tokio::test]
async fn when_payment_and_stock_both_fail_the_order_fails_once_with_nothing_to_compensate() -> anyhow::Result<()> {
    let platform = Platform::start(30.0).await?;
    let (sku, email) = (unique_sku(), unique_email());
    let order_id = platform.place(&email, "tok_decline_both", &[(&sku, 1)]).await?;
    let view = platform.terminal_order(&order_id).await?;
    assert_eq!(view["status"], "FAILED");
    // The stock's refusal alone may decide the order before the gateway answered; the payment
    // is declined all the same.
    platform.payment_when(&order_id, "declined").await?;
    exactly_mails(&email, 1).await?;
    platform.env.outbox_drained("order").await?;
    let orders = platform
        .env
        .reader(&platform.env.kafka.topic(Topic::Orders))?
        .read_to_end(Duration::from_secs(30))
        .await?;
    let failed = orders
        .iter()
        .filter_map(|r| r.event.as_ref().ok())
        .filter(|e| {
            e.order_id().map(|id| id.to_string()).as_deref() == Some(order_id.as_str())
                && e.event_type().as_str() == "order.failed"
        })
        .count();
    assert_eq!(failed, 1);
    platform.env.outbox_drained("payment").await?;
    platform.env.outbox_drained("inventory").await?;
    let mut compensations = Vec::new();
    for topic in [Topic::Payments, Topic::Inventory] {
        let records = platform
            .env
            .reader(&platform.env.kafka.topic(topic))?
            .read_to_end(Duration::from_secs(30))
            .await?;
        compensations.extend(
            records
                .into_iter()
                .filter_map(|r| r.event.ok())
                .filter(|e| e.order_id().map(|id| id.to_string()).as_deref() == Some(order_id.as_str()))
                .map(|e| e.event_type().as_str().to_string())
                .filter(|t| t == "payment.refunded" || t == "inventory.released"),
        );
    }
    assert!(
        compensations.is_empty(),
        "nothing was taken, so nothing is given back: {compensations:?}"
    );
    platform.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_order_past_its_deadline_fails_and_its_late_payment_is_refunded() -> anyhow::Result<()> {
    let platform = Platform::start(2.0).await?;
    let (sku, email) = (unique_sku(), unique_email());
    platform.restock(&sku, 3).await?;
    // The gateway takes 5 s for this token: the payment succeeds after the 2 s deadline.
    let order_id = platform.place(&email, "tok_slow_5000", &[(&sku, 1)]).await?;
    let view = platform.terminal_order(&order_id).await?;
    assert_eq!(view["status"], "FAILED");
    assert_eq!(view["failure_reason"], "deadline_exceeded");
    let payment = platform.payment_when(&order_id, "refunded").await?;
    assert_eq!(payment["refunded_minor"], payment["amount_minor"]);
    platform.stock_settles(&sku, 3, 0, 0).await?;
    exactly_mails(&email, 1).await?;
    let view = platform.terminal_order(&order_id).await?;
    assert_eq!(view["status"], "FAILED", "a late success never revives a failed order");
    assert!(timeline_types(&view).contains(&"payment.success".to_string()));
    platform.stop().await;
    Ok(())
}

#[tokio::test]
async fn concurrent_orders_for_the_last_units_sell_exactly_the_stock() -> anyhow::Result<()> {
    let platform = Platform::start(60.0).await?;
    let sku = unique_sku();
    platform.restock(&sku, 10).await?;
    let emails: Vec<String> = (0..25).map(|_| unique_email()).collect();
    let line = [(sku.as_str(), 1)];
    let placed = futures::future::join_all(emails.iter().map(|email| platform.place(email, "tok_ok", &line))).await;
    let order_ids: Vec<String> = placed.into_iter().collect::<anyhow::Result<_>>()?;
    let views = futures::future::join_all(order_ids.iter().map(|id| platform.terminal_order(id))).await;
    let mut confirmed = 0;
    for (view, order_id) in views.into_iter().zip(&order_ids) {
        let view = view?;
        if view["status"] == "CONFIRMED" {
            confirmed += 1;
            assert_eq!(platform.payment(order_id).await?["status"], "captured");
        } else {
            assert_eq!(view["failure_reason"], "out_of_stock", "{view}");
            platform.payment_when(order_id, "refunded").await?;
        }
    }
    assert_eq!(confirmed, 10);
    platform.stock_settles(&sku, 0, 0, 10).await?;
    for email in &emails {
        exactly_mails(email, 1).await?;
    }
    platform.stop().await;
    Ok(())
}

#[tokio::test]
async fn every_event_delivered_twice_changes_nothing() -> anyhow::Result<()> {
    let platform = Platform::start(30.0).await?;
    let (sku, confirmed_email, failed_email) = (unique_sku(), unique_email(), unique_email());
    platform.restock(&sku, 4).await?;
    let confirmed = platform.place(&confirmed_email, "tok_ok", &[(&sku, 2)]).await?;
    let failed = platform.place(&failed_email, "tok_decline_dup", &[(&sku, 1)]).await?;
    assert_eq!(platform.terminal_order(&confirmed).await?["status"], "CONFIRMED");
    assert_eq!(platform.terminal_order(&failed).await?["status"], "FAILED");
    platform.stock_settles(&sku, 2, 0, 2).await?;
    exactly_mails(&confirmed_email, 1).await?;
    exactly_mails(&failed_email, 1).await?;
    for service in ["order", "payment", "inventory", "notification"] {
        platform.env.outbox_drained(service).await?;
    }
    let before = snapshot(&platform, &[&confirmed, &failed], &sku).await?;

    // Re-produce every record of every topic: each event type of the saga arrives a second time.
    let mut replayed = std::collections::BTreeSet::new();
    for topic in [Topic::Orders, Topic::Payments, Topic::Inventory] {
        let records = platform
            .env
            .reader(&platform.env.kafka.topic(topic))?
            .read_to_end(Duration::from_secs(30))
            .await?;
        for record in records {
            let event = record.event.map_err(anyhow::Error::msg)?;
            replayed.insert(event.event_type().as_str());
            platform.env.produce(&event).await?;
        }
    }
    for expected in [
        "order.created",
        "order.confirmed",
        "order.failed",
        "payment.success",
        "payment.failed",
        "inventory.reserved",
        "inventory.committed",
        "inventory.released",
        "inventory.stock_adjusted",
    ] {
        assert!(
            replayed.contains(expected),
            "{expected} was not redelivered: {replayed:?}"
        );
    }
    // Let the services consume the duplicates; a new order placed afterwards and decided
    // proves they caught up with the partitions it uses.
    let marker = platform
        .place(&unique_email(), "tok_decline_marker", &[(&sku, 1)])
        .await?;
    platform.terminal_order(&marker).await?;
    platform.payment_when(&marker, "declined").await?;
    platform.stock_settles(&sku, 2, 0, 2).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for service in ["order", "payment", "inventory", "notification"] {
        platform.env.outbox_drained(service).await?;
    }
    let after = snapshot(&platform, &[&confirmed, &failed], &sku).await?;
    assert_eq!(before, after);
    exactly_mails(&confirmed_email, 1).await?;
    exactly_mails(&failed_email, 1).await?;
    platform.stop().await;
    Ok(())
}

/// Statuses, payments, stock and event counts per order: what a duplicate must not change.
async fn snapshot(platform: &Platform, orders: &[&str], sku: &str) -> anyhow::Result<Value> {
    let mut state = serde_json::Map::new();
    for order_id in orders {
        let view = platform.terminal_order(order_id).await?;
        let payment = platform.payment(order_id).await?;
        let mut events = timeline_types(&view);
        events.sort();
        state.insert(
            order_id.to_string(),
            json!({"status": view["status"], "reason": view["failure_reason"], "events": events,
                   "payment": payment["status"], "refunded": payment["refunded_minor"]}),
        );
    }
    let stock = platform.stock(sku).await?;
    state.insert(
        "stock".into(),
        json!([stock["available"], stock["reserved"], stock["committed"]]),
    );
    Ok(Value::Object(state))
}
