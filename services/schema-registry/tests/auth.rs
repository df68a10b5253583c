//! HTTP basic authentication of the API, against a registry with a read-only user (given inline)
//! and a read-write user (given in a users file), backed by the real broker.

mod common;

use common::{order_v1, order_v2, Reply, TestRegistry, READER, WRITER};
use reqwest::Method;
use serde_json::{json, Value};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

fn assert_unauthorized(reply: &Reply) {
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(
        reply.body,
        json!({ "error_code": 401, "message": "Unauthorized" }),
        "{reply:?}"
    );
    assert_eq!(
        reply.challenge.as_deref(),
        Some(r#"Basic realm="schema-registry""#),
        "{reply:?}"
    );
    assert_eq!(reply.content_type, CONTENT_TYPE, "{reply:?}");
}

fn assert_forbidden(reply: &Reply, message: &str) {
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(
        reply.body,
        json!({ "error_code": 40301, "message": message }),
        "{reply:?}"
    );
    assert_eq!(reply.challenge, None, "{reply:?}");
    assert_eq!(reply.content_type, CONTENT_TYPE, "{reply:?}");
}

fn assert_ok(reply: &Reply) {
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.content_type, CONTENT_TYPE, "{reply:?}");
}

fn schema_body(schema: &str) -> Option<Vec<u8>> {
    Some(json!({ "schema": schema }).to_string().into_bytes())
}

/// Sends a request as `credentials` with an optional schema body.
async fn request(
    sr: &TestRegistry,
    credentials: Option<(&str, &str)>,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Reply {
    let content_type = body.as_ref().map(|_| CONTENT_TYPE);
    sr.send_as(credentials, method, path, content_type, body).await
}

#[tokio::test]
async fn requests_without_credentials_get_confluents_401_and_change_nothing() {
    let sr = TestRegistry::start_with_users().await;
    let anonymous = None;
    for (method, path, body) in [
        (Method::GET, "/subjects", None),
        (Method::GET, "/", None),
        (Method::GET, "/schemas/ids/1", None),
        (Method::GET, "/config", None),
        (Method::GET, "/no/such/endpoint", None),
        (Method::POST, "/subjects/s/versions", schema_body(&order_v1())),
        (Method::POST, "/subjects/s", schema_body(&order_v1())),
        (Method::PUT, "/config", Some(br#"{"compatibility":"NONE"}"#.to_vec())),
        (Method::DELETE, "/subjects/s", None),
    ] {
        assert_unauthorized(&request(&sr, anonymous, method, path, body).await);
    }
    // Nothing was registered or configured.
    assert_eq!(sr.get("/subjects").await.body, json!([]));
    assert_eq!(
        sr.get("/config").await.body,
        json!({ "compatibilityLevel": "BACKWARD" })
    );
    sr.shutdown().await;
}

#[tokio::test]
async fn a_wrong_password_an_unknown_user_or_a_malformed_header_get_401() {
    let sr = TestRegistry::start_with_users().await;
    for credentials in [
        (WRITER.0, "not-the-password"),
        (READER.0, WRITER.1),
        ("nobody", WRITER.1),
        (WRITER.0, ""),
    ] {
        let reply = request(&sr, Some(credentials), Method::GET, "/subjects", None).await;
        assert_unauthorized(&reply);
        let reply = request(
            &sr,
            Some(credentials),
            Method::POST,
            "/subjects/s/versions",
            schema_body(&order_v1()),
        )
        .await;
        assert_unauthorized(&reply);
    }
    for header in ["Bearer abc", "Basic", "Basic not-base64!", "Basic d3JpdGVy"] {
        let response = sr
            .http
            .get(format!("{}/subjects", sr.url()))
            .header("Authorization", header)
            .send()
            .await
            .expect("the registry answers");
        assert_eq!(response.status().as_u16(), 401, "{header}");
    }
    assert_eq!(sr.get("/subjects").await.body, json!([]));
    sr.shutdown().await;
}

#[tokio::test]
async fn a_read_only_user_reads_looks_up_and_tests_compatibility_but_gets_403_for_every_change() {
    let sr = TestRegistry::start_with_users().await;
    let id = sr.register("orders-value", &order_v1()).await;
    let reader = Some(READER);

    let reply = request(&sr, reader, Method::GET, "/subjects", None).await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!(["orders-value"]));
    let reply = request(&sr, reader, Method::GET, &format!("/schemas/ids/{id}"), None).await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!({ "schema": order_v1() }));
    let reply = request(&sr, reader, Method::GET, "/", None).await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!({}));
    // Lookup and compatibility tests are POSTs that change nothing.
    let reply = request(
        &sr,
        reader,
        Method::POST,
        "/subjects/orders-value",
        schema_body(&order_v1()),
    )
    .await;
    assert_ok(&reply);
    assert_eq!(reply.body["id"], json!(id));
    let reply = request(
        &sr,
        reader,
        Method::POST,
        "/compatibility/subjects/orders-value/versions/latest",
        schema_body(&order_v2()),
    )
    .await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!({ "is_compatible": true }));

    let denied = "User is denied operation Write on Subject: orders-value";
    for (method, path, body) in [
        (
            Method::POST,
            "/subjects/orders-value/versions",
            schema_body(&order_v2()),
        ),
        (Method::DELETE, "/subjects/orders-value", None),
        (Method::DELETE, "/subjects/orders-value/versions/1", None),
        (
            Method::PUT,
            "/config/orders-value",
            Some(br#"{"compatibility":"NONE"}"#.to_vec()),
        ),
        (Method::DELETE, "/config/orders-value", None),
    ] {
        assert_forbidden(&request(&sr, reader, method, path, body).await, denied);
    }
    let reply = request(
        &sr,
        reader,
        Method::PUT,
        "/config",
        Some(br#"{"compatibility":"NONE"}"#.to_vec()),
    )
    .await;
    assert_forbidden(&reply, "User is denied operation Write on the global configuration");

    // Nothing changed.
    assert_eq!(sr.get("/subjects/orders-value/versions").await.body, json!([1]));
    assert_eq!(
        sr.get("/config").await.body,
        json!({ "compatibilityLevel": "BACKWARD" })
    );
    sr.shutdown().await;
}

#[tokio::test]
async fn a_read_write_user_registers_configures_and_deletes() {
    let sr = TestRegistry::start_with_users().await;
    let writer = Some(WRITER);
    let reply = request(
        &sr,
        writer,
        Method::POST,
        "/subjects/s/versions",
        schema_body(&order_v1()),
    )
    .await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!({ "id": 1 }));
    let reply = request(
        &sr,
        writer,
        Method::PUT,
        "/config/s",
        Some(br#"{"compatibility":"FULL"}"#.to_vec()),
    )
    .await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!({ "compatibility": "FULL" }));
    let reply = request(&sr, writer, Method::DELETE, "/subjects/s", None).await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!([1]));
    let reply = request(&sr, writer, Method::GET, "/subjects", None).await;
    assert_ok(&reply);
    assert_eq!(reply.body, Value::Array(vec![]));
    sr.shutdown().await;
}

#[tokio::test]
async fn the_health_endpoint_answers_without_credentials() {
    let sr = TestRegistry::start_with_users().await;
    let reply = request(&sr, None, Method::GET, "/health", None).await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!({ "status": "UP" }));
    sr.shutdown().await;
}

#[tokio::test]
async fn an_open_registry_ignores_credentials() {
    let sr = TestRegistry::start().await;
    let reply = request(
        &sr,
        Some(("anyone", "anything")),
        Method::POST,
        "/subjects/s/versions",
        schema_body(&order_v1()),
    )
    .await;
    assert_ok(&reply);
    assert_ok(&request(&sr, None, Method::GET, "/subjects/s/versions", None).await);
    sr.shutdown().await;
}
