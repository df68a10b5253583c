//! Schema evolution rules: Confluent Schema Registry compatibility levels, decided with
//! apache-avro's own schema-resolution checker.
//!
//! Pure functions over parsed schemas, with nothing specific to the saga's events, so the
//! services' tests and the schema registry apply the same rules. Where apache-avro reports a pair
//! as only *partially* compatible (some writer values cannot be resolved, e.g. a writer union
//! branch or enum symbol the reader lacks), this module, like Confluent's checker, calls it
//! incompatible.

use std::fmt;
use std::str::FromStr;

use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::Schema;

/// A Confluent compatibility level, as used by the registry's `/config` endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatibilityLevel {
    /// No checks.
    None,
    /// The new schema reads data written with the latest existing one. Confluent's default.
    #[default]
    Backward,
    /// The new schema reads data written with every existing one.
    BackwardTransitive,
    /// The latest existing schema reads data written with the new one.
    Forward,
    /// Every existing schema reads data written with the new one.
    ForwardTransitive,
    /// Backward and forward against the latest existing schema.
    Full,
    /// Backward and forward against every existing schema.
    FullTransitive,
}

impl CompatibilityLevel {
    /// Every level.
    pub const ALL: [CompatibilityLevel; 7] = [
        CompatibilityLevel::None,
        CompatibilityLevel::Backward,
        CompatibilityLevel::BackwardTransitive,
        CompatibilityLevel::Forward,
        CompatibilityLevel::ForwardTransitive,
        CompatibilityLevel::Full,
        CompatibilityLevel::FullTransitive,
    ];

    /// The Confluent name, e.g. `BACKWARD_TRANSITIVE`.
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

    /// Whether the check runs against every existing schema rather than only the latest.
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

/// The string is not a Confluent compatibility level. A registry answers it with HTTP 422
/// (Confluent error code 42203); other callers reject the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compatibility level {0:?}; expected one of NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE")]
pub struct UnknownCompatibilityLevel(pub String);

impl FromStr for CompatibilityLevel {
    type Err = UnknownCompatibilityLevel;

    /// Parses a Confluent name, ignoring ASCII case (`BACKWARD_TRANSITIVE`, `backward`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CompatibilityLevel::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownCompatibilityLevel(s.to_owned()))
    }
}

/// Checks whether `new` may be registered after `existing_oldest_first` under `level`.
///
/// BACKWARD: `new` as reader reads data written with an existing schema. FORWARD: an existing
/// schema as reader reads data written with `new`. FULL: both. Non-transitive levels compare
/// with the latest existing schema only, transitive ones with all of them; with no existing
/// schema everything is compatible. On failure every incompatibility found is returned, one
/// sentence each, naming the existing schema by its position (`#1` is the oldest).
pub fn check(level: CompatibilityLevel, new: &Schema, existing_oldest_first: &[Schema]) -> Result<(), Vec<String>> {
    let against = match existing_oldest_first {
        [] => return Ok(()),
        _ if level.is_transitive() => existing_oldest_first,
        [.., latest] => std::slice::from_ref(latest),
    };
    let first_number = existing_oldest_first.len() - against.len() + 1;

    let mut problems = Vec::new();
    for (number, existing) in (first_number..).zip(against) {
        if level.checks_backward() {
            if let Err(reason) = can_read(existing, new) {
                problems.push(format!(
                    "{level}: the new schema cannot read data written with existing schema \
                     #{number}: {reason}"
                ));
            }
        }
        if level.checks_forward() {
            if let Err(reason) = can_read(new, existing) {
                problems.push(format!(
                    "{level}: existing schema #{number} cannot read data written with the new \
                     schema: {reason}"
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Whether every datum written with `writer` resolves to `reader`; the reason if not.
fn can_read(writer: &Schema, reader: &Schema) -> Result<(), String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(Compatibility::Partial) => Err(
            "only partially compatible: some values of the writer's schema (a union branch or \
             enum symbol the reader lacks) cannot be read"
                .to_owned(),
        ),
        Err(error) => Err(error_chain(&error)),
    }
}

/// The error and its sources, joined: apache-avro puts the detail of a field mismatch in the
/// source.
pub fn error_chain(error: &dyn std::error::Error) -> String {
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

    /// A record `R` with the given fields (JSON snippets).
    fn record(fields: &[&str]) -> Schema {
        let json = format!(
            r#"{{"type": "record", "name": "R", "namespace": "test", "fields": [{}]}}"#,
            fields.join(",")
        );
        Schema::parse_str(&json).expect("valid test schema")
    }

    const A: &str = r#"{"name": "a", "type": "string"}"#;
    const A_INT: &str = r#"{"name": "a", "type": "int"}"#;
    const B: &str = r#"{"name": "b", "type": "int"}"#;
    const B_DEFAULT: &str = r#"{"name": "b", "type": "int", "default": 0}"#;

    #[test]
    fn levels_round_trip_through_their_confluent_names() {
        for level in CompatibilityLevel::ALL {
            assert_eq!(level.as_str().parse(), Ok(level));
            assert_eq!(level.to_string(), level.as_str());
            let json = serde_json::to_string(&level).expect("serializes");
            assert_eq!(json, format!("\"{}\"", level.as_str()));
            assert_eq!(serde_json::from_str::<CompatibilityLevel>(&json).ok(), Some(level));
        }
        assert_eq!(
            "BACKWARD_TRANSITIVE".parse(),
            Ok(CompatibilityLevel::BackwardTransitive)
        );
        assert_eq!("full".parse(), Ok(CompatibilityLevel::Full));
    }

    #[test]
    fn an_unknown_level_name_is_rejected() {
        assert_eq!(
            "SIDEWAYS".parse::<CompatibilityLevel>(),
            Err(UnknownCompatibilityLevel("SIDEWAYS".into()))
        );
    }

    #[test]
    fn the_default_level_is_backward_as_in_confluent() {
        assert_eq!(CompatibilityLevel::default(), CompatibilityLevel::Backward);
    }

    #[test]
    fn anything_is_compatible_with_an_empty_history() {
        for level in CompatibilityLevel::ALL {
            assert_eq!(check(level, &record(&[A]), &[]), Ok(()), "{level}");
        }
    }

    #[test]
    fn none_accepts_even_a_type_change() {
        assert_eq!(
            check(CompatibilityLevel::None, &record(&[A_INT]), &[record(&[A])]),
            Ok(())
        );
    }

    #[test]
    fn adding_a_field_with_a_default_is_fully_compatible() {
        for level in CompatibilityLevel::ALL {
            assert_eq!(
                check(level, &record(&[A, B_DEFAULT]), &[record(&[A])]),
                Ok(()),
                "{level}"
            );
        }
    }

    #[test]
    fn adding_a_field_without_a_default_breaks_backward_but_not_forward() {
        let new = record(&[A, B]);
        let old = [record(&[A])];
        let errors = check(CompatibilityLevel::Backward, &new, &old).expect_err("incompatible");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("'b'"), "{errors:?}");
        assert!(errors[0].contains("default"), "{errors:?}");
        assert_eq!(check(CompatibilityLevel::Forward, &new, &old), Ok(()));
        assert!(check(CompatibilityLevel::Full, &new, &old).is_err());
    }

    #[test]
    fn removing_a_field_without_a_default_breaks_forward_but_not_backward() {
        let new = record(&[A]);
        let old = [record(&[A, B])];
        assert_eq!(check(CompatibilityLevel::Backward, &new, &old), Ok(()));
        let errors = check(CompatibilityLevel::Forward, &new, &old).expect_err("incompatible");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("existing schema #1 cannot read"), "{errors:?}");
    }

    #[test]
    fn changing_a_field_type_from_string_to_int_breaks_every_direction() {
        let new = record(&[A_INT]);
        let old = [record(&[A])];
        for level in CompatibilityLevel::ALL {
            if level == CompatibilityLevel::None {
                continue;
            }
            let errors = check(level, &new, &old).expect_err("incompatible");
            assert!(errors.iter().all(|e| e.contains("'a'")), "{errors:?}");
        }
        let errors = check(CompatibilityLevel::Full, &new, &old).expect_err("incompatible");
        assert_eq!(errors.len(), 2, "both directions are reported: {errors:?}");
    }

    #[test]
    fn backward_checks_only_the_latest_schema_and_backward_transitive_all() {
        // v2 gave b a default, v3 takes it away: v3 reads v2 data but not v1 data.
        let history = [record(&[A]), record(&[A, B_DEFAULT])];
        let new = record(&[A, B]);
        assert_eq!(check(CompatibilityLevel::Backward, &new, &history), Ok(()));
        let errors = check(CompatibilityLevel::BackwardTransitive, &new, &history).expect_err("incompatible with v1");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("existing schema #1"), "{errors:?}");
    }

    #[test]
    fn forward_checks_only_the_latest_schema_and_forward_transitive_all() {
        // v1 requires b, v2 gives it a default, v3 drops it: v2 reads v3 data, v1 does not.
        let history = [record(&[A, B]), record(&[A, B_DEFAULT])];
        let new = record(&[A]);
        assert_eq!(check(CompatibilityLevel::Forward, &new, &history), Ok(()));
        assert_eq!(check(CompatibilityLevel::Full, &new, &history), Ok(()));
        for level in [
            CompatibilityLevel::ForwardTransitive,
            CompatibilityLevel::FullTransitive,
        ] {
            let errors = check(level, &new, &history).expect_err("incompatible with v1");
            assert_eq!(errors.len(), 1, "{level}: {errors:?}");
            assert!(errors[0].contains("existing schema #1"), "{errors:?}");
        }
    }

    #[test]
    fn every_incompatible_existing_schema_is_reported() {
        let history = [record(&[A]), record(&[A])];
        let errors =
            check(CompatibilityLevel::BackwardTransitive, &record(&[A_INT]), &history).expect_err("incompatible");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("#1") && errors[1].contains("#2"), "{errors:?}");
    }

    #[test]
    fn partial_compatibility_counts_as_incompatible() {
        // Old data may hold a string in `a`; a reader that only takes int cannot read it all.
        let old = [record(&[r#"{"name": "a", "type": ["int", "string"]}"#])];
        let new = record(&[A_INT]);
        assert_eq!(SchemaCompatibility::can_read(&old[0], &new), Ok(Compatibility::Partial));
        let errors = check(CompatibilityLevel::Backward, &new, &old).expect_err("incompatible");
        assert!(errors[0].contains("partially"), "{errors:?}");
    }

    #[test]
    fn a_renamed_record_is_incompatible() {
        let old = [record(&[A])];
        let new = Schema::parse_str(
            r#"{"type": "record", "name": "S", "namespace": "test",
                "fields": [{"name": "a", "type": "string"}]}"#,
        )
        .expect("valid");
        assert!(check(CompatibilityLevel::Backward, &new, &old).is_err());
    }
}
