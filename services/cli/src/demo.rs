//! `sagactl demo`: pushes a handful of orders through every branch of the saga (success, payment
//! declined, out of stock, both failing) against running services and prints each order's final
//! status and timeline.

use saga_common::auth::Scope;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::endpoints::{credential_hint, Endpoints};

/// One scripted order and the outcome it should reach.
struct Scenario {
    name: &'static str,
    token: &'static str,
    sku: String,
    quantity: i64,
    expected_status: &'static str,
    expected_reason: Option<&'static str>,
}

/// Runs the demo; fails if an order does not reach its expected outcome.
pub(crate) async fn run(endpoints: &Endpoints, timeout: Duration) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let stocked_sku = "SKU-DEMO";
    let never_stocked_sku = format!("SKU-GONE-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let restock = endpoints
        .authorize(
            http.post(format!("{}/stock/{stocked_sku}/adjustments", endpoints.inventory)),
            Scope::Admin,
        )
        .json(&json!({"delta": 5, "reason": "demo restock"}))
        .send()
        .await
        .context("inventory service unreachable; is the stack up? (deploy/local/stack.sh up)")?;
    if !restock.status().is_success() {
        bail!(
            "restocking {stocked_sku}: {} {}{}",
            restock.status(),
            credential_hint(restock.status(), Scope::Admin),
            restock.text().await?
        );
    }
    println!("restocked {stocked_sku} by 5: {}", restock.text().await?);

    let scenarios = [
        Scenario {
            name: "success",
            token: "tok_ok",
            sku: stocked_sku.into(),
            quantity: 2,
            expected_status: "CONFIRMED",
            expected_reason: None,
        },
        Scenario {
            name: "payment declined",
            token: "tok_decline_demo",
            sku: stocked_sku.into(),
            quantity: 1,
            expected_status: "FAILED",
            expected_reason: Some("payment_declined"),
        },
        Scenario {
            name: "out of stock",
            token: "tok_ok",
            sku: never_stocked_sku.clone(),
            quantity: 1,
            expected_status: "FAILED",
            expected_reason: Some("out_of_stock"),
        },
        Scenario {
            name: "declined and out of stock",
            token: "tok_decline_demo",
            sku: never_stocked_sku,
            quantity: 1,
            expected_status: "FAILED",
            expected_reason: None,
        },
    ];
    let mut placed = Vec::new();
    for scenario in &scenarios {
        let body = json!({
            "customer_id": "demo-customer",
            "customer_email": format!("demo+{}@example.com", scenario.name.replace(' ', "-")),
            "currency": "USD",
            "payment_token": scenario.token,
            "items": [{"sku": scenario.sku, "quantity": scenario.quantity, "unit_price_minor": 1999}],
        });
        let response = endpoints
            .authorize(http.post(format!("{}/orders", endpoints.order)), Scope::Orders)
            .json(&body)
            .send()
            .await?;
        if response.status().as_u16() != 202 {
            bail!(
                "placing the {} order: {}{} {}",
                scenario.name,
                response.status(),
                credential_hint(response.status(), Scope::Orders),
                response.text().await?
            );
        }
        let answer: Value = response.json().await?;
        let order_id = answer["order_id"].as_str().unwrap_or_default().to_string();
        println!("placed {:<26} order {order_id}", scenario.name);
        placed.push((scenario, order_id));
    }

    let mut mismatches = Vec::new();
    for (scenario, order_id) in &placed {
        wait_until_terminal(&http, endpoints, order_id, timeout).await?;
        let view = wait_until_settled(&http, endpoints, order_id, timeout).await?;
        print_order(scenario.name, &view);
        let status = view["status"].as_str().unwrap_or_default();
        let reason = view["failure_reason"].as_str();
        let reason_ok = scenario.expected_reason.is_none_or(|expected| reason == Some(expected));
        if status != scenario.expected_status || !reason_ok {
            mismatches.push(format!(
                "{}: expected {} {:?}, got {status} {reason:?}",
                scenario.name, scenario.expected_status, scenario.expected_reason
            ));
        }
    }
    if !mismatches.is_empty() {
        bail!("unexpected outcomes: {}", mismatches.join("; "));
    }
    println!("\nevery order reached its expected outcome; emails are at http://127.0.0.1:1080");
    Ok(())
}

/// Polls an order until it is CONFIRMED or FAILED.
pub(crate) async fn wait_until_terminal(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    order_id: &str,
    timeout: Duration,
) -> anyhow::Result<Value> {
    poll_order(http, endpoints, order_id, timeout, |view| {
        (view["status"] == "PENDING").then(|| "a decision".to_string())
    })
    .await
}

/// Polls a decided order until its compensations or commit show in its timeline.
async fn wait_until_settled(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    order_id: &str,
    timeout: Duration,
) -> anyhow::Result<Value> {
    poll_order(http, endpoints, order_id, timeout, |view| {
        let missing = missing_follow_ups(view);
        (!missing.is_empty()).then(|| format!("{missing:?}"))
    })
    .await
}

/// Polls `GET /orders/{order_id}` until `lacking` finds nothing lacking in its view, and
/// returns that view; fails after `timeout` naming what was still lacking.
async fn poll_order(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    order_id: &str,
    timeout: Duration,
    lacking: impl Fn(&Value) -> Option<String>,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let response = endpoints
            .authorize(
                http.get(format!("{}/orders/{order_id}", endpoints.order)),
                Scope::Orders,
            )
            .send()
            .await?;
        let still_lacking = if response.status().is_success() {
            let view: Value = response.json().await?;
            match lacking(&view) {
                None => return Ok(view),
                Some(what) => what,
            }
        } else {
            format!("the order itself (HTTP {})", response.status())
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("order {order_id} still lacks {still_lacking} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The follow-up events a decided order's timeline must show before it is quiet: a confirmed
/// order's reservation is committed; a failed order's reservation is released and its capture
/// refunded.
fn missing_follow_ups(view: &Value) -> Vec<&'static str> {
    let types: Vec<&str> = view["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    let has = |t: &str| types.contains(&t);
    let mut missing = Vec::new();
    match view["status"].as_str() {
        Some("CONFIRMED") if !has("inventory.committed") => missing.push("inventory.committed"),
        Some("FAILED") => {
            if has("inventory.reserved") && !has("inventory.released") {
                missing.push("inventory.released");
            }
            if has("payment.success") && !has("payment.refunded") {
                missing.push("payment.refunded");
            }
        }
        _ => {}
    }
    missing
}

fn print_order(name: &str, view: &Value) {
    println!(
        "\n{name}: order {} {}{}  total {} {}",
        view["order_id"].as_str().unwrap_or_default(),
        view["status"].as_str().unwrap_or_default(),
        view["failure_reason"]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        view["total_minor"],
        view["currency"].as_str().unwrap_or_default(),
    );
    for entry in view["timeline"].as_array().into_iter().flatten() {
        println!(
            "    {}  {:<30} {}",
            entry["occurred_at"].as_str().unwrap_or_default(),
            entry["event_type"].as_str().unwrap_or_default(),
            entry["source"].as_str().unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::missing_follow_ups;
    use serde_json::json;

    fn order(status: &str, events: &[&str]) -> serde_json::Value {
        json!({"status": status, "timeline": events.iter().map(|e| json!({"event_type": e})).collect::<Vec<_>>()})
    }

    #[test]
    fn a_failed_order_waits_for_the_release_and_the_refund_of_what_it_held() {
        let view = order(
            "FAILED",
            &["order.created", "inventory.reserved", "payment.success", "order.failed"],
        );
        assert_eq!(
            missing_follow_ups(&view),
            vec!["inventory.released", "payment.refunded"]
        );
    }

    #[test]
    fn a_failed_order_that_held_nothing_is_settled() {
        let view = order(
            "FAILED",
            &[
                "order.created",
                "inventory.reservation_failed",
                "payment.failed",
                "order.failed",
            ],
        );
        assert!(missing_follow_ups(&view).is_empty());
    }

    #[test]
    fn a_confirmed_order_waits_for_the_commit() {
        let view = order(
            "CONFIRMED",
            &[
                "order.created",
                "inventory.reserved",
                "payment.success",
                "order.confirmed",
            ],
        );
        assert_eq!(missing_follow_ups(&view), vec!["inventory.committed"]);
    }
}
