//! The one HTTP error type of the services and a JSON body extractor whose rejections go
//! through it, so bad input always gets a clear 4xx naming what is wrong, and 5xx bodies stay
//! opaque while the detail goes to the log.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;

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
    /// The resource does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            ApiError::BadRequest(message) => (StatusCode::BAD_REQUEST, json!({"error": message})),
            ApiError::Invalid { field, message } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": format!("{field}: {message}"), "field": field}),
            ),
            ApiError::NotFound(message) => (StatusCode::NOT_FOUND, json!({"error": message})),
            ApiError::Conflict(message) => (StatusCode::CONFLICT, json!({"error": message})),
            ApiError::Unavailable(error) => {
                tracing::error!(error = format!("{error:#}"), "request failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "temporarily unavailable, retry later"}),
                )
            }
            ApiError::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "request failed for good");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": "the request cannot be completed; the service logged why"}),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}

/// `Json<T>` whose rejections become [`ApiError`]s: malformed JSON or a wrong content type is a
/// 400, a missing or mistyped field a 422 naming it.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(JsonRejection::JsonDataError(error)) => Err(ApiError::invalid(
                data_error_field(&error.body_text()),
                error.body_text().rsplit(": ").next().unwrap_or_default().to_string(),
            )),
            Err(JsonRejection::JsonSyntaxError(error)) => {
                Err(ApiError::BadRequest(format!("malformed JSON: {}", error.body_text())))
            }
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(ApiError::BadRequest("expected Content-Type: application/json".into()))
            }
            Err(other) => Err(ApiError::BadRequest(other.body_text())),
        }
    }
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
    use super::data_error_field;

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
