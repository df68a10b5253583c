//! A Confluent-Schema-Registry-compatible Avro schema registry whose state lives in a Kafka topic.
//!
//! It serves the part of Confluent's REST API that Confluent's clients and
//! `schema_registry_converter` use: registering and looking up schemas by subject, version and
//! global id, compatibility checks and configuration, soft and permanent deletes. Confluent's
//! clients cannot tell it from the real one for that subset. Schemas are Avro only.
//!
//! Guarantees:
//! - a change is answered only after its record is durable in the schemas topic (see
//!   [`storage`]); a restarted registry replays the topic and has the same subjects, versions,
//!   ids and levels, and keeps assigning ids after the largest one ever used;
//! - one registry instance is the only writer of its topic (run one per topic).
//!
//! - with users configured ([`auth`]), every request needs HTTP basic authentication of one of
//!   them, and only users with the `write` role may change anything; with none, it is open.
//!
//! Layers: [`state`] is the pure state machine, [`storage`] the Kafka log, `service` ties
//! them together, `http` is the axum API, [`auth`] who may use it. Start it with
//! [`Registry::start`].

pub mod auth;
pub mod compatibility;
pub mod error;
mod http;
pub mod record;
pub mod schema;
mod service;
pub mod state;
pub mod storage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use auth::{Role, UserList, Users};
pub use compatibility::CompatibilityLevel;
pub use error::{Error, Result};
pub use http::CONTENT_TYPE_V1;

use service::Service;
use state::State;
use storage::{KafkaStorage, StorageConfig};

pub use kafka_security::KafkaSecurity;

/// How to run the registry. Every field can come from the command line or the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryConfig {
    /// Address the HTTP API listens on (port 0 picks a free port).
    #[arg(long, env = "REGISTRY_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Kafka bootstrap servers of the cluster holding the schemas topic.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", default_value = "127.0.0.1:9092")]
    pub kafka_bootstrap_servers: String,
    /// The topic the registry stores its records in (created with 1 partition if missing).
    #[arg(long, env = "REGISTRY_SCHEMAS_TOPIC", default_value = "_schemas")]
    pub schemas_topic: String,
    /// Replication factor of the schemas topic if the registry has to create it.
    #[arg(long, env = "REGISTRY_SCHEMAS_TOPIC_REPLICATION_FACTOR", default_value_t = 1)]
    pub schemas_topic_replication_factor: i32,
    /// The global compatibility level until one is set through `PUT /config`.
    #[arg(long, env = "REGISTRY_DEFAULT_COMPATIBILITY", default_value = "BACKWARD")]
    pub default_compatibility: CompatibilityLevel,
    /// How the registry's Kafka clients authenticate and encrypt (SASL, TLS).
    #[command(flatten)]
    pub kafka_security: KafkaSecurity,
    /// A file of the users allowed to use the API, one `user:password:role` per line (role
    /// `read` or `write`, `#` starts a comment). With no users configured the API is open.
    #[arg(long, env = "REGISTRY_USERS_FILE")]
    pub users_file: Option<PathBuf>,
    /// More users, as `user:password:role` entries separated by commas. Prefer the environment
    /// variable or the file: a command line is visible to every local user.
    #[arg(long, env = "REGISTRY_USERS", hide_env_values = true)]
    pub users: Option<UserList>,
}

impl RegistryConfig {
    /// The defaults with another bootstrap server list and topic, listening on a free local port.
    pub fn new(kafka_bootstrap_servers: impl Into<String>, schemas_topic: impl Into<String>) -> Self {
        RegistryConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            kafka_bootstrap_servers: kafka_bootstrap_servers.into(),
            schemas_topic: schemas_topic.into(),
            schemas_topic_replication_factor: 1,
            default_compatibility: CompatibilityLevel::Backward,
            kafka_security: KafkaSecurity::plaintext(),
            users_file: None,
            users: None,
        }
    }
}

/// Starts registries.
#[derive(Debug)]
pub struct Registry;

impl Registry {
    /// Reads the schemas topic (creating it if needed), binds the listener and starts serving.
    /// Returns once the registry answers requests.
    pub async fn start(config: RegistryConfig) -> Result<RunningRegistry> {
        let users = Users::load(config.users_file.as_deref(), config.users.as_ref())?;
        if users.is_open() {
            tracing::warn!(
                "no users configured: the API is open to anyone who can reach it \
                 (set REGISTRY_USERS_FILE or REGISTRY_USERS to require basic authentication)"
            );
        } else {
            let names = |role: Role| -> Vec<&str> {
                users
                    .iter()
                    .filter(|user| user.role() == role)
                    .map(|user| user.name())
                    .collect()
            };
            tracing::info!(
                writers = ?names(Role::Write),
                readers = ?names(Role::Read),
                "basic authentication required"
            );
        }
        let (storage, records) = KafkaStorage::open(StorageConfig {
            bootstrap_servers: config.kafka_bootstrap_servers.clone(),
            topic: config.schemas_topic.clone(),
            replication_factor: config.schemas_topic_replication_factor,
            security: config.kafka_security.clone(),
        })
        .await?;
        let mut state = State::new(config.default_compatibility);
        records.iter().for_each(|record| state.apply(record));
        let service = Arc::new(Service::new(state, storage));

        let listener = TcpListener::bind(config.listen).await.map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let (shutdown, mut stop) = watch::channel(false);
        let app = http::router(service, Arc::new(users));
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    // Either a shutdown request or every handle dropped ends serving.
                    let _ = stop.wait_for(|stop| *stop).await;
                })
                .await
                .map_err(Error::Serve)
        });
        tracing::info!(%local_addr, topic = %config.schemas_topic, "schema registry listening");
        Ok(RunningRegistry {
            local_addr,
            shutdown: ShutdownHandle(Arc::new(shutdown)),
            server,
        })
    }
}

/// Asks a running registry to stop: it finishes the requests in flight and stops serving.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Requests the shutdown. Idempotent.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// A registry that is serving requests.
#[derive(Debug)]
pub struct RunningRegistry {
    local_addr: SocketAddr,
    shutdown: ShutdownHandle,
    server: JoinHandle<Result<()>>,
}

impl RunningRegistry {
    /// The address the API really listens on (useful when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The base URL of the API, e.g. `http://127.0.0.1:8081`.
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// A handle that stops the registry from anywhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Stops the registry and waits until it has stopped.
    pub async fn shutdown(self) -> Result<()> {
        self.shutdown.shutdown();
        self.wait().await
    }

    /// Waits until the registry stops (after a shutdown request, or a server error).
    pub async fn wait(self) -> Result<()> {
        self.server.await.map_err(|error| Error::Task(error.to_string()))?
    }
}
