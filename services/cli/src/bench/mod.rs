//! `sagactl bench`: places orders against running services and reports the saga's figures.
//! Closed loop (the default) keeps `--concurrency` orders in flight and measures saturation:
//! sagas completed per second. Open loop (`--rate`, see [`open_loop`]) sends each order at its
//! scheduled time whatever the service answers, and measures latency at a given load. Both
//! report `POST /orders` latency percentiles and order.created → decided from the order
//! service's own timestamps; `--json` prints one JSON object with every figure instead.

pub(crate) mod counters;
pub(crate) mod limits;
pub(crate) mod open_loop;
pub(crate) mod report;
pub(crate) mod stats;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use saga_common::auth::Scope;
use serde_json::{json, Value};

use crate::demo::wait_until_terminal;
use crate::endpoints::Endpoints;
use stats::{fmt_ms, per_second, Percentiles};

/// Where a run's human-readable lines go: standard output, or standard error when standard
/// output carries the JSON object.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    /// Print one JSON object on standard output.
    pub(crate) json: bool,
}

impl Output {
    /// A progress line: to stdout, or to stderr under `--json`.
    pub(crate) fn progress(self, line: impl std::fmt::Display) {
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    /// The result: `object` under `--json`, else the human `lines`.
    pub(crate) fn result(self, object: &Value, lines: &[String]) {
        if self.json {
            println!("{object}");
        } else {
            for line in lines {
                println!("{line}");
            }
        }
    }
}

/// An HTTP client for the benchmark; `idle_per_host` connections are kept for reuse.
pub(crate) fn http_client(idle_per_host: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(idle_per_host)
        .build()
        .context("building the HTTP client")
}

/// The fresh SKUs a run's orders take one unit each of, in turn.
pub(crate) struct BenchStock {
    skus: Vec<String>,
}

impl BenchStock {
    /// The SKU order number `index` takes.
    pub(crate) fn sku_of(&self, index: usize) -> &str {
        &self.skus[index % self.skus.len()]
    }

    /// How the run's orders are spread, for its progress line.
    pub(crate) fn describe(&self) -> String {
        match self.skus.as_slice() {
            [one] => one.clone(),
            many => format!("{} SKUs ({}...)", many.len(), many[0]),
        }
    }
}

/// Stocks `skus` fresh SKUs (at most one per order) so that every one of `orders` benchmark
/// orders can be confirmed.
pub(crate) async fn restock(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    orders: usize,
    skus: usize,
) -> anyhow::Result<BenchStock> {
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let count = skus.clamp(1, orders.max(1));
    let units = orders.div_ceil(count);
    let mut stocked = Vec::with_capacity(count);
    for number in 0..count {
        let sku = format!("SKU-BENCH-{run}-{number}");
        let restock = endpoints
            .authorize(
                http.post(format!("{}/stock/{sku}/adjustments", endpoints.inventory)),
                Scope::Admin,
            )
            .json(&json!({"delta": units, "reason": "benchmark stock"}))
            .send()
            .await
            .context("inventory service unreachable; is the stack up? (deploy/local/stack.sh up)")?;
        if !restock.status().is_success() {
            bail!("restocking {sku}: {}", restock.status());
        }
        stocked.push(sku);
    }
    Ok(BenchStock { skus: stocked })
}

/// Places order number `index` (one unit of `sku`, a payment that succeeds); returns its id
/// once the order service accepted it (202).
pub(crate) async fn place_order(request: reqwest::RequestBuilder, sku: &str, index: usize) -> anyhow::Result<String> {
    let body = json!({
        "customer_id": format!("bench-{index}"),
        "customer_email": format!("bench+{index}@example.com"),
        "currency": "USD",
        "payment_token": "tok_ok",
        "items": [{"sku": sku, "quantity": 1, "unit_price_minor": 1000}],
    });
    let response = request.json(&body).send().await.context("POST /orders")?;
    let status = response.status();
    if status.as_u16() != 202 {
        let detail = response.text().await.unwrap_or_default();
        bail!("POST /orders answered {status}: {detail}");
    }
    let answer: Value = response.json().await.context("reading the answer to POST /orders")?;
    answer["order_id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("POST /orders answered 202 without an order_id: {answer}"))
}

/// The `POST /orders` request of order number `index`, to its order-service instance (see
/// [`Endpoints::order_instance`]), with the orders key.
pub(crate) fn order_request(http: &reqwest::Client, endpoints: &Endpoints, index: usize) -> reqwest::RequestBuilder {
    let instance = endpoints.order_instance(index);
    endpoints.authorize(http.post(format!("{instance}/orders")), Scope::Orders)
}

/// What the order service decided for a set of orders, from each order's view.
#[derive(Debug)]
pub(crate) struct Decisions {
    /// Orders confirmed.
    pub(crate) confirmed: usize,
    /// order.created → decided, one per order.
    pub(crate) latencies: Vec<Duration>,
    /// From the first order created to the last decided.
    pub(crate) span: Duration,
}

/// Waits until every order in `order_ids` is decided (polling `concurrency` at a time) and
/// reads its created and decided times.
pub(crate) async fn await_decisions(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    order_ids: &[String],
    concurrency: usize,
    timeout: Duration,
) -> anyhow::Result<Decisions> {
    let views: Vec<anyhow::Result<Value>> = stream::iter(order_ids.iter())
        .map(|order_id| wait_until_terminal(http, endpoints, order_id, timeout))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut latencies = Vec::with_capacity(order_ids.len());
    let (mut first_created, mut last_decided): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = (None, None);
    let mut confirmed = 0;
    for view in views {
        let view = view?;
        if view["status"] == "CONFIRMED" {
            confirmed += 1;
        }
        let created: DateTime<Utc> =
            serde_json::from_value(view["created_at"].clone()).context("reading an order's created_at")?;
        let decided: DateTime<Utc> =
            serde_json::from_value(view["decided_at"].clone()).context("reading an order's decided_at")?;
        latencies.push((decided - created).to_std().unwrap_or_default());
        first_created = Some(first_created.map_or(created, |t| t.min(created)));
        last_decided = Some(last_decided.map_or(decided, |t| t.max(decided)));
    }
    let span = match (first_created, last_decided) {
        (Some(first), Some(last)) => (last - first).to_std().unwrap_or_default(),
        _ => Duration::ZERO,
    };
    Ok(Decisions {
        confirmed,
        latencies,
        span,
    })
}

/// Runs the closed-loop benchmark (`concurrency` orders in flight, each client sending its next
/// order when the previous one is answered) and prints its figures.
pub(crate) async fn run(
    endpoints: &Endpoints,
    orders: usize,
    concurrency: usize,
    skus: usize,
    timeout: Duration,
    output: Output,
) -> anyhow::Result<()> {
    let http = http_client(concurrency)?;
    let stock = restock(&http, endpoints, orders, skus).await?;
    output.progress(format_args!(
        "placing {orders} orders of {} with {concurrency} concurrent clients ...",
        stock.describe()
    ));
    let started = Instant::now();
    let placed: Vec<anyhow::Result<(String, Duration)>> = stream::iter(0..orders)
        .map(|index| {
            let request = order_request(&http, endpoints, index);
            let sku = stock.sku_of(index);
            async move {
                let sent = Instant::now();
                let order_id = place_order(request, sku, index).await?;
                Ok((order_id, sent.elapsed()))
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

    let mut decisions = await_decisions(&http, endpoints, &order_ids, concurrency, timeout).await?;
    let post = Percentiles::of(&mut post_latencies);
    let decision = Percentiles::of(&mut decisions.latencies);
    let sagas_per_second = per_second(orders, decisions.span);
    let accepted_per_second = per_second(orders, placing);
    let object = json!({
        "mode": "closed-loop",
        "orders": orders,
        "concurrency": concurrency,
        "confirmed": decisions.confirmed,
        "placing_secs": placing.as_secs_f64(),
        "accepted_per_sec": accepted_per_second,
        "created_to_decided_span_secs": decisions.span.as_secs_f64(),
        "sagas_per_sec": sagas_per_second,
        "post_orders": post.to_json(),
        "created_to_decided": decision.to_json(),
    });
    output.result(
        &object,
        &[
            format!(
                "orders:                          {orders} ({} confirmed)",
                decisions.confirmed
            ),
            format!(
                "placing took:                    {:.2} s ({accepted_per_second:.1} orders/s accepted)",
                placing.as_secs_f64()
            ),
            format!("first created -> last decided:   {:.2} s", decisions.span.as_secs_f64()),
            format!("sagas completed per second:      {sagas_per_second:.1}"),
            latency_line("POST /orders latency:           ", &post),
            decision_line(&decision),
        ],
    );
    Ok(())
}

/// `label` followed by the p50, p99 and p99.9 of `latencies`, as the printed summaries show them.
pub(crate) fn latency_line(label: &str, latencies: &Percentiles) -> String {
    format!(
        "{label} p50 {}  p99 {}  p99.9 {}",
        fmt_ms(latencies.p50),
        fmt_ms(latencies.p99),
        fmt_ms(latencies.p999)
    )
}

/// The order.created -> decided line of the printed summaries.
pub(crate) fn decision_line(decision: &Percentiles) -> String {
    format!(
        "order.created -> decided:        p50 {}  p99 {}",
        fmt_ms(decision.p50),
        fmt_ms(decision.p99)
    )
}
