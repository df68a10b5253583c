//! The crate's error type for everything that is not a refused request: Kafka, users, binding,
//! tasks.
//!
//! Refused requests (unknown subject, invalid schema, …) are [`RegistryError`]s instead; they are
//! the client's to fix.
//!
//! [`RegistryError`]: crate::state::RegistryError

use rdkafka::error::KafkaError;

/// What can go wrong starting the registry or writing to its Kafka log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kafka client could not be created or a Kafka call failed. At startup: check the
    /// bootstrap servers and retry. On a request: answered 500; the request can be retried, the
    /// registry re-reads the log before its next write.
    #[error("kafka: {context}")]
    Kafka {
        /// What was being done.
        context: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// The schemas topic could not be created or is unusable (e.g. more than one partition).
    /// Fix the topic; retrying as is will not help.
    #[error("schemas topic '{topic}': {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading the schemas topic did not reach its end in time. Retry; check the broker.
    #[error("reading schemas topic '{topic}': {reason}")]
    Read {
        /// The topic.
        topic: String,
        /// What went wrong.
        reason: String,
    },
    /// The users file or setting is invalid or unreadable. Fix it; retrying will not help.
    #[error("registry users")]
    Users(#[from] crate::auth::UsersError),
    /// The HTTP listener could not be bound. Pick another address.
    #[error("binding {addr}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server stopped with an I/O error.
    #[error("http server")]
    Serve(#[source] std::io::Error),
    /// A background task panicked or was cancelled. A bug: report it.
    #[error("background task failed: {0}")]
    Task(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn kafka(context: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
        let context = context.into();
        move |source| Error::Kafka { context, source }
    }
}
