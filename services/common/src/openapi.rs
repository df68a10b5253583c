//! The OpenAPI documents of the services' HTTP APIs, generated from the handlers
//! (`#[utoipa::path]`) and served at `GET /openapi.json` on each service's HTTP port.
//!
//! A service's document is its own `#[derive(OpenApi)]` (its routes, with the crate's name,
//! version and description as the title) merged with the routes every service shares: health,
//! the operator routes, `/metrics` and `/openapi.json` itself. Every error answer is an
//! [`ErrorBody`](crate::http::ErrorBody). The helpers at the end let each service's tests hold
//! its router against its document, so a route added without documentation fails a test.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
pub use utoipa::openapi::OpenApi;

/// Path every service serves its OpenAPI document on.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// The document of a service: `own` (the service's routes, from its `#[derive(OpenApi)]`, whose
/// info names the service) with the routes every service shares merged in, and its credentials
/// described ([`with_bearer_auth`]).
pub fn service_document(own: OpenApi) -> OpenApi {
    with_bearer_auth(own.merge_from(shared_document()))
}

/// Name of the security scheme the documents' operations require (`"bearer" = [scopes]`).
pub const BEARER_SCHEME: &str = "bearer";

/// `document` with the `bearer` security scheme (an API key or a JWT, see `crate::auth`) and,
/// on every operation that requires it, the 401 and 403 answers with their `WWW-Authenticate`
/// challenge. An operation lists one requirement per scope that allows it (any one will do).
pub fn with_bearer_auth(mut document: OpenApi) -> OpenApi {
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
    use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, ResponseBuilder};

    let refusal = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .header(
                "WWW-Authenticate",
                HeaderBuilder::new()
                    .schema(utoipa::openapi::schema::Object::with_type(
                        utoipa::openapi::Type::String,
                    ))
                    .description(Some(
                        "The Bearer challenge (RFC 6750), with `error` and, for a 403, the `scope` needed",
                    ))
                    .build(),
            )
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    let mut secured = false;
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            if operation.security.as_ref().is_none_or(Vec::is_empty) {
                continue;
            }
            secured = true;
            let responses = &mut operation.responses.responses;
            responses.entry("401".into()).or_insert_with(|| {
                refusal("No credential, or one that is not a configured API key or a valid JWT").into()
            });
            responses
                .entry("403".into())
                .or_insert_with(|| refusal("The credential allows none of the scopes this operation needs").into());
        }
    }
    if secured {
        document.components.get_or_insert_with(Default::default).add_security_scheme(
            BEARER_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <token>`: a configured API key, or a JWT (HS256 or RS256) of the configured issuer and audience whose `scope` claim names the scopes. Scopes: `orders` (place and read orders), `read` (read orders, payments, stock, notifications), `admin` (stock adjustments, redrives, operator lists).",
                    ))
                    .build(),
            ),
        );
    }
    document
}

/// `document` with `GET /metrics` requiring the `read` or `admin` scope, for a service whose
/// settings restrict it.
pub fn with_metrics_secured(mut document: OpenApi) -> OpenApi {
    use utoipa::openapi::security::SecurityRequirement;
    if let Some(operation) = document
        .paths
        .paths
        .get_mut(crate::metrics::METRICS_PATH)
        .and_then(|item| item.get.as_mut())
    {
        operation.security = Some(vec![
            SecurityRequirement::new(BEARER_SCHEME, ["read"]),
            SecurityRequirement::new(BEARER_SCHEME, ["admin"]),
        ]);
    }
    with_bearer_auth(document)
}

/// The routes every service shares: `/health/live`, `/health/ready`, the operator routes under
/// `/admin/outbox`, `/metrics` and `/openapi.json`.
pub fn shared_document() -> OpenApi {
    crate::health::document()
        .merge_from(crate::admin::document())
        .merge_from(crate::metrics::document())
        .merge_from(document_route())
}

/// The description of `GET /openapi.json` alone, for a server that serves the document but not
/// the services' shared routes (the dashboard).
pub fn document_route() -> OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(document))]
    struct DocumentApi;
    <DocumentApi as utoipa::OpenApi>::openapi()
}

/// `GET /openapi.json`, answering `document` (serialised once).
pub fn router(document: &OpenApi) -> Router {
    let json = document
        .to_json()
        .unwrap_or_else(|error| format!(r#"{{"error":"the document cannot be serialised: {error}"}}"#));
    routes().with_state(Arc::from(json))
}

fn routes() -> Router<Arc<str>> {
    Router::new().route(OPENAPI_PATH, get(document))
}

/// This OpenAPI document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this service's HTTP API", body = Object, content_type = "application/json"),
    )
)]
async fn document(State(json): State<Arc<str>>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json.to_string()).into_response()
}

/// Checks, in a service's unit test, that `own` (the service's document) lists exactly the
/// operations its router registers (`routed`, from [`routed_operations`]), that none of its
/// schema names clashes with a shared one, and that the served document adds every shared route
/// and nothing else. Panics with what differs.
pub fn assert_documents_exactly(own: &OpenApi, routed: &BTreeSet<String>) {
    assert_eq!(&documented_operations(own), routed, "documented vs routed operations");
    assert_eq!(
        clashing_schemas(own),
        Vec::<String>::new(),
        "schema names clashing with shared ones"
    );
    let served = documented_operations(&service_document(own.clone()));
    let shared = documented_operations(&shared_document());
    assert!(served.is_superset(&shared), "the served document lacks shared routes");
    assert_eq!(
        served.len(),
        routed.len() + shared.len(),
        "the served document has unknown routes"
    );
}

/// The component schemas `own` defines under a name the shared routes use for a different
/// schema: merged, the shared one would silently take its place.
pub fn clashing_schemas(own: &OpenApi) -> Vec<String> {
    let shared = shared_document().components.unwrap_or_default().schemas;
    let own = own.components.clone().unwrap_or_default().schemas;
    own.iter()
        .filter(|(name, schema)| {
            shared
                .get(*name)
                .is_some_and(|other| serde_json::to_value(other).ok() != serde_json::to_value(schema).ok())
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// Every operation `document` describes, as `METHOD /path` (upper-case method, the path as
/// documented, e.g. `GET /orders/{order_id}`).
pub fn documented_operations(document: &OpenApi) -> BTreeSet<String> {
    let mut operations = BTreeSet::new();
    for (path, item) in &document.paths.paths {
        let methods = [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("OPTIONS", &item.options),
            ("HEAD", &item.head),
            ("PATCH", &item.patch),
            ("TRACE", &item.trace),
        ];
        for (method, operation) in methods {
            if operation.is_some() {
                operations.insert(format!("{method} {path}"));
            }
        }
    }
    operations
}

/// Every operation `router` routes, as `METHOD /path` like [`documented_operations`]; a route
/// to a whole service (not a method router) is `ANY /path`. For tests: axum offers no way to
/// list a router's routes but its `Debug` output, which is what this reads; it panics if that
/// output no longer has the shape it expects, rather than report no routes.
pub fn routed_operations<S>(router: &Router<S>) -> BTreeSet<String> {
    let text = format!("{router:?}");
    // The router's own routes come before its fallback router, which has a table of its own.
    let own = text.split(", fallback_router:").next().unwrap_or_default();
    let (endpoints, node) = own
        .split_once("node: Node { paths: {")
        .unwrap_or_else(|| panic!("cannot read the routes out of the router's description: {text}"));
    let mut operations = BTreeSet::new();
    for (id, path) in route_paths(node) {
        let endpoint = format!("{id}: MethodRouter(MethodRouter {{ ");
        let Some(start) = endpoints.find(&endpoint) else {
            operations.insert(format!("ANY {path}"));
            continue;
        };
        let fields = &endpoints[start + endpoint.len()..];
        let fields = &fields[..fields.find("fallback:").unwrap_or(fields.len())];
        for field in fields.split(", ") {
            if let Some((method, endpoint)) = field.split_once(": ") {
                if endpoint.trim() != "None" {
                    operations.insert(format!("{} {path}", method.trim().to_uppercase()));
                }
            }
        }
    }
    operations
}

/// The `RouteId(n): "path"` entries of a router's path table.
fn route_paths(table: &str) -> BTreeMap<String, String> {
    let mut paths = BTreeMap::new();
    let mut rest = table;
    while let Some(start) = rest.find("RouteId(") {
        rest = &rest[start..];
        let Some((id, after)) = rest.split_once(": \"") else {
            break;
        };
        let Some((path, after)) = after.split_once('"') else {
            break;
        };
        paths.insert(id.to_string(), path.to_string());
        rest = after;
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;

    async fn nothing() {}

    #[test]
    fn the_routed_operations_are_read_from_the_router() {
        let router: Router = Router::new()
            .route("/orders", post(nothing))
            .route("/orders/{order_id}", get(nothing).delete(nothing));
        let expected: BTreeSet<String> = ["POST /orders", "GET /orders/{order_id}", "DELETE /orders/{order_id}"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(routed_operations(&router), expected);
    }

    #[test]
    fn every_shared_route_is_documented_and_nothing_else() {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let mut routed = routed_operations(&crate::health::routes());
        routed.extend(routed_operations(&crate::admin::routes()));
        routed.extend(routed_operations(&crate::metrics::router(handle)));
        routed.extend(routed_operations(&routes()));
        assert_eq!(documented_operations(&shared_document()), routed);
    }

    #[test]
    fn the_shared_document_serialises_and_every_error_answer_is_an_error_body() {
        let json: serde_json::Value =
            serde_json::from_str(&shared_document().to_json().expect("serialises")).expect("is JSON");
        assert!(json["openapi"]
            .as_str()
            .is_some_and(|version| version.starts_with("3.1")));
        let redrive = &json["paths"]["/admin/outbox/parked/redrive"]["post"]["responses"];
        for status in ["400", "422", "500", "503"] {
            assert_eq!(
                redrive[status]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody",
                "{status}"
            );
        }
        assert!(json["components"]["schemas"]["ErrorBody"].is_object());
        assert!(
            json["paths"]["/metrics"]["get"]["responses"]["200"]["content"]["text/plain; version=0.0.4"].is_object()
        );
    }
}
