//! API keys: the three scope keys of the environment and a file of further named keys, looked
//! up in constant time per key.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use subtle::ConstantTimeEq;

use super::{AuthConfig, Scope};

/// Shortest key accepted: a guessable key is a configuration mistake.
const MIN_KEY_LENGTH: usize = 16;

/// A key or signing secret. `Debug` and `Display` show `***`; only [`Secret::expose`] gives it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, to send or compare. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One API key: its name (what logs and refusals show), its scopes and the key itself.
#[derive(Clone, Debug)]
pub struct ApiKey {
    /// Name of the key's holder, e.g. `order-api-key` or `team-billing`.
    pub name: String,
    /// What the key allows.
    pub scopes: BTreeSet<Scope>,
    key: Secret,
}

/// The configured API keys.
#[derive(Clone, Debug, Default)]
pub struct KeyStore(Vec<ApiKey>);

impl KeyStore {
    /// The keys of `config`: the scope keys set in the environment, then those of the keys file.
    pub fn from_config(config: &AuthConfig) -> Result<Self, String> {
        let mut keys = Vec::new();
        let scope_keys = [
            ("order-api-key", &config.order_api_key, Scope::Orders),
            ("read-api-key", &config.read_api_key, Scope::Read),
            ("admin-api-key", &config.admin_api_key, Scope::Admin),
        ];
        for (name, key, scope) in scope_keys {
            if let Some(key) = key.as_ref().filter(|key| !key.expose().is_empty()) {
                keys.push(ApiKey::new(name, BTreeSet::from([scope]), key.clone())?);
            }
        }
        if let Some(path) = &config.api_keys_file {
            keys.extend(read_keys_file(path)?);
        }
        for (index, key) in keys.iter().enumerate() {
            if let Some(twin) = keys[..index].iter().find(|other| other.name == key.name) {
                return Err(format!("API key {} is defined twice", twin.name));
            }
            if let Some(twin) = keys[..index].iter().find(|other| other.matches(key.key.expose())) {
                return Err(format!("API keys {} and {} are the same key", twin.name, key.name));
            }
        }
        Ok(Self(keys))
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key `token` is, if it is one. Every key is compared, each in constant time.
    pub fn find(&self, token: &str) -> Option<&ApiKey> {
        self.0
            .iter()
            .fold(None, |found, key| if key.matches(token) { Some(key) } else { found })
    }
}

impl ApiKey {
    fn new(name: &str, scopes: BTreeSet<Scope>, key: Secret) -> Result<Self, String> {
        if key.expose().len() < MIN_KEY_LENGTH {
            return Err(format!("API key {name} is shorter than {MIN_KEY_LENGTH} characters"));
        }
        if key.expose().chars().any(|c| c.is_whitespace() || c.is_control()) || key.expose().contains('.') {
            return Err(format!(
                "API key {name} holds whitespace or a dot (dots mark JWTs); use letters, digits, - and _"
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            scopes,
            key,
        })
    }

    fn matches(&self, token: &str) -> bool {
        self.key.expose().as_bytes().ct_eq(token.as_bytes()).into()
    }
}

/// Reads `<name> <scope>[,<scope>...] <key>` lines; a bad line is reported by its number, never
/// with its key.
fn read_keys_file(path: &Path) -> Result<Vec<ApiKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("API keys file {}: {error}", path.display()))?;
    parse_keys(&text).map_err(|(line, reason)| format!("API keys file {} line {line}: {reason}", path.display()))
}

fn parse_keys(text: &str) -> Result<Vec<ApiKey>, (usize, String)> {
    let mut keys = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, scopes, key] = fields[..] else {
            return Err((index + 1, "expected `<name> <scope>[,<scope>...] <key>`".into()));
        };
        let scopes = scopes
            .split(',')
            .map(|scope| {
                Scope::from_name(scope).ok_or_else(|| format!("unknown scope {scope:?} (known: orders, read, admin)"))
            })
            .collect::<Result<BTreeSet<_>, _>>()
            .map_err(|reason| (index + 1, reason))?;
        keys.push(ApiKey::new(name, scopes, Secret::new(key)).map_err(|reason| (index + 1, reason))?);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_file_names_each_key_and_its_scopes_and_ignores_comments() {
        let keys = parse_keys(
            "# team keys\n\nbilling read,orders billing-key-0123456789\nops admin ops-key-0123456789ab # on call\n",
        )
        .expect("two keys");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].name, "billing");
        assert_eq!(keys[0].scopes, BTreeSet::from([Scope::Orders, Scope::Read]));
        assert_eq!(keys[1].scopes, BTreeSet::from([Scope::Admin]));
    }

    #[test]
    fn a_bad_line_is_reported_by_number_without_its_key() {
        let error =
            parse_keys("ok read ok-key-0123456789abcd\nbad writer secret-key-0123456789\n").expect_err("bad scope");
        assert_eq!(error.0, 2);
        assert!(!error.1.contains("secret-key"), "{}", error.1);
        let short = parse_keys("weak read short\n").expect_err("short key");
        assert!(short.1.contains("shorter than 16"), "{}", short.1);
        assert!(!short.1.contains("short\n"));
    }

    #[test]
    fn a_key_is_found_only_by_its_exact_value() {
        let store = KeyStore(parse_keys("a read aaaa-key-0123456789\nb admin bbbb-key-0123456789\n").expect("keys"));
        assert_eq!(
            store.find("bbbb-key-0123456789").map(|key| key.name.as_str()),
            Some("b")
        );
        assert!(store.find("bbbb-key-012345678").is_none());
        assert!(store.find("").is_none());
    }

    #[test]
    fn the_same_key_twice_is_refused() {
        let mut config = AuthConfig::with_keys(&super::super::ApiKeys::default());
        config.read_api_key = Some(Secret::new("same-key-0123456789"));
        config.admin_api_key = Some(Secret::new("same-key-0123456789"));
        let error = KeyStore::from_config(&config).expect_err("one key, two scopes");
        assert!(error.contains("read-api-key and admin-api-key"), "{error}");
    }

    #[test]
    fn a_secret_never_shows_itself() {
        let secret = Secret::new("hunter2-hunter2-hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "*** ***");
    }
}
