//! `sagactl order <id>`: one order's timeline from the dashboard, printed in the terminal: its
//! trace id and status, a lane chart (one row per service, each event a mark at its time), then
//! one line per event with its time after `order.created`, its lane, the step it ended and what
//! caused it, compensations marked.

use saga_common::auth::Scope;
use std::time::Duration;

use anyhow::{bail, Context};
use dashboard_service::view::{Lane, OrderTimelineView, TimelineEventView};
use saga_contracts::OrderId;

use crate::endpoints::Endpoints;

/// Columns of the lane chart between its borders.
const CHART_WIDTH: usize = 60;

/// Fetches the order's timeline from the dashboard and prints it.
pub(crate) async fn run(endpoints: &Endpoints, order_id: &str) -> anyhow::Result<()> {
    let order_id: OrderId = order_id
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{order_id:?} is not an order id (a UUID)"))?;
    let base = endpoints.dashboard.trim_end_matches('/');
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let response = endpoints
        .authorize(http.get(format!("{base}/api/orders/{order_id}")), Scope::Read)
        .send()
        .await
        .with_context(|| {
            format!(
                "the dashboard at {base} is not reachable; is it running? (deploy/local/stack.sh up \
                 starts it; --dashboard-url or DASHBOARD_URL point elsewhere)"
            )
        })?;
    let status = response.status();
    if !status.is_success() {
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let message = body["error"].as_str().unwrap_or("no detail").to_string();
        if status == reqwest::StatusCode::NOT_FOUND {
            bail!("order {order_id} is unknown to the dashboard at {base}: {message}");
        }
        let hint = crate::endpoints::credential_hint(status, Scope::Read);
        bail!("the dashboard at {base} answered {status}: {message}{hint}");
    }
    let view: OrderTimelineView = response
        .json()
        .await
        .with_context(|| format!("the dashboard at {base} answered something that is not a timeline"))?;
    print!("{}", render(&view));
    Ok(())
}

/// The mark of an event in the lane chart: `C` a compensation, `x` a failure, `o` any other.
fn mark_of(event: &TimelineEventView) -> char {
    if event.compensation {
        'C'
    } else if event.failure {
        'x'
    } else {
        'o'
    }
}

/// Which mark shows when several events fall in one column: a compensation is never hidden.
fn prominence(mark: char) -> u8 {
    match mark {
        'C' => 3,
        'x' => 2,
        'o' => 1,
        _ => 0,
    }
}

fn lane_chart(view: &OrderTimelineView) -> Vec<String> {
    let span = view.total_ms.max(1) as f64;
    let label_width = Lane::ALL.iter().map(|lane| lane.as_str().len()).max().unwrap_or(0);
    let column_of = |offset_ms: i64| {
        let fraction = (offset_ms.max(0) as f64 / span).min(1.0);
        (fraction * (CHART_WIDTH - 1) as f64).round() as usize
    };
    let mut lines = Vec::new();
    let end = format!("{} ms", view.total_ms);
    lines.push(format!(
        "{:label_width$}  0 ms{:>width$}",
        "",
        end,
        width = CHART_WIDTH + 2 - 4
    ));
    for lane in &view.lanes {
        let mut row = vec!['.'; CHART_WIDTH];
        for event in view.events.iter().filter(|event| event.lane == *lane) {
            let column = column_of(event.offset_ms);
            let mark = mark_of(event);
            if prominence(mark) > prominence(row[column]) {
                row[column] = mark;
            }
        }
        lines.push(format!(
            "{:label_width$} |{}|",
            lane.as_str(),
            row.into_iter().collect::<String>()
        ));
    }
    lines.push(format!("{:label_width$}  o event   x failure   C compensation", ""));
    lines
}

/// The timeline as text, ending with a newline.
pub(crate) fn render(view: &OrderTimelineView) -> String {
    let mut out = String::new();
    let reason = view
        .failure_reason
        .as_deref()
        .map(|reason| format!(" ({reason})"))
        .unwrap_or_default();
    out.push_str(&format!("order {}  {}{reason}\n", view.order_id, view.status.as_str()));
    out.push_str(&format!("trace {}\n", view.trace_id.as_deref().unwrap_or("none")));
    let decided = view
        .decided_after_ms
        .map(|ms| format!("decided after {ms} ms"))
        .unwrap_or_else(|| "not decided yet".to_string());
    out.push_str(&format!(
        "placed {}, {decided}, last event after {} ms\n\n",
        view.started_at, view.total_ms
    ));
    for line in lane_chart(view) {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push('\n');
    let type_width = view
        .events
        .iter()
        .map(|event| event.event_type.len())
        .max()
        .unwrap_or(0)
        .max("event".len());
    out.push_str(&format!(
        "{:>8}  {:<12}  {:<type_width$}  {:>9}  caused by\n",
        "at", "lane", "event", "step"
    ));
    let mut previous: Option<i64> = None;
    for event in &view.events {
        let step = previous
            .map(|before| format!("+{} ms", event.offset_ms - before))
            .unwrap_or_default();
        previous = Some(event.offset_ms);
        let cause = match (&event.caused_by, event.since_cause_ms) {
            (Some(cause), Some(ms)) => format!("{cause} +{ms} ms"),
            _ => String::new(),
        };
        let marker = if event.compensation { "  COMPENSATION" } else { "" };
        let line = format!(
            "{:>8}  {:<12}  {:<type_width$}  {:>9}  {cause}{marker}",
            format!("+{} ms", event.offset_ms),
            event.lane.as_str(),
            event.event_type,
            step,
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use dashboard_service::view::{OrderStatus, StepView};
    use saga_contracts::EventId;

    use super::*;

    fn event(
        event_type: &str,
        lane: Lane,
        offset_ms: i64,
        caused_by: Option<(&str, i64)>,
        compensation: bool,
    ) -> TimelineEventView {
        TimelineEventView {
            event_id: EventId::new(),
            event_type: event_type.into(),
            lane,
            service: lane.service().into(),
            occurred_at_ms: 1_700_000_000_000 + offset_ms,
            occurred_at: String::new(),
            offset_ms,
            record_timestamp_ms: None,
            topic: "payments".into(),
            partition: 0,
            offset: 0,
            trace_id: None,
            compensation,
            failure: event_type.ends_with("failed"),
            detail: String::new(),
            causation_id: None,
            caused_by: caused_by.map(|(cause, _)| cause.to_string()),
            since_cause_ms: caused_by.map(|(_, ms)| ms),
        }
    }

    fn refunded_order() -> OrderTimelineView {
        OrderTimelineView {
            order_id: "275c7d9a-e100-44bf-afd7-a2d98f95258b".parse().expect("a UUID"),
            trace_id: Some("275c7d9ae10044bfafd7a2d98f95258b".into()),
            status: OrderStatus::Failed,
            failure_reason: Some("out_of_stock".into()),
            started_at_ms: 1_700_000_000_000,
            started_at: "2023-11-14T22:13:20.000Z".into(),
            decided_after_ms: Some(283),
            total_ms: 600,
            lanes: Lane::ALL.to_vec(),
            events: vec![
                event("order.created", Lane::Order, 0, None, false),
                event(
                    "inventory.reservation_failed",
                    Lane::Inventory,
                    150,
                    Some(("order.created", 150)),
                    false,
                ),
                event(
                    "payment.success",
                    Lane::Payment,
                    168,
                    Some(("order.created", 168)),
                    false,
                ),
                event(
                    "order.failed",
                    Lane::Order,
                    283,
                    Some(("inventory.reservation_failed", 133)),
                    false,
                ),
                event("payment.refunded", Lane::Payment, 375, Some(("order.failed", 92)), true),
                event(
                    "notification.sent",
                    Lane::Notification,
                    600,
                    Some(("order.failed", 317)),
                    false,
                ),
            ],
            steps: Vec::<StepView>::new(),
        }
    }

    #[test]
    fn the_timeline_starts_with_the_status_and_the_trace_id() {
        let text = render(&refunded_order());
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("order 275c7d9a-e100-44bf-afd7-a2d98f95258b  FAILED (out_of_stock)")
        );
        assert_eq!(lines.next(), Some("trace 275c7d9ae10044bfafd7a2d98f95258b"));
        assert!(text.contains("decided after 283 ms, last event after 600 ms"), "{text}");
    }

    #[test]
    fn each_event_is_one_line_with_its_time_lane_step_and_cause_and_compensations_are_marked() {
        let text = render(&refunded_order());
        let refund = text
            .lines()
            .find(|line| line.contains("payment.refunded"))
            .expect("a line for the refund");
        assert_eq!(
            refund.split_whitespace().collect::<Vec<_>>(),
            [
                "+375",
                "ms",
                "payment",
                "payment.refunded",
                "+92",
                "ms",
                "order.failed",
                "+92",
                "ms",
                "COMPENSATION"
            ]
        );
        let marked = text.lines().filter(|line| line.contains("COMPENSATION")).count();
        assert_eq!(marked, 1);
        let first = text
            .lines()
            .find(|line| line.contains("order.created"))
            .expect("created");
        assert_eq!(
            first.split_whitespace().collect::<Vec<_>>(),
            ["+0", "ms", "order", "order.created"]
        );
    }

    #[test]
    fn the_lane_chart_puts_each_mark_in_its_lane_at_its_time() {
        let text = render(&refunded_order());
        let row = |lane: &str| {
            text.lines()
                .find(|line| line.starts_with(lane) && line.contains('|'))
                .map(|line| line.split('|').nth(1).expect("a bordered row").to_string())
                .expect("a row for the lane")
        };
        let order = row("order");
        assert_eq!(order.len(), CHART_WIDTH);
        assert_eq!(order.find('o'), Some(0));
        // 283 of 600 ms is column 28 of 0..=59.
        assert_eq!(order.find('x'), Some(28));
        let payment = row("payment");
        assert_eq!(payment.find('C'), Some(37));
        assert_eq!(payment.find('o'), Some(17));
        assert_eq!(row("notification").find('o'), Some(CHART_WIDTH - 1));
        assert_eq!(row("inventory").matches(['o', 'x', 'C']).count(), 1);
    }

    #[test]
    fn a_compensation_is_never_hidden_by_an_event_in_the_same_column() {
        let mut view = refunded_order();
        view.events
            .push(event("payment.success", Lane::Payment, 376, None, false));
        let text = render(&view);
        let payment = text
            .lines()
            .find(|line| line.starts_with("payment") && line.contains('|'))
            .expect("payment row");
        assert!(payment.contains('C'), "{payment}");
    }
}
