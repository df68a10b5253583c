//! The notification service's one error type; each variant says how the caller handles it.

use thiserror::Error;

/// Errors of the notification service.
#[derive(Debug, Error)]
pub enum Error {
    /// The database failed. Transient: the mailer retries with backoff; nothing is lost because
    /// the email stays pending.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The SMTP server could not be reached, timed out or refused the mail. The email stays
    /// pending and is retried with backoff; it is never dropped.
    #[error("smtp: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    /// The email could not be assembled (an address that does not parse). The row stays pending
    /// and is retried with backoff, so an operator can correct it.
    #[error("cannot build email: {0}")]
    Message(String),
    /// The SMTP settings are invalid. Fatal at startup: fix the configuration.
    #[error("smtp configuration: {0}")]
    Config(String),
}

/// Result with the notification service's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
