//! The error type of the shared library, and the error policy every service follows: each
//! error says whether retrying can help ([`ErrorClass`]), and [`ErrorPolicy`] acts on it.
//!
//! - Transient (connection lost, serialization failure, deadlock, broker or registry
//!   unavailable): retried with backoff, forever; nothing is skipped.
//! - Permanent (constraint violated, a row that should exist does not, data that cannot be
//!   encoded): retrying cannot help; the work is set aside where an operator sees it (a
//!   dead-letter topic, the parked outbox table) and everything behind it goes on.
//! - Unclassified (anything nobody has judged yet): retried within a bounded budget, then
//!   treated as permanent.

use std::fmt;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use thiserror::Error;

/// Errors raised by the shared machinery.
#[derive(Debug, Error)]
pub enum Error {
    /// The broker refused or failed an operation; see [`Classify`] for which codes are final.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The database failed; see [`Classify`] for which failures are final.
    #[error("database: {0}{hint}", hint = crate::database::connection_hint(.0))]
    Database(#[from] sqlx::Error),
    /// Migrations could not be applied. Fatal at startup: fix the schema and restart.
    #[error("database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The schema registry could not be reached or answered with a server error.
    /// Transient: retry with backoff.
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
    /// An event could not be encoded for its schema (or the registry refused the schema).
    /// Permanent for that event.
    #[error("cannot encode event: {0}")]
    Encode(String),
    /// Topics were created but the cluster's metadata does not list them yet. Transient: retry.
    #[error("topics not yet in the cluster's metadata: {0}")]
    TopicsNotListed(String),
    /// Configuration is invalid. Fatal at startup.
    #[error("configuration: {0}")]
    Config(String),
    /// A replay cannot go on (see [`crate::replay`]); the target keeps its progress, and the
    /// replay resumes from there once the cause is fixed.
    #[error("replay: {0}")]
    Replay(String),
}

/// Result with the shared library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether retrying an operation that failed with an error can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// A dependency is down or busy; the same operation succeeds once it is back.
    Transient,
    /// The operation fails the same way every time.
    Permanent,
    /// Nobody has judged this error; retried within a budget, then treated as permanent.
    Unclassified,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Unclassified => "unclassified",
        })
    }
}

/// An error that knows its [`ErrorClass`].
pub trait Classify {
    /// Whether retrying can help.
    fn class(&self) -> ErrorClass;
}

impl Classify for Error {
    fn class(&self) -> ErrorClass {
        match self {
            Error::Kafka(error) => error.class(),
            Error::Database(error) => error.class(),
            Error::RegistryUnavailable(_) | Error::TopicsNotListed(_) => ErrorClass::Transient,
            Error::Migration(_) | Error::Encode(_) | Error::Config(_) | Error::Replay(_) => ErrorClass::Permanent,
        }
    }
}

impl Classify for sqlx::Error {
    fn class(&self) -> ErrorClass {
        use sqlx::Error as E;
        match self {
            E::Io(_) | E::Tls(_) | E::Protocol(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
                ErrorClass::Transient
            }
            E::Database(database) => database
                .code()
                .map_or(ErrorClass::Unclassified, |code| sqlstate_class(&code)),
            E::RowNotFound
            | E::TypeNotFound { .. }
            | E::ColumnIndexOutOfBounds { .. }
            | E::ColumnNotFound(_)
            | E::ColumnDecode { .. }
            | E::Decode(_)
            | E::Encode(_)
            | E::Configuration(_)
            | E::Migrate(_) => ErrorClass::Permanent,
            _ => ErrorClass::Unclassified,
        }
    }
}

/// The class of a PostgreSQL error by its SQLSTATE (see PostgreSQL's "Error Codes" appendix).
pub fn sqlstate_class(sqlstate: &str) -> ErrorClass {
    match sqlstate.get(..2).unwrap_or_default() {
        // connection exception; transaction rollback (serialization failure, deadlock);
        // insufficient resources (too many connections, disk full); object not in prerequisite
        // state (lock not available); operator intervention (shutdown, cannot connect now);
        // system error (I/O).
        "08" | "40" | "53" | "55" | "57" | "58" => ErrorClass::Transient,
        // data exception (a value out of range, bad text for a type); integrity constraint
        // violation (unique, foreign key, check, not null); syntax error or access rule
        // violation (a missing table or column: the code and the schema disagree).
        "22" | "23" | "42" => ErrorClass::Permanent,
        _ => ErrorClass::Unclassified,
    }
}

impl Classify for KafkaError {
    fn class(&self) -> ErrorClass {
        let code = match self {
            KafkaError::MessageProduction(code) => Some(*code),
            other => other.rdkafka_error_code(),
        };
        match code {
            // The record itself is refused: it is too large or malformed for the broker.
            Some(
                RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord,
            ) => ErrorClass::Permanent,
            // Anything else the broker or the client reports passes when the cluster recovers.
            _ => ErrorClass::Transient,
        }
    }
}

/// Lets a service's error type (which implements [`Classify`]) be returned from an event
/// handler and from an HTTP handler, each answering by the error's class: `HandlerError` of
/// the same class, and a 503 (transient) or 500 (the rest) `ApiError`. One line per crate:
/// `saga_common::classified_error!(Error);`.
#[macro_export]
macro_rules! classified_error {
    ($error:ty) => {
        impl From<$error> for $crate::consumer::HandlerError {
            fn from(error: $error) -> Self {
                $crate::consumer::HandlerError::classified(error)
            }
        }

        impl From<$error> for $crate::http::ApiError {
            fn from(error: $error) -> Self {
                $crate::http::ApiError::classified(error)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_of_lost_connections_conflicts_and_overload_are_transient() {
        for sqlstate in [
            "08006", "08001", "40001", "40P01", "53300", "55P03", "57P01", "57P03", "58030",
        ] {
            assert_eq!(sqlstate_class(sqlstate), ErrorClass::Transient, "{sqlstate}");
        }
    }

    #[test]
    fn sqlstates_of_violated_constraints_bad_data_and_missing_objects_are_permanent() {
        for sqlstate in ["23505", "23503", "23514", "23502", "22003", "22P02", "42P01", "42703"] {
            assert_eq!(sqlstate_class(sqlstate), ErrorClass::Permanent, "{sqlstate}");
        }
    }

    #[test]
    fn other_sqlstates_are_unclassified() {
        for sqlstate in ["P0001", "XX000", "0A000", ""] {
            assert_eq!(sqlstate_class(sqlstate), ErrorClass::Unclassified, "{sqlstate:?}");
        }
    }

    #[test]
    fn sqlx_errors_without_a_sqlstate_are_classed_by_kind() {
        assert_eq!(sqlx::Error::PoolTimedOut.class(), ErrorClass::Transient);
        assert_eq!(
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)).class(),
            ErrorClass::Transient
        );
        assert_eq!(sqlx::Error::RowNotFound.class(), ErrorClass::Permanent);
        assert_eq!(sqlx::Error::ColumnNotFound("x".into()).class(), ErrorClass::Permanent);
    }

    #[test]
    fn a_record_the_broker_refuses_is_permanent_and_an_unreachable_broker_transient() {
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert_eq!(too_large.class(), ErrorClass::Permanent);
        let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert_eq!(timed_out.class(), ErrorClass::Transient);
        assert_eq!(
            KafkaError::MetadataFetch(RDKafkaErrorCode::AllBrokersDown).class(),
            ErrorClass::Transient
        );
    }

    #[test]
    fn the_shared_library_errors_say_their_class() {
        assert_eq!(Error::RegistryUnavailable("down".into()).class(), ErrorClass::Transient);
        assert_eq!(Error::Encode("bad".into()).class(), ErrorClass::Permanent);
        assert_eq!(Error::Database(sqlx::Error::RowNotFound).class(), ErrorClass::Permanent);
    }
}
