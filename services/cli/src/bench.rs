//! `sagactl bench`: places N orders against running services with bounded concurrency and
//! reports sagas completed per second and the p50/p99 latency of `POST /orders` and of
//! order.created → terminal state (from the order service's own timestamps).

use saga_common::auth::Scope;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

use crate::demo::wait_until_terminal;
use crate::endpoints::Endpoints;

/// Runs the benchmark and prints its figures.
pub(crate) async fn run(
    endpoints: &Endpoints,
    orders: usize,
    concurrency: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let sku = format!("SKU-BENCH-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let restock = endpoints
        .authorize(
            http.post(format!("{}/stock/{sku}/adjustments", endpoints.inventory)),
            Scope::Admin,
        )
        .json(&json!({"delta": orders, "reason": "benchmark stock"}))
        .send()
        .await
        .context("inventory service unreachable; is the stack up? (deploy/local/stack.sh up)")?;
    if !restock.status().is_success() {
        bail!("restocking {sku}: {}", restock.status());
    }
    println!("placing {orders} orders of {sku} with {concurrency} concurrent clients ...");
    let started = Instant::now();
    let placed: Vec<anyhow::Result<(String, Duration)>> = stream::iter(0..orders)
        .map(|index| {
            let request = endpoints.authorize(http.post(format!("{}/orders", endpoints.order)), Scope::Orders);
            let sku = sku.clone();
            async move {
                let body = json!({
                    "customer_id": format!("bench-{index}"),
                    "customer_email": format!("bench+{index}@example.com"),
                    "currency": "USD",
                    "payment_token": "tok_ok",
                    "items": [{"sku": sku, "quantity": 1, "unit_price_minor": 1000}],
                });
                let sent = Instant::now();
                let response = request.json(&body).send().await?;
                let latency = sent.elapsed();
                if response.status().as_u16() != 202 {
                    bail!("POST /orders answered {}", response.status());
                }
                let answer: Value = response.json().await?;
                Ok((answer["order_id"].as_str().unwrap_or_default().to_string(), latency))
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let placing = started.elapsed();
    let mut post_latencies = Vec::with_capacity(orders);
    let mut order_ids = Vec::with_capacity(orders);
    for result in placed {
        let (order_id, latency) = result?;
        order_ids.push(order_id);
        post_latencies.push(latency);
    }

    let views: Vec<anyhow::Result<Value>> = stream::iter(order_ids.iter())
        .map(|order_id| wait_until_terminal(&http, endpoints, order_id, timeout))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut saga_latencies = Vec::with_capacity(orders);
    let (mut first_created, mut last_decided): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = (None, None);
    let mut confirmed = 0;
    for view in views {
        let view = view?;
        if view["status"] == "CONFIRMED" {
            confirmed += 1;
        }
        let created: DateTime<Utc> = serde_json::from_value(view["created_at"].clone())?;
        let decided: DateTime<Utc> = serde_json::from_value(view["decided_at"].clone())?;
        saga_latencies.push((decided - created).to_std().unwrap_or_default());
        first_created = Some(first_created.map_or(created, |t| t.min(created)));
        last_decided = Some(last_decided.map_or(decided, |t| t.max(decided)));
    }
    let span = match (first_created, last_decided) {
        (Some(first), Some(last)) => (last - first).to_std().unwrap_or_default(),
        _ => Duration::ZERO,
    };
    println!("orders:                          {orders} ({confirmed} confirmed)");
    println!(
        "placing took:                    {:.2} s ({:.1} orders/s accepted)",
        placing.as_secs_f64(),
        orders as f64 / placing.as_secs_f64()
    );
    println!("first created -> last decided:   {:.2} s", span.as_secs_f64());
    println!(
        "sagas completed per second:      {:.1}",
        orders as f64 / span.as_secs_f64().max(f64::EPSILON)
    );
    println!(
        "POST /orders latency:            p50 {}  p99 {}",
        fmt(percentile(&mut post_latencies, 50.0)),
        fmt(percentile(&mut post_latencies, 99.0))
    );
    println!(
        "order.created -> terminal:       p50 {}  p99 {}",
        fmt(percentile(&mut saga_latencies, 50.0)),
        fmt(percentile(&mut saga_latencies, 99.0))
    );
    Ok(())
}

/// The nearest-rank percentile of `samples`.
pub(crate) fn percentile(samples: &mut [Duration], percent: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((percent / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

fn fmt(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut samples, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&mut samples, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&mut samples, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&mut [], 50.0), Duration::ZERO);
    }
}
