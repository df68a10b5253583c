//! Who may call what, against the four services and the dashboard started in-process.
//!
//! Every operation a service's `/openapi.json` marks as secured is called without a credential
//! (401, a Bearer challenge, a JSON body saying what is missing), with a key no one configured
//! (401, `invalid_token`), and with the key of each scope: one the document lists is let through,
//! any other gets 403 naming the scope needed. Operations the document leaves open (health,
//! `/metrics`, `/openapi.json`) answer without a credential. So the documents cannot claim a
//! protection the code lacks, nor the code demand one the documents do not show.
//!
//! Then JWTs (HS256 and RS256, the RSA key made by openssl for the test), `/metrics` restricted
//! by its setting, and the rate limit counted per credential.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use saga_common::auth::{ApiKeys, AuthConfig, Scope, Secret};
use saga_tests::platform::Platform;
use saga_tests::services::order::LONG_DEADLINE_SECS;
use saga_tests::{credentials, TestEnv};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// One operation of a document and the scopes that allow it (empty: open).
#[derive(Debug)]
struct Operation {
    method: reqwest::Method,
    path: String,
    scopes: BTreeSet<String>,
}

/// The operations `address`'s document describes.
async fn operations(address: SocketAddr) -> anyhow::Result<Vec<Operation>> {
    let document: Value = reqwest::get(format!("http://{address}/openapi.json"))
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().into_iter().flatten() {
        for (method, operation) in item.as_object().into_iter().flatten() {
            let Ok(method) = method.to_uppercase().parse::<reqwest::Method>() else {
                continue;
            };
            let scopes = operation["security"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|requirement| requirement["bearer"].as_array().cloned().unwrap_or_default())
                .filter_map(|scope| scope.as_str().map(str::to_owned))
                .collect();
            found.push(Operation {
                method,
                path: path.clone(),
                scopes,
            });
        }
    }
    Ok(found)
}

/// `operation` on `address` with `credential` as its bearer token (none when `None`); path
/// parameters get harmless values and a POST an empty object.
async fn call(
    address: SocketAddr,
    operation: &Operation,
    credential: Option<&str>,
) -> anyhow::Result<reqwest::Response> {
    let path = operation
        .path
        .replace("{order_id}", &uuid::Uuid::new_v4().to_string())
        .replace("{sku}", "SKU-AUTH-PROBE");
    let mut request = reqwest::Client::new().request(operation.method.clone(), format!("http://{address}{path}"));
    if operation.method == reqwest::Method::POST {
        request = request.json(&json!({}));
    }
    if let Some(credential) = credential {
        request = request.bearer_auth(credential);
    }
    Ok(request.send().await?)
}

async fn refused(response: reqwest::Response, status: StatusCode, challenge_holds: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        response.status() == status,
        "answered {} instead of {status}",
        response.status()
    );
    let challenge = response
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    anyhow::ensure!(
        challenge.starts_with("Bearer ") && challenge.contains(challenge_holds),
        "WWW-Authenticate {challenge:?} lacks {challenge_holds:?}"
    );
    let body: Value = response.json().await?;
    let message = body["error"].as_str().unwrap_or_default().to_string();
    anyhow::ensure!(!message.is_empty(), "no JSON error body: {body}");
    Ok(message)
}

/// Checks every operation of the service at `address`; returns how many secured ones it checked.
async fn check_service(service: &str, address: SocketAddr) -> anyhow::Result<usize> {
    let keys = &credentials().scope_keys;
    let mut secured = 0;
    for operation in operations(address).await? {
        let what = format!("{service}: {} {}", operation.method, operation.path);
        if operation.scopes.is_empty() {
            let answer = call(address, &operation, None).await?;
            assert!(
                !matches!(answer.status().as_u16(), 401 | 403),
                "{what} is documented open but answered {}",
                answer.status()
            );
            continue;
        }
        secured += 1;
        let missing = refused(
            call(address, &operation, None).await?,
            StatusCode::UNAUTHORIZED,
            "realm=",
        )
        .await
        .map_err(|error| anyhow::anyhow!("{what} without a credential: {error}"))?;
        assert!(missing.contains("missing credentials"), "{what}: {missing}");
        let unknown = refused(
            call(address, &operation, Some("not-a-configured-key-0123")).await?,
            StatusCode::UNAUTHORIZED,
            "error=\"invalid_token\"",
        )
        .await
        .map_err(|error| anyhow::anyhow!("{what} with an unknown key: {error}"))?;
        assert!(unknown.contains("unknown API key"), "{what}: {unknown}");
        for scope in Scope::ALL {
            let key = keys.key(scope).expect("every scope has a test key").expose();
            let answer = call(address, &operation, Some(key)).await?;
            if operation.scopes.contains(scope.as_str()) {
                assert!(
                    !matches!(answer.status().as_u16(), 401 | 403),
                    "{what} lists scope {scope} but refused its key: {}",
                    answer.status()
                );
            } else {
                let needed = refused(answer, StatusCode::FORBIDDEN, "error=\"insufficient_scope\"")
                    .await
                    .map_err(|error| anyhow::anyhow!("{what} with the {scope} key: {error}"))?;
                assert!(needed.contains("needs the scope"), "{what}: {needed}");
            }
        }
    }
    Ok(secured)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_secured_operation_admits_exactly_the_scopes_its_document_lists() -> anyhow::Result<()> {
    let platform = Platform::start(LONG_DEADLINE_SECS).await?;
    let dashboard = dashboard_service::start(
        &dashboard_service::Config {
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..dashboard_service::Config::new(
                platform.env.kafka.clone(),
                platform.env.registry.clone(),
                credentials().service_auth(),
            )
        },
        CancellationToken::new(),
    )
    .await?;
    let services = [
        ("order-service", platform.order.local_addr),
        ("payment-service", platform.payment.local_addr),
        ("inventory-service", platform.inventory.local_addr),
        ("notification-service", platform.notification.local_addr),
        ("dashboard-service", dashboard.local_addr),
    ];
    let mut secured = 0;
    for (service, address) in services {
        let checked = check_service(service, address).await?;
        println!("{service}: {checked} secured operations checked");
        secured += checked;
    }
    dashboard.stop().await;
    platform.stop().await;
    // 2 order, 2 payment, 2 inventory, 3 notification, 2 shared operator routes on each of the
    // four services, 3 dashboard.
    assert_eq!(secured, 2 + 2 + 2 + 3 + 4 * 2 + 3);
    Ok(())
}

const HS256_SECRET: &str = "the-test-hs256-secret-of-at-least-32-bytes";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "saga-platform-test";

/// An RSA key pair made by openssl: (private key PEM, public key file).
fn rsa_key_pair(dir: &Path, name: &str) -> anyhow::Result<(Vec<u8>, std::path::PathBuf)> {
    let private = dir.join(format!("{name}.key.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&private)
        .output()?;
    anyhow::ensure!(
        made.status.success(),
        "openssl genpkey: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let exported = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .output()?;
    anyhow::ensure!(
        exported.status.success(),
        "openssl pkey: {}",
        String::from_utf8_lossy(&exported.stderr)
    );
    Ok((std::fs::read(&private)?, public))
}

fn claims(subject: &str, scope: &str, expires_in_secs: i64) -> Value {
    json!({
        "sub": subject,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": chrono::Utc::now().timestamp() + expires_in_secs,
        "scope": scope,
    })
}

fn hs256(claims: &Value) -> anyhow::Result<String> {
    Ok(encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(HS256_SECRET.as_bytes()),
    )?)
}

fn rs256(private_pem: &[u8], claims: &Value) -> anyhow::Result<String> {
    Ok(encode(
        &Header::new(Algorithm::RS256),
        claims,
        &EncodingKey::from_rsa_pem(private_pem)?,
    )?)
}

fn order_body() -> Value {
    json!({
        "customer_id": "c-auth", "customer_email": "auth@example.com", "currency": "EUR",
        "payment_token": "tok_visa",
        "items": [{"sku": "SKU-AUTH", "quantity": 1, "unit_price_minor": 1250}],
    })
}

/// Starts the order service with `auth` and the given per-client limit.
async fn order_service_with(
    env: &TestEnv,
    auth: AuthConfig,
    per_second: u32,
    burst: u32,
) -> anyhow::Result<saga_common::service::RunningService> {
    let config = order_service::Config {
        service: saga_common::service::ServiceConfig {
            auth,
            ..env.service_config("order")
        },
        saga_deadline_secs: LONG_DEADLINE_SECS,
        order_rate_limit: order_service::rate_limit::OrderRateLimitConfig { per_second, burst },
    };
    order_service::start(&config, CancellationToken::new())
        .await?
        .ok_or_else(|| anyhow::anyhow!("order service did not start"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_signed_with_hs256_or_rs256_are_checked_for_signature_expiry_issuer_and_audience() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let dir = std::env::temp_dir().join(format!("auth-jwt-{}", env.prefix.trim_end_matches('.')));
    std::fs::create_dir_all(&dir)?;
    let (private_pem, public_key) = rsa_key_pair(&dir, "issuer")?;
    let (stranger_pem, _) = rsa_key_pair(&dir, "stranger")?;
    let auth = AuthConfig {
        jwt_hs256_secret: Some(Secret::new(HS256_SECRET)),
        jwt_rs256_public_key_file: Some(public_key),
        jwt_issuer: Some(ISSUER.into()),
        jwt_audience: Some(AUDIENCE.into()),
        metrics_require_auth: true,
        ..AuthConfig::with_keys(&ApiKeys::default())
    };
    let service = order_service_with(&env, auth, 1000, 2000).await?;
    let base = format!("http://{}", service.local_addr);
    let http = reqwest::Client::new();
    let place = |token: String| {
        http.post(format!("{base}/orders"))
            .bearer_auth(token)
            .json(&order_body())
            .send()
    };

    // HS256 with the orders scope places an order and reads it back.
    let placed = place(hs256(&claims("shop-frontend", "orders", 300))?).await?;
    assert_eq!(placed.status(), StatusCode::ACCEPTED);
    let order_id = placed.json::<Value>().await?["order_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let read = http
        .get(format!("{base}/orders/{order_id}"))
        .bearer_auth(hs256(&claims("shop-frontend", "orders", 300))?)
        .send()
        .await?;
    assert_eq!(read.status(), StatusCode::OK);

    // RS256 with the read scope reads, but may not place.
    let reader = rs256(&private_pem, &claims("support-desk", "read", 300))?;
    let read = http
        .get(format!("{base}/orders/{order_id}"))
        .bearer_auth(&reader)
        .send()
        .await?;
    assert_eq!(read.status(), StatusCode::OK);
    let forbidden = place(reader.clone()).await?;
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    let body: Value = forbidden.json().await?;
    assert!(
        body["error"].as_str().unwrap_or_default().contains("jwt:support-desk"),
        "{body}"
    );

    // What is refused, and what the client is told.
    let refusals = [
        (
            rs256(&stranger_pem, &claims("mallory", "orders", 300))?,
            "JWT signature does not verify",
        ),
        (hs256(&claims("shop-frontend", "orders", -120))?, "JWT expired"),
        (
            hs256(
                &json!({"sub": "x", "iss": "https://elsewhere.test", "aud": AUDIENCE, "exp": chrono::Utc::now().timestamp() + 300, "scope": "orders"}),
            )?,
            "JWT issuer not accepted",
        ),
        (
            hs256(
                &json!({"sub": "x", "iss": ISSUER, "aud": "another-platform", "exp": chrono::Utc::now().timestamp() + 300, "scope": "orders"}),
            )?,
            "JWT audience not accepted",
        ),
    ];
    for (token, reason) in refusals {
        let message = refused(
            place(token).await?,
            StatusCode::UNAUTHORIZED,
            &format!("error_description=\"{reason}\""),
        )
        .await
        .map_err(|error| anyhow::anyhow!("{reason}: {error}"))?;
        assert_eq!(message, format!("invalid credentials: {reason}"));
    }

    // /metrics behind the read scope, as its setting asks, and documented so.
    let metrics = http.get(format!("{base}/metrics")).send().await?;
    assert_eq!(metrics.status(), StatusCode::UNAUTHORIZED);
    let metrics = http.get(format!("{base}/metrics")).bearer_auth(&reader).send().await?;
    assert_eq!(metrics.status(), StatusCode::OK);
    let document: Value = http.get(format!("{base}/openapi.json")).send().await?.json().await?;
    assert_eq!(
        document["paths"]["/metrics"]["get"]["security"],
        json!([{"bearer": ["read"]}, {"bearer": ["admin"]}])
    );
    let live = http.get(format!("{base}/health/live")).send().await?;
    assert_eq!(live.status(), StatusCode::OK);

    service.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_rate_limit_counts_each_credential_apart() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let auth = AuthConfig {
        jwt_hs256_secret: Some(Secret::new(HS256_SECRET)),
        jwt_issuer: Some(ISSUER.into()),
        jwt_audience: Some(AUDIENCE.into()),
        ..credentials().service_auth()
    };
    // One order a second after a burst of two: the third in a row is over the limit.
    let service = order_service_with(&env, auth, 1, 2).await?;
    let url = format!("http://{}/orders", service.local_addr);
    let http = reqwest::Client::new();
    let order_key = credentials().scope_keys.order.clone().expect("an orders key");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let answer = http
            .post(&url)
            .bearer_auth(order_key.expose())
            .json(&order_body())
            .send()
            .await?;
        statuses.push(answer.status().as_u16());
    }
    assert_eq!(statuses, [202, 202, 429]);
    // From the same address, another credential has its own allowance.
    let other = hs256(&claims("another-client", "orders", 300))?;
    let answer = http.post(&url).bearer_auth(&other).json(&order_body()).send().await?;
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    // A request without a good credential is refused as such, before any limit.
    let refused = http
        .post(&url)
        .bearer_auth("not-a-configured-key-0123")
        .json(&order_body())
        .send()
        .await?;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    service.stop().await;
    Ok(())
}
