//! The JSON the dashboard answers: one order's timeline, the list of recent orders and the
//! summary figures. `sagactl order` reads the timeline with these same types.

use std::collections::BTreeMap;

use saga_contracts::{EventId, OrderId};
use serde::{Deserialize, Serialize};

/// A lane of the timeline: one per service, named after the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    /// order-service: `order.*` events.
    Order,
    /// payment-service: `payment.*` events.
    Payment,
    /// inventory-service: `inventory.*` events.
    Inventory,
    /// notification-service: `notification.*` events.
    Notification,
}

impl Lane {
    /// Every lane, top to bottom.
    pub const ALL: [Lane; 4] = [Lane::Order, Lane::Payment, Lane::Inventory, Lane::Notification];

    /// The lane's name: `order`, `payment`, `inventory`, `notification`.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Order => "order",
            Lane::Payment => "payment",
            Lane::Inventory => "inventory",
            Lane::Notification => "notification",
        }
    }

    /// The service that publishes the lane's events (also its consumer group name).
    pub fn service(self) -> &'static str {
        match self {
            Lane::Order => "order-service",
            Lane::Payment => "payment-service",
            Lane::Inventory => "inventory-service",
            Lane::Notification => "notification-service",
        }
    }
}

/// Where an order stands, as far as the events seen tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum OrderStatus {
    /// No `order.confirmed` or `order.failed` seen yet.
    Pending,
    /// `order.confirmed` seen.
    Confirmed,
    /// `order.failed` seen.
    Failed,
}

impl OrderStatus {
    /// Parses `pending`, `confirmed` or `failed`, in any case.
    pub fn parse(text: &str) -> Option<OrderStatus> {
        match text.to_ascii_lowercase().as_str() {
            "pending" => Some(OrderStatus::Pending),
            "confirmed" => Some(OrderStatus::Confirmed),
            "failed" => Some(OrderStatus::Failed),
            _ => None,
        }
    }

    /// `PENDING`, `CONFIRMED` or `FAILED`.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Confirmed => "CONFIRMED",
            OrderStatus::Failed => "FAILED",
        }
    }
}

/// One event on an order's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TimelineEventView {
    /// The event's id.
    pub event_id: EventId,
    /// Its type, e.g. `payment.refunded`.
    pub event_type: String,
    /// Its lane.
    pub lane: Lane,
    /// The service that produced it.
    pub service: String,
    /// When it happened (its `occurred_at`), Unix milliseconds.
    pub occurred_at_ms: i64,
    /// The same, RFC 3339.
    pub occurred_at: String,
    /// Milliseconds after the order's first event (its `order.created`).
    pub offset_ms: i64,
    /// The Kafka record's timestamp, Unix milliseconds.
    pub record_timestamp_ms: Option<i64>,
    /// Topic of the record.
    pub topic: String,
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
    /// Trace id of the record's `traceparent` header.
    pub trace_id: Option<String>,
    /// Whether it undoes an earlier step (stock released, payment refunded).
    pub compensation: bool,
    /// Whether it reports a failure.
    pub failure: bool,
    /// What it says, briefly.
    pub detail: String,
    /// The id of the event that caused it (its `causation_id`), if an event did.
    pub causation_id: Option<EventId>,
    /// The type of the event that caused it, when that event is on the timeline.
    pub caused_by: Option<String>,
    /// Milliseconds from its cause to it.
    pub since_cause_ms: Option<i64>,
}

/// The time from one event of the timeline to the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepView {
    /// Type of the event the step starts at.
    pub from: String,
    /// Type of the event it ends at.
    pub to: String,
    /// Start, in milliseconds after the order's first event.
    pub from_offset_ms: i64,
    /// End, in milliseconds after the order's first event.
    pub to_offset_ms: i64,
    /// How long it took.
    pub duration_ms: i64,
    /// Whether it ends at a compensation.
    pub compensation: bool,
}

/// One order's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderTimelineView {
    /// The order.
    pub order_id: OrderId,
    /// The trace id of its first event.
    pub trace_id: Option<String>,
    /// Where it stands.
    pub status: OrderStatus,
    /// Why it failed, when it did.
    pub failure_reason: Option<String>,
    /// When its first event happened, Unix milliseconds.
    pub started_at_ms: i64,
    /// The same, RFC 3339.
    pub started_at: String,
    /// Milliseconds from its first event to its decision.
    pub decided_after_ms: Option<i64>,
    /// Milliseconds from its first event to its last.
    pub total_ms: i64,
    /// The lanes, top to bottom.
    pub lanes: Vec<Lane>,
    /// Its events in the order they happened.
    pub events: Vec<TimelineEventView>,
    /// The time between consecutive events.
    pub steps: Vec<StepView>,
}

/// One order in the list of recent orders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderSummaryView {
    /// The order.
    pub order_id: OrderId,
    /// Where it stands.
    pub status: OrderStatus,
    /// Why it failed, when it did.
    pub failure_reason: Option<String>,
    /// The trace id of its first event.
    pub trace_id: Option<String>,
    /// When its first event happened, Unix milliseconds.
    pub started_at_ms: i64,
    /// The same, RFC 3339.
    pub started_at: String,
    /// Milliseconds since its first event.
    pub age_ms: i64,
    /// Milliseconds from its first event to its decision.
    pub decided_after_ms: Option<i64>,
    /// Milliseconds from its first event to its last.
    pub total_ms: i64,
    /// How many events it has.
    pub events: usize,
    /// How many of them are compensations.
    pub compensations: usize,
}

/// Orders placed and decided per second, by record timestamps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ThroughputView {
    /// `order.created` per second over the last 10 s.
    pub placed_per_sec_10s: f64,
    /// `order.created` per second over the last 60 s.
    pub placed_per_sec_60s: f64,
    /// `order.confirmed` + `order.failed` per second over the last 10 s.
    pub decided_per_sec_10s: f64,
    /// `order.confirmed` + `order.failed` per second over the last 60 s.
    pub decided_per_sec_60s: f64,
}

/// How the orders in memory stand.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutcomeMixView {
    /// Not decided yet.
    pub pending: u64,
    /// Confirmed.
    pub confirmed: u64,
    /// Failed, all reasons.
    pub failed: u64,
    /// Failed, by reason.
    pub failed_by_reason: BTreeMap<String, u64>,
}

/// The lag of one service's consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupLagView {
    /// The service.
    pub service: String,
    /// Its consumer group (prefix included).
    pub group: String,
    /// The topics it consumes.
    pub topics: Vec<String>,
    /// Records not yet committed, over all partitions: high watermark − committed offset
    /// (− low watermark where the group committed nothing yet).
    pub lag: i64,
    /// Partitions where the group has committed nothing yet.
    pub partitions_without_commit: usize,
}

/// The dead letters of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetterView {
    /// The service.
    pub service: String,
    /// Its dead-letter topic.
    pub topic: String,
    /// Messages in it (high − low watermark, over its partitions); `None` if the topic does not
    /// exist yet.
    pub messages: Option<i64>,
}

/// What the dashboard's own reader has done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReaderView {
    /// Whether the first read reached the end offsets found at start.
    pub caught_up: bool,
    /// Events added to timelines.
    pub events: u64,
    /// Redelivered events ignored.
    pub duplicates_ignored: u64,
    /// Records that could not be decoded, skipped.
    pub undecodable: u64,
    /// Events of no order (stock adjustments), skipped.
    pub without_order: u64,
    /// Orders in memory.
    pub orders_in_memory: usize,
    /// The most orders kept in memory.
    pub max_orders: usize,
    /// Orders evicted to stay within that.
    pub orders_evicted: u64,
    /// How far back the reader started, in seconds; `None` when it read from the beginning.
    pub window_secs: Option<u64>,
}

/// The summary panel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SummaryView {
    /// When this was computed, Unix milliseconds.
    pub generated_at_ms: i64,
    /// Orders placed and decided per second.
    pub throughput: ThroughputView,
    /// How the orders in memory stand.
    pub outcomes: OutcomeMixView,
    /// Lag of each service's consumer group.
    pub consumer_lag: Vec<GroupLagView>,
    /// Dead letters of each service.
    pub dead_letters: Vec<DeadLetterView>,
    /// When lag and dead letters were last read from the broker, Unix milliseconds.
    pub broker_figures_at_ms: Option<i64>,
    /// Why the last read of lag and dead letters failed, if it did.
    pub broker_figures_error: Option<String>,
    /// The reader's own figures.
    pub reader: ReaderView,
}
