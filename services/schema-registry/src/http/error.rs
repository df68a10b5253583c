//! The one HTTP error type: every failure becomes a Confluent-shaped `{"error_code", "message"}`.
//!
//! All status codes and Confluent error codes are mapped in [`ApiError::parts`]. Server errors
//! keep their body opaque; their cause chain goes to the log.
//!
//! Refused credentials are answered as Confluent Schema Registry answers them: its HTTP basic
//! authentication (Jetty's, with its `JsonErrorHandler`) gives 401 with
//! `{"error_code": 401, "message": "Unauthorized"}` and a `WWW-Authenticate: Basic` challenge;
//! its authorization gives 403 with error code 40301 and "User is denied operation Write on
//! Subject: ...".

use axum::http::header::WWW_AUTHENTICATE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use saga_contracts::compatibility::error_chain;
use serde_json::json;

use crate::service::ServiceError;
use crate::state::RegistryError;

/// A failed request, as the client sees it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// Refused by the registry's rules (unknown subject, invalid schema, incompatible, …).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The body is not JSON. Confluent answers 400 / 400.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The body is JSON of the wrong shape (e.g. `"schema": 5`). Confluent answers 422 / 422.
    #[error("unprocessable entity: {0}")]
    WrongJsonShape(String),
    /// The body's content type is not JSON. Answered 415 / 415.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// The body could not be read (too large, connection trouble). Answered 400 / 400.
    #[error("could not read the body: {0}")]
    BadBody(String),
    /// No such endpoint, or a path parameter of the wrong type. 404 / 404.
    #[error("HTTP 404 Not Found")]
    NotFound,
    /// The endpoint exists but not with this method. 405 / 405.
    #[error("HTTP 405 Method Not Allowed")]
    MethodNotAllowed,
    /// No credentials, malformed ones, an unknown user or a wrong password. 401 / 401, with a
    /// `WWW-Authenticate: Basic` challenge.
    #[error("Unauthorized")]
    Unauthenticated,
    /// A read-only user asked for a change. 403 / 40301.
    #[error("{0}")]
    Forbidden(String),
    /// The change could not be made durable. 500 / 50001, detail only in the log.
    #[error("the registry's storage failed")]
    Storage(#[source] crate::Error),
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::Rejected(error) => ApiError::Registry(error),
            ServiceError::Storage(error) => ApiError::Storage(error),
        }
    }
}

impl ApiError {
    /// The HTTP status, the Confluent error code and the message.
    fn parts(&self) -> (StatusCode, u32, String) {
        let message = self.to_string();
        let (status, code) = match self {
            ApiError::Registry(error) => match error {
                RegistryError::SubjectNotFound(_) => (StatusCode::NOT_FOUND, 40401),
                RegistryError::VersionNotFound(_) => (StatusCode::NOT_FOUND, 40402),
                RegistryError::SchemaIdNotFound(_) | RegistryError::SchemaNotFound => (StatusCode::NOT_FOUND, 40403),
                RegistryError::SubjectSoftDeleted(_) => (StatusCode::NOT_FOUND, 40404),
                RegistryError::SubjectNotSoftDeleted(_) => (StatusCode::NOT_FOUND, 40405),
                RegistryError::VersionSoftDeleted(..) => (StatusCode::NOT_FOUND, 40406),
                RegistryError::VersionNotSoftDeleted(..) => (StatusCode::NOT_FOUND, 40407),
                RegistryError::SubjectLevelNotConfigured(_) => (StatusCode::NOT_FOUND, 40408),
                RegistryError::Incompatible { .. } => (StatusCode::CONFLICT, 409),
                RegistryError::InvalidSchema(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
                RegistryError::InvalidVersion(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42202),
                RegistryError::InvalidCompatibilityLevel => (StatusCode::UNPROCESSABLE_ENTITY, 42203),
            },
            ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, 400),
            ApiError::WrongJsonShape(_) => (StatusCode::UNPROCESSABLE_ENTITY, 422),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, 415),
            ApiError::BadBody(_) => (StatusCode::BAD_REQUEST, 400),
            ApiError::NotFound => (StatusCode::NOT_FOUND, 404),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, 405),
            ApiError::Unauthenticated => (StatusCode::UNAUTHORIZED, 401),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, 40301),
            ApiError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, 50001),
        };
        (status, code, message)
    }
}

/// The challenge sent with every 401.
const CHALLENGE: &str = r#"Basic realm="schema-registry""#;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        if status.is_server_error() {
            tracing::error!(error = %error_chain(&self), "request failed");
        } else {
            tracing::debug!(%code, %message, "request refused");
        }
        let body = json!({ "error_code": code, "message": message });
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_errors_map_to_confluents_status_and_error_codes() {
        let cases = [
            (RegistryError::SubjectNotFound("s".into()), 404, 40401),
            (RegistryError::VersionNotFound(3), 404, 40402),
            (RegistryError::SchemaIdNotFound(9), 404, 40403),
            (RegistryError::SchemaNotFound, 404, 40403),
            (RegistryError::SubjectLevelNotConfigured("s".into()), 404, 40408),
            (
                RegistryError::Incompatible {
                    subject: "s".into(),
                    messages: vec![],
                },
                409,
                409,
            ),
            (RegistryError::InvalidSchema("x".into()), 422, 42201),
            (RegistryError::InvalidVersion("x".into()), 422, 42202),
            (RegistryError::InvalidCompatibilityLevel, 422, 42203),
        ];
        for (error, status, code) in cases {
            let (got_status, got_code, _) = ApiError::Registry(error).parts();
            assert_eq!((got_status.as_u16(), got_code), (status, code));
        }
    }

    #[test]
    fn refused_credentials_get_confluents_codes_and_a_401_carries_a_basic_challenge() {
        let (status, code, message) = ApiError::Unauthenticated.parts();
        assert_eq!((status.as_u16(), code, message.as_str()), (401, 401, "Unauthorized"));
        let response = ApiError::Unauthenticated.into_response();
        assert_eq!(
            response.headers().get(WWW_AUTHENTICATE).map(HeaderValue::as_bytes),
            Some(CHALLENGE.as_bytes())
        );
        let (status, code, _) = ApiError::Forbidden("User is denied operation Write on Subject: s".into()).parts();
        assert_eq!((status.as_u16(), code), (403, 40301));
        let response = ApiError::Forbidden(String::new()).into_response();
        assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn storage_failures_are_opaque_500s() {
        let error = ApiError::Storage(crate::Error::Task("secret detail".into()));
        let (status, code, message) = error.parts();
        assert_eq!((status.as_u16(), code), (500, 50001));
        assert!(!message.contains("secret detail"));
    }
}
