//! The records of the registry's Kafka log (the `_schemas` topic): one JSON record per state change.
//!
//! Every change the registry accepts (a schema registered, a compatibility level set or removed, a
//! subject or version deleted) is first appended to the topic as one of these records, and only
//! then applied in memory. Replaying the topic from the beginning through
//! [`State::apply`](crate::state::State::apply) rebuilds exactly the state the registry had.
//!
//! The topic has one partition, so the log is totally ordered. Each record's key is the subject it
//! concerns (UTF-8), or empty for the global configuration; the key is informational only. The
//! value is a JSON object whose `type` field says what happened:
//!
//! ```json
//! {"type":"SCHEMA_REGISTERED","subject":"orders-saga.OrderCreated","version":1,"id":1,
//!  "schemaType":"AVRO","schema":"{\"type\":\"record\",…}"}
//! {"type":"VERSION_DELETED","subject":"orders-saga.OrderCreated","version":1,"permanent":false}
//! {"type":"SUBJECT_DELETED","subject":"orders-saga.OrderCreated","permanent":true}
//! {"type":"COMPATIBILITY_SET","subject":null,"compatibility":"FULL_TRANSITIVE"}
//! {"type":"COMPATIBILITY_DELETED","subject":"orders-saga.OrderCreated"}
//! ```
//!
//! - `SCHEMA_REGISTERED` carries the schema text as first submitted and the global id the writer
//!   assigned; ids only ever grow, so the largest id in the log bounds every id ever handed out.
//! - `VERSION_DELETED` / `SUBJECT_DELETED` with `permanent: false` are soft deletes (the versions
//!   leave listings but their ids still resolve); `permanent: true` removes versions that were
//!   soft-deleted before, and a permanent subject delete also drops the subject's compatibility
//!   level.
//! - `COMPATIBILITY_SET` / `COMPATIBILITY_DELETED` with `subject: null` concern the global level.
//!
//! Records of an unknown `type` are skipped on replay, so a newer writer's log stays readable.
//! Records are never removed: the topic is created with `retention.ms=-1`.

use serde::{Deserialize, Serialize};

/// One state change of the registry, as stored in the `_schemas` topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Record {
    /// `schema` was registered under `subject` as `version`, with global id `id`.
    #[serde(rename_all = "camelCase")]
    SchemaRegistered {
        /// The subject.
        subject: String,
        /// The subject's new version number (1-based).
        version: u32,
        /// The schema's global id.
        id: u32,
        /// Always `AVRO` for now.
        schema_type: String,
        /// The schema text as submitted the first time this id was assigned.
        schema: String,
    },
    /// A version of a subject was deleted (soft, or permanently after a soft delete).
    VersionDeleted {
        /// The subject.
        subject: String,
        /// The deleted version.
        version: u32,
        /// Hard delete: the version is forgotten entirely.
        permanent: bool,
    },
    /// Every version of a subject was deleted (soft, or permanently after a soft delete).
    SubjectDeleted {
        /// The subject.
        subject: String,
        /// Hard delete: the subject, its versions and its compatibility level are forgotten.
        permanent: bool,
    },
    /// The compatibility level of a subject, or the global one (`subject: null`), was set.
    CompatibilitySet {
        /// The subject, or `None` for the global level.
        subject: Option<String>,
        /// The level name, e.g. `BACKWARD_TRANSITIVE`.
        compatibility: String,
    },
    /// The compatibility level of a subject was removed, or the global one reset to the default.
    CompatibilityDeleted {
        /// The subject, or `None` for the global level.
        subject: Option<String>,
    },
    /// A record written by a newer registry that this one does not understand; ignored.
    #[serde(other)]
    Unknown,
}

impl Record {
    /// The Kafka key of the record: the subject, or empty for global configuration.
    pub fn key(&self) -> &str {
        match self {
            Record::SchemaRegistered { subject, .. }
            | Record::VersionDeleted { subject, .. }
            | Record::SubjectDeleted { subject, .. } => subject,
            Record::CompatibilitySet { subject, .. } | Record::CompatibilityDeleted { subject } => {
                subject.as_deref().unwrap_or("")
            }
            Record::Unknown => "",
        }
    }

    /// The record as the JSON bytes stored in Kafka.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing a plain enum of strings, numbers and booleans cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a stored record.
    pub fn from_bytes(bytes: &[u8]) -> Result<Record, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_their_json_form() {
        let records = [
            Record::SchemaRegistered {
                subject: "s".into(),
                version: 2,
                id: 7,
                schema_type: "AVRO".into(),
                schema: "\"string\"".into(),
            },
            Record::VersionDeleted {
                subject: "s".into(),
                version: 2,
                permanent: false,
            },
            Record::SubjectDeleted {
                subject: "s".into(),
                permanent: true,
            },
            Record::CompatibilitySet {
                subject: None,
                compatibility: "FULL".into(),
            },
            Record::CompatibilityDeleted {
                subject: Some("s".into()),
            },
        ];
        for record in records {
            assert_eq!(Record::from_bytes(&record.to_bytes()).ok(), Some(record));
        }
    }

    #[test]
    fn the_documented_json_shape_is_what_is_written() {
        let record = Record::SchemaRegistered {
            subject: "s".into(),
            version: 1,
            id: 1,
            schema_type: "AVRO".into(),
            schema: "\"int\"".into(),
        };
        let json: serde_json::Value = serde_json::from_slice(&record.to_bytes()).expect("record is JSON");
        assert_eq!(
            json,
            serde_json::json!({"type":"SCHEMA_REGISTERED","subject":"s","version":1,"id":1,
                "schemaType":"AVRO","schema":"\"int\""})
        );
    }

    #[test]
    fn a_record_of_an_unknown_type_parses_as_unknown() {
        let record = Record::from_bytes(br#"{"type":"MODE_SET","mode":"READONLY"}"#);
        assert_eq!(record.ok(), Some(Record::Unknown));
    }
}
