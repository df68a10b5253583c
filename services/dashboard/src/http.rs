//! The dashboard's HTTP routes: the page itself (one HTML file with its CSS and script inline,
//! no outside assets), its JSON API and health.
//!
//! - `GET /`: the page (open; it asks for an API key and sends it with its requests);
//! - `GET /api/orders?limit=N&status=pending|confirmed|failed`: recent orders, newest first;
//! - `GET /api/orders/{order_id}`: one order's timeline (400 if the id is not a UUID, 404 if the
//!   dashboard holds no such order);
//! - `GET /api/summary`: throughput, outcome mix, consumer lag, dead letters;
//! - the `/api` routes need a credential with the `read` or `admin` scope (401/403 otherwise);
//! - `GET /health/live`: 503 once the topic reader or the broker poller died;
//! - `GET /health/ready`: 200 once the first read reached the end offsets found at start;
//! - `GET /openapi.json`: the OpenAPI document of these routes.

use saga_common::auth::{self, Authenticator, Authorized, ReadSaga};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use saga_common::health::TaskState;
use saga_common::http::{ApiError, ErrorBody};
use saga_contracts::OrderId;
use serde_json::json;
use utoipa::OpenApi;

use crate::view::{OrderStatus, OrderSummaryView, OrderTimelineView, ReaderView, SummaryView};
use crate::DashboardState;

/// The page.
const PAGE: &str = include_str!("dashboard.html");

/// Orders listed when the request names no limit.
const DEFAULT_LIMIT: usize = 50;
/// The most orders one request lists.
const MAX_LIMIT: usize = 1_000;

/// The routes, over the shared state, with `GET /openapi.json` describing them; the JSON routes
/// admit callers `authenticator` grants the `read` or `admin` scope.
pub fn routes(state: Arc<DashboardState>, authenticator: Arc<Authenticator>) -> Router {
    auth::install(router().with_state(state), authenticator)
        .merge(saga_common::openapi::router(&document()))
        .method_not_allowed_fallback(saga_common::http::method_not_allowed)
        .fallback(saga_common::http::unrouted)
}

fn router() -> Router<Arc<DashboardState>> {
    Router::new()
        .route("/", get(page))
        .route("/api/orders", get(list_orders))
        .route("/api/orders/{order_id}", get(order_timeline))
        .route("/api/summary", get(summary))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
}

/// The OpenAPI document of the dashboard's routes (`GET /openapi.json` included).
pub fn document() -> utoipa::openapi::OpenApi {
    saga_common::openapi::with_bearer_auth(DashboardApi::openapi().merge_from(saga_common::openapi::document_route()))
}

#[derive(OpenApi)]
#[openapi(
    info(description = "The saga dashboard: an observer of the topics. Its page and the JSON the page reads: recent orders, each order's timeline, throughput, outcomes, consumer lag and dead letters."),
    paths(page, list_orders, order_timeline, summary, live, ready),
    tags(
        (name = "dashboard", description = "The page and its JSON"),
        (name = "health", description = "Liveness and readiness"),
    )
)]
struct DashboardApi;

/// The dashboard page: one HTML file, its CSS and script inline.
#[utoipa::path(
    get,
    path = "/",
    tag = "dashboard",
    responses((status = 200, description = "The page", body = String, content_type = "text/html; charset=utf-8"))
)]
async fn page() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE)).into_response()
}

/// Reads `limit` and `status` from the query string; anything else there is refused too, so a
/// mistyped parameter does not pass silently.
fn list_parameters(query: &HashMap<String, String>) -> Result<(usize, Option<OrderStatus>), ApiError> {
    if let Some(unknown) = query.keys().find(|key| *key != "limit" && *key != "status") {
        return Err(ApiError::BadRequest(format!(
            "unknown query parameter {unknown:?}; the parameters are limit and status"
        )));
    }
    let limit = match query.get("limit") {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => limit,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "limit must be a whole number from 1 to {MAX_LIMIT}, not {text:?}"
                )))
            }
        },
    };
    let status = match query.get("status") {
        None => None,
        Some(text) if text.is_empty() => None,
        Some(text) => Some(OrderStatus::parse(text).ok_or_else(|| {
            ApiError::BadRequest(format!("status must be pending, confirmed or failed, not {text:?}"))
        })?),
    };
    Ok((limit, status))
}

/// Recent orders, newest first.
#[utoipa::path(
    get,
    path = "/api/orders",
    tag = "dashboard",
    security(("bearer" = ["read"]), ("bearer" = ["admin"])),
    params(
        ("limit" = Option<u32>, Query, description = "How many orders, 1 to 1000 (50 when absent)", minimum = 1, maximum = 1000),
        (
            "status" = Option<String>,
            Query,
            description = "Only orders with this status: pending, confirmed or failed, in any case; empty for all",
            pattern = "^([Pp][Ee][Nn][Dd][Ii][Nn][Gg]|[Cc][Oo][Nn][Ff][Ii][Rr][Mm][Ee][Dd]|[Ff][Aa][Ii][Ll][Ee][Dd])?$"
        ),
    ),
    responses(
        (status = 200, description = "The orders, newest first", body = Vec<OrderSummaryView>),
        (status = 400, description = "The limit or status is malformed, or the query has another parameter", body = ErrorBody),
    )
)]
async fn list_orders(
    _caller: Authorized<ReadSaga>,
    State(state): State<Arc<DashboardState>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Vec<OrderSummaryView>>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let (limit, status) = list_parameters(&query)?;
    let now = saga_contracts::now_millis();
    Ok(Json(state.lock_model().recent(limit, status, now)))
}

/// One order's timeline: its events by lane, compensations marked, the time each step took.
#[utoipa::path(
    get,
    path = "/api/orders/{order_id}",
    tag = "dashboard",
    security(("bearer" = ["read"]), ("bearer" = ["admin"])),
    params(("order_id" = OrderId, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order's timeline", body = OrderTimelineView),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "The dashboard holds no event of the order (not in its window, or not read yet)", body = ErrorBody),
    )
)]
async fn order_timeline(
    _caller: Authorized<ReadSaga>,
    State(state): State<Arc<DashboardState>>,
    Path(order_id): Path<String>,
) -> Result<Json<OrderTimelineView>, ApiError> {
    let order_id: OrderId = order_id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("order id must be a UUID, not {order_id:?}")))?;
    let timeline = state.lock_model().timeline(order_id);
    timeline.map(Json).ok_or_else(|| {
        let caught_up = state.caught_up.load(Ordering::Relaxed);
        ApiError::NotFound(if caught_up {
            format!("no event of order {order_id} seen in the dashboard's window")
        } else {
            format!("no event of order {order_id} seen yet; the dashboard is still reading the topics")
        })
    })
}

/// Throughput, the outcome mix, consumer lag, dead letters and the reader's own figures.
#[utoipa::path(
    get,
    path = "/api/summary",
    tag = "dashboard",
    security(("bearer" = ["read"]), ("bearer" = ["admin"])),
    responses((status = 200, description = "The summary figures", body = SummaryView))
)]
async fn summary(_caller: Authorized<ReadSaga>, State(state): State<Arc<DashboardState>>) -> Json<SummaryView> {
    let now = saga_contracts::now_millis();
    let (throughput, outcomes, reader) = {
        let model = state.lock_model();
        let counters = model.counters();
        (
            model.throughput(now),
            model.outcome_mix(),
            ReaderView {
                caught_up: state.caught_up.load(Ordering::Relaxed),
                events: counters.events_added,
                duplicates_ignored: counters.duplicates_ignored,
                undecodable: counters.undecodable,
                without_order: counters.without_order,
                orders_in_memory: model.len(),
                max_orders: model.capacity(),
                orders_evicted: counters.orders_evicted,
                window_secs: state.window_secs,
            },
        )
    };
    let figures = state
        .broker_figures
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    Json(SummaryView {
        generated_at_ms: now,
        throughput,
        outcomes,
        consumer_lag: figures.consumer_lag,
        dead_letters: figures.dead_letters,
        broker_figures_at_ms: figures.measured_at_ms,
        broker_figures_error: figures.error,
        reader,
    })
}

/// The names of the watched tasks that died.
fn dead_tasks(state: &DashboardState) -> Vec<String> {
    state
        .health
        .tasks()
        .into_iter()
        .filter(|(_, task)| matches!(task, TaskState::Died(_)))
        .map(|(name, _)| name.into_owned())
        .collect()
}

/// Liveness: 503 once the topic reader or the broker poller died.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "health",
    responses(
        (status = 200, description = "Every watched task runs", body = Object),
        (status = 503, description = "A watched task died; restart the process", body = Object),
    )
)]
async fn live(State(state): State<Arc<DashboardState>>) -> (StatusCode, Json<serde_json::Value>) {
    let dead = dead_tasks(&state);
    let status = if dead.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"status": if dead.is_empty() { "live" } else { "dead" }, "dead_tasks": dead})),
    )
}

/// Readiness: 200 once the first read reached the end offsets found at start.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "health",
    responses(
        (status = 200, description = "Caught up with the topics", body = Object),
        (status = 503, description = "Still reading up to the end offsets found at start, or a watched task died", body = Object),
    )
)]
async fn ready(State(state): State<Arc<DashboardState>>) -> (StatusCode, Json<serde_json::Value>) {
    let dead = dead_tasks(&state);
    let caught_up = state.caught_up.load(Ordering::Relaxed);
    let ready = caught_up && dead.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ready { "ready" } else { "not ready" },
            "checks": {"topics": if caught_up { "caught up" } else { "reading up to the end offsets found at start" }},
            "dead_tasks": dead,
        })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_list_takes_a_limit_and_a_status_in_any_case() {
        assert_eq!(list_parameters(&query(&[])).ok(), Some((DEFAULT_LIMIT, None)));
        assert_eq!(
            list_parameters(&query(&[("limit", "5"), ("status", "Failed")])).ok(),
            Some((5, Some(OrderStatus::Failed)))
        );
    }

    #[test]
    fn the_document_lists_every_route_of_the_router_and_serialises() {
        use saga_common::openapi::{documented_operations, routed_operations};
        let mut routed = routed_operations(&router());
        routed.insert(format!("GET {}", saga_common::openapi::OPENAPI_PATH));
        assert_eq!(documented_operations(&document()), routed);
        let json: serde_json::Value = serde_json::from_str(&document().to_json().expect("serialises")).expect("JSON");
        assert_eq!(json["info"]["title"], "dashboard-service");
        assert_eq!(
            json["components"]["schemas"]["OrderStatus"]["enum"],
            json!(["PENDING", "CONFIRMED", "FAILED"])
        );
    }

    #[test]
    fn a_bad_limit_status_or_parameter_is_refused() {
        for bad in [
            query(&[("limit", "0")]),
            query(&[("limit", "1001")]),
            query(&[("limit", "ten")]),
            query(&[("status", "shipped")]),
            query(&[("state", "failed")]),
        ] {
            assert!(matches!(list_parameters(&bad), Err(ApiError::BadRequest(_))), "{bad:?}");
        }
    }
}
