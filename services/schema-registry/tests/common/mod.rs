//! Test helpers: a registry started in-process on port 0 over a fresh, randomly named topic of
//! the real broker at `KAFKA_BOOTSTRAP_SERVERS` (default `127.0.0.1:9092`), and a small client.
#![allow(dead_code, unreachable_pub)]

use reqwest::Method;
use schema_registry::{Registry, RegistryConfig, RunningRegistry};
use serde_json::Value;

/// The broker the tests run against.
pub fn bootstrap_servers() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// A topic name no other test uses.
pub fn fresh_topic() -> String {
    format!("_schemas-test-{}", uuid::Uuid::new_v4())
}

/// A running registry and an HTTP client for it.
pub struct TestRegistry {
    pub registry: RunningRegistry,
    pub topic: String,
    pub http: reqwest::Client,
}

/// A response: status, content type and JSON body (`Value::Null` if the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// The Confluent error code of an error reply.
    pub fn error_code(&self) -> Option<i64> {
        self.body["error_code"].as_i64()
    }
}

impl TestRegistry {
    /// Starts a registry over a fresh topic.
    pub async fn start() -> TestRegistry {
        TestRegistry::start_on(fresh_topic()).await
    }

    /// Starts a registry over `topic` (which may hold an earlier registry's records).
    pub async fn start_on(topic: String) -> TestRegistry {
        let registry = Registry::start(RegistryConfig::new(bootstrap_servers(), topic.clone()))
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "the registry did not start against the broker at {}: {error:?}",
                    bootstrap_servers()
                )
            });
        TestRegistry {
            registry,
            topic,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self) -> String {
        self.registry.url()
    }

    /// Sends a request with an optional raw body and content type.
    pub async fn send(&self, method: Method, path: &str, content_type: Option<&str>, body: Option<Vec<u8>>) -> Reply {
        let mut request = self.http.request(method, format!("{}{}", self.url(), path));
        if let Some(content_type) = content_type {
            request = request.header("Content-Type", content_type);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.expect("the registry answers");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response.text().await.expect("a body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            content_type,
            body,
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None, None).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None, None).await
    }

    /// Sends `body` as `application/vnd.schemaregistry.v1+json`.
    pub async fn json(&self, method: Method, path: &str, body: &Value) -> Reply {
        self.send(
            method,
            path,
            Some("application/vnd.schemaregistry.v1+json"),
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.json(Method::POST, path, body).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.json(Method::PUT, path, body).await
    }

    /// Registers a schema and returns its id, failing the test if it is refused.
    pub async fn register(&self, subject: &str, schema: &str) -> u32 {
        let reply = self
            .post(
                &format!("/subjects/{subject}/versions"),
                &serde_json::json!({ "schema": schema }),
            )
            .await;
        assert_eq!(reply.status, 200, "registering under {subject}: {reply:?}");
        let id = reply.body["id"].as_u64().expect("an id");
        u32::try_from(id).expect("a 32-bit id")
    }

    pub async fn shutdown(self) {
        self.registry.shutdown().await.expect("the registry shuts down cleanly");
    }
}

/// An Avro record schema `name` with the given `fields` (JSON array text).
pub fn record_schema(name: &str, fields: &str) -> String {
    format!(r#"{{"type":"record","name":"{name}","namespace":"saga.test","fields":{fields}}}"#)
}

/// Version 1 of the test schema.
pub fn order_v1() -> String {
    record_schema(
        "Order",
        r#"[{"name":"id","type":"string"},{"name":"amount","type":"long"}]"#,
    )
}

/// Version 2: adds a field with a default (backward and forward compatible with v1).
pub fn order_v2() -> String {
    record_schema(
        "Order",
        r#"[{"name":"id","type":"string"},{"name":"amount","type":"long"},{"name":"currency","type":"string","default":"EUR"}]"#,
    )
}

/// Not backward compatible with v1: adds a field without a default.
pub fn order_incompatible() -> String {
    record_schema(
        "Order",
        r#"[{"name":"id","type":"string"},{"name":"amount","type":"long"},{"name":"required","type":"int"}]"#,
    )
}
