//! HTTP API of the order service: `POST /orders` places an order (answering once the order and
//! its order.created event are committed together), `GET /orders/{id}` shows its status and
//! saga timeline.

use saga_common::auth::{Authorized, PlaceOrders, ReadOrders};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use saga_common::http::{ApiError, ErrorBody, JsonBody};
use saga_common::outbox::{self, Relay};
use saga_contracts::{Envelope, OrderId, SagaEvent};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::{OpenApi, ToSchema};

use crate::domain::{deadline_after, request_hash, validate, OrderStatus, PlaceOrderRequest, Placement};
use crate::rate_limit::{Client, OrderRateLimit};
use crate::store::OrderView;
use crate::{handler, metrics, store};

/// Header that makes a retried POST return the first answer.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// The order database.
    pub database: PgPool,
    /// Woken after an order is committed.
    pub relay: Relay,
    /// How long an order may wait for its outcomes.
    pub saga_deadline: Duration,
    /// The per-client limit on placing orders; `None` when it is off.
    pub order_rate_limit: Option<Arc<OrderRateLimit>>,
}

impl HttpState {
    /// Counts an order of `client` against its limit.
    fn charge(&self, client: Option<&Client>) -> Result<(), ApiError> {
        let (Some(limit), Some(client)) = (&self.order_rate_limit, client) else {
            return Ok(());
        };
        limit.charge(client).map_err(|retry_after| ApiError::TooManyRequests {
            message: format!("too many orders from {client}"),
            retry_after,
        })
    }
}

/// The order routes.
pub fn routes(state: HttpState) -> Router {
    router().with_state(state)
}

fn router() -> Router<HttpState> {
    Router::new()
        .route("/orders", post(place_order))
        .route("/orders/{order_id}", get(get_order))
}

/// The OpenAPI description of the order routes; the service serves it merged with the shared
/// routes (`saga_common::openapi::service_document`).
pub fn document() -> utoipa::openapi::OpenApi {
    OrderApi::openapi()
}

#[derive(OpenApi)]
#[openapi(
    info(description = "Places orders and shows each order's status and saga timeline."),
    paths(place_order, get_order),
    tags((name = "orders", description = "Placing orders and following their saga"))
)]
struct OrderApi;

/// The answer to a placed order.
#[derive(Debug, Serialize, ToSchema)]
struct OrderAccepted {
    /// The new order's id (or, for a retry, the id of the order the key placed).
    order_id: OrderId,
    /// Always `PENDING`: the saga decides the order later.
    #[schema(value_type = OrderStatus)]
    status: &'static str,
}

/// The answer to a placed order; a retry with the same idempotency key gets the same one,
/// whatever the order's status by then.
fn accepted(order_id: OrderId) -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/orders/{order_id}"))],
        Json(OrderAccepted {
            order_id,
            status: OrderStatus::Pending.as_str(),
        }),
    )
        .into_response()
}

/// Longest accepted Idempotency-Key.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// An Idempotency-Key is 1 to 255 printable ASCII characters (spaces only inside it, as HTTP
/// drops them around a header's value).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    let printable = bytes.iter().all(|byte| (b' '..=b'~').contains(byte));
    let trimmed = bytes.first() != Some(&b' ') && bytes.last() != Some(&b' ');
    match std::str::from_utf8(bytes) {
        Ok(key) if printable && trimmed && !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY => {
            Ok(Some(key.to_string()))
        }
        _ => Err(ApiError::invalid(
            "Idempotency-Key",
            "must be 1 to 255 printable ASCII characters",
        )),
    }
}

/// Places an order: stores it `PENDING` and announces it (order.created) in one transaction,
/// then answers 202 with its id; the saga decides it later (`GET /orders/{order_id}`).
#[utoipa::path(
    post,
    path = "/orders",
    tag = "orders",
    security(("bearer" = ["orders"])),
    params(
        (
            "Idempotency-Key" = Option<String>,
            Header,
            description = "Makes a retried request safe: a request with a key used before answers what the first one did, and places nothing new. 1 to 255 printable ASCII characters.",
            min_length = 1,
            max_length = 255,
            pattern = "^[!-~]([ -~]*[!-~])?$"
        ),
    ),
    request_body = PlaceOrderRequest,
    responses(
        (
            status = 202,
            description = "The order is stored and announced; the saga decides it. A retry with the same Idempotency-Key answers the same, whatever the order's status by then.",
            body = OrderAccepted,
            headers(("Location" = String, description = "The order's path, `/orders/{order_id}`"))
        ),
        (status = 400, description = "The body is not JSON, is too large, or was not sent as application/json", body = ErrorBody),
        (status = 409, description = "The Idempotency-Key was used before for a different request", body = ErrorBody),
        (status = 422, description = "A field is missing, of the wrong type or out of its range, or the Idempotency-Key is malformed; `field` names it", body = ErrorBody),
        (
            status = 429,
            description = "The client placed more orders than its limit allows (ORDER_RATE_LIMIT_PER_SECOND, ORDER_RATE_LIMIT_BURST); a retry of an accepted order with its Idempotency-Key is never refused for this",
            body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before the next order is accepted"))
        ),
        (status = 500, description = "The database refused the order", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later, with the same Idempotency-Key", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(order_id))]
async fn place_order(
    Authorized { caller, .. }: Authorized<PlaceOrders>,
    State(state): State<HttpState>,
    address: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<PlaceOrderRequest>,
) -> Result<Response, ApiError> {
    let client = if caller.authenticated {
        Some(Client::Credential(caller.name))
    } else {
        address.map(|Extension(ConnectInfo(address))| Client::Address(address.ip()))
    };
    let client = client.as_ref();
    let idempotency_key = idempotency_key(&headers)?;
    // Without a key nothing is answered from before: count the order before any database work.
    // With one, a retry of an accepted order is answered first and never counted twice.
    if idempotency_key.is_none() {
        state.charge(client)?;
    }
    let body = serde_json::to_string(&request).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let fingerprint = request_hash(&body);
    let order = validate(request).map_err(|e| ApiError::invalid(e.field, e.message))?;

    let mut tx = state.database.begin().await?;
    if let Some(key) = &idempotency_key {
        if let Some(used) = store::lock_idempotency_key(&mut tx, key).await? {
            // Keys stored before request hashes were hashed hold the body itself.
            if used.request_hash != fingerprint && used.request_hash != body {
                // The key is taken: a conflict with what is stored, not a malformed request.
                return Err(ApiError::Conflict(
                    "Idempotency-Key was already used for a different request; use a new key".into(),
                ));
            }
            return Ok(accepted(used.order_id));
        }
        state.charge(client)?;
    }
    let envelope = Envelope::for_command(OrderId::new());
    let placement = Placement {
        request_hash: idempotency_key.as_ref().map(|_| fingerprint),
        idempotency_key,
        deadline_at: deadline_after(envelope.occurred_at, state.saga_deadline),
    };
    let created = order.created_event(envelope, placement);
    let order_id = created.envelope.order_id;
    tracing::Span::current().record("order_id", tracing::field::display(order_id));
    handler::apply_created(&mut *tx, &created, state.saga_deadline).await?;
    let created = SagaEvent::OrderCreated(created);
    outbox::enqueue(&mut tx, &created, None).await?;
    tx.commit().await?;
    state.relay.notify();
    metrics::count_placed();
    tracing::info!(%order_id, event_id = %created.event_id(), total_minor = order.total_minor, "order placed");
    Ok(accepted(order_id))
}

/// An order: its status, lines, total and the saga's timeline.
#[utoipa::path(
    get,
    path = "/orders/{order_id}",
    tag = "orders",
    security(("bearer" = ["orders"]), ("bearer" = ["read"]), ("bearer" = ["admin"])),
    params(("order_id" = OrderId, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 500, description = "The database refused the query", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later", body = ErrorBody),
    )
)]
async fn get_order(
    _caller: Authorized<ReadOrders>,
    State(state): State<HttpState>,
    Path(order_id): Path<String>,
) -> Result<Response, ApiError> {
    let order_id: OrderId = order_id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("order id {order_id:?} is not a UUID")))?;
    match store::fetch_view(&state.database, order_id).await? {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(ApiError::NotFound(format!("order {order_id} not found"))),
    }
}

#[cfg(test)]
mod tests {
    use saga_common::openapi::{routed_operations, service_document};

    use super::*;

    #[test]
    fn the_document_lists_every_route_of_the_router_and_the_shared_ones() {
        saga_common::openapi::assert_documents_exactly(&document(), &routed_operations(&router()));
    }

    #[test]
    fn the_document_serialises_with_the_rules_validation_applies() {
        let json: serde_json::Value =
            serde_json::from_str(&service_document(document()).to_json().expect("serialises")).expect("JSON");
        assert_eq!(json["info"]["title"], "order-service");
        let request = &json["components"]["schemas"]["PlaceOrderRequest"]["properties"];
        for text in ["customer_id", "payment_token"] {
            assert_eq!(request[text]["pattern"], saga_common::http::TEXT_LINE_PATTERN, "{text}");
        }
        let line = &json["components"]["schemas"]["OrderLineRequest"]["properties"];
        assert_eq!(line["unit_price_minor"]["format"], "int64");
        assert_eq!(line["unit_price_minor"]["maximum"], 10_000_000_000_i64);
        let order_id = &json["paths"]["/orders/{order_id}"]["get"]["parameters"][0]["schema"];
        assert_eq!(order_id["$ref"], "#/components/schemas/OrderId");
        assert_eq!(json["components"]["schemas"]["OrderId"]["format"], "uuid");
    }

    #[test]
    fn an_idempotency_key_is_printable_ascii_of_255_characters_at_most() {
        let key = |text: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                IDEMPOTENCY_KEY,
                header::HeaderValue::from_str(text).expect("a header value"),
            );
            idempotency_key(&headers)
        };
        assert_eq!(key("retry 1").ok().flatten().as_deref(), Some("retry 1"));
        assert!(key(&"k".repeat(255)).is_ok());
        for bad in ["", "tab\there", &"k".repeat(256)] {
            assert!(matches!(key(bad), Err(ApiError::Invalid { .. })), "{bad:?}");
        }
    }
}
