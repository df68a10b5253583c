//! Test helpers: a registry started in-process on port 0 over a fresh, randomly named topic of
//! the real broker at `KAFKA_BOOTSTRAP_SERVERS` (default `127.0.0.1:9092`), open or with users,
//! and a small client.
#![allow(dead_code, unreachable_pub)]

use reqwest::Method;
use schema_registry::{Registry, RegistryConfig, RunningRegistry, UserList};
use serde_json::Value;

/// The broker the tests run against.
pub fn bootstrap_servers() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// A topic name no other test uses.
pub fn fresh_topic() -> String {
    format!("_schemas-test-{}", uuid::Uuid::new_v4())
}

/// The read-only user of [`TestRegistry::start_with_users`] (given through `REGISTRY_USERS`).
pub const READER: (&str, &str) = ("reader", "reader:secret");
/// The read-write user of [`TestRegistry::start_with_users`] (given in a users file).
pub const WRITER: (&str, &str) = ("writer", "writer-secret");

/// `user:password`, as Confluent's clients take credentials.
pub fn user_info((user, password): (&str, &str)) -> String {
    format!("{user}:{password}")
}

/// A running registry and an HTTP client for it.
pub struct TestRegistry {
    pub registry: RunningRegistry,
    pub topic: String,
    pub http: reqwest::Client,
    /// The credentials `send` and the helpers built on it use (none for an open registry).
    pub credentials: Option<(String, String)>,
}

/// A response: status, content type and JSON body (`Value::Null` if the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    /// The `WWW-Authenticate` header, if any.
    pub challenge: Option<String>,
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
        TestRegistry::start_with(RegistryConfig::new(bootstrap_servers(), topic.clone()), None).await
    }

    /// Starts a registry over a fresh topic that requires basic authentication: [`WRITER`] in a
    /// users file, [`READER`] given inline. Requests go as [`WRITER`] unless told otherwise.
    pub async fn start_with_users() -> TestRegistry {
        let users_file = std::env::temp_dir().join(format!("registry-users-{}", uuid::Uuid::new_v4()));
        std::fs::write(&users_file, format!("# test users\n{}:{}:write\n", WRITER.0, WRITER.1))
            .expect("the users file is written");
        let inline: UserList = format!("{}:{}:read", READER.0, READER.1)
            .parse()
            .expect("a valid user entry");
        let config = RegistryConfig {
            users_file: Some(users_file.clone()),
            users: Some(inline),
            ..RegistryConfig::new(bootstrap_servers(), fresh_topic())
        };
        let registry = TestRegistry::start_with(config, Some(WRITER)).await;
        // The registry reads the file at start only.
        let _ = std::fs::remove_file(users_file);
        registry
    }

    async fn start_with(config: RegistryConfig, credentials: Option<(&str, &str)>) -> TestRegistry {
        let topic = config.schemas_topic.clone();
        let registry = Registry::start(config).await.unwrap_or_else(|error| {
            panic!(
                "the registry did not start against the broker at {}: {error:?}",
                bootstrap_servers()
            )
        });
        TestRegistry {
            registry,
            topic,
            http: reqwest::Client::new(),
            credentials: credentials.map(|(user, password)| (user.to_owned(), password.to_owned())),
        }
    }

    pub fn url(&self) -> String {
        self.registry.url()
    }

    /// Sends a request with an optional raw body and content type, with the default credentials.
    pub async fn send(&self, method: Method, path: &str, content_type: Option<&str>, body: Option<Vec<u8>>) -> Reply {
        let credentials = self.credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
        self.send_as(credentials, method, path, content_type, body).await
    }

    /// Sends a request with these credentials (or none), an optional raw body and content type.
    pub async fn send_as(
        &self,
        credentials: Option<(&str, &str)>,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{}", self.url(), path));
        if let Some((user, password)) = credentials {
            request = request.basic_auth(user, Some(password));
        }
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
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.expect("a body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            content_type,
            challenge,
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
