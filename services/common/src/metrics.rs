//! Prometheus metrics of every service: one process-wide recorder, installed once (several
//! services started in one test process share it), every metric's name, labels, unit and help
//! text in one place, `GET /metrics` in the Prometheus text format, and the pieces that record
//! what all services have in common: HTTP requests (a middleware layer labelled by the route
//! template, never the raw path), and the consumer lag per partition taken from librdkafka's
//! statistics. docs/metrics.md describes each metric.
//!
//! Recording goes through the `metrics` macros: an atomic operation on a handle, no I/O, so the
//! hot paths stay as fast as before. Services name their metrics and labels with the constants
//! below.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter, Histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::statistics::{Partition, Statistics};

/// Path every service serves its metrics on, next to its health routes; not authenticated.
pub const METRICS_PATH: &str = "/metrics";
/// Content type of the Prometheus text exposition format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4";

/// Label keys.
pub mod label {
    /// The service that recorded the value (`order-service`, ...), where the other labels do not
    /// already tell.
    pub const SERVICE: &str = "service";
    /// A Kafka topic, prefix included.
    pub const TOPIC: &str = "topic";
    /// A partition number.
    pub const PARTITION: &str = "partition";
    /// A consumer group, prefix included (`<prefix><service>`).
    pub const CONSUMER_GROUP: &str = "consumer_group";
    /// What became of something; the values depend on the metric.
    pub const OUTCOME: &str = "outcome";
    /// Why an order failed (`none` for a confirmed one).
    pub const REASON: &str = "reason";
    /// HTTP method.
    pub const METHOD: &str = "method";
    /// HTTP route template, e.g. `/orders/{order_id}`.
    pub const ROUTE: &str = "route";
    /// HTTP status code.
    pub const STATUS: &str = "status";
    /// Payment gateway operation: `charge` or `refund`.
    pub const OPERATION: &str = "operation";
    /// Kind of gateway error: `transient` or `rejected`.
    pub const KIND: &str = "kind";
    /// The state a circuit breaker left: `closed`, `half_open` or `open`.
    pub const FROM: &str = "from";
    /// The state a circuit breaker entered: `closed`, `half_open` or `open`.
    pub const TO: &str = "to";
    /// Which email: `confirmed` or `failed`.
    pub const TEMPLATE: &str = "template";
    /// What follows a failed email: `retried` or `set_aside`.
    pub const DISPOSITION: &str = "disposition";
}

// ---- HTTP (every service)

/// Counter: HTTP requests answered, by service, method, route and status.
pub const HTTP_REQUESTS: &str = "saga_http_requests_total";
/// Histogram: time to answer an HTTP request, by service, method, route and status.
pub const HTTP_REQUEST_DURATION: &str = "saga_http_request_duration_seconds";

// ---- Consumer loop (every consuming service)

/// Counter: records finished, by topic, consumer group and outcome (`processed`, `dead_lettered`).
pub const CONSUMER_RECORDS: &str = "saga_consumer_records_total";
/// Histogram: time from handing a record to the handler until its effect committed or the
/// policy gave up, retries included, by topic and consumer group.
pub const CONSUMER_HANDLER_DURATION: &str = "saga_consumer_handler_duration_seconds";
/// Counter: handler attempts that failed and were retried, by topic and consumer group.
pub const CONSUMER_RETRIES: &str = "saga_consumer_retries_total";
/// Counter: records sent to the dead-letter topic, by the topic they came from and consumer group.
pub const CONSUMER_DEAD_LETTERS: &str = "saga_consumer_dead_letters_total";
/// Gauge: records of a partition not yet processed, by topic, partition and consumer group.
pub const CONSUMER_LAG: &str = "saga_consumer_lag_records";

// ---- Outbox relay (every service)

/// Gauge: outbox rows written and not yet published, by service.
pub const OUTBOX_PENDING: &str = "saga_outbox_pending_rows";
/// Gauge: age of the oldest pending outbox row (0 when none is pending), by service.
pub const OUTBOX_OLDEST_AGE: &str = "saga_outbox_oldest_pending_age_seconds";
/// Histogram: time from sending an outbox record to its delivery report, by service and topic.
pub const OUTBOX_PUBLISH_DURATION: &str = "saga_outbox_publish_duration_seconds";
/// Counter: outbox rows published and removed from the outbox, by service and topic.
pub const OUTBOX_PUBLISHED: &str = "saga_outbox_published_total";
/// Counter: outbox rows parked (set aside as unpublishable), by service.
pub const OUTBOX_PARKED: &str = "saga_outbox_parked_total";
/// Histogram: how many events one database transaction took, by `kind`: `consumer` (a
/// consumer's batch of records), `outbox` (a relay batch of rows published), `settlement`
/// (payment outcomes the charger recorded together).
pub const TRANSACTION_BATCH_SIZE: &str = "saga_transaction_batch_size";

// ---- Order service

/// Counter: orders accepted by `POST /orders` (an idempotent replay of an accepted order is not
/// counted again).
pub const ORDERS_PLACED: &str = "saga_orders_placed_total";
/// Counter: orders decided, by outcome (`confirmed`, `failed`) and reason (`none` when confirmed).
pub const ORDERS_DECIDED: &str = "saga_orders_decided_total";
/// Histogram: time from an order's creation to its decision, by outcome.
pub const SAGA_DURATION: &str = "saga_duration_seconds";

// ---- Payment service

/// Counter: payment gateway calls, by operation and outcome (`captured`, `declined`, `refunded`,
/// `error`).
pub const GATEWAY_CALLS: &str = "saga_payment_gateway_calls_total";
/// Histogram: time a payment gateway call took, by operation.
pub const GATEWAY_CALL_DURATION: &str = "saga_payment_gateway_call_duration_seconds";
/// Counter: payment gateway calls that failed, by operation and kind (`transient`, `rejected`).
pub const GATEWAY_ERRORS: &str = "saga_payment_gateway_errors_total";
/// Gauge: state of the payment gateway's circuit breaker: 0 closed, 1 half-open, 2 open.
pub const GATEWAY_CIRCUIT_STATE: &str = "saga_payment_gateway_circuit_state";
/// Counter: state changes of the payment gateway's circuit breaker, by the state left (`from`)
/// and entered (`to`).
pub const GATEWAY_CIRCUIT_TRANSITIONS: &str = "saga_payment_gateway_circuit_transitions_total";

// ---- Notification service

/// Counter: emails the SMTP server accepted, by template.
pub const EMAILS_SENT: &str = "saga_emails_sent_total";
/// Counter: failed attempts to send an email, by template and disposition (`retried`,
/// `set_aside`).
pub const EMAILS_FAILED: &str = "saga_emails_failed_total";

/// Buckets (seconds) of latencies that are usually milliseconds: HTTP requests, handlers, relay
/// publishing.
const FAST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets (seconds) of payment gateway calls: a real gateway answers in tenths of a second to
/// seconds.
const GATEWAY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets (seconds) of a whole saga: from tens of milliseconds up to past the default 30 s
/// deadline.
const SAGA_BUCKETS: &[f64] = &[
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0,
];

/// Buckets (events) of batch sizes: powers of two up to the largest batches the settings allow.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// How often the recorder's histograms are folded into their buckets when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder on the first call and returns its handle; later calls
/// return the same handle. If another recorder was installed first, metrics go there and
/// `/metrics` shows none of them (logged once).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = match builder().install_recorder() {
                Ok(handle) => handle,
                Err(error) => {
                    tracing::warn!(%error, "another metrics recorder is installed; /metrics stays empty");
                    builder().build_recorder().handle()
                }
            };
            describe();
            let upkeep = handle.clone();
            // A thread, not a task: the recorder outlives any one runtime (tests start several).
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                });
            if let Err(error) = spawned {
                tracing::warn!(%error, "no metrics upkeep thread; histograms are folded at each scrape only");
            }
            handle
        })
        .clone()
}

fn builder() -> PrometheusBuilder {
    let buckets = [
        (HTTP_REQUEST_DURATION, FAST_BUCKETS),
        (CONSUMER_HANDLER_DURATION, FAST_BUCKETS),
        (OUTBOX_PUBLISH_DURATION, FAST_BUCKETS),
        (GATEWAY_CALL_DURATION, GATEWAY_BUCKETS),
        (SAGA_DURATION, SAGA_BUCKETS),
        (TRANSACTION_BATCH_SIZE, BATCH_BUCKETS),
    ];
    buckets
        .into_iter()
        .fold(PrometheusBuilder::new(), |builder, (name, values)| {
            builder
                .set_buckets_for_metric(Matcher::Full(name.to_owned()), values)
                .expect("bucket lists are not empty")
        })
}

/// Help text and unit of every metric, shown as `# HELP` lines.
fn describe() {
    describe_counter!(HTTP_REQUESTS, Unit::Count, "HTTP requests answered");
    describe_histogram!(HTTP_REQUEST_DURATION, Unit::Seconds, "Time to answer an HTTP request");
    describe_counter!(
        CONSUMER_RECORDS,
        Unit::Count,
        "Consumed records finished: processed, or sent to the dead-letter topic"
    );
    describe_histogram!(
        CONSUMER_HANDLER_DURATION,
        Unit::Seconds,
        "Time from handing a record to the handler until its effect committed or the error policy gave up, retries included"
    );
    describe_counter!(
        CONSUMER_RETRIES,
        Unit::Count,
        "Failed handler attempts that were retried"
    );
    describe_counter!(
        CONSUMER_DEAD_LETTERS,
        Unit::Count,
        "Records sent to the dead-letter topic"
    );
    describe_gauge!(
        CONSUMER_LAG,
        Unit::Count,
        "Records of a partition not yet processed by its consumer group: high watermark minus the next offset to process"
    );
    describe_gauge!(OUTBOX_PENDING, Unit::Count, "Outbox rows written and not yet published");
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest outbox row not yet published (0 when none is)"
    );
    describe_histogram!(
        OUTBOX_PUBLISH_DURATION,
        Unit::Seconds,
        "Time from sending an outbox record to the broker's acknowledgement"
    );
    describe_counter!(OUTBOX_PUBLISHED, Unit::Count, "Outbox rows published");
    describe_counter!(OUTBOX_PARKED, Unit::Count, "Outbox rows parked as unpublishable");
    describe_histogram!(
        TRANSACTION_BATCH_SIZE,
        Unit::Count,
        "Events taken in one database transaction, by kind (consumer, outbox, settlement)"
    );
    describe_counter!(ORDERS_PLACED, Unit::Count, "Orders accepted by POST /orders");
    describe_counter!(
        ORDERS_DECIDED,
        Unit::Count,
        "Orders decided, by outcome and failure reason"
    );
    describe_histogram!(
        SAGA_DURATION,
        Unit::Seconds,
        "Time from an order's creation to its decision"
    );
    describe_counter!(
        GATEWAY_CALLS,
        Unit::Count,
        "Payment gateway calls, by operation and outcome"
    );
    describe_histogram!(GATEWAY_CALL_DURATION, Unit::Seconds, "Time a payment gateway call took");
    describe_counter!(GATEWAY_ERRORS, Unit::Count, "Payment gateway calls that failed");
    describe_gauge!(
        GATEWAY_CIRCUIT_STATE,
        "State of the payment gateway's circuit breaker: 0 closed, 1 half-open, 2 open"
    );
    describe_counter!(
        GATEWAY_CIRCUIT_TRANSITIONS,
        Unit::Count,
        "State changes of the payment gateway's circuit breaker"
    );
    describe_counter!(EMAILS_SENT, Unit::Count, "Emails the SMTP server accepted");
    describe_counter!(EMAILS_FAILED, Unit::Count, "Failed attempts to send an email");
}

/// `GET /metrics`: every metric of the process in the Prometheus text format.
pub fn router(handle: PrometheusHandle) -> Router {
    Router::new().route(METRICS_PATH, get(scrape)).with_state(handle)
}

/// The OpenAPI description of `GET /metrics`.
pub(crate) fn document() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(scrape))]
    struct MetricsApi;
    <MetricsApi as utoipa::OpenApi>::openapi()
}

/// Every metric of the process in the Prometheus text exposition format (docs/metrics.md).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "The metrics, in the Prometheus text format", body = String, content_type = "text/plain; version=0.0.4"),
    )
)]
async fn scrape(State(handle): State<PrometheusHandle>) -> Response {
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], handle.render()).into_response()
}

/// Adds the HTTP request metrics of `service` to every route of `router` and to its fallback;
/// apply it after all routes are merged. Scrapes of [`METRICS_PATH`] are not counted.
pub fn record_http_requests(router: Router, service: &'static str) -> Router {
    router.layer(axum::middleware::from_fn_with_state(service, track_http_request))
}

async fn track_http_request(State(service): State<&'static str>, request: Request, next: Next) -> Response {
    let route = route_label(request.extensions().get::<MatchedPath>().map(MatchedPath::as_str));
    if route == METRICS_PATH {
        return next.run(request).await;
    }
    let route = route.to_owned();
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = [
        (label::SERVICE, service.to_owned()),
        (label::METHOD, method.to_owned()),
        (label::ROUTE, route),
        (label::STATUS, response.status().as_str().to_owned()),
    ];
    counter!(HTTP_REQUESTS, &labels).increment(1);
    histogram!(HTTP_REQUEST_DURATION, &labels).record(started.elapsed());
    response
}

/// The route label of a request: the template it matched (so ids do not multiply the series),
/// or `unmatched`.
pub fn route_label(matched: Option<&str>) -> &str {
    matched.unwrap_or("unmatched")
}

/// The method label: the standard methods by name, anything else as `other`.
pub fn method_label(method: &Method) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
    ];
    STANDARD
        .into_iter()
        .find(|standard| *standard == method.as_str())
        .unwrap_or("other")
}

/// Sets the outbox gauges of `service`: `rows` pending, the oldest written `oldest_age` ago
/// (`None` when none is pending).
pub fn set_outbox_pending(service: &'static str, rows: i64, oldest_age: Option<Duration>) {
    gauge!(OUTBOX_PENDING, label::SERVICE => service).set(rows as f64);
    gauge!(OUTBOX_OLDEST_AGE, label::SERVICE => service).set(oldest_age.unwrap_or_default());
}

/// Records how long the broker took to acknowledge one outbox record of `service` for `topic`.
pub fn record_outbox_publish(service: &'static str, topic: &str, duration: Duration) {
    histogram!(OUTBOX_PUBLISH_DURATION, label::SERVICE => service, label::TOPIC => topic.to_owned()).record(duration);
}

/// Counts `rows` outbox rows of `service` published to `topic` (and so removed from the outbox).
pub fn count_outbox_published(service: &'static str, topic: &str, rows: u64) {
    counter!(OUTBOX_PUBLISHED, label::SERVICE => service, label::TOPIC => topic.to_owned()).increment(rows);
}

/// Records that one transaction took `events` events of `kind` (see
/// [`TRANSACTION_BATCH_SIZE`]).
pub fn record_transaction_batch(kind: &'static str, events: usize) {
    histogram!(TRANSACTION_BATCH_SIZE, label::KIND => kind).record(events as f64);
}

/// Counts `rows` outbox rows of `service` parked.
pub fn count_outbox_parked(service: &'static str, rows: u64) {
    counter!(OUTBOX_PARKED, label::SERVICE => service).increment(rows);
}

/// The consumer loop's metric handles for one topic and consumer group, made once per
/// partition worker so that counting a record is an atomic add.
pub struct RecordMetrics {
    processed: Counter,
    dead_lettered: Counter,
    dead_letters: Counter,
    retries: Counter,
    handler_duration: Histogram,
}

impl RecordMetrics {
    /// The handles for records of `topic` consumed by `consumer_group`.
    pub fn new(topic: &str, consumer_group: &str) -> Self {
        let labels = [
            (label::TOPIC, topic.to_owned()),
            (label::CONSUMER_GROUP, consumer_group.to_owned()),
        ];
        let with_outcome = |outcome: &'static str| {
            let mut labels = labels.to_vec();
            labels.push((label::OUTCOME, outcome.to_owned()));
            counter!(CONSUMER_RECORDS, &labels)
        };
        Self {
            processed: with_outcome("processed"),
            dead_lettered: with_outcome("dead_lettered"),
            dead_letters: counter!(CONSUMER_DEAD_LETTERS, &labels),
            retries: counter!(CONSUMER_RETRIES, &labels),
            handler_duration: histogram!(CONSUMER_HANDLER_DURATION, &labels),
        }
    }

    /// Counts a record whose effect was committed.
    pub fn processed(&self) {
        self.processed.increment(1);
    }

    /// Counts a record sent to the dead-letter topic.
    pub fn dead_lettered(&self) {
        self.dead_lettered.increment(1);
        self.dead_letters.increment(1);
    }

    /// Counts a failed handler attempt that is going to be retried.
    pub fn retried(&self) {
        self.retries.increment(1);
    }

    /// Records how long the handler took with one record, retries included.
    pub fn handled_in(&self, duration: Duration) {
        self.handler_duration.record(duration);
    }
}

/// Consumer context of the service consumer loops: sets the lag gauge of each partition from
/// librdkafka's statistics (`statistics.interval.ms`).
///
/// Statistics rather than a task of our own asking the broker: librdkafka already knows, for
/// each partition, the high watermark (from every fetch response, empty ones included), the
/// offset the loop stored after its last committed record and the group's committed offset, and
/// reports them on a timer without a request of its own; a task would need a watermark request
/// per partition and a committed-offset request per group each time.
pub struct ConsumerLagContext {
    group_id: String,
}

impl ConsumerLagContext {
    /// A context reporting the lag of `group_id`.
    pub fn new(group_id: impl Into<String>) -> Self {
        Self {
            group_id: group_id.into(),
        }
    }
}

impl ClientContext for ConsumerLagContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, topic_statistics) in &statistics.topics {
            for partition in topic_statistics.partitions.values() {
                if let Some(lag) = partition_lag(partition) {
                    gauge!(
                        CONSUMER_LAG,
                        label::TOPIC => topic.clone(),
                        label::PARTITION => partition.partition.to_string(),
                        label::CONSUMER_GROUP => self.group_id.clone()
                    )
                    .set(lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for ConsumerLagContext {}

/// The lag of one partition in a consumer's statistics: its high watermark minus the next
/// offset to process, which is the offset the loop stored after its last record, else the
/// group's committed offset, else (a group with no offset, reading from the earliest) the
/// partition's first offset. 0 for a partition assigned to another member of the group (that
/// member reports it); `None` where nothing is known yet (no fetch answered) and for
/// librdkafka's internal partition.
pub fn partition_lag(partition: &Partition) -> Option<i64> {
    if partition.partition < 0 {
        return None;
    }
    if !partition.desired {
        return Some(0);
    }
    if partition.hi_offset < 0 {
        return None;
    }
    let next = match partition.stored_offset.max(partition.committed_offset) {
        known if known >= 0 => known,
        _ if partition.lo_offset >= 0 => partition.lo_offset,
        _ => return None,
    };
    Some((partition.hi_offset - next).max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assigned(hi_offset: i64, stored_offset: i64, committed_offset: i64, lo_offset: i64) -> Partition {
        let json = serde_json::json!({
            "partition": 0, "broker": 1, "leader": 1, "desired": true, "unknown": false,
            "msgq_cnt": 0, "msgq_bytes": 0, "xmit_msgq_cnt": 0, "xmit_msgq_bytes": 0,
            "fetchq_cnt": 0, "fetchq_size": 0, "fetch_state": "active", "query_offset": -1001,
            "next_offset": 0, "app_offset": -1001, "stored_offset": stored_offset,
            "committed_offset": committed_offset, "eof_offset": -1001, "lo_offset": lo_offset,
            "hi_offset": hi_offset, "ls_offset": hi_offset, "consumer_lag": -1,
            "consumer_lag_stored": -1, "txmsgs": 0, "txbytes": 0, "rxmsgs": 0, "rxbytes": 0,
            "msgs": 0, "rx_ver_drops": 0, "msgs_inflight": 0, "next_ack_seq": 0,
            "next_err_seq": 0, "acked_msgid": 0
        });
        serde_json::from_value(json).expect("the statistics of one partition")
    }

    /// librdkafka's "no offset".
    const INVALID: i64 = -1001;

    #[test]
    fn the_lag_counts_from_the_offset_stored_after_the_last_processed_record() {
        assert_eq!(partition_lag(&assigned(120, 100, 90, 0)), Some(20));
    }

    #[test]
    fn a_caught_up_partition_has_no_lag() {
        assert_eq!(partition_lag(&assigned(120, 120, 100, 0)), Some(0));
    }

    #[test]
    fn after_a_restart_the_lag_counts_from_the_committed_offset() {
        assert_eq!(partition_lag(&assigned(120, INVALID, 115, 0)), Some(5));
        assert_eq!(partition_lag(&assigned(115, INVALID, 115, 0)), Some(0));
    }

    #[test]
    fn a_group_without_offsets_lags_by_the_whole_partition() {
        assert_eq!(partition_lag(&assigned(40, INVALID, INVALID, 10)), Some(30));
        assert_eq!(partition_lag(&assigned(0, INVALID, INVALID, 0)), Some(0));
    }

    #[test]
    fn nothing_is_reported_before_the_first_fetch() {
        assert_eq!(partition_lag(&assigned(INVALID, INVALID, 7, INVALID)), None);
    }

    #[test]
    fn a_partition_of_another_member_reports_no_lag_here() {
        let mut other = assigned(120, INVALID, 100, 0);
        other.desired = false;
        assert_eq!(partition_lag(&other), Some(0));
    }

    #[test]
    fn the_internal_partition_is_left_out() {
        let mut internal = assigned(0, INVALID, INVALID, INVALID);
        internal.partition = -1;
        assert_eq!(partition_lag(&internal), None);
    }

    #[test]
    fn routes_are_labelled_by_their_template_or_as_unmatched() {
        assert_eq!(route_label(Some("/orders/{order_id}")), "/orders/{order_id}");
        assert_eq!(route_label(None), "unmatched");
    }

    #[test]
    fn unusual_methods_share_one_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").expect("a method")), "other");
    }

    /// The value of the sample `line_start` begins (its name and labels), in `text`.
    fn sample(text: &str, line_start: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(line_start))
            .and_then(|rest| rest.trim().parse().ok())
    }

    #[tokio::test]
    async fn requests_are_counted_by_route_template_and_scrapes_are_not() -> anyhow::Result<()> {
        let handle = install();
        let service = "metrics-unit-test";
        // A second install hands out the first recorder: what it records shows in `handle`.
        let routes = Router::new()
            .route("/items/{item_id}", get(|| async { "an item" }))
            .merge(router(install()));
        let app = record_http_requests(routes, service);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let http = reqwest::Client::new();
        for id in ["1", "2", "3"] {
            http.get(format!("http://{address}/items/{id}")).send().await?;
        }
        let missing = http.get(format!("http://{address}/nowhere")).send().await?;
        assert_eq!(missing.status(), 404);
        let scraped = http.get(format!("http://{address}{METRICS_PATH}")).send().await?;
        assert_eq!(scraped.headers()[header::CONTENT_TYPE], TEXT_FORMAT);
        scraped.text().await?;
        server.abort();

        let text = handle.render();
        let labels = |method: &str, route: &str, status: &str| {
            format!(
                "{HTTP_REQUESTS}{{service=\"{service}\",method=\"{method}\",route=\"{route}\",status=\"{status}\"}}"
            )
        };
        assert_eq!(
            sample(&text, &labels("GET", "/items/{item_id}", "200")),
            Some(3.0),
            "{text}"
        );
        assert_eq!(sample(&text, &labels("GET", "unmatched", "404")), Some(1.0), "{text}");
        assert!(!text.contains("route=\"/items/1\""), "{text}");
        assert!(!text.contains(&format!("route=\"{METRICS_PATH}\"")), "{text}");
        let histogram_count = format!(
            "{HTTP_REQUEST_DURATION}_count{{service=\"{service}\",method=\"GET\",route=\"/items/{{item_id}}\",status=\"200\"}}"
        );
        assert_eq!(sample(&text, &histogram_count), Some(3.0), "{text}");
        assert!(
            text.contains(&format!("# HELP {HTTP_REQUESTS} HTTP requests answered")),
            "{text}"
        );
        Ok(())
    }
}
