//! JWT bearer tokens: HS256 with a shared secret or RS256 with a public key, each token's
//! signature, expiry, issuer and audience checked (the jsonwebtoken crate). Scopes come from
//! the `scope` claim (space-separated, as OAuth 2.0 issues them) or an `scp` list.

use std::collections::BTreeSet;
use std::path::Path;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{AuthConfig, Caller, Refusal, Scope};

/// Verifies JWTs against the configured keys.
pub struct JwtVerifier {
    /// One key per accepted algorithm; a token is checked only with the key of its own `alg`,
    /// so an RS256 public key can never be taken for an HS256 secret.
    keys: Vec<(Algorithm, DecodingKey)>,
    issuer: String,
    audience: String,
    leeway_secs: u64,
}

/// A compact JWS is three base64url parts joined by dots; API keys hold no dot.
pub(super) fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    scope: Option<ScopeClaim>,
    #[serde(default)]
    scp: Option<ScopeClaim>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

impl ScopeClaim {
    fn names(&self) -> Vec<&str> {
        match self {
            ScopeClaim::Text(text) => text.split_whitespace().collect(),
            ScopeClaim::List(list) => list.iter().map(String::as_str).collect(),
        }
    }
}

impl JwtVerifier {
    /// The verifier `config` asks for; `None` when no JWT key is set.
    pub fn from_config(config: &AuthConfig) -> Result<Option<Self>, String> {
        let mut keys = Vec::new();
        let secret = match (&config.jwt_hs256_secret, &config.jwt_hs256_secret_file) {
            (Some(_), Some(_)) => return Err("set JWT_HS256_SECRET or JWT_HS256_SECRET_FILE, not both".into()),
            (Some(secret), None) => Some(secret.expose().as_bytes().to_vec()),
            (None, Some(path)) => Some(read_secret_file(path)?),
            (None, None) => None,
        };
        if let Some(secret) = secret {
            if secret.len() < 32 {
                return Err("the HS256 secret is shorter than 32 bytes".into());
            }
            keys.push((Algorithm::HS256, DecodingKey::from_secret(&secret)));
        }
        if let Some(path) = &config.jwt_rs256_public_key_file {
            let pem = std::fs::read(path).map_err(|error| format!("JWT public key {}: {error}", path.display()))?;
            let key = DecodingKey::from_rsa_pem(&pem).map_err(|error| {
                format!(
                    "JWT public key {}: not an RSA public key in PEM: {error}",
                    path.display()
                )
            })?;
            keys.push((Algorithm::RS256, key));
        }
        if keys.is_empty() {
            return Ok(None);
        }
        let (Some(issuer), Some(audience)) = (&config.jwt_issuer, &config.jwt_audience) else {
            return Err("a JWT key is set: JWT_ISSUER and JWT_AUDIENCE must be set too".into());
        };
        Ok(Some(Self {
            keys,
            issuer: issuer.clone(),
            audience: audience.clone(),
            leeway_secs: config.jwt_leeway_secs,
        }))
    }

    /// Who `token` says the caller is, if it is signed by a configured key, unexpired, and for
    /// this issuer and audience.
    pub fn verify(&self, token: &str) -> Result<Caller, Refusal> {
        let invalid = |reason: &str| Refusal::InvalidToken(reason.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed JWT"))?;
        let (algorithm, key) = self
            .keys
            .iter()
            .find(|(algorithm, _)| *algorithm == header.alg)
            .ok_or_else(|| invalid(&format!("JWT algorithm {:?} is not accepted", header.alg)))?;
        let mut validation = Validation::new(*algorithm);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = self.leeway_secs;
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|error| invalid(reason_of(error.kind())))?
            .claims;
        let scopes: BTreeSet<Scope> = [&claims.scope, &claims.scp]
            .into_iter()
            .flatten()
            .flat_map(ScopeClaim::names)
            .filter_map(Scope::from_name)
            .collect();
        Ok(Caller {
            name: format!("jwt:{}", claims.sub.as_deref().unwrap_or("-")),
            scopes,
            authenticated: true,
        })
    }
}

/// What a client is told about a refused JWT: enough to fix its side, nothing about the keys.
fn reason_of(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "JWT expired",
        ErrorKind::ImmatureSignature => "JWT not valid yet (nbf)",
        ErrorKind::InvalidIssuer => "JWT issuer not accepted",
        ErrorKind::InvalidAudience => "JWT audience not accepted",
        ErrorKind::InvalidSignature => "JWT signature does not verify",
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => "JWT has no exp claim",
            "iss" => "JWT has no iss claim",
            "aud" => "JWT has no aud claim",
            _ => "JWT misses a required claim",
        },
        ErrorKind::InvalidAlgorithm => "JWT algorithm not accepted",
        _ => "malformed JWT",
    }
}

fn read_secret_file(path: &Path) -> Result<Vec<u8>, String> {
    let mut secret = std::fs::read(path).map_err(|error| format!("JWT secret file {}: {error}", path.display()))?;
    while secret.last().is_some_and(|byte| *byte == b'\n' || *byte == b'\r') {
        secret.pop();
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    use super::super::{ApiKeys, Secret};
    use super::*;

    const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";

    fn verifier() -> JwtVerifier {
        let mut config = AuthConfig::with_keys(&ApiKeys::default());
        config.jwt_hs256_secret = Some(Secret::new(SECRET));
        config.jwt_issuer = Some("https://issuer.example".into());
        config.jwt_audience = Some("saga-platform".into());
        config.jwt_leeway_secs = 0;
        JwtVerifier::from_config(&config)
            .expect("settings")
            .expect("a verifier")
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("signed")
    }

    fn good_claims() -> serde_json::Value {
        json!({"sub": "svc-billing", "iss": "https://issuer.example", "aud": "saga-platform", "exp": now() + 300, "scope": "read orders unknown"})
    }

    #[test]
    fn a_good_token_names_its_subject_and_grants_its_known_scopes() {
        let caller = verifier().verify(&token(good_claims())).expect("valid");
        assert_eq!(caller.name, "jwt:svc-billing");
        assert_eq!(caller.scopes, BTreeSet::from([Scope::Orders, Scope::Read]));
    }

    #[test]
    fn scopes_may_come_as_an_scp_list() {
        let mut claims = good_claims();
        claims["scope"] = json!(null);
        claims["scp"] = json!(["admin"]);
        assert_eq!(
            verifier().verify(&token(claims)).expect("valid").scopes,
            BTreeSet::from([Scope::Admin])
        );
    }

    #[test]
    fn an_expired_token_is_refused() {
        let mut claims = good_claims();
        claims["exp"] = json!(now() - 10);
        assert_eq!(
            verifier().verify(&token(claims)),
            Err(Refusal::InvalidToken("JWT expired".into()))
        );
    }

    #[test]
    fn issuer_and_audience_are_checked() {
        let mut claims = good_claims();
        claims["iss"] = json!("https://elsewhere.example");
        assert_eq!(
            verifier().verify(&token(claims)),
            Err(Refusal::InvalidToken("JWT issuer not accepted".into()))
        );
        let mut claims = good_claims();
        claims["aud"] = json!("another-platform");
        assert_eq!(
            verifier().verify(&token(claims)),
            Err(Refusal::InvalidToken("JWT audience not accepted".into()))
        );
        let mut claims = good_claims();
        claims.as_object_mut().expect("an object").remove("exp");
        assert_eq!(
            verifier().verify(&token(claims)),
            Err(Refusal::InvalidToken("JWT has no exp claim".into()))
        );
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &good_claims(),
            &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!"),
        )
        .expect("signed");
        assert_eq!(
            verifier().verify(&forged),
            Err(Refusal::InvalidToken("JWT signature does not verify".into()))
        );
    }

    #[test]
    fn a_token_of_an_algorithm_without_a_key_is_refused() {
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &good_claims(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("signed");
        assert_eq!(
            verifier().verify(&hs512),
            Err(Refusal::InvalidToken("JWT algorithm HS512 is not accepted".into()))
        );
        assert_eq!(
            verifier().verify("not.a.jwt"),
            Err(Refusal::InvalidToken("malformed JWT".into()))
        );
    }

    #[test]
    fn a_jwt_key_without_issuer_and_audience_is_a_configuration_error() {
        let mut config = AuthConfig::with_keys(&ApiKeys::default());
        config.jwt_hs256_secret = Some(Secret::new(SECRET));
        let error = JwtVerifier::from_config(&config).err().expect("refused");
        assert!(error.contains("JWT_ISSUER and JWT_AUDIENCE"), "{error}");
        config.jwt_hs256_secret = Some(Secret::new("short"));
        config.jwt_issuer = Some("i".into());
        config.jwt_audience = Some("a".into());
        assert!(JwtVerifier::from_config(&config).is_err());
    }
}
