//! The error type of the shared library; each variant says how a caller handles it.

use thiserror::Error;

/// Errors raised by the shared machinery.
#[derive(Debug, Error)]
pub enum Error {
    /// The broker refused or failed an operation. Transient: retry with backoff.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The database failed. Transient unless the statement itself is wrong: retry with backoff.
    #[error("database: {0}{hint}", hint = crate::database::connection_hint(.0))]
    Database(#[from] sqlx::Error),
    /// Migrations could not be applied. Fatal at startup: fix the schema and restart.
    #[error("database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The schema registry could not be reached or answered with a server error.
    /// Transient: retry with backoff.
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
    /// An event could not be encoded for its schema. A programming error: reject the change.
    #[error("cannot encode event: {0}")]
    Encode(String),
    /// Topics were created but the cluster's metadata does not list them yet. Transient: retry.
    #[error("topics not yet in the cluster's metadata: {0}")]
    TopicsNotListed(String),
    /// Configuration is invalid. Fatal at startup.
    #[error("configuration: {0}")]
    Config(String),
}

/// Result with the shared library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
