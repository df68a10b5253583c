//! The HTTP API: the subset of Confluent Schema Registry's REST API that Confluent's clients and
//! `schema_registry_converter` use, with the same paths, bodies, status and error codes.
//!
//! Every response carries `Content-Type: application/vnd.schemaregistry.v1+json`, errors
//! included. With users configured, every request but `GET /health` needs HTTP basic
//! authentication (401 otherwise), and a request that changes anything needs the `write` role
//! (403 otherwise); see [`authorize`]. Query parameters Confluent defines but that change nothing here (`normalize`,
//! `format`, `subject` on id lookups, …) are accepted and ignored.

mod error;
mod extract;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use error::ApiError;
use extract::{JsonBody, Params, PathParams};

use crate::auth::{Refusal, Users};
use crate::compatibility::CompatibilityLevel;
use crate::schema::ValidSchema;
use crate::service::{Planned, Service};
use crate::state::{Registration, RegistryError, SubjectFilter, VersionSpec, AVRO};

/// The content type of every response, as Confluent's.
pub const CONTENT_TYPE_V1: &str = "application/vnd.schemaregistry.v1+json";

type AppState = Arc<Service>;
type ApiResult<T = Json<Value>> = Result<T, ApiError>;

/// The routes of the API over a service, open to `users` (to anyone if there are none).
pub(crate) fn router(service: Arc<Service>, users: Arc<Users>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(list_versions).post(register))
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route("/subjects/{subject}/versions/{version}/schema", get(get_version_schema))
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_of_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_of_id))
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(test_compatibility_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(test_compatibility_version),
        )
        .route(
            "/config",
            get(get_global_config)
                .put(put_global_config)
                .delete(delete_global_config),
        )
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route("/mode", get(get_mode))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(users, authorize))
        .layer(middleware::from_fn(content_type_and_log))
        .with_state(service)
}

/// Sets the Confluent content type on every response and logs the request.
async fn content_type_and_log(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_V1));
    tracing::debug!(%method, %path, status = response.status().as_u16(), "request");
    response
}

/// Lets a request through if its credentials allow it (see [`Users::admit`]). `GET /health`
/// is let through without any, so that supervisors can probe the process.
async fn authorize(State(users): State<Arc<Users>>, request: Request, next: Next) -> Result<Response, ApiError> {
    let method = request.method();
    let path = request.uri().path();
    if method == Method::GET && path == "/health" {
        return Ok(next.run(request).await);
    }
    let authorization = request.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
    match users.admit(authorization, changes_state(method, path)) {
        Ok(()) => Ok(next.run(request).await),
        Err(Refusal::Unauthenticated) => Err(ApiError::Unauthenticated),
        Err(Refusal::Forbidden) => Err(ApiError::Forbidden(denied_write_on(path))),
    }
}

/// Whether a request may change the registry: every PUT and DELETE, and every POST but the
/// lookup (`POST /subjects/{subject}`) and compatibility tests (`POST /compatibility/...`),
/// which only read, as Confluent's authorization counts them.
fn changes_state(method: &Method, path: &str) -> bool {
    match *method {
        Method::GET | Method::HEAD | Method::OPTIONS => false,
        Method::POST => {
            let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
            let lookup = matches!(segments.as_slice(), ["subjects", _]);
            let compatibility_test = segments.first() == Some(&"compatibility");
            !(lookup || compatibility_test)
        }
        _ => true,
    }
}

/// What a read-only user was denied, in Confluent's words.
fn denied_write_on(path: &str) -> String {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let resource = match segments.as_slice() {
        ["subjects" | "config", subject, ..] => format!("Subject: {subject}"),
        ["config"] => "the global configuration".to_owned(),
        _ => path.to_owned(),
    };
    format!("User is denied operation Write on {resource}")
}

// ----- request bodies ------------------------------------------------------------------------

/// The body of register, lookup and compatibility requests.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaRequest {
    schema: Option<String>,
    schema_type: Option<String>,
    references: Option<Vec<Value>>,
}

impl SchemaRequest {
    /// The submitted schema, if it is an Avro schema this registry can hold.
    fn validate(self) -> Result<ValidSchema, RegistryError> {
        if let Some(schema_type) = self.schema_type.as_deref() {
            if !schema_type.eq_ignore_ascii_case(AVRO) {
                return Err(RegistryError::InvalidSchema(format!(
                    "Invalid schema type {schema_type}: this registry serves AVRO only"
                )));
            }
        }
        if self.references.is_some_and(|refs| !refs.is_empty()) {
            return Err(RegistryError::InvalidSchema(
                "Schema references are not supported by this registry".to_owned(),
            ));
        }
        let text = self.schema.unwrap_or_default();
        ValidSchema::parse(&text).map_err(|error| RegistryError::InvalidSchema(error.to_string()))
    }
}

/// The body of `PUT /config`.
#[derive(Debug, Deserialize)]
struct ConfigRequest {
    compatibility: Option<String>,
}

impl ConfigRequest {
    fn level(self) -> Result<CompatibilityLevel, RegistryError> {
        self.compatibility
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|_| RegistryError::InvalidCompatibilityLevel)
    }
}

// ----- handlers ------------------------------------------------------------------------------

async fn root() -> Json<Value> {
    Json(json!({}))
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "UP" }))
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

async fn schema_types() -> Json<Value> {
    Json(json!([AVRO]))
}

async fn get_mode() -> Json<Value> {
    Json(json!({ "mode": "READWRITE" }))
}

async fn list_subjects(State(service): State<AppState>, params: Params) -> Json<Value> {
    let filter = SubjectFilter {
        prefix: params
            .get("subjectPrefix")
            .or_else(|| params.get("subject"))
            .filter(|prefix| !prefix.is_empty())
            .map(str::to_owned),
        deleted: params.flag("deleted"),
        deleted_only: params.flag("deletedOnly") || params.flag("deleted_only"),
    };
    let subjects = service.read(|state| state.subjects(&filter));
    Json(json!(paginate(subjects, &params)))
}

async fn list_versions(
    State(service): State<AppState>,
    PathParams(subject): PathParams<String>,
    params: Params,
) -> ApiResult {
    let versions = service.read(|state| state.versions(&subject, params.flag("deleted")))?;
    Ok(Json(json!(paginate(versions, &params))))
}

async fn register(
    State(service): State<AppState>,
    PathParams(subject): PathParams<String>,
    JsonBody(request): JsonBody<SchemaRequest>,
) -> ApiResult {
    let schema = request.validate()?;
    let id = service
        .write(move |state| {
            Ok(match state.plan_register(&subject, &schema)? {
                Registration::Existing { id, .. } => Planned::Nothing(id),
                Registration::New { id, version, record } => {
                    tracing::info!(%subject, version, id, "registering a schema");
                    Planned::Append(id, record)
                }
            })
        })
        .await?;
    Ok(Json(json!({ "id": id })))
}

async fn lookup(
    State(service): State<AppState>,
    PathParams(subject): PathParams<String>,
    params: Params,
    JsonBody(request): JsonBody<SchemaRequest>,
) -> ApiResult {
    // An unknown subject is reported before an invalid schema, as Confluent does.
    service.read(|state| state.versions(&subject, params.flag("deleted")))?;
    let schema = request.validate()?;
    let found = service.read(|state| state.lookup(&subject, &schema, params.flag("deleted")))?;
    Ok(Json(json!({
        "subject": found.subject,
        "version": found.version,
        "id": found.id,
        "schema": found.schema,
    })))
}

async fn delete_subject(
    State(service): State<AppState>,
    PathParams(subject): PathParams<String>,
    params: Params,
) -> ApiResult {
    let permanent = params.flag("permanent");
    let versions = service
        .write(move |state| {
            let (versions, record) = state.plan_delete_subject(&subject, permanent)?;
            tracing::info!(%subject, permanent, "deleting a subject");
            Ok(Planned::Append(versions, record))
        })
        .await?;
    Ok(Json(json!(versions)))
}

async fn get_version(
    State(service): State<AppState>,
    PathParams((subject, version)): PathParams<(String, String)>,
    params: Params,
) -> ApiResult {
    let spec = VersionSpec::parse(&version)?;
    let found = service.read(|state| state.version(&subject, spec, params.flag("deleted")))?;
    Ok(Json(json!({
        "subject": found.subject,
        "version": found.version,
        "id": found.id,
        "schema": found.schema,
    })))
}

async fn get_version_schema(
    State(service): State<AppState>,
    PathParams((subject, version)): PathParams<(String, String)>,
    params: Params,
) -> ApiResult<String> {
    let spec = VersionSpec::parse(&version)?;
    let found = service.read(|state| state.version(&subject, spec, params.flag("deleted")))?;
    Ok(found.schema)
}

async fn referenced_by(
    State(service): State<AppState>,
    PathParams((subject, version)): PathParams<(String, String)>,
) -> ApiResult {
    let spec = VersionSpec::parse(&version)?;
    service.read(|state| state.version(&subject, spec, false))?;
    // References are not supported, so nothing refers to anything.
    Ok(Json(json!([])))
}

async fn delete_version(
    State(service): State<AppState>,
    PathParams((subject, version)): PathParams<(String, String)>,
    params: Params,
) -> ApiResult {
    let spec = VersionSpec::parse(&version)?;
    let permanent = params.flag("permanent");
    let deleted = service
        .write(move |state| {
            let (version, record) = state.plan_delete_version(&subject, spec, permanent)?;
            tracing::info!(%subject, version, permanent, "deleting a version");
            Ok(Planned::Append(version, record))
        })
        .await?;
    Ok(Json(json!(deleted)))
}

fn parse_id(id: &str) -> Result<u32, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound)
}

async fn schema_by_id(
    State(service): State<AppState>,
    PathParams(id): PathParams<String>,
    params: Params,
) -> ApiResult {
    let id = parse_id(&id)?;
    let (schema, max_id) =
        service.read(|state| state.schema_by_id(id).map(|schema| (schema.to_owned(), state.max_id())))?;
    let mut body = json!({ "schema": schema });
    if params.flag("fetchMaxId") {
        body["maxId"] = json!(max_id);
    }
    Ok(Json(body))
}

async fn raw_schema_by_id(State(service): State<AppState>, PathParams(id): PathParams<String>) -> ApiResult<String> {
    let id = parse_id(&id)?;
    Ok(service.read(|state| state.schema_by_id(id).map(str::to_owned))?)
}

async fn versions_of_id(
    State(service): State<AppState>,
    PathParams(id): PathParams<String>,
    params: Params,
) -> ApiResult {
    let id = parse_id(&id)?;
    let pairs = service.read(|state| state.versions_of_id(id, params.flag("deleted")))?;
    let pairs: Vec<Value> = pairs
        .into_iter()
        .map(|(subject, version)| json!({ "subject": subject, "version": version }))
        .collect();
    Ok(Json(json!(paginate(pairs, &params))))
}

async fn subjects_of_id(
    State(service): State<AppState>,
    PathParams(id): PathParams<String>,
    params: Params,
) -> ApiResult {
    let id = parse_id(&id)?;
    let pairs = service.read(|state| state.versions_of_id(id, params.flag("deleted")))?;
    let mut subjects: Vec<String> = pairs.into_iter().map(|(subject, _)| subject).collect();
    subjects.dedup();
    Ok(Json(json!(paginate(subjects, &params))))
}

async fn test_compatibility_all(
    State(service): State<AppState>,
    PathParams(subject): PathParams<String>,
    params: Params,
    JsonBody(request): JsonBody<SchemaRequest>,
) -> ApiResult {
    let schema = request.validate()?;
    let messages = service.read(|state| state.test_compatibility(&subject, None, &schema))?;
    Ok(compatibility_answer(messages, &params))
}

async fn test_compatibility_version(
    State(service): State<AppState>,
    PathParams((subject, version)): PathParams<(String, String)>,
    params: Params,
    JsonBody(request): JsonBody<SchemaRequest>,
) -> ApiResult {
    let spec = VersionSpec::parse(&version)?;
    let schema = request.validate()?;
    let messages = service.read(|state| state.test_compatibility(&subject, Some(spec), &schema))?;
    Ok(compatibility_answer(messages, &params))
}

fn compatibility_answer(messages: Vec<String>, params: &Params) -> Json<Value> {
    let mut body = json!({ "is_compatible": messages.is_empty() });
    if params.flag("verbose") {
        body["messages"] = json!(messages);
    }
    Json(body)
}

async fn get_global_config(State(service): State<AppState>) -> Json<Value> {
    let level = service.read(|state| state.global_level());
    Json(json!({ "compatibilityLevel": level.as_str() }))
}

async fn put_global_config(State(service): State<AppState>, JsonBody(request): JsonBody<ConfigRequest>) -> ApiResult {
    let level = request.level()?;
    service
        .write(move |state| Ok(Planned::Append((), state.plan_set_level(None, level))))
        .await?;
    tracing::info!(%level, "set the global compatibility level");
    Ok(Json(json!({ "compatibility": level.as_str() })))
}

async fn delete_global_config(State(service): State<AppState>) -> ApiResult {
    let previous = service
        .write(|state| {
            let (previous, record) = state.plan_delete_level(None)?;
            Ok(Planned::Append(previous, record))
        })
        .await?;
    Ok(Json(json!({ "compatibilityLevel": previous.as_str() })))
}

async fn get_subject_config(
    State(service): State<AppState>,
    PathParams(subject): PathParams<String>,
    params: Params,
) -> ApiResult {
    let level = service.read(|state| match state.subject_level(&subject) {
        Some(level) => Ok(level),
        None if params.flag("defaultToGlobal") => Ok(state.global_level()),
        None => Err(RegistryError::SubjectLevelNotConfigured(subject.clone())),
    })?;
    Ok(Json(json!({ "compatibilityLevel": level.as_str() })))
}

async fn put_subject_config(
    State(service): State<AppState>,
    PathParams(subject): PathParams<String>,
    JsonBody(request): JsonBody<ConfigRequest>,
) -> ApiResult {
    let level = request.level()?;
    service
        .write(move |state| {
            tracing::info!(%subject, %level, "setting a subject's compatibility level");
            Ok(Planned::Append((), state.plan_set_level(Some(&subject), level)))
        })
        .await?;
    Ok(Json(json!({ "compatibility": level.as_str() })))
}

async fn delete_subject_config(State(service): State<AppState>, PathParams(subject): PathParams<String>) -> ApiResult {
    let previous = service
        .write(move |state| {
            let (previous, record) = state.plan_delete_level(Some(&subject))?;
            Ok(Planned::Append(previous, record))
        })
        .await?;
    Ok(Json(json!({ "compatibilityLevel": previous.as_str() })))
}

/// Applies Confluent's `offset` and `limit` (negative: no limit) parameters to a listing.
fn paginate<T>(items: Vec<T>, params: &Params) -> Vec<T> {
    let offset = params.int("offset").and_then(|n| usize::try_from(n).ok()).unwrap_or(0);
    let limit = params
        .int("limit")
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n > 0)
        .unwrap_or(usize::MAX);
    items.into_iter().skip(offset).take(limit).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registering_deleting_and_configuring_change_state_while_lookups_and_compatibility_tests_do_not() {
        for (method, path) in [
            (Method::POST, "/subjects/s/versions"),
            (Method::DELETE, "/subjects/s"),
            (Method::DELETE, "/subjects/s/versions/1"),
            (Method::PUT, "/config"),
            (Method::PUT, "/config/s"),
            (Method::DELETE, "/config/s"),
            (Method::POST, "/no/such/endpoint"),
        ] {
            assert!(changes_state(&method, path), "{method} {path}");
        }
        for (method, path) in [
            (Method::GET, "/subjects"),
            (Method::GET, "/config"),
            (Method::HEAD, "/schemas/ids/1"),
            (Method::POST, "/subjects/s"),
            (Method::POST, "/subjects/s/"),
            (Method::POST, "/compatibility/subjects/s/versions/latest"),
        ] {
            assert!(!changes_state(&method, path), "{method} {path}");
        }
    }

    #[test]
    fn a_denied_write_names_the_subject_as_confluent_does() {
        assert_eq!(
            denied_write_on("/subjects/orders-value/versions"),
            "User is denied operation Write on Subject: orders-value"
        );
        assert_eq!(
            denied_write_on("/config"),
            "User is denied operation Write on the global configuration"
        );
    }
}
