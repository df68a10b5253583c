//! `sagactl bench --rate R --duration-secs S`: the open-loop benchmark. Order `i` is sent at
//! `start + i / R` by a timer, never in answer to an earlier order; each request runs in its own
//! task, so in-flight requests are unbounded and a slow service cannot slow the sender.
//! `POST /orders` latency is measured from the scheduled send time, so time an order waited in
//! the client counts too (no coordinated omission).

use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::stats::{self, fmt_ms, Percentiles, Schedule, LATE_AFTER};
use super::{await_decisions, http_client, order_request, place_order, restock, Output};
use crate::endpoints::Endpoints;

/// How long after the sender is ready the first order is due: time for the schedule's first
/// sleep to settle, not measured.
const LEAD_IN: Duration = Duration::from_millis(100);

/// Orders polled at once while waiting for decisions.
const DECISION_POLLERS: usize = 32;

/// One order as sent: when it was due and left (from the start), and what came back when.
struct Sent {
    due: Duration,
    left: Duration,
    /// From the scheduled send time to the answer.
    latency: Duration,
    outcome: anyhow::Result<String>,
}

/// Runs the open-loop benchmark on `schedule` and prints its figures.
pub(crate) async fn run(
    endpoints: &Endpoints,
    schedule: Schedule,
    skus: usize,
    timeout: Duration,
    output: Output,
) -> anyhow::Result<()> {
    let orders = schedule.orders();
    let http = http_client(usize::MAX)?;
    let stock = restock(&http, endpoints, orders, skus).await?;
    output.progress(format_args!(
        "sending {orders} orders of {} at {} orders/s for {} s (open loop) ...",
        stock.describe(),
        schedule.rate,
        schedule.duration.as_secs_f64()
    ));
    let start = Instant::now() + LEAD_IN;
    let mut in_flight = JoinSet::new();
    for index in 0..orders {
        let due = schedule.due(index);
        let due_at = start + due;
        tokio::time::sleep_until(due_at).await;
        let left = Instant::now().saturating_duration_since(start);
        let request = order_request(&http, endpoints, index);
        let sku = stock.sku_of(index).to_owned();
        in_flight.spawn(async move {
            let outcome = place_order(request, &sku, index).await;
            Sent {
                due,
                left,
                latency: Instant::now().saturating_duration_since(due_at),
                outcome,
            }
        });
    }
    let mut sent = Vec::with_capacity(orders);
    while let Some(joined) = in_flight.join_next().await {
        sent.push(joined.map_err(|error| anyhow::anyhow!("an order's request task failed: {error}"))?);
    }

    let mut post_latencies = Vec::with_capacity(orders);
    let mut order_ids = Vec::with_capacity(orders);
    let mut errors = 0usize;
    let mut first_error = None;
    let mut late = 0usize;
    let mut max_lateness = Duration::ZERO;
    let (mut first_left, mut last_left) = (Duration::MAX, Duration::ZERO);
    for order in sent {
        let lateness = stats::lateness(order.due, order.left);
        late += usize::from(stats::is_late(lateness));
        max_lateness = max_lateness.max(lateness);
        first_left = first_left.min(order.left);
        last_left = last_left.max(order.left);
        match order.outcome {
            Ok(order_id) => {
                order_ids.push(order_id);
                post_latencies.push(order.latency);
            }
            Err(error) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    if order_ids.is_empty() {
        anyhow::bail!(
            "no order of {orders} was accepted; the first error: {}",
            first_error.unwrap_or_default()
        );
    }
    let achieved_rate = stats::achieved_rate(first_left, last_left, orders);
    output.progress(format_args!(
        "{} accepted, {errors} refused or failed; waiting for the decisions ...",
        order_ids.len()
    ));
    let mut decisions = await_decisions(&http, endpoints, &order_ids, DECISION_POLLERS, timeout).await?;
    let post = Percentiles::of(&mut post_latencies);
    let decision = Percentiles::of(&mut decisions.latencies);
    let object = json!({
        "mode": "open-loop",
        "rate": schedule.rate,
        "duration_secs": schedule.duration.as_secs_f64(),
        "orders": orders,
        "accepted": order_ids.len(),
        "errors": errors,
        "first_error": first_error,
        "confirmed": decisions.confirmed,
        "achieved_send_rate": achieved_rate,
        "late": late,
        "late_after_ms": stats::millis(LATE_AFTER),
        "max_lateness_ms": stats::millis(max_lateness),
        "post_orders": post.to_json(),
        "created_to_decided": decision.to_json(),
    });
    let mut lines = vec![
        format!(
            "orders:                          {orders} at {} orders/s for {} s ({} accepted, {errors} failed, {} confirmed)",
            schedule.rate,
            schedule.duration.as_secs_f64(),
            order_ids.len(),
            decisions.confirmed
        ),
        format!("achieved send rate:              {achieved_rate:.1} orders/s"),
        format!(
            "sent late (> {:.0} ms):            {late} (latest {})",
            stats::millis(LATE_AFTER),
            fmt_ms(max_lateness)
        ),
        super::latency_line("POST /orders from schedule:     ", &post),
        super::decision_line(&decision),
    ];
    if let Some(error) = &first_error {
        lines.push(format!("first error:                     {error}"));
    }
    output.result(&object, &lines);
    Ok(())
}
