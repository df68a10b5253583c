//! The one error type of this crate.

/// Why an event could not be encoded or decoded against its contract.
///
/// Every decoding variant describes a poison message: the same input fails the same way on
/// every retry, so a consumer sends the record to its dead-letter topic (with this error's
/// text as the reason) and carries on. None of them is transient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    /// The writer's record name is not one of this build's events: a producer wrote a record
    /// type this consumer does not know (a newer event, or a foreign record on the topic).
    /// Dead-letter it; redrive after deploying a build that knows the event.
    #[error("unknown event record {record_name:?}")]
    UnknownRecordName {
        /// The writer's full record name.
        record_name: String,
    },

    /// The string is not one of this build's event types (e.g. in an `event_type` header or a
    /// command-line argument). Dead-letter a record carrying it; reject a request or argument.
    #[error("unknown event type {event_type:?}")]
    UnknownEventType {
        /// The string that was given.
        event_type: String,
    },

    /// The writer's value does not fit this build's schema for the record: the writer schema is
    /// incompatible with ours, or the value has the wrong shape (missing field without default,
    /// wrong type, not a record). `reason` is apache-avro's error text. Dead-letter it.
    #[error("{record_name} value does not match this build's schema: {reason}")]
    ValueDoesNotMatchSchema {
        /// The full record name the value was decoded as.
        record_name: String,
        /// What did not match, from apache-avro.
        reason: String,
    },

    /// An event of this build could not be turned into an Avro value for its own schema. The
    /// generated types follow the schemas, so this is a bug, not bad input: fail the operation
    /// that wanted to emit the event (do not write it to the outbox) and report it; retrying
    /// does not help.
    #[error("cannot encode {record_name} for its schema: {reason}")]
    Encode {
        /// The full record name of the event.
        record_name: String,
        /// What went wrong, from apache-avro.
        reason: String,
    },

    /// A string that should be a UUID identifier (an id in a request, a command-line argument)
    /// is not one. Reject the input that carried it.
    #[error("{what} {value:?} is not a UUID: {reason}")]
    InvalidId {
        /// Which kind of id, e.g. `order id`.
        what: &'static str,
        /// The string that was given.
        value: String,
        /// Why it does not parse.
        reason: String,
    },
}

/// Result with [`ContractError`] as the default error.
pub type Result<T, E = ContractError> = std::result::Result<T, E>;
