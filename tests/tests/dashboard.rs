//! The saga dashboard against the real platform: the four services and the dashboard started
//! in-process on the test's topics, orders placed through the order API, the dashboard's JSON
//! checked, then its page driven in headless Chromium (tests/browser/dashboard.mjs, Debian's
//! chromium through playwright-core) and the screenshot of a compensated order's timeline
//! checked pixel by pixel.
//!
//! Needs `node` and `npm ci` in tests/browser, and `/usr/bin/chromium` (or `CHROMIUM_PATH`);
//! deploy/local/test.sh installs them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dashboard_service::view::{Lane, OrderStatus, OrderSummaryView, OrderTimelineView, SummaryView};
use dashboard_service::{Config, RunningDashboard};
use rdkafka::producer::FutureRecord;
use saga_common::consumer::event_headers;
use saga_common::kafka;
use saga_contracts::{SagaEvent, Topic};
use saga_tests::platform::{unique_email, unique_sku, Platform};
use saga_tests::{eventually, fixtures, TestEnv};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// The compensation colour of the page's marks (`--compensation`, #dc2626).
const COMPENSATION_RGB: [u8; 3] = [0xdc, 0x26, 0x26];
/// The colour of an ordinary event's mark (`--mark`, #2563eb).
const MARK_RGB: [u8; 3] = [0x25, 0x63, 0xeb];

async fn start_dashboard(env: &TestEnv, window: Duration) -> anyhow::Result<RunningDashboard> {
    saga_common::telemetry::init(
        dashboard_service::NAME,
        &saga_common::config::TelemetryConfig {
            log_format: "pretty".into(),
            otlp_endpoint: None,
        },
    );
    let config = Config {
        http_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        broker_poll_ms: 500,
        window_secs: window.as_secs(),
        ..Config::new(
            env.kafka.clone(),
            env.registry.clone(),
            saga_tests::credentials().service_auth(),
        )
    };
    dashboard_service::start(&config, CancellationToken::new()).await
}

/// `GET path` on the dashboard: its status and JSON body.
async fn get(dashboard: &RunningDashboard, path: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    let response = saga_tests::get(format!("http://{}{path}", dashboard.local_addr)).await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

/// `GET path` on the dashboard as `T`, failing unless it answers 200.
async fn get_ok<T: DeserializeOwned>(dashboard: &RunningDashboard, path: &str) -> anyhow::Result<T> {
    let (status, body) = get(dashboard, path).await?;
    anyhow::ensure!(status == 200, "GET {path} answered {status}: {body}");
    Ok(serde_json::from_value(body)?)
}

fn event_types(view: &OrderTimelineView) -> Vec<&str> {
    view.events.iter().map(|event| event.event_type.as_str()).collect()
}

/// Waits until the dashboard shows the order with `status` and every event of `expected`.
async fn timeline_with(
    dashboard: &RunningDashboard,
    order_id: &str,
    status: OrderStatus,
    expected: &[&str],
) -> anyhow::Result<OrderTimelineView> {
    let last_seen = std::sync::Mutex::new(None::<OrderTimelineView>);
    let found = eventually(
        &format!("order {order_id} {status:?} with {expected:?} on the dashboard"),
        Duration::from_secs(60),
        || async {
            let view: OrderTimelineView = get_ok(dashboard, &format!("/api/orders/{order_id}")).await.ok()?;
            let complete = view.status == status && expected.iter().all(|wanted| event_types(&view).contains(wanted));
            *last_seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(view.clone());
            complete.then_some(view)
        },
    )
    .await;
    found.map_err(|error| {
        let last = last_seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        error.context(format!("last seen: {:?}", last.as_ref().map(event_types)))
    })
}

/// Counts the pixels of an RGBA or RGB PNG within 8 of `rgb` on each channel.
fn pixels_of(png_path: &Path, rgb: [u8; 3]) -> anyhow::Result<usize> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png_path)?));
    let mut reader = decoder.read_info()?;
    let mut buffer = vec![0; reader.output_buffer_size().unwrap_or_default()];
    let frame = reader.next_frame(&mut buffer)?;
    let channels = match frame.color_type {
        png::ColorType::Rgba => 4,
        png::ColorType::Rgb => 3,
        other => anyhow::bail!("unexpected PNG colour type {other:?}"),
    };
    anyhow::ensure!(
        frame.bit_depth == png::BitDepth::Eight,
        "unexpected bit depth {:?}",
        frame.bit_depth
    );
    Ok(buffer[..frame.buffer_size()]
        .chunks_exact(channels)
        .filter(|pixel| (0..3).all(|channel| pixel[channel].abs_diff(rgb[channel]) <= 8))
        .count())
}

/// tests/browser, with its packages installed.
fn browser_test_dir() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser");
    anyhow::ensure!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci` in {} (deploy/local/test.sh does)",
        dir.display()
    );
    Ok(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_each_order_from_post_to_email_and_draws_a_compensated_timeline() -> anyhow::Result<()> {
    let browser_dir = browser_test_dir()?;
    let platform = Platform::start(30.0).await?;
    let dashboard = start_dashboard(&platform.env, Duration::from_secs(3_600)).await?;
    let (stocked, short) = (unique_sku(), unique_sku());
    platform.restock(&stocked, 10).await?;
    platform.restock(&short, 1).await?;
    let confirmed = platform.place(&unique_email(), "tok_ok", &[(&stocked, 2)]).await?;
    // Paid, then out of stock: the capture is refunded.
    let refunded = platform.place(&unique_email(), "tok_ok", &[(&short, 2)]).await?;
    // Stock held, then declined: the stock is released.
    let released = platform
        .place(&unique_email(), "tok_decline_dash", &[(&stocked, 1)])
        .await?;

    let confirmed_view = timeline_with(
        &dashboard,
        &confirmed,
        OrderStatus::Confirmed,
        &[
            "order.created",
            "inventory.reserved",
            "payment.success",
            "order.confirmed",
            "inventory.committed",
            "notification.sent",
        ],
    )
    .await?;
    let refunded_view = timeline_with(
        &dashboard,
        &refunded,
        OrderStatus::Failed,
        &[
            "order.created",
            "payment.success",
            "inventory.reservation_failed",
            "order.failed",
            "payment.refunded",
            "notification.sent",
        ],
    )
    .await?;
    let released_view = timeline_with(
        &dashboard,
        &released,
        OrderStatus::Failed,
        &[
            "order.created",
            "inventory.reserved",
            "payment.failed",
            "order.failed",
            "inventory.released",
            "notification.sent",
        ],
    )
    .await?;

    // One order followed from POST to email: every step in time order on its lane, from the
    // topic it was published on, under the trace of its order.created.
    let view = &refunded_view;
    assert_eq!(view.failure_reason.as_deref(), Some("out_of_stock"));
    assert_eq!(view.events[0].event_type, "order.created");
    assert_eq!(view.events[0].offset_ms, 0);
    assert!(view
        .events
        .windows(2)
        .all(|pair| pair[0].offset_ms <= pair[1].offset_ms));
    let trace_id = view.trace_id.clone().expect("the order's trace id");
    assert!(
        trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{trace_id}"
    );
    assert_eq!(view.events[0].trace_id.as_deref(), Some(trace_id.as_str()));
    for event in &view.events {
        let (lane, topic) = match event.event_type.split('.').next() {
            Some("order") => (Lane::Order, Topic::Orders),
            Some("payment") => (Lane::Payment, Topic::Payments),
            Some("inventory") => (Lane::Inventory, Topic::Inventory),
            _ => (Lane::Notification, Topic::Notifications),
        };
        assert_eq!(event.lane, lane, "{event:?}");
        assert_eq!(event.service, lane.service());
        assert_eq!(event.topic, platform.env.kafka.topic(topic));
        assert_eq!(
            event.compensation,
            event.event_type == "payment.refunded",
            "only the refund is a compensation: {event:?}"
        );
    }
    let refund = view
        .events
        .iter()
        .find(|event| event.event_type == "payment.refunded")
        .expect("the refund");
    assert_eq!(refund.caused_by.as_deref(), Some("order.failed"));
    assert_eq!(view.steps.len(), view.events.len() - 1);
    assert_eq!(
        view.steps.iter().map(|step| step.duration_ms).sum::<i64>(),
        view.total_ms
    );
    assert!(view.decided_after_ms.is_some_and(|decided| decided <= view.total_ms));
    let released_compensations: Vec<&str> = released_view
        .events
        .iter()
        .filter(|event| event.compensation)
        .map(|event| event.event_type.as_str())
        .collect();
    assert_eq!(released_compensations, ["inventory.released"]);
    assert!(confirmed_view.events.iter().all(|event| !event.compensation));

    // The list, newest first, and filtered by status.
    let all: Vec<OrderSummaryView> = get_ok(&dashboard, "/api/orders?limit=10").await?;
    let listed: Vec<String> = all.iter().map(|order| order.order_id.to_string()).collect();
    assert_eq!(listed, [released.clone(), refunded.clone(), confirmed.clone()]);
    let failed: Vec<OrderSummaryView> = get_ok(&dashboard, "/api/orders?status=failed").await?;
    assert_eq!(failed.len(), 2);
    assert!(failed
        .iter()
        .all(|order| order.status == OrderStatus::Failed && order.compensations == 1));
    let confirmed_only: Vec<OrderSummaryView> = get_ok(&dashboard, "/api/orders?status=CONFIRMED").await?;
    assert_eq!(confirmed_only.len(), 1);
    assert_eq!(confirmed_only[0].order_id.to_string(), confirmed);

    // Bad input gets a clear 4xx in JSON.
    let (status, body) = get(&dashboard, "/api/orders/not-a-uuid").await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|text| text.contains("UUID")),
        "{body}"
    );
    let (status, body) = get(&dashboard, &format!("/api/orders/{}", uuid::Uuid::new_v4())).await?;
    assert_eq!(status, 404, "{body}");
    let (status, body) = get(&dashboard, "/api/orders?status=shipped").await?;
    assert_eq!(status, 400, "{body}");

    // The summary: outcomes of the three orders, throughput of the last minute, every group's
    // lag back to zero once the services committed, no dead letters.
    let summary: SummaryView = get_ok(&dashboard, "/api/summary").await?;
    assert_eq!(
        (
            summary.outcomes.pending,
            summary.outcomes.confirmed,
            summary.outcomes.failed
        ),
        (0, 1, 2)
    );
    assert_eq!(summary.outcomes.failed_by_reason.get("out_of_stock"), Some(&1));
    assert_eq!(summary.outcomes.failed_by_reason.get("payment_declined"), Some(&1));
    assert!(summary.throughput.placed_per_sec_60s > 0.0, "{:?}", summary.throughput);
    assert!(summary.throughput.decided_per_sec_60s > 0.0, "{:?}", summary.throughput);
    assert!(summary.reader.caught_up);
    assert_eq!(summary.reader.undecodable, 0);
    let summary = eventually(
        "every consumer group's lag back to zero",
        Duration::from_secs(30),
        || async {
            let summary: SummaryView = get_ok(&dashboard, "/api/summary").await.ok()?;
            (summary.consumer_lag.len() == 4 && summary.consumer_lag.iter().all(|group| group.lag == 0))
                .then_some(summary)
        },
    )
    .await?;
    let groups: Vec<&str> = summary.consumer_lag.iter().map(|group| group.group.as_str()).collect();
    let expected_groups: Vec<String> = [
        "order-service",
        "payment-service",
        "inventory-service",
        "notification-service",
    ]
    .iter()
    .map(|service| platform.env.kafka.prefixed(service))
    .collect();
    assert_eq!(groups, expected_groups);
    assert!(
        summary.dead_letters.iter().all(|dead| dead.messages == Some(0)),
        "{:?}",
        summary.dead_letters
    );
    let (status, _) = get(&dashboard, "/health/ready").await?;
    assert_eq!(status, 200);

    // The same timeline in the terminal.
    let env = platform.env.clone();
    let dashboard_url = format!("http://{}", dashboard.local_addr);
    let order = refunded.clone();
    let printed =
        tokio::task::spawn_blocking(move || env.sagactl(&["order", &order, "--dashboard-url", &dashboard_url]))
            .await??;
    assert!(printed.contains(&format!("trace {trace_id}")), "{printed}");
    assert!(printed.contains("FAILED (out_of_stock)"), "{printed}");
    let refund_line = printed
        .lines()
        .find(|line| line.contains("payment.refunded"))
        .unwrap_or_default();
    assert!(refund_line.ends_with("COMPENSATION"), "{printed}");
    assert_eq!(printed.lines().filter(|line| line.ends_with("COMPENSATION")).count(), 1);

    // The page in a real browser, and the picture it draws.
    let screenshot = std::env::temp_dir().join(format!(
        "dashboard-timeline-{}.png",
        platform.env.prefix.trim_end_matches('.')
    ));
    let _ = std::fs::remove_file(&screenshot);
    let started = Instant::now();
    let output = tokio::process::Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .args(["--url", &format!("http://{}", dashboard.local_addr)])
        .args(["--confirmed", &confirmed, "--compensated", &refunded])
        .args(["--trace-id", &trace_id])
        .arg("--screenshot")
        .arg(&screenshot)
        .env(
            "DASHBOARD_API_KEY",
            saga_tests::credentials()
                .scope_keys
                .read
                .as_ref()
                .map(|key| key.expose().to_owned())
                .unwrap_or_default(),
        )
        .current_dir(&browser_dir)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser checks failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    eprintln!(
        "browser checks passed in {:.1} s: {stdout}",
        started.elapsed().as_secs_f64()
    );
    let compensation_pixels = pixels_of(&screenshot, COMPENSATION_RGB)?;
    let mark_pixels = pixels_of(&screenshot, MARK_RGB)?;
    eprintln!(
        "timeline screenshot {}: {compensation_pixels} compensation pixels, {mark_pixels} mark pixels",
        screenshot.display()
    );
    // One diamond of about 22 px across is some 250 px of the colour; three round marks of
    // 16 px across some 600 px.
    assert!(compensation_pixels >= 120, "{compensation_pixels} compensation pixels");
    assert!(mark_pixels >= 300, "{mark_pixels} ordinary mark pixels");

    dashboard.stop().await;
    platform.stop().await;
    Ok(())
}

/// Produces `event` as the services do, with a record timestamp of `timestamp_ms`.
async fn produce_at(env: &TestEnv, event: &SagaEvent, timestamp_ms: i64) -> anyhow::Result<()> {
    let encoded = env.codec()?.encode(event).await?;
    let headers = event_headers(
        encoded.event_type.as_str(),
        &encoded.event_id.to_string(),
        &saga_common::codec::traceparent_for(&encoded.key),
    );
    let record = FutureRecord::to(&encoded.topic)
        .key(&encoded.key)
        .payload(&encoded.payload)
        .headers(headers)
        .timestamp(timestamp_ms);
    kafka::producer(&env.kafka)?
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(error, _)| anyhow::anyhow!("produce failed: {error}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_reads_only_its_window_skips_undecodable_records_and_keeps_reading() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let now = saga_contracts::now_millis();
    let before_window = fixtures::order_created();
    produce_at(&env, &before_window.clone().into(), now - 2 * 3_600_000).await?;
    let in_window = fixtures::order_created();
    env.produce(&in_window.clone().into()).await?;
    env.produce_raw(Topic::Payments, &in_window.envelope.order_id.to_string(), b"not avro")
        .await?;
    env.produce(&fixtures::payment_succeeded(&in_window).into()).await?;

    let dashboard = start_dashboard(&env, Duration::from_secs(3_600)).await?;
    eventually("the dashboard ready", Duration::from_secs(30), || async {
        (get(&dashboard, "/health/ready").await.ok()?.0 == 200).then_some(())
    })
    .await?;
    let view: OrderTimelineView = get_ok(&dashboard, &format!("/api/orders/{}", in_window.envelope.order_id)).await?;
    assert_eq!(event_types(&view), ["order.created", "payment.success"]);
    assert_eq!(view.status, OrderStatus::Pending);
    let (status, _) = get(&dashboard, &format!("/api/orders/{}", before_window.envelope.order_id)).await?;
    assert_eq!(status, 404, "an order from before the window is not read");
    let summary: SummaryView = get_ok(&dashboard, "/api/summary").await?;
    assert_eq!(summary.reader.undecodable, 1);
    assert_eq!(summary.reader.orders_in_memory, 1);

    // Records published after the start arrive too.
    env.produce(&fixtures::order_confirmed(&in_window).into()).await?;
    let view = timeline_with(
        &dashboard,
        &in_window.envelope.order_id.to_string(),
        OrderStatus::Confirmed,
        &["order.confirmed"],
    )
    .await?;
    assert_eq!(view.events.len(), 3);
    dashboard.stop().await;
    Ok(())
}
