//! The dashboard's picture of recent sagas, built only from the events seen on the topics: per
//! order its events in time order (whatever topic they came from and whenever they arrived),
//! its status, its compensations and the time each step took; plus how many orders were placed
//! and decided per second lately.
//!
//! Pure code, no I/O: the reader feeds it records and the HTTP layer asks it for views. It holds
//! at most `capacity` orders; when full, the order that started earliest is evicted, and an
//! event of an order older than every order kept is not kept either.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use saga_contracts::{EventId, EventType, FailureReason, OrderId, SagaEvent, Topic};

use crate::view::{
    Lane, OrderStatus, OrderSummaryView, OrderTimelineView, OutcomeMixView, StepView, ThroughputView, TimelineEventView,
};

/// Where a record sits in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordPosition {
    /// Full topic name (prefix included).
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// One event of an order, as the dashboard keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// The event's type.
    pub event_type: EventType,
    /// Its id; a second record with the same id is a redelivery and is not kept.
    pub event_id: EventId,
    /// The event it reacts to, if an event caused it.
    pub causation_id: Option<EventId>,
    /// When the fact happened (the event's `occurred_at`), Unix milliseconds.
    pub occurred_at_ms: i64,
    /// The Kafka record's timestamp, Unix milliseconds, if it had one.
    pub record_timestamp_ms: Option<i64>,
    /// Where the record is.
    pub position: RecordPosition,
    /// The trace id of the record's `traceparent` header, if it had a valid one.
    pub trace_id: Option<String>,
    /// Why it failed, for the events that say so.
    pub failure_reason: Option<FailureReason>,
    /// A short human description of what the event says (amounts, reasons, recipient).
    pub detail: String,
}

impl RecordedEvent {
    /// The order of `event` and the event as kept, or `None` for an event of no order (stock
    /// adjustments).
    pub fn from_event(
        event: &SagaEvent,
        position: RecordPosition,
        record_timestamp_ms: Option<i64>,
        traceparent: Option<&str>,
    ) -> Option<(OrderId, RecordedEvent)> {
        let order_id = event.order_id()?;
        let recorded = RecordedEvent {
            event_type: event.event_type(),
            event_id: event.event_id(),
            causation_id: event.causation_id(),
            occurred_at_ms: event.occurred_at_millis(),
            record_timestamp_ms,
            position,
            trace_id: traceparent.and_then(trace_id_of),
            failure_reason: failure_reason_of(event),
            detail: detail_of(event),
        };
        Some((order_id, recorded))
    }

    /// Whether the event undoes an earlier step of a failed order: stock released, a capture
    /// refunded.
    pub fn is_compensation(&self) -> bool {
        is_compensation(self.event_type)
    }

    /// Whether the event reports a failure.
    pub fn is_failure(&self) -> bool {
        matches!(
            self.event_type,
            EventType::OrderFailed
                | EventType::PaymentFailed
                | EventType::InventoryReservationFailed
                | EventType::NotificationFailed
        )
    }

    /// The time that counts for throughput: the record's timestamp, or when it happened.
    fn throughput_time_ms(&self) -> i64 {
        self.record_timestamp_ms.unwrap_or(self.occurred_at_ms)
    }
}

/// Whether events of this type are compensations (see docs/saga.md, Compensation).
pub fn is_compensation(event_type: EventType) -> bool {
    matches!(event_type, EventType::InventoryReleased | EventType::PaymentRefunded)
}

/// The lane (service) an event type belongs to: the service that publishes its topic.
pub fn lane_of(event_type: EventType) -> Lane {
    match event_type.topic() {
        Topic::Orders => Lane::Order,
        Topic::Payments => Lane::Payment,
        Topic::Inventory => Lane::Inventory,
        Topic::Notifications => Lane::Notification,
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`),
/// or `None` if the header is not one (all-zero ids are invalid by the standard).
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    let hex = |text: &str, len: usize| text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        [version, trace_id, span_id, flags]
            if hex(version, 2)
                && *version != "ff"
                && hex(trace_id, 32)
                && hex(span_id, 16)
                && hex(flags, 2)
                && trace_id.bytes().any(|b| b != b'0')
                && span_id.bytes().any(|b| b != b'0') =>
        {
            Some(trace_id.to_ascii_lowercase())
        }
        _ => None,
    }
}

fn failure_reason_of(event: &SagaEvent) -> Option<FailureReason> {
    match event {
        SagaEvent::OrderFailed(failed) => Some(failed.reason()),
        SagaEvent::PaymentFailed(failed) => Some(failed.reason()),
        SagaEvent::InventoryReservationFailed(failed) => Some(failed.reason()),
        _ => None,
    }
}

fn money(minor: i64, currency: &str) -> String {
    format!("{}.{:02} {currency}", minor / 100, (minor % 100).abs())
}

fn detail_of(event: &SagaEvent) -> String {
    match event {
        SagaEvent::OrderCreated(created) => format!(
            "{} line(s), total {}",
            created.items.len(),
            money(created.total_minor, &created.currency)
        ),
        SagaEvent::OrderConfirmed(confirmed) => {
            format!("total {}", money(confirmed.total_minor, &confirmed.currency))
        }
        SagaEvent::OrderFailed(failed) => failed.reason().as_str().to_string(),
        SagaEvent::PaymentSucceeded(paid) => format!("captured {}", money(paid.amount_minor, &paid.currency)),
        SagaEvent::PaymentFailed(failed) => format!("{} ({})", failed.reason().as_str(), failed.reason),
        SagaEvent::PaymentRefunded(refund) => {
            format!("refunded {}", money(refund.amount_minor, &refund.currency))
        }
        SagaEvent::InventoryReserved(reserved) => format!("{} line(s) reserved", reserved.items.len()),
        SagaEvent::InventoryReservationFailed(failed) => {
            let reason = failed.reason();
            if failed.unavailable_skus.is_empty() {
                reason.as_str().to_string()
            } else {
                format!("{}: {}", reason.as_str(), failed.unavailable_skus.join(", "))
            }
        }
        SagaEvent::InventoryCommitted(committed) => format!("{} line(s) committed", committed.items.len()),
        SagaEvent::InventoryReleased(released) => format!("{} line(s) released", released.items.len()),
        SagaEvent::StockAdjusted(_) => String::new(),
        SagaEvent::NotificationSent(sent) => format!("email to {}: {}", sent.recipient, sent.subject),
        SagaEvent::NotificationFailed(failed) => format!("email to {} set aside: {}", failed.recipient, failed.error),
    }
}

/// What [`SagaModel::apply`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Added to its order's timeline.
    Added,
    /// An event with the same id was there already (a redelivery); nothing changed.
    Duplicate,
    /// The model is full and the event's order is older than every order kept.
    TooOld,
}

/// Counts of what the model was fed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelCounters {
    /// Events added to a timeline.
    pub events_added: u64,
    /// Redelivered events ignored.
    pub duplicates_ignored: u64,
    /// Records that could not be decoded into an event.
    pub undecodable: u64,
    /// Events of no order (stock adjustments), not kept.
    pub without_order: u64,
    /// Orders evicted to stay within capacity.
    pub orders_evicted: u64,
    /// Events not kept because their order is older than every order kept.
    pub too_old: u64,
}

/// One order as the model keeps it.
#[derive(Debug, Clone)]
struct OrderRecord {
    /// Its events, sorted by when they happened (arrival order among equal times).
    events: Vec<RecordedEvent>,
    event_ids: HashSet<EventId>,
}

impl OrderRecord {
    fn started_at_ms(&self) -> i64 {
        self.events.first().map_or(0, |event| event.occurred_at_ms)
    }

    fn last_event_at_ms(&self) -> i64 {
        self.events.last().map_or(0, |event| event.occurred_at_ms)
    }

    /// The order's decision: the first `order.confirmed` or `order.failed` in time.
    fn decision(&self) -> Option<&RecordedEvent> {
        self.events
            .iter()
            .find(|event| matches!(event.event_type, EventType::OrderConfirmed | EventType::OrderFailed))
    }

    fn status(&self) -> (OrderStatus, Option<FailureReason>) {
        match self.decision() {
            Some(decision) if decision.event_type == EventType::OrderConfirmed => (OrderStatus::Confirmed, None),
            Some(decision) => (
                OrderStatus::Failed,
                Some(decision.failure_reason.unwrap_or(FailureReason::Unknown)),
            ),
            None => (OrderStatus::Pending, None),
        }
    }

    /// The trace id of the order's first event that carried one.
    fn trace_id(&self) -> Option<&str> {
        self.events.iter().find_map(|event| event.trace_id.as_deref())
    }

    fn insert(&mut self, event: RecordedEvent) {
        self.event_ids.insert(event.event_id);
        // After every event that happened at the same time or earlier: arrival order breaks ties.
        let at = self
            .events
            .partition_point(|kept| kept.occurred_at_ms <= event.occurred_at_ms);
        self.events.insert(at, event);
    }

    fn summary(&self, order_id: OrderId, now_ms: i64) -> OrderSummaryView {
        let (status, reason) = self.status();
        let started = self.started_at_ms();
        OrderSummaryView {
            order_id,
            status,
            failure_reason: reason.map(|reason| reason.as_str().to_string()),
            trace_id: self.trace_id().map(str::to_string),
            started_at_ms: started,
            started_at: rfc3339(started),
            age_ms: (now_ms - started).max(0),
            decided_after_ms: self.decision().map(|decision| decision.occurred_at_ms - started),
            total_ms: self.last_event_at_ms() - started,
            events: self.events.len(),
            compensations: self.events.iter().filter(|event| event.is_compensation()).count(),
        }
    }

    fn timeline(&self, order_id: OrderId) -> OrderTimelineView {
        let (status, reason) = self.status();
        let started = self.started_at_ms();
        let by_id: HashMap<EventId, &RecordedEvent> = self.events.iter().map(|event| (event.event_id, event)).collect();
        let events = self
            .events
            .iter()
            .map(|event| {
                let cause = event.causation_id.and_then(|id| by_id.get(&id));
                let lane = lane_of(event.event_type);
                TimelineEventView {
                    event_id: event.event_id,
                    event_type: event.event_type.as_str().to_string(),
                    lane,
                    service: lane.service().to_string(),
                    occurred_at_ms: event.occurred_at_ms,
                    occurred_at: rfc3339(event.occurred_at_ms),
                    offset_ms: event.occurred_at_ms - started,
                    record_timestamp_ms: event.record_timestamp_ms,
                    topic: event.position.topic.clone(),
                    partition: event.position.partition,
                    offset: event.position.offset,
                    trace_id: event.trace_id.clone(),
                    compensation: event.is_compensation(),
                    failure: event.is_failure(),
                    detail: event.detail.clone(),
                    causation_id: event.causation_id,
                    caused_by: cause.map(|cause| cause.event_type.as_str().to_string()),
                    since_cause_ms: cause.map(|cause| event.occurred_at_ms - cause.occurred_at_ms),
                }
            })
            .collect();
        let steps = self
            .events
            .windows(2)
            .map(|pair| StepView {
                from: pair[0].event_type.as_str().to_string(),
                to: pair[1].event_type.as_str().to_string(),
                from_offset_ms: pair[0].occurred_at_ms - started,
                to_offset_ms: pair[1].occurred_at_ms - started,
                duration_ms: pair[1].occurred_at_ms - pair[0].occurred_at_ms,
                compensation: pair[1].is_compensation(),
            })
            .collect();
        OrderTimelineView {
            order_id,
            trace_id: self.trace_id().map(str::to_string),
            status,
            failure_reason: reason.map(|reason| reason.as_str().to_string()),
            started_at_ms: started,
            started_at: rfc3339(started),
            decided_after_ms: self.decision().map(|decision| decision.occurred_at_ms - started),
            total_ms: self.last_event_at_ms() - started,
            lanes: Lane::ALL.to_vec(),
            events,
            steps,
        }
    }
}

/// Unix milliseconds as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Orders placed and decided per second of record time, kept by second for the last minute.
#[derive(Debug, Clone, Default)]
struct Throughput {
    placed: BTreeMap<i64, u64>,
    decided: BTreeMap<i64, u64>,
    latest_second: i64,
}

/// The longest window throughput is asked for.
const THROUGHPUT_HORIZON_SECS: i64 = 60;

impl Throughput {
    fn count(&mut self, event: &RecordedEvent) {
        let buckets = match event.event_type {
            EventType::OrderCreated => &mut self.placed,
            EventType::OrderConfirmed | EventType::OrderFailed => &mut self.decided,
            _ => return,
        };
        let second = event.throughput_time_ms().div_euclid(1000);
        if second < self.latest_second - THROUGHPUT_HORIZON_SECS - 1 {
            // Older than any window asked for from now on.
            return;
        }
        *buckets.entry(second).or_default() += 1;
        if second > self.latest_second {
            self.latest_second = second;
            // Nothing older than the horizon before the latest record can count again.
            let keep_from = second - THROUGHPUT_HORIZON_SECS - 1;
            for buckets in [&mut self.placed, &mut self.decided] {
                *buckets = buckets.split_off(&keep_from);
            }
        }
    }

    /// Events per second in the `window_secs` seconds up to `now_ms` (the current second
    /// included).
    fn rate(buckets: &BTreeMap<i64, u64>, now_ms: i64, window_secs: i64) -> f64 {
        let now_second = now_ms.div_euclid(1000);
        let total: u64 = buckets
            .range(now_second - window_secs + 1..=now_second)
            .map(|(_, count)| count)
            .sum();
        total as f64 / window_secs as f64
    }

    fn view(&self, now_ms: i64) -> ThroughputView {
        ThroughputView {
            placed_per_sec_10s: Self::rate(&self.placed, now_ms, 10),
            placed_per_sec_60s: Self::rate(&self.placed, now_ms, 60),
            decided_per_sec_10s: Self::rate(&self.decided, now_ms, 10),
            decided_per_sec_60s: Self::rate(&self.decided, now_ms, 60),
        }
    }
}

/// The recent orders and what was seen of them.
#[derive(Debug, Clone)]
pub struct SagaModel {
    capacity: usize,
    orders: HashMap<OrderId, OrderRecord>,
    /// Every kept order by (start time, id): the first is the next to evict, the last the newest.
    by_start: BTreeSet<(i64, OrderId)>,
    counters: ModelCounters,
    throughput: Throughput,
}

impl SagaModel {
    /// An empty model keeping at most `capacity` orders (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            orders: HashMap::new(),
            by_start: BTreeSet::new(),
            counters: ModelCounters::default(),
            throughput: Throughput::default(),
        }
    }

    /// Adds one event of `order_id` to the model.
    pub fn apply(&mut self, order_id: OrderId, event: RecordedEvent) -> Applied {
        if let Some(order) = self.orders.get_mut(&order_id) {
            if order.event_ids.contains(&event.event_id) {
                self.counters.duplicates_ignored += 1;
                return Applied::Duplicate;
            }
            let started_before = order.started_at_ms();
            self.throughput.count(&event);
            order.insert(event);
            let started_now = order.started_at_ms();
            if started_now != started_before {
                self.by_start.remove(&(started_before, order_id));
                self.by_start.insert((started_now, order_id));
            }
            self.counters.events_added += 1;
            return Applied::Added;
        }
        if self.orders.len() >= self.capacity {
            let oldest = self.by_start.first().copied();
            match oldest {
                Some((oldest_start, _)) if event.occurred_at_ms < oldest_start => {
                    self.counters.too_old += 1;
                    return Applied::TooOld;
                }
                Some(oldest) => {
                    self.by_start.remove(&oldest);
                    self.orders.remove(&oldest.1);
                    self.counters.orders_evicted += 1;
                }
                None => {}
            }
        }
        self.throughput.count(&event);
        let mut order = OrderRecord {
            events: Vec::new(),
            event_ids: HashSet::new(),
        };
        order.insert(event);
        self.by_start.insert((order.started_at_ms(), order_id));
        self.orders.insert(order_id, order);
        self.counters.events_added += 1;
        Applied::Added
    }

    /// Counts a record that could not be decoded.
    pub fn count_undecodable(&mut self) {
        self.counters.undecodable += 1;
    }

    /// Counts an event that belongs to no order.
    pub fn count_without_order(&mut self) {
        self.counters.without_order += 1;
    }

    /// What the model was fed so far.
    pub fn counters(&self) -> ModelCounters {
        self.counters
    }

    /// How many orders it holds.
    pub fn len(&self) -> usize {
        self.orders.len()
    }

    /// Whether it holds no order.
    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }

    /// The most orders it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// One order's timeline, if the model holds the order.
    pub fn timeline(&self, order_id: OrderId) -> Option<OrderTimelineView> {
        self.orders.get(&order_id).map(|order| order.timeline(order_id))
    }

    /// Up to `limit` orders, newest first, only those with `status` if given.
    pub fn recent(&self, limit: usize, status: Option<OrderStatus>, now_ms: i64) -> Vec<OrderSummaryView> {
        self.by_start
            .iter()
            .rev()
            .filter_map(|(_, order_id)| self.orders.get(order_id).map(|order| (*order_id, order)))
            .filter(|(_, order)| status.is_none_or(|wanted| order.status().0 == wanted))
            .take(limit)
            .map(|(order_id, order)| order.summary(order_id, now_ms))
            .collect()
    }

    /// How the orders held ended: confirmed, failed by reason, still pending.
    pub fn outcome_mix(&self) -> OutcomeMixView {
        let mut mix = OutcomeMixView::default();
        for order in self.orders.values() {
            match order.status() {
                (OrderStatus::Pending, _) => mix.pending += 1,
                (OrderStatus::Confirmed, _) => mix.confirmed += 1,
                (OrderStatus::Failed, reason) => {
                    mix.failed += 1;
                    let reason = reason.unwrap_or(FailureReason::Unknown).as_str().to_string();
                    *mix.failed_by_reason.entry(reason).or_default() += 1;
                }
            }
        }
        mix
    }

    /// Orders placed and decided per second over the last 10 and 60 seconds before `now_ms`,
    /// by the records' timestamps.
    pub fn throughput(&self, now_ms: i64) -> ThroughputView {
        self.throughput.view(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use saga_contracts::{
        Envelope, InventoryReleased, InventoryReservationFailed, InventoryReserved, OrderConfirmed, OrderCreated,
        OrderFailed, PaymentFailed, PaymentRefunded, PaymentSucceeded,
    };

    use super::*;

    const T0: i64 = 1_700_000_000_000;

    /// Builds the events of one order, each caused by the previous one given, at chosen times.
    struct Saga {
        order_id: OrderId,
        next_offset: i64,
    }

    impl Saga {
        fn new() -> Self {
            Self {
                order_id: OrderId::new(),
                next_offset: 0,
            }
        }

        fn envelope(&self, at_ms: i64, cause: Option<&RecordedEvent>) -> Envelope {
            Envelope {
                event_id: EventId::new(),
                order_id: self.order_id,
                causation_id: cause.map(|cause| cause.event_id),
                occurred_at: T0 + at_ms,
            }
        }

        fn record(&mut self, event: SagaEvent) -> RecordedEvent {
            self.next_offset += 1;
            let topic = event.event_type().topic().base_name().to_string();
            let traceparent = format!("00-{}-00f067aa0ba902b7-01", self.order_id.uuid().simple());
            let (order_id, recorded) = RecordedEvent::from_event(
                &event,
                RecordPosition {
                    topic,
                    partition: 0,
                    offset: self.next_offset,
                },
                Some(event.occurred_at_millis() + 1),
                Some(&traceparent),
            )
            .expect("an order's event");
            assert_eq!(order_id, self.order_id);
            recorded
        }

        fn created(&mut self, at_ms: i64) -> RecordedEvent {
            let event = OrderCreated {
                envelope: self.envelope(at_ms, None),
                customer_id: "c-1".into(),
                customer_email: "c@example.com".into(),
                payment_token: "tok_ok".into(),
                total_minor: 2_500,
                currency: "EUR".into(),
                items: Vec::new(),
                sales_channel: "web".into(),
                idempotency_key: None,
                request_hash: None,
                deadline_at: None,
            };
            self.record(event.into())
        }

        fn paid(&mut self, at_ms: i64, cause: &RecordedEvent) -> RecordedEvent {
            let event = PaymentSucceeded {
                envelope: self.envelope(at_ms, Some(cause)),
                payment_id: saga_contracts::PaymentId::new(),
                amount_minor: 2_500,
                currency: "EUR".into(),
                gateway_reference: Some("gw-1".into()),
            };
            self.record(event.into())
        }

        fn declined(&mut self, at_ms: i64, cause: &RecordedEvent) -> RecordedEvent {
            let event = PaymentFailed {
                envelope: self.envelope(at_ms, Some(cause)),
                reason: "card_declined".into(),
                failure_reason: FailureReason::PaymentDeclined,
                amount_minor: 2_500,
                currency: "EUR".into(),
            };
            self.record(event.into())
        }

        fn reserved(&mut self, at_ms: i64, cause: &RecordedEvent) -> RecordedEvent {
            let event = InventoryReserved {
                envelope: self.envelope(at_ms, Some(cause)),
                items: Vec::new(),
            };
            self.record(event.into())
        }

        fn out_of_stock(&mut self, at_ms: i64, cause: &RecordedEvent) -> RecordedEvent {
            let event = InventoryReservationFailed {
                envelope: self.envelope(at_ms, Some(cause)),
                reason: "out_of_stock".into(),
                failure_reason: FailureReason::OutOfStock,
                unavailable_skus: vec!["SKU-1".into()],
            };
            self.record(event.into())
        }

        fn confirmed(&mut self, at_ms: i64, cause: &RecordedEvent) -> RecordedEvent {
            let event = OrderConfirmed {
                envelope: self.envelope(at_ms, Some(cause)),
                customer_email: "c@example.com".into(),
                total_minor: 2_500,
                currency: "EUR".into(),
            };
            self.record(event.into())
        }

        fn failed(&mut self, at_ms: i64, cause: &RecordedEvent, reason: FailureReason) -> RecordedEvent {
            let event = OrderFailed {
                envelope: self.envelope(at_ms, Some(cause)),
                reason: reason.as_str().into(),
                failure_reason: reason,
                customer_email: "c@example.com".into(),
                total_minor: 2_500,
                currency: "EUR".into(),
            };
            self.record(event.into())
        }

        fn refunded(&mut self, at_ms: i64, cause: &RecordedEvent) -> RecordedEvent {
            let event = PaymentRefunded {
                envelope: self.envelope(at_ms, Some(cause)),
                payment_id: saga_contracts::PaymentId::new(),
                amount_minor: 2_500,
                currency: "EUR".into(),
                reason: "order failed".into(),
            };
            self.record(event.into())
        }

        fn released(&mut self, at_ms: i64, cause: &RecordedEvent) -> RecordedEvent {
            let event = InventoryReleased {
                envelope: self.envelope(at_ms, Some(cause)),
                items: Vec::new(),
                reason: "order failed".into(),
            };
            self.record(event.into())
        }
    }

    fn apply_all(model: &mut SagaModel, order_id: OrderId, events: &[RecordedEvent]) {
        for event in events {
            assert_eq!(model.apply(order_id, event.clone()), Applied::Added);
        }
    }

    fn types(view: &OrderTimelineView) -> Vec<&str> {
        view.events.iter().map(|event| event.event_type.as_str()).collect()
    }

    #[test]
    fn a_confirmed_saga_becomes_a_timeline_in_time_order_with_a_lane_per_service() {
        let mut saga = Saga::new();
        let created = saga.created(0);
        let reserved = saga.reserved(12, &created);
        let paid = saga.paid(40, &created);
        let confirmed = saga.confirmed(45, &paid);
        let mut model = SagaModel::new(10);
        apply_all(&mut model, saga.order_id, &[created, reserved, paid, confirmed]);

        let view = model.timeline(saga.order_id).expect("the order is held");
        assert_eq!(view.status, OrderStatus::Confirmed);
        assert_eq!(view.failure_reason, None);
        assert_eq!(
            types(&view),
            [
                "order.created",
                "inventory.reserved",
                "payment.success",
                "order.confirmed"
            ]
        );
        let lanes: Vec<Lane> = view.events.iter().map(|event| event.lane).collect();
        assert_eq!(lanes, [Lane::Order, Lane::Inventory, Lane::Payment, Lane::Order]);
        assert_eq!(view.events[2].service, "payment-service");
        let offsets: Vec<i64> = view.events.iter().map(|event| event.offset_ms).collect();
        assert_eq!(offsets, [0, 12, 40, 45]);
        assert_eq!(view.decided_after_ms, Some(45));
        assert_eq!(view.total_ms, 45);
        assert_eq!(view.lanes, Lane::ALL);
        assert!(view.events.iter().all(|event| !event.compensation));
    }

    #[test]
    fn each_step_lasts_from_one_event_to_the_next_and_each_event_knows_its_cause() {
        let mut saga = Saga::new();
        let created = saga.created(0);
        let reserved = saga.reserved(12, &created);
        let paid = saga.paid(40, &created);
        let confirmed = saga.confirmed(45, &paid);
        let mut model = SagaModel::new(10);
        apply_all(&mut model, saga.order_id, &[created, reserved, paid, confirmed]);

        let view = model.timeline(saga.order_id).expect("the order is held");
        let steps: Vec<(&str, &str, i64)> = view
            .steps
            .iter()
            .map(|step| (step.from.as_str(), step.to.as_str(), step.duration_ms))
            .collect();
        assert_eq!(
            steps,
            [
                ("order.created", "inventory.reserved", 12),
                ("inventory.reserved", "payment.success", 28),
                ("payment.success", "order.confirmed", 5),
            ]
        );
        let payment = &view.events[2];
        assert_eq!(payment.caused_by.as_deref(), Some("order.created"));
        assert_eq!(payment.since_cause_ms, Some(40));
        assert_eq!(view.events[0].caused_by, None);
    }

    #[test]
    fn an_order_is_pending_until_its_decision_arrives() {
        let mut saga = Saga::new();
        let created = saga.created(0);
        let paid = saga.paid(10, &created);
        let mut model = SagaModel::new(10);
        apply_all(&mut model, saga.order_id, &[created, paid]);
        let view = model.timeline(saga.order_id).expect("held");
        assert_eq!(view.status, OrderStatus::Pending);
        assert_eq!(view.decided_after_ms, None);
        assert_eq!(model.outcome_mix().pending, 1);
    }

    #[test]
    fn a_failed_order_carries_its_reason_and_its_compensations_are_flagged() {
        let mut saga = Saga::new();
        let created = saga.created(0);
        let paid = saga.paid(20, &created);
        let short = saga.out_of_stock(25, &created);
        let failed = saga.failed(30, &short, FailureReason::OutOfStock);
        let refunded = saga.refunded(90, &failed);
        let mut model = SagaModel::new(10);
        apply_all(&mut model, saga.order_id, &[created, paid, short, failed, refunded]);

        let view = model.timeline(saga.order_id).expect("held");
        assert_eq!(view.status, OrderStatus::Failed);
        assert_eq!(view.failure_reason.as_deref(), Some("out_of_stock"));
        let flagged: Vec<(&str, bool, bool)> = view
            .events
            .iter()
            .map(|event| (event.event_type.as_str(), event.compensation, event.failure))
            .collect();
        assert_eq!(
            flagged,
            [
                ("order.created", false, false),
                ("payment.success", false, false),
                ("inventory.reservation_failed", false, true),
                ("order.failed", false, true),
                ("payment.refunded", true, false),
            ]
        );
        assert!(view.steps.last().expect("steps").compensation);
        let summary = &model.recent(10, None, T0 + 1_000)[0];
        assert_eq!(summary.compensations, 1);
        assert_eq!(summary.total_ms, 90);
        assert_eq!(summary.age_ms, 1_000);
    }

    #[test]
    fn released_stock_is_a_compensation_too() {
        let mut saga = Saga::new();
        let created = saga.created(0);
        let reserved = saga.reserved(5, &created);
        let declined = saga.declined(9, &created);
        let failed = saga.failed(11, &declined, FailureReason::PaymentDeclined);
        let released = saga.released(15, &failed);
        let mut model = SagaModel::new(10);
        apply_all(
            &mut model,
            saga.order_id,
            &[created, reserved, declined, failed, released],
        );
        let view = model.timeline(saga.order_id).expect("held");
        assert_eq!(view.failure_reason.as_deref(), Some("payment_declined"));
        let compensations: Vec<&str> = view
            .events
            .iter()
            .filter(|event| event.compensation)
            .map(|event| event.event_type.as_str())
            .collect();
        assert_eq!(compensations, ["inventory.released"]);
    }

    #[test]
    fn events_arriving_out_of_order_across_topics_are_placed_by_when_they_happened() {
        let mut saga = Saga::new();
        let created = saga.created(0);
        let reserved = saga.reserved(12, &created);
        let paid = saga.paid(40, &created);
        let confirmed = saga.confirmed(45, &paid);
        let mut model = SagaModel::new(10);
        // The payments partition was read before the orders and inventory partitions.
        apply_all(
            &mut model,
            saga.order_id,
            &[paid, confirmed.clone(), reserved, created.clone()],
        );

        let view = model.timeline(saga.order_id).expect("held");
        assert_eq!(
            types(&view),
            [
                "order.created",
                "inventory.reserved",
                "payment.success",
                "order.confirmed"
            ]
        );
        assert_eq!(view.started_at_ms, created.occurred_at_ms);
        assert_eq!(view.events[3].offset_ms, 45);
        assert_eq!(view.status, OrderStatus::Confirmed);
        // Its place among the newest follows its real start, which came last.
        let mut later = Saga::new();
        let later_created = later.created(30);
        model.apply(later.order_id, later_created);
        let newest_first: Vec<OrderId> = model.recent(10, None, T0).iter().map(|order| order.order_id).collect();
        assert_eq!(newest_first, [later.order_id, saga.order_id]);
    }

    #[test]
    fn a_redelivered_event_is_kept_once() {
        let mut saga = Saga::new();
        let created = saga.created(0);
        let mut model = SagaModel::new(10);
        assert_eq!(model.apply(saga.order_id, created.clone()), Applied::Added);
        let mut again = created.clone();
        again.position.offset += 100;
        assert_eq!(model.apply(saga.order_id, again), Applied::Duplicate);
        assert_eq!(model.timeline(saga.order_id).expect("held").events.len(), 1);
        assert_eq!(model.counters().duplicates_ignored, 1);
        assert_eq!(
            model
                .throughput(created.record_timestamp_ms.expect("set"))
                .placed_per_sec_10s,
            0.1
        );
    }

    #[test]
    fn a_full_model_evicts_the_order_that_started_first() {
        let mut model = SagaModel::new(2);
        let mut sagas: Vec<Saga> = (0..3).map(|_| Saga::new()).collect();
        for (index, saga) in sagas.iter_mut().enumerate() {
            let created = saga.created(index as i64 * 100);
            model.apply(saga.order_id, created);
        }
        assert_eq!(model.len(), 2);
        assert!(model.timeline(sagas[0].order_id).is_none(), "the oldest order is gone");
        assert!(model.timeline(sagas[1].order_id).is_some());
        assert!(model.timeline(sagas[2].order_id).is_some());
        assert_eq!(model.counters().orders_evicted, 1);
    }

    #[test]
    fn a_late_event_of_an_order_older_than_every_kept_one_does_not_come_back() {
        let mut model = SagaModel::new(2);
        let mut old = Saga::new();
        let old_created = old.created(0);
        let old_paid = old.paid(10, &old_created);
        model.apply(old.order_id, old_created);
        for index in 1..=2 {
            let mut newer = Saga::new();
            let created = newer.created(index * 100);
            model.apply(newer.order_id, created);
        }
        assert!(model.timeline(old.order_id).is_none());
        assert_eq!(model.apply(old.order_id, old_paid), Applied::TooOld);
        assert!(model.timeline(old.order_id).is_none());
        assert_eq!(model.len(), 2);
        assert_eq!(model.counters().too_old, 1);
    }

    #[test]
    fn the_order_takes_the_trace_id_of_its_first_event() {
        let mut saga = Saga::new();
        let created = saga.created(0);
        let mut model = SagaModel::new(10);
        model.apply(saga.order_id, created);
        let view = model.timeline(saga.order_id).expect("held");
        assert_eq!(view.trace_id, Some(saga.order_id.uuid().simple().to_string()));
    }

    #[test]
    fn only_a_well_formed_traceparent_gives_a_trace_id() {
        assert_eq!(
            trace_id_of("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(trace_id_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_outcome_mix_counts_orders_by_status_and_failures_by_reason() {
        let mut model = SagaModel::new(10);
        for outcome in [
            Some(None),
            Some(Some(FailureReason::OutOfStock)),
            Some(Some(FailureReason::OutOfStock)),
            Some(Some(FailureReason::PaymentDeclined)),
            None,
        ] {
            let mut saga = Saga::new();
            let created = saga.created(0);
            let decision = match outcome {
                Some(None) => Some(saga.confirmed(10, &created)),
                Some(Some(reason)) => Some(saga.failed(10, &created, reason)),
                None => None,
            };
            model.apply(saga.order_id, created);
            if let Some(decision) = decision {
                model.apply(saga.order_id, decision);
            }
        }
        let mix = model.outcome_mix();
        assert_eq!((mix.pending, mix.confirmed, mix.failed), (1, 1, 3));
        assert_eq!(mix.failed_by_reason.get("out_of_stock"), Some(&2));
        assert_eq!(mix.failed_by_reason.get("payment_declined"), Some(&1));
    }

    #[test]
    fn throughput_counts_placed_and_decided_orders_per_second_over_the_last_10_and_60_seconds() {
        let mut model = SagaModel::new(100);
        // 20 orders placed 5 s before "now", 30 placed 40 s before, 10 placed 2 min before.
        let now = T0 + 200_000;
        for (placed_before_ms, count) in [(5_000, 20), (40_000, 30), (120_000, 10)] {
            for _ in 0..count {
                let mut saga = Saga::new();
                let created = saga.created(200_000 - placed_before_ms);
                let confirmed = saga.confirmed(200_000 - placed_before_ms + 10, &created);
                model.apply(saga.order_id, created);
                model.apply(saga.order_id, confirmed);
            }
        }
        let throughput = model.throughput(now);
        assert_eq!(throughput.placed_per_sec_10s, 2.0);
        assert_eq!(throughput.placed_per_sec_60s, 50.0 / 60.0);
        assert_eq!(throughput.decided_per_sec_10s, 2.0);
        assert_eq!(model.throughput(now + 3_600_000).placed_per_sec_60s, 0.0);
    }

    #[test]
    fn the_newest_orders_come_first_and_can_be_filtered_by_status() {
        let mut model = SagaModel::new(10);
        let mut ids = Vec::new();
        for index in 0..4 {
            let mut saga = Saga::new();
            let created = saga.created(index * 10);
            let confirmed = saga.confirmed(index * 10 + 5, &created);
            model.apply(saga.order_id, created);
            if index % 2 == 0 {
                model.apply(saga.order_id, confirmed);
            }
            ids.push(saga.order_id);
        }
        let newest: Vec<OrderId> = model.recent(3, None, T0).iter().map(|o| o.order_id).collect();
        assert_eq!(newest, [ids[3], ids[2], ids[1]]);
        let confirmed: Vec<OrderId> = model
            .recent(10, Some(OrderStatus::Confirmed), T0)
            .iter()
            .map(|o| o.order_id)
            .collect();
        assert_eq!(confirmed, [ids[2], ids[0]]);
    }
}
