//! Compatibility levels and the Avro compatibility check, as Confluent Schema Registry defines them.
//!
//! The check itself is apache-avro's `schema_compatibility` module. A pair of schemas is only
//! accepted when resolution always works (`Compatibility::Full`); a partial match (an enum that
//! lost symbols, a union that lost branches) is rejected, as Confluent's own checker rejects it.
//!
//! Directions (the new schema is the one being registered or tested):
//! - `BACKWARD`: the new schema reads data written with the previous one;
//! - `FORWARD`: the previous schema reads data written with the new one;
//! - `FULL`: both;
//! - the `_TRANSITIVE` variants check against every live version instead of only the latest;
//! - `NONE`: no check.

use std::fmt;
use std::str::FromStr;

use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::Schema;

/// A compatibility level, spelled on the wire as Confluent spells it (`BACKWARD_TRANSITIVE`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompatibilityLevel {
    /// No compatibility check at all.
    None,
    /// The new schema can read data written with the latest version.
    Backward,
    /// The new schema can read data written with every live version.
    BackwardTransitive,
    /// The latest version can read data written with the new schema.
    Forward,
    /// Every live version can read data written with the new schema.
    ForwardTransitive,
    /// Backward and forward against the latest version.
    Full,
    /// Backward and forward against every live version.
    FullTransitive,
}

/// A string that is not one of the seven compatibility level names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid compatibility level '{0}'")]
pub struct InvalidCompatibilityLevel(pub String);

impl CompatibilityLevel {
    /// Every level, in the order Confluent documents them.
    pub const ALL: [CompatibilityLevel; 7] = [
        CompatibilityLevel::None,
        CompatibilityLevel::Backward,
        CompatibilityLevel::BackwardTransitive,
        CompatibilityLevel::Forward,
        CompatibilityLevel::ForwardTransitive,
        CompatibilityLevel::Full,
        CompatibilityLevel::FullTransitive,
    ];

    /// The name on the wire, e.g. `FULL_TRANSITIVE`.
    pub fn as_str(self) -> &'static str {
        match self {
            CompatibilityLevel::None => "NONE",
            CompatibilityLevel::Backward => "BACKWARD",
            CompatibilityLevel::BackwardTransitive => "BACKWARD_TRANSITIVE",
            CompatibilityLevel::Forward => "FORWARD",
            CompatibilityLevel::ForwardTransitive => "FORWARD_TRANSITIVE",
            CompatibilityLevel::Full => "FULL",
            CompatibilityLevel::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Whether the new schema is checked against every live version (else only the latest).
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            CompatibilityLevel::BackwardTransitive
                | CompatibilityLevel::ForwardTransitive
                | CompatibilityLevel::FullTransitive
        )
    }

    fn checks_backward(self) -> bool {
        matches!(
            self,
            CompatibilityLevel::Backward
                | CompatibilityLevel::BackwardTransitive
                | CompatibilityLevel::Full
                | CompatibilityLevel::FullTransitive
        )
    }

    fn checks_forward(self) -> bool {
        matches!(
            self,
            CompatibilityLevel::Forward
                | CompatibilityLevel::ForwardTransitive
                | CompatibilityLevel::Full
                | CompatibilityLevel::FullTransitive
        )
    }
}

impl fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CompatibilityLevel {
    type Err = InvalidCompatibilityLevel;

    /// Parses a level name, ignoring ASCII case (`full_transitive` is accepted, as Confluent does).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CompatibilityLevel::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| InvalidCompatibilityLevel(s.to_owned()))
    }
}

/// Checks `new` against `previous` (oldest first, live versions only) under `level`.
///
/// Returns the reasons it is incompatible; an empty list means compatible. Non-transitive levels
/// look only at the last element of `previous`.
pub fn check(level: CompatibilityLevel, new: &Schema, previous: &[&Schema]) -> Vec<String> {
    let against: &[&Schema] = if level.is_transitive() {
        previous
    } else {
        match previous.split_last() {
            Some((latest, _)) => std::slice::from_ref(latest),
            None => &[],
        }
    };
    let mut messages = Vec::new();
    for old in against {
        if level.checks_backward() {
            if let Err(reason) = can_read(old, new) {
                messages.push(format!(
                    "BACKWARD: the new schema cannot read data written with an earlier schema: {reason}"
                ));
            }
        }
        if level.checks_forward() {
            if let Err(reason) = can_read(new, old) {
                messages.push(format!(
                    "FORWARD: an earlier schema cannot read data written with the new schema: {reason}"
                ));
            }
        }
    }
    messages
}

/// Whether `reader` can always read data written with `writer`.
fn can_read(writer: &Schema, reader: &Schema) -> Result<(), String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(Compatibility::Partial) => Err(
            "reading only works for some values (an enum symbol or a union branch is missing)"
                .to_owned(),
        ),
        Err(error) => Err(error_chain(&error)),
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(json: &str) -> Schema {
        Schema::parse_str(json).expect("test schema parses")
    }

    fn v1() -> Schema {
        schema(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#)
    }

    fn v2_with_defaulted_field() -> Schema {
        schema(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"int","default":0}]}"#,
        )
    }

    fn v2_with_required_field() -> Schema {
        schema(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"int"}]}"#,
        )
    }

    #[test]
    fn level_names_parse_in_any_case_and_print_in_upper_case() {
        for level in CompatibilityLevel::ALL {
            assert_eq!(level.as_str().parse::<CompatibilityLevel>(), Ok(level));
            assert_eq!(
                level
                    .as_str()
                    .to_ascii_lowercase()
                    .parse::<CompatibilityLevel>(),
                Ok(level)
            );
        }
        assert!("SIDEWAYS".parse::<CompatibilityLevel>().is_err());
    }

    #[test]
    fn adding_a_field_with_a_default_is_backward_forward_and_full_compatible() {
        let (old, new) = (v1(), v2_with_defaulted_field());
        for level in CompatibilityLevel::ALL {
            assert!(check(level, &new, &[&old]).is_empty(), "{level}");
        }
    }

    #[test]
    fn adding_a_required_field_is_forward_but_not_backward_compatible() {
        let (old, new) = (v1(), v2_with_required_field());
        assert!(!check(CompatibilityLevel::Backward, &new, &[&old]).is_empty());
        assert!(check(CompatibilityLevel::Forward, &new, &[&old]).is_empty());
        assert!(!check(CompatibilityLevel::Full, &new, &[&old]).is_empty());
        assert!(check(CompatibilityLevel::None, &new, &[&old]).is_empty());
    }

    #[test]
    fn non_transitive_levels_only_look_at_the_latest_version() {
        let oldest = v2_with_required_field();
        let latest = v1();
        let new = v1();
        // `oldest` cannot read data written with `new` (its field b has no default), `latest` can.
        assert!(check(CompatibilityLevel::Forward, &new, &[&oldest, &latest]).is_empty());
        assert!(!check(
            CompatibilityLevel::ForwardTransitive,
            &new,
            &[&oldest, &latest]
        )
        .is_empty());
    }

    #[test]
    fn removing_an_enum_symbol_is_not_backward_compatible() {
        let old = schema(r#"{"type":"enum","name":"E","symbols":["A","B"]}"#);
        let new = schema(r#"{"type":"enum","name":"E","symbols":["A"]}"#);
        assert!(!check(CompatibilityLevel::Backward, &new, &[&old]).is_empty());
        assert!(check(CompatibilityLevel::Forward, &new, &[&old]).is_empty());
    }

    #[test]
    fn a_subject_without_versions_accepts_anything() {
        assert!(check(CompatibilityLevel::FullTransitive, &v1(), &[]).is_empty());
    }
}
