//! The keys a caller of the services holds (sagactl, the demo, the benchmark, the harness),
//! one per scope, read from the same variables the services read: `ORDER_API_KEY`,
//! `READ_API_KEY`, `ADMIN_API_KEY`.

use super::{Scope, Secret};

/// One key per scope; a missing key leaves requests needing it without credentials, so the
/// service's 401 says what is missing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiKeys {
    /// Key of the `orders` scope.
    pub order: Option<Secret>,
    /// Key of the `read` scope.
    pub read: Option<Secret>,
    /// Key of the `admin` scope.
    pub admin: Option<Secret>,
}

impl ApiKeys {
    /// Variable holding the `orders` key.
    pub const ORDER_ENV: &'static str = "ORDER_API_KEY";
    /// Variable holding the `read` key.
    pub const READ_ENV: &'static str = "READ_API_KEY";
    /// Variable holding the `admin` key.
    pub const ADMIN_ENV: &'static str = "ADMIN_API_KEY";

    /// The keys set in the environment.
    pub fn from_env() -> Self {
        let key = |name: &str| std::env::var(name).ok().filter(|key| !key.is_empty()).map(Secret::new);
        Self {
            order: key(Self::ORDER_ENV),
            read: key(Self::READ_ENV),
            admin: key(Self::ADMIN_ENV),
        }
    }

    /// Three fresh random keys, e.g. for a test's services.
    pub fn generate() -> Self {
        let key = |scope: Scope| Some(Secret::new(format!("{scope}-{}", uuid::Uuid::new_v4().simple())));
        Self {
            order: key(Scope::Orders),
            read: key(Scope::Read),
            admin: key(Scope::Admin),
        }
    }

    /// The key of `scope`, if held.
    pub fn key(&self, scope: Scope) -> Option<&Secret> {
        match scope {
            Scope::Orders => self.order.as_ref(),
            Scope::Read => self.read.as_ref(),
            Scope::Admin => self.admin.as_ref(),
        }
    }

    /// `request` with the key of `scope` as its bearer token (unchanged when that key is not
    /// held).
    pub fn authorize(&self, request: reqwest::RequestBuilder, scope: Scope) -> reqwest::RequestBuilder {
        match self.key(scope) {
            Some(key) => request.bearer_auth(key.expose()),
            None => request,
        }
    }

    /// The keys as environment variables for a child process. Never log them.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        [
            (Self::ORDER_ENV, &self.order),
            (Self::READ_ENV, &self.read),
            (Self::ADMIN_ENV, &self.admin),
        ]
        .into_iter()
        .filter_map(|(name, key)| key.as_ref().map(|key| (name, key.expose().to_owned())))
        .collect()
    }
}
