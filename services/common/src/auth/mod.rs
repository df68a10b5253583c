//! Who may call a service's HTTP API. Every request outside `/health/*`, `/openapi.json` and
//! (unless [`AuthConfig::metrics_require_auth`] is set) `/metrics` carries
//! `Authorization: Bearer <token>`, where the token is a configured API key or a JWT (HS256 or
//! RS256, issuer and audience checked). Each credential grants [`Scope`]s; each handler names
//! the [`Permission`] it needs through its [`Authorized`] argument.
//!
//! A missing or bad credential is answered 401 with a `WWW-Authenticate` challenge, a good one
//! without the scope 403 (RFC 6750), both with a JSON body saying what is wrong. Keys and
//! signing secrets are never logged and `Debug` shows them as `***`.

mod client;
mod jwt;
mod keys;

use std::collections::BTreeSet;
use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

pub use client::ApiKeys;
pub use jwt::JwtVerifier;
pub use keys::{ApiKey, KeyStore, Secret};

use crate::http::ApiError;

/// What a credential allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Placing orders and reading them (`orders`).
    Orders,
    /// Reading orders, payments, stock, notifications and the saga dashboard (`read`).
    Read,
    /// Changing state outside the saga: stock adjustments, redriving parked events and failed
    /// notifications, and reading what operators act on (`admin`).
    Admin,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 3] = [Scope::Orders, Scope::Read, Scope::Admin];

    /// The scope's name in key files, JWT `scope` claims and OpenAPI documents.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Orders => "orders",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    /// The scope called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == name)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a handler needs: any one of [`Permission::SCOPES`].
pub trait Permission: Send + Sync + 'static {
    /// The scopes that each allow the request.
    const SCOPES: &'static [Scope];
}

/// `POST /orders`.
pub struct PlaceOrders;
impl Permission for PlaceOrders {
    const SCOPES: &'static [Scope] = &[Scope::Orders];
}

/// Reading orders: who places orders may follow them, and so may readers and operators.
pub struct ReadOrders;
impl Permission for ReadOrders {
    const SCOPES: &'static [Scope] = &[Scope::Orders, Scope::Read, Scope::Admin];
}

/// Reading what the saga did: payments, stock, notifications, the breaker, the dashboard,
/// and `/metrics` when it is restricted.
pub struct ReadSaga;
impl Permission for ReadSaga {
    const SCOPES: &'static [Scope] = &[Scope::Read, Scope::Admin];
}

/// Operator actions and the lists they act on.
pub struct Operate;
impl Permission for Operate {
    const SCOPES: &'static [Scope] = &[Scope::Admin];
}

/// Who made a request, as its credential says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The API key's name, `jwt:<subject>` for a token, `anonymous` when authentication is
    /// off. Never the secret.
    pub name: String,
    /// What the credential allows.
    pub scopes: BTreeSet<Scope>,
    /// Whether the request carried a credential at all (false only when authentication is off).
    pub authenticated: bool,
}

impl Caller {
    fn may(&self, permission: &[Scope]) -> bool {
        permission.iter().any(|scope| self.scopes.contains(scope))
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No `Authorization` header (401).
    #[error("missing credentials: send Authorization: Bearer <API key or JWT>")]
    Missing,
    /// The header is not `Bearer <token>` (401, `invalid_request`).
    #[error("the Authorization header must be `Bearer <API key or JWT>`")]
    Malformed,
    /// The token is neither a configured key nor a valid JWT (401, `invalid_token`).
    #[error("invalid credentials: {0}")]
    InvalidToken(String),
    /// The credential is good but allows none of the scopes the request needs (403).
    #[error("the credential of {caller} does not allow this request: it needs the scope {needed}, and has {has}")]
    InsufficientScope {
        /// Who the credential belongs to.
        caller: String,
        /// The scopes any one of which would do, e.g. `read or admin`.
        needed: String,
        /// The scopes the credential has, e.g. `orders`, or `none`.
        has: String,
    },
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        let message = refusal.to_string();
        let realm = "realm=\"saga-platform\"";
        match refusal {
            Refusal::Missing => ApiError::Unauthorized {
                challenge: format!("Bearer {realm}"),
                message,
            },
            Refusal::Malformed => ApiError::Unauthorized {
                challenge: format!("Bearer {realm}, error=\"invalid_request\""),
                message,
            },
            Refusal::InvalidToken(reason) => ApiError::Unauthorized {
                challenge: format!(
                    "Bearer {realm}, error=\"invalid_token\", error_description=\"{}\"",
                    quoted_string_safe(&reason)
                ),
                message,
            },
            Refusal::InsufficientScope { ref needed, .. } => ApiError::Forbidden {
                challenge: format!(
                    "Bearer {realm}, error=\"insufficient_scope\", scope=\"{}\"",
                    needed.replace(" or ", " ")
                ),
                message,
            },
        }
    }
}

/// `text` without the characters a quoted-string in a challenge may not hold.
fn quoted_string_safe(text: &str) -> String {
    text.chars()
        .filter(|c| (' '..='~').contains(c) && *c != '"' && *c != '\\')
        .collect()
}

/// How a service authenticates its callers. `Debug` shows every key and secret as `***`
/// ([`Secret`]).
#[derive(Clone, Debug, clap::Args)]
pub struct AuthConfig {
    /// API key granting the `orders` scope (placing and reading orders).
    #[arg(long = "order-api-key", env = ApiKeys::ORDER_ENV, hide_env_values = true)]
    pub order_api_key: Option<Secret>,
    /// API key granting the `read` scope (reading orders, payments, stock, notifications).
    #[arg(long = "read-api-key", env = ApiKeys::READ_ENV, hide_env_values = true)]
    pub read_api_key: Option<Secret>,
    /// API key granting the `admin` scope (stock adjustments, redrives, operator lists).
    #[arg(long = "admin-api-key", env = ApiKeys::ADMIN_ENV, hide_env_values = true)]
    pub admin_api_key: Option<Secret>,
    /// A file of further API keys, one per line: `<name> <scope>[,<scope>...] <key>`; `#`
    /// starts a comment.
    #[arg(long = "api-keys-file", env = "API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Shared secret of HS256-signed JWTs.
    #[arg(long = "jwt-hs256-secret", env = "JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<Secret>,
    /// A file holding the shared secret of HS256-signed JWTs (trailing newline ignored).
    #[arg(long = "jwt-hs256-secret-file", env = "JWT_HS256_SECRET_FILE")]
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// A PEM file holding the public key (SPKI or PKCS#1) of RS256-signed JWTs.
    #[arg(long = "jwt-rs256-public-key-file", env = "JWT_RS256_PUBLIC_KEY_FILE")]
    pub jwt_rs256_public_key_file: Option<PathBuf>,
    /// The `iss` every accepted JWT must carry; required when a JWT key is set.
    #[arg(long = "jwt-issuer", env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The `aud` every accepted JWT must carry; required when a JWT key is set.
    #[arg(long = "jwt-audience", env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    #[arg(long = "jwt-leeway-secs", env = "JWT_LEEWAY_SECS", default_value_t = 30)]
    pub jwt_leeway_secs: u64,
    /// Whether `/metrics` needs the `read` or `admin` scope too (Prometheus sends it with
    /// `authorization: {credentials: <key>}`).
    #[arg(long = "metrics-require-auth", env = "METRICS_REQUIRE_AUTH", default_value_t = false)]
    pub metrics_require_auth: bool,
    /// Serves every request without authentication. Only for a service no one else can reach;
    /// without it a service with no credentials configured refuses to start.
    #[arg(long = "http-auth-disabled", env = "HTTP_AUTH_DISABLED", default_value_t = false)]
    pub disabled: bool,
}

impl AuthConfig {
    /// Settings with the three scope keys of `keys` and nothing else.
    pub fn with_keys(keys: &ApiKeys) -> Self {
        Self {
            order_api_key: keys.order.clone(),
            read_api_key: keys.read.clone(),
            admin_api_key: keys.admin.clone(),
            api_keys_file: None,
            jwt_hs256_secret: None,
            jwt_hs256_secret_file: None,
            jwt_rs256_public_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_secs: 30,
            metrics_require_auth: false,
            disabled: false,
        }
    }
}

/// A configuration no service can run with.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// Nothing to authenticate with, and authentication not turned off.
    #[error(
        "no credentials configured: set ORDER_API_KEY, READ_API_KEY, ADMIN_API_KEY, API_KEYS_FILE or a JWT key \
         (JWT_HS256_SECRET[_FILE] or JWT_RS256_PUBLIC_KEY_FILE with JWT_ISSUER and JWT_AUDIENCE), \
         or HTTP_AUTH_DISABLED=true to serve without authentication"
    )]
    NoCredentials,
    /// A key file or key is unusable; says which and why, never the key.
    #[error("{0}")]
    Keys(String),
    /// A JWT setting is unusable.
    #[error("{0}")]
    Jwt(String),
}

/// Checks the credentials of requests against the configured keys and JWT keys.
pub struct Authenticator {
    keys: KeyStore,
    jwt: Option<JwtVerifier>,
    disabled: bool,
    metrics_require_auth: bool,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys)
            .field("jwt", &self.jwt.is_some())
            .field("disabled", &self.disabled)
            .finish()
    }
}

impl Authenticator {
    /// The authenticator `config` describes, its files read.
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthConfigError> {
        let keys = KeyStore::from_config(config).map_err(AuthConfigError::Keys)?;
        let jwt = JwtVerifier::from_config(config).map_err(AuthConfigError::Jwt)?;
        if keys.is_empty() && jwt.is_none() && !config.disabled {
            return Err(AuthConfigError::NoCredentials);
        }
        Ok(Self {
            keys,
            jwt,
            disabled: config.disabled,
            metrics_require_auth: config.metrics_require_auth,
        })
    }

    /// Whether every request is let in without a credential.
    pub fn is_disabled(&self) -> bool {
        self.disabled
    }

    /// Whether `/metrics` needs a credential.
    pub fn metrics_require_auth(&self) -> bool {
        self.metrics_require_auth && !self.disabled
    }

    /// Who sent `authorization`, if it is a good credential.
    pub fn authenticate(&self, authorization: Option<&HeaderValue>) -> Result<Caller, Refusal> {
        if self.disabled {
            return Ok(Caller {
                name: "anonymous".into(),
                scopes: Scope::ALL.into_iter().collect(),
                authenticated: false,
            });
        }
        let header = authorization.ok_or(Refusal::Missing)?;
        let token = bearer_token(header).ok_or(Refusal::Malformed)?;
        if jwt::looks_like_jwt(token) {
            return match &self.jwt {
                Some(verifier) => verifier.verify(token),
                None => Err(Refusal::InvalidToken(
                    "this service accepts no JWTs, only API keys".into(),
                )),
            };
        }
        self.keys
            .find(token)
            .map(|key| Caller {
                name: key.name.clone(),
                scopes: key.scopes.clone(),
                authenticated: true,
            })
            .ok_or_else(|| Refusal::InvalidToken("unknown API key".into()))
    }

    /// Who sent `authorization`, if the credential allows one of `permission`.
    pub fn authorize(&self, authorization: Option<&HeaderValue>, permission: &[Scope]) -> Result<Caller, Refusal> {
        let caller = self.authenticate(authorization)?;
        if caller.may(permission) {
            return Ok(caller);
        }
        Err(Refusal::InsufficientScope {
            needed: names(permission.iter(), " or "),
            has: if caller.scopes.is_empty() {
                "none".into()
            } else {
                names(caller.scopes.iter(), ", ")
            },
            caller: caller.name,
        })
    }
}

fn names<'a>(scopes: impl Iterator<Item = &'a Scope>, separator: &str) -> String {
    scopes.map(|scope| scope.as_str()).collect::<Vec<_>>().join(separator)
}

/// The token of `Bearer <token>` (the scheme is case-insensitive).
fn bearer_token(header: &HeaderValue) -> Option<&str> {
    let text = header.to_str().ok()?;
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' ')).then_some(token)
}

/// A handler argument that admits only callers allowed `P`, and says who they are.
pub struct Authorized<P: Permission> {
    /// Who made the request.
    pub caller: Caller,
    permission: PhantomData<P>,
}

impl<P: Permission, S: Send + Sync> FromRequestParts<S> for Authorized<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let authenticator = parts.extensions.get::<Arc<Authenticator>>().ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "no authenticator installed on this router (a service must wrap its routes with auth::install)"
            ))
        })?;
        let caller = authenticator.authorize(parts.headers.get(header::AUTHORIZATION), P::SCOPES)?;
        Ok(Self {
            caller,
            permission: PhantomData,
        })
    }
}

/// Makes `authenticator` available to the [`Authorized`] arguments of `router`'s handlers.
pub fn install<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
    authenticator: Arc<Authenticator>,
) -> axum::Router<S> {
    router.layer(axum::Extension(authenticator))
}

/// Middleware admitting only callers allowed `P`, for routes whose handlers take no
/// [`Authorized`] argument (e.g. `/metrics`).
pub async fn require<P: Permission>(
    State(authenticator): State<Arc<Authenticator>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    authenticator.authorize(request.headers().get(header::AUTHORIZATION), P::SCOPES)?;
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        ApiKeys {
            order: Some(Secret::new("order-key-0123456789abcdef")),
            read: Some(Secret::new("read-key-0123456789abcdef")),
            admin: Some(Secret::new("admin-key-0123456789abcdef")),
        }
    }

    fn authenticator() -> Authenticator {
        Authenticator::from_config(&AuthConfig::with_keys(&keys())).expect("an authenticator")
    }

    fn bearer(token: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {token}")).expect("a header")
    }

    #[test]
    fn a_configured_key_is_its_scope() {
        let caller = authenticator()
            .authenticate(Some(&bearer("read-key-0123456789abcdef")))
            .expect("known key");
        assert_eq!(caller.name, "read-api-key");
        assert_eq!(caller.scopes, BTreeSet::from([Scope::Read]));
    }

    #[test]
    fn a_request_without_credentials_is_unauthenticated() {
        assert_eq!(authenticator().authenticate(None), Err(Refusal::Missing));
    }

    #[test]
    fn only_the_bearer_scheme_is_accepted() {
        let basic = HeaderValue::from_static("Basic dXNlcjpwYXNz");
        assert_eq!(authenticator().authenticate(Some(&basic)), Err(Refusal::Malformed));
        let lowercase = HeaderValue::from_static("bearer read-key-0123456789abcdef");
        assert!(authenticator().authenticate(Some(&lowercase)).is_ok());
        let empty = HeaderValue::from_static("Bearer ");
        assert_eq!(authenticator().authenticate(Some(&empty)), Err(Refusal::Malformed));
    }

    #[test]
    fn an_unknown_key_is_an_invalid_token() {
        assert_eq!(
            authenticator().authenticate(Some(&bearer("read-key-0123456789abcdeX"))),
            Err(Refusal::InvalidToken("unknown API key".into()))
        );
    }

    #[test]
    fn a_key_without_the_scope_is_forbidden_and_told_what_it_needs() {
        let refusal = authenticator()
            .authorize(Some(&bearer("order-key-0123456789abcdef")), Operate::SCOPES)
            .expect_err("orders may not operate");
        assert_eq!(
            refusal,
            Refusal::InsufficientScope {
                caller: "order-api-key".into(),
                needed: "admin".into(),
                has: "orders".into(),
            }
        );
        let ApiError::Forbidden { challenge, message } = ApiError::from(refusal) else {
            panic!("a 403");
        };
        assert!(
            challenge.contains("error=\"insufficient_scope\", scope=\"admin\""),
            "{challenge}"
        );
        assert!(message.contains("needs the scope admin"), "{message}");
    }

    #[test]
    fn each_permission_admits_exactly_its_scopes() {
        let auth = authenticator();
        let allowed = |key: &str, permission: &[Scope]| auth.authorize(Some(&bearer(key)), permission).is_ok();
        let (order, read, admin) = (
            "order-key-0123456789abcdef",
            "read-key-0123456789abcdef",
            "admin-key-0123456789abcdef",
        );
        assert!(allowed(order, PlaceOrders::SCOPES));
        assert!(!allowed(read, PlaceOrders::SCOPES));
        assert!(!allowed(admin, PlaceOrders::SCOPES));
        assert!(
            allowed(order, ReadOrders::SCOPES)
                && allowed(read, ReadOrders::SCOPES)
                && allowed(admin, ReadOrders::SCOPES)
        );
        assert!(
            !allowed(order, ReadSaga::SCOPES) && allowed(read, ReadSaga::SCOPES) && allowed(admin, ReadSaga::SCOPES)
        );
        assert!(!allowed(order, Operate::SCOPES) && !allowed(read, Operate::SCOPES) && allowed(admin, Operate::SCOPES));
    }

    #[test]
    fn a_service_without_credentials_refuses_to_start_unless_told_to_serve_openly() {
        let mut config = AuthConfig::with_keys(&ApiKeys::default());
        assert!(matches!(
            Authenticator::from_config(&config),
            Err(AuthConfigError::NoCredentials)
        ));
        config.disabled = true;
        let open = Authenticator::from_config(&config).expect("an open service");
        let caller = open.authorize(None, Operate::SCOPES).expect("anyone may");
        assert!(!caller.authenticated);
    }

    #[test]
    fn debug_output_never_shows_a_key() {
        let config = AuthConfig::with_keys(&keys());
        let shown = format!("{config:?} {:?}", authenticator());
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
    }

    #[test]
    fn an_error_description_is_made_safe_for_a_quoted_string() {
        assert_eq!(quoted_string_safe("bad \"token\"\n\\x"), "bad tokenx");
    }
}
