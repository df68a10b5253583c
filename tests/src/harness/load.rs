//! The seeded order load: which orders are placed (outcome mix, SKUs, quantities) follows from the
//! seed alone, and the driver places them at a steady rate, retrying each with its own
//! Idempotency-Key while the order service is down, so every planned order is placed exactly once.

use saga_common::auth::{ApiKeys, Scope};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// What an order is meant to exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OrderKind {
    /// A good token and plentiful stock.
    Success,
    /// A token the gateway declines.
    Declined,
    /// A SKU with (almost) no stock.
    OutOfStock,
    /// A token the gateway fails transiently before capturing.
    TransientGateway,
    /// A token whose charge takes longer than the saga deadline.
    Deadline,
}

impl OrderKind {
    /// Name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderKind::Success => "success",
            OrderKind::Declined => "declined",
            OrderKind::OutOfStock => "out_of_stock",
            OrderKind::TransientGateway => "transient_gateway",
            OrderKind::Deadline => "deadline",
        }
    }
}

/// One planned order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedOrder {
    /// Position in the plan.
    pub index: usize,
    /// What it exercises.
    pub kind: OrderKind,
    /// Its POST /orders body.
    pub body: Value,
    /// Its Idempotency-Key.
    pub idempotency_key: String,
}

/// The SKUs with plenty of stock.
pub const PLENTIFUL_SKUS: [&str; 4] = ["H-PLENTY-A", "H-PLENTY-B", "H-PLENTY-C", "H-PLENTY-D"];
/// The SKU with almost no stock.
pub const SCARCE_SKU: &str = "H-SCARCE";
/// Units of the scarce SKU in stock: the first out-of-stock orders may still get one.
pub const SCARCE_STOCK: i64 = 3;

/// The whole load, derived from the seed.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// The orders, in placement order.
    pub orders: Vec<PlannedOrder>,
    /// Stock to put in before the load: (sku, units).
    pub stock: Vec<(String, i64)>,
}

/// Plans `count` orders for run `run_id` from `seed`. The same seed gives the same plan.
pub fn plan(seed: u64, run_id: &str, count: usize, saga_deadline: Duration) -> LoadPlan {
    let mut rng = StdRng::seed_from_u64(seed);
    let slow_ms = saga_deadline.as_millis() as u64 + 3_000;
    let mut demand: BTreeMap<&str, i64> = BTreeMap::new();
    let orders = (0..count)
        .map(|index| {
            let roll: u32 = rng.gen_range(0..100);
            let kind = match roll {
                0..=54 => OrderKind::Success,
                55..=67 => OrderKind::Declined,
                68..=79 => OrderKind::OutOfStock,
                80..=91 => OrderKind::TransientGateway,
                _ => OrderKind::Deadline,
            };
            let token = match kind {
                OrderKind::Declined => format!("tok_decline_{index}"),
                OrderKind::TransientGateway => format!("tok_flaky_{index}"),
                OrderKind::Deadline => format!("tok_slow_{slow_ms}"),
                OrderKind::Success | OrderKind::OutOfStock => format!("tok_ok_{index}"),
            };
            let line_count = rng.gen_range(1..=2);
            let mut items = Vec::new();
            for line in 0..line_count {
                let sku = if kind == OrderKind::OutOfStock && line == 0 {
                    SCARCE_SKU
                } else {
                    PLENTIFUL_SKUS[rng.gen_range(0..PLENTIFUL_SKUS.len())]
                };
                let quantity: i64 = rng.gen_range(1..=3);
                *demand.entry(sku).or_default() += quantity;
                items.push(json!({"sku": sku, "quantity": quantity, "unit_price_minor": rng.gen_range(100..5_000)}));
            }
            let body = json!({
                "customer_id": format!("h-customer-{}", rng.gen_range(0..50)),
                "customer_email": format!("o{index}.{run_id}@harness.example.com"),
                "currency": "EUR",
                "payment_token": token,
                "items": items,
            });
            PlannedOrder {
                index,
                kind,
                body,
                idempotency_key: format!("harness-{run_id}-{seed}-{index}"),
            }
        })
        .collect();
    let stock = PLENTIFUL_SKUS
        .iter()
        .map(|sku| (sku.to_string(), demand.get(sku).copied().unwrap_or(0) + 10))
        .chain(std::iter::once((SCARCE_SKU.to_string(), SCARCE_STOCK)))
        .collect();
    LoadPlan { orders, stock }
}

/// Puts the plan's stock in, retrying while the inventory service is unavailable. Each
/// adjustment has a fixed id, so a retry never adds twice.
pub async fn stock_up(
    http: &reqwest::Client,
    keys: &ApiKeys,
    inventory: SocketAddr,
    plan: &LoadPlan,
    run_id: &str,
) -> anyhow::Result<()> {
    for (index, (sku, units)) in plan.stock.iter().enumerate() {
        let adjustment_id =
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{run_id}-stock-{index}").as_bytes());
        let body = json!({"delta": units, "reason": "harness initial stock", "adjustment_id": adjustment_id});
        let url = format!("http://{inventory}/stock/{sku}/adjustments");
        retry_request("stock adjustment", Duration::from_secs(120), || {
            keys.authorize(http.post(&url), Scope::Admin).json(&body).send()
        })
        .await?;
    }
    Ok(())
}

async fn retry_request<F, Fut>(what: &str, timeout: Duration, mut send: F) -> anyhow::Result<Value>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(100);
    loop {
        match send().await {
            Ok(response) if response.status().is_success() => return Ok(response.json().await?),
            Ok(response) if response.status().is_client_error() => {
                anyhow::bail!(
                    "{what} rejected: {} {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                )
            }
            _ if tokio::time::Instant::now() >= deadline => anyhow::bail!("{what} not accepted within {timeout:?}"),
            _ => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Places every planned order at `rate` orders per second with at most `concurrency` in flight,
/// sending each to the next of the `order_service` instances; returns the order ids by plan
/// index. An order is retried (same Idempotency-Key) until the
/// order service accepts it, across restarts and outages.
pub async fn drive(
    http: &reqwest::Client,
    keys: &ApiKeys,
    order_service: &[SocketAddr],
    plan: &LoadPlan,
    rate: f64,
    concurrency: usize,
) -> anyhow::Result<Vec<String>> {
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let started = tokio::time::Instant::now();
    anyhow::ensure!(!order_service.is_empty(), "no order-service instance to send orders to");
    let urls: Vec<String> = order_service
        .iter()
        .map(|address| format!("http://{address}/orders"))
        .collect();
    let placed: Vec<anyhow::Result<(usize, String)>> = stream::iter(plan.orders.iter())
        .map(|order| {
            // Each instance in turn; a retry goes to the same one (a killed instance restarts).
            let url = urls[order.index % urls.len()].clone();
            async move {
                tokio::time::sleep_until(started + interval * order.index as u32).await;
                let answer = retry_request("POST /orders", Duration::from_secs(300), || {
                    keys.authorize(http.post(&url), Scope::Orders)
                        .header("Idempotency-Key", &order.idempotency_key)
                        .json(&order.body)
                        .send()
                })
                .await?;
                let order_id = answer["order_id"].as_str().unwrap_or_default().to_string();
                anyhow::ensure!(
                    !order_id.is_empty(),
                    "POST /orders answered without an order id: {answer}"
                );
                Ok((order.index, order_id))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut ids = vec![String::new(); plan.orders.len()];
    for result in placed {
        let (index, order_id) = result?;
        ids[index] = order_id;
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_plans_the_same_orders() {
        let a = plan(42, "r1", 200, Duration::from_secs(10));
        let b = plan(42, "r1", 200, Duration::from_secs(10));
        assert_eq!(a.orders, b.orders);
        assert_eq!(a.stock, b.stock);
        let c = plan(43, "r1", 200, Duration::from_secs(10));
        assert_ne!(a.orders, c.orders);
    }

    #[test]
    fn a_plan_of_a_few_hundred_orders_mixes_every_outcome() {
        let load = plan(7, "r1", 300, Duration::from_secs(10));
        for kind in [
            OrderKind::Success,
            OrderKind::Declined,
            OrderKind::OutOfStock,
            OrderKind::TransientGateway,
            OrderKind::Deadline,
        ] {
            assert!(load.orders.iter().any(|o| o.kind == kind), "no {kind:?} order");
        }
    }

    #[test]
    fn plentiful_skus_have_more_stock_than_the_plan_can_order() {
        let load = plan(9, "r1", 300, Duration::from_secs(10));
        for (sku, units) in &load.stock {
            let ordered: i64 = load
                .orders
                .iter()
                .flat_map(|o| o.body["items"].as_array().cloned().unwrap_or_default())
                .filter(|line| line["sku"] == sku.as_str())
                .map(|line| line["quantity"].as_i64().unwrap_or(0))
                .sum();
            if sku.as_str() == SCARCE_SKU {
                assert!(ordered > *units, "the scarce sku must run out");
            } else {
                assert!(*units > ordered, "{sku}: {units} in stock for {ordered} ordered");
            }
        }
    }

    #[test]
    fn deadline_orders_take_longer_than_the_deadline() {
        let load = plan(11, "r1", 300, Duration::from_secs(10));
        let slow = load
            .orders
            .iter()
            .find(|o| o.kind == OrderKind::Deadline)
            .expect("a deadline order");
        assert_eq!(slow.body["payment_token"], "tok_slow_13000");
    }
}
