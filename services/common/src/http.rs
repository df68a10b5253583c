//! The one HTTP error type of the services and a JSON body extractor whose rejections go
//! through it, so bad input always gets a clear 4xx naming what is wrong, and 5xx bodies stay
//! opaque while the detail goes to the log.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Classify, ErrorClass};

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON or not the expected shape (400).
    #[error("{0}")]
    BadRequest(String),
    /// A field has an invalid value (422); names the field.
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field, as a JSON path.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The request carries no credential, or a bad one (401, with a `WWW-Authenticate`
    /// challenge).
    #[error("{message}")]
    Unauthorized {
        /// The `WWW-Authenticate` value.
        challenge: String,
        /// What is wrong.
        message: String,
    },
    /// The credential is good but does not allow the request (403, with a `WWW-Authenticate`
    /// challenge naming the scope needed).
    #[error("{message}")]
    Forbidden {
        /// The `WWW-Authenticate` value.
        challenge: String,
        /// What is needed.
        message: String,
    },
    /// The resource does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// The route does not take the request's method (405); the router adds the `Allow` header.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The client sent more than its limit allows (429, with `Retry-After` in whole seconds).
    #[error("{message}")]
    TooManyRequests {
        /// What was limited.
        message: String,
        /// How long the client should wait.
        retry_after: std::time::Duration,
    },
    /// A dependency failed (503): retrying later can help. The detail is logged, not returned.
    #[error("service unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// The request met an error retrying cannot fix (500). The detail is logged, not returned.
    #[error("internal error: {0:#}")]
    Internal(anyhow::Error),
}

impl ApiError {
    /// An invalid-field error.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl ApiError {
    /// A failed dependency or operation, answered by its class: 503 (retry later) when it is
    /// transient, 500 otherwise.
    pub fn classified<E>(error: E) -> Self
    where
        E: Classify + std::error::Error + Send + Sync + 'static,
    {
        match error.class() {
            ErrorClass::Transient => ApiError::Unavailable(error.into()),
            ErrorClass::Permanent | ErrorClass::Unclassified => ApiError::Internal(error.into()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        ApiError::classified(crate::Error::from(error))
    }
}

impl From<crate::Error> for ApiError {
    fn from(error: crate::Error) -> Self {
        ApiError::classified(error)
    }
}

/// The JSON body of every error answer ([`ApiError`]'s shape on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What is wrong, for a person to read; for a 5xx only that the request failed, the detail
    /// is in the service's log.
    pub error: String,
    /// The offending field (a JSON path, or a header's name) of a 422; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ErrorBody {
    fn message(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            field: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            ApiError::BadRequest(message) => (StatusCode::BAD_REQUEST, ErrorBody::message(message)),
            ApiError::Invalid { field, message } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorBody {
                    error: format!("{field}: {message}"),
                    field: Some(field.clone()),
                },
            ),
            ApiError::Unauthorized { challenge, message } | ApiError::Forbidden { challenge, message } => {
                let status = if matches!(self, ApiError::Unauthorized { .. }) {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::FORBIDDEN
                };
                return (
                    status,
                    [(header::WWW_AUTHENTICATE, challenge.clone())],
                    Json(ErrorBody::message(message)),
                )
                    .into_response();
            }
            ApiError::NotFound(message) => (StatusCode::NOT_FOUND, ErrorBody::message(message)),
            ApiError::Conflict(message) => (StatusCode::CONFLICT, ErrorBody::message(message)),
            ApiError::MethodNotAllowed(message) => (StatusCode::METHOD_NOT_ALLOWED, ErrorBody::message(message)),
            ApiError::TooManyRequests { message, retry_after } => {
                let retry_after = retry_after.as_secs().max(1).to_string();
                let body = ErrorBody::message(format!("{message}; retry after {retry_after} s"));
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(axum::http::header::RETRY_AFTER, retry_after)],
                    Json(body),
                )
                    .into_response();
            }
            ApiError::Unavailable(error) => {
                tracing::error!(error = format!("{error:#}"), "request failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorBody::message("temporarily unavailable, retry later"),
                )
            }
            ApiError::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "request failed for good");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorBody::message("the request cannot be completed; the service logged why"),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}

/// The answer to a request no route takes (a router's fallback): a 404 naming it, as JSON
/// like every other error.
pub async fn unrouted(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

/// The answer to a request whose method its route does not take (a router's
/// `method_not_allowed_fallback`): a 405 naming both, as JSON; axum adds the `Allow` header.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}

/// The OpenAPI `pattern` of a [`is_text_line`] string: some character that is neither a control
/// character nor whitespace, and no control character anywhere. Written out character by
/// character so that every regular-expression dialect reads it the same way.
pub const TEXT_LINE_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$";

/// Whether `text` is a line of text a person could have typed: not blank (only whitespace) and
/// without control characters (which PostgreSQL's `text` may not even store, like NUL).
pub fn is_text_line(text: &str) -> bool {
    !text.trim().is_empty() && !text.chars().any(char::is_control)
}

/// `Json<T>` whose rejections become [`ApiError`]s: a wrong content type, a body that is not a
/// JSON object (every request body of the services is one; serde would take `[]` for a struct
/// whose fields are all optional), malformed JSON or a body over axum's limit is a 400, a
/// missing or mistyped field a 422 naming it.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(request.headers()) {
            return Err(ApiError::BadRequest("expected Content-Type: application/json".into()));
        }
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| ApiError::BadRequest(format!("cannot read the body: {}", rejection.body_text())))?;
        if body.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::BadRequest("the body must be a JSON object".into()));
        }
        match Json::<T>::from_bytes(&body) {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(JsonRejection::JsonDataError(error)) => Err(ApiError::invalid(
                data_error_field(&error.body_text()),
                error.body_text().rsplit(": ").next().unwrap_or_default().to_string(),
            )),
            Err(JsonRejection::JsonSyntaxError(error)) => {
                Err(ApiError::BadRequest(format!("malformed JSON: {}", error.body_text())))
            }
            Err(other) => Err(ApiError::BadRequest(other.body_text())),
        }
    }
}

/// Whether the request says its body is JSON: `application/json` or `application/<name>+json`,
/// parameters such as `charset` aside (as axum's own `Json` decides).
fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(Ok(content_type)) = headers.get(header::CONTENT_TYPE).map(|value| value.to_str()) else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Deserialises a JSON integer for a field an OpenAPI document declares `type: integer`, which
/// takes `3.0` as well as `3` (JSON Schema counts a number without a fraction as an integer):
/// `#[serde(deserialize_with = "saga_common::http::whole_number")]`. A fraction, or a value
/// outside `i64`, is refused like any mistyped field.
pub fn whole_number<'de, D>(deserializer: D) -> Result<i64, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct WholeNumber;

    impl serde::de::Visitor<'_> for WholeNumber {
        type Value = i64;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("an integer")
        }

        fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<i64, E> {
            Ok(value)
        }

        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<i64, E> {
            i64::try_from(value).map_err(|_| E::custom(format!("{value} is out of range")))
        }

        fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<i64, E> {
            // 2^63 is exactly representable; every whole f64 below it in magnitude fits an i64.
            const LIMIT: f64 = 9_223_372_036_854_775_808.0;
            if value.fract() == 0.0 && (-LIMIT..LIMIT).contains(&value) {
                #[allow(clippy::cast_possible_truncation)]
                Ok(value as i64)
            } else {
                Err(E::invalid_type(serde::de::Unexpected::Float(value), &self))
            }
        }
    }

    deserializer.deserialize_any(WholeNumber)
}

/// Extracts the field path from serde's "Failed to deserialize the JSON body into the target
/// type: items[0].quantity: invalid type ..." message; falls back to "body".
fn data_error_field(text: &str) -> String {
    let detail = text.split_once("target type: ").map(|(_, rest)| rest).unwrap_or(text);
    if let Some(missing) = detail.split("missing field `").nth(1) {
        let name = missing.split('`').next().unwrap_or_default();
        let prefix = detail.split(": missing field").next().unwrap_or_default();
        return if prefix.starts_with("missing field") || prefix.is_empty() || prefix == detail {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        };
    }
    match detail.split_once(": ") {
        Some((path, _)) if !path.contains(' ') => path.to_string(),
        _ => "body".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{data_error_field, is_text_line, whole_number};

    #[derive(Debug, serde::Deserialize)]
    struct Line {
        #[serde(deserialize_with = "whole_number")]
        quantity: i64,
    }

    #[test]
    fn a_whole_number_may_be_written_with_a_zero_fraction_but_not_with_another() {
        let quantity = |json: &str| serde_json::from_str::<Line>(json).map(|line| line.quantity);
        assert_eq!(quantity(r#"{"quantity": 3}"#).ok(), Some(3));
        assert_eq!(quantity(r#"{"quantity": -3.0}"#).ok(), Some(-3));
        assert_eq!(quantity(r#"{"quantity": 1e3}"#).ok(), Some(1000));
        for bad in ["3.5", "1e300", "9223372036854775808", "\"3\"", "null"] {
            assert!(quantity(&format!(r#"{{"quantity": {bad}}}"#)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_text_line_has_a_visible_character_and_no_control_character() {
        for good in ["c-1", " a ", "Grüße aus Köln", "x\u{3000}"] {
            assert!(is_text_line(good), "{good:?}");
        }
        for bad in [
            "",
            "   ",
            "\u{3000}\u{a0}",
            "a\0b",
            "a\nb",
            "tab\there",
            "\u{85}",
            "a\u{9f}",
        ] {
            assert!(!is_text_line(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_mistyped_field_is_named_by_its_path() {
        let text = "Failed to deserialize the JSON body into the target type: items[0].quantity: invalid type: string \"x\", expected i64 at line 1 column 10";
        assert_eq!(data_error_field(text), "items[0].quantity");
    }

    #[test]
    fn a_missing_top_level_field_is_named() {
        let text =
            "Failed to deserialize the JSON body into the target type: missing field `currency` at line 1 column 2";
        assert_eq!(data_error_field(text), "currency");
    }

    #[test]
    fn a_missing_nested_field_is_named_with_its_parent() {
        let text = "Failed to deserialize the JSON body into the target type: items[0]: missing field `sku` at line 1 column 30";
        assert_eq!(data_error_field(text), "items[0].sku");
    }
}
