//! Request extractors whose every rejection is an [`ApiError`], so bad input gets a Confluent 4xx.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Path parameters; a parameter that does not decode is a 404, as for an unknown route.
pub(crate) struct PathParams<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for PathParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| PathParams(value))
            .map_err(|_| ApiError::NotFound)
    }
}

/// Query parameters, by name. Unknown ones are ignored, as Confluent ignores them.
#[derive(Debug, Default)]
pub(crate) struct Params(HashMap<String, String>);

impl Params {
    /// A boolean flag, read as Java's `Boolean.parseBoolean` does: `true` in any case, else false.
    pub(crate) fn flag(&self, name: &str) -> bool {
        self.0.get(name).is_some_and(|value| value.eq_ignore_ascii_case("true"))
    }

    /// A string parameter.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// An integer parameter; absent or not a number gives `None`.
    pub(crate) fn int(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(|value| value.trim().parse().ok())
    }
}

impl<S> FromRequestParts<S> for Params
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Query(map)| Params(map))
            .map_err(|rejection| ApiError::WrongJsonShape(rejection.body_text()))
    }
}

/// A JSON body of type `T`. Accepts `application/json`, any `application/*+json` (such as
/// `application/vnd.schemaregistry.v1+json`), `application/octet-stream`, or no content type.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(content_type) = request.headers().get(CONTENT_TYPE) {
            let content_type = content_type.to_str().unwrap_or_default();
            if !accepted_content_type(content_type) {
                return Err(ApiError::UnsupportedMediaType(content_type.to_owned()));
            }
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| ApiError::BadBody(rejection.body_text()))?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|error| ApiError::MalformedJson(error.to_string()))?;
        serde_json::from_value(value)
            .map(JsonBody)
            .map_err(|error| ApiError::WrongJsonShape(error.to_string()))
    }
}

fn accepted_content_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence == "application/octet-stream"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_octet_stream_and_schema_registry_content_types_are_accepted() {
        for accepted in [
            "application/json",
            "application/json; charset=utf-8",
            "application/vnd.schemaregistry.v1+json",
            "application/vnd.schemaregistry+json",
            "application/octet-stream",
        ] {
            assert!(accepted_content_type(accepted), "{accepted}");
        }
        for refused in ["text/plain", "application/xml", "multipart/form-data"] {
            assert!(!accepted_content_type(refused), "{refused}");
        }
    }

    #[test]
    fn flags_read_like_javas_parse_boolean() {
        let params = Params(HashMap::from([
            ("a".to_owned(), "True".to_owned()),
            ("b".to_owned(), "False".to_owned()),
            ("c".to_owned(), "yes".to_owned()),
        ]));
        assert!(params.flag("a"));
        assert!(!params.flag("b"));
        assert!(!params.flag("c"));
        assert!(!params.flag("missing"));
    }
}
