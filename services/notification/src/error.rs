//! The notification service's one error type. Every variant says whether retrying can help (its
//! [`ErrorClass`]); the consumer loop, the mailer and the HTTP API act on that class alone.

use lettre::transport::smtp;
use saga_common::{Classify, ErrorClass};
use thiserror::Error;

/// Errors of the notification service.
#[derive(Debug, Error)]
pub enum Error {
    /// The database failed. Classed by SQLSTATE (`saga_common`): a lost connection is retried,
    /// a violated constraint dead-letters the event or stops the mailer.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The shared machinery failed (writing the outbox); classed by `saga_common`.
    #[error(transparent)]
    Shared(#[from] saga_common::Error),
    /// The SMTP server could not be reached or refused the mail; see [`smtp_class`]. Transient
    /// refusals keep the email pending and retried; permanent ones set it aside as `failed`.
    #[error("smtp: {0}")]
    Smtp(#[from] smtp::Error),
    /// The email cannot be assembled (a recipient that does not parse). Permanent: the email is
    /// set aside as `failed`.
    #[error("cannot build email: {0}")]
    Message(String),
    /// An order outcome that can never be emailed (its customer email is not an address).
    /// Permanent: the event is dead-lettered.
    #[error("cannot email this outcome: {0}")]
    Undeliverable(String),
    /// The SMTP settings are invalid. Permanent: the service does not start; fix the
    /// configuration.
    #[error("smtp configuration: {0}")]
    Config(String),
}

/// Result with the notification service's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Classify for Error {
    fn class(&self) -> ErrorClass {
        match self {
            Error::Database(error) => error.class(),
            Error::Shared(error) => error.class(),
            Error::Smtp(error) => smtp_class(error),
            Error::Message(_) | Error::Undeliverable(_) | Error::Config(_) => ErrorClass::Permanent,
        }
    }
}

/// Whether sending again can help after `error`: a reply code says it (see [`reply_class`]);
/// an unreachable, timed-out or dropped connection is transient; a reply the client could not
/// understand, or a client-side failure, is unclassified.
pub fn smtp_class(error: &smtp::Error) -> ErrorClass {
    match error.status() {
        Some(code) => reply_class(code.into()),
        None if error.is_client() || error.is_response() => ErrorClass::Unclassified,
        None => ErrorClass::Transient,
    }
}

/// The class of an SMTP reply code (RFC 5321, 4.2.1): 4xx transient, 5xx permanent for the
/// email, except the authentication replies (RFC 4954: 530, 534, 535, 538), which refuse this
/// service's login rather than this email: every email would fail alike, so they wait, retried,
/// until the credentials are fixed instead of all being set aside.
pub fn reply_class(code: u16) -> ErrorClass {
    match code {
        530 | 534 | 535 | 538 => ErrorClass::Transient,
        400..=499 => ErrorClass::Transient,
        500..=599 => ErrorClass::Permanent,
        _ => ErrorClass::Unclassified,
    }
}

saga_common::classified_error!(Error);

#[cfg(test)]
mod tests {
    use super::*;
    use saga_common::consumer::HandlerError;

    #[test]
    fn a_mailbox_that_is_busy_or_full_is_retried() {
        for code in [421, 450, 451, 452] {
            assert_eq!(reply_class(code), ErrorClass::Transient, "{code}");
        }
    }

    #[test]
    fn a_recipient_or_message_the_server_rejects_for_good_is_permanent() {
        for code in [550, 551, 552, 553, 554, 501] {
            assert_eq!(reply_class(code), ErrorClass::Permanent, "{code}");
        }
    }

    #[test]
    fn a_refused_login_is_retried_rather_than_failing_every_email() {
        for code in [530, 534, 535, 538] {
            assert_eq!(reply_class(code), ErrorClass::Transient, "{code}");
        }
    }

    #[test]
    fn an_undeliverable_outcome_is_permanent_and_dead_lettered() {
        let error = HandlerError::from(Error::Undeliverable("no address".into()));
        assert!(matches!(error, HandlerError::Permanent(_)), "{error}");
    }

    #[test]
    fn database_errors_keep_their_own_class() {
        assert_eq!(
            Error::Database(sqlx::Error::PoolTimedOut).class(),
            ErrorClass::Transient
        );
        assert!(matches!(
            HandlerError::from(Error::Database(sqlx::Error::RowNotFound)),
            HandlerError::Permanent(_)
        ));
    }
}
