//! Validating submitted Avro schemas and computing the normalized form that decides schema identity.
//!
//! Two submissions are the same schema when their JSON is equal after parsing: whitespace and the
//! order of object keys do not matter, array order (fields, symbols, union branches) does. This is
//! deliberately not Avro's Parsing Canonical Form, which drops defaults, docs and aliases that
//! matter for evolution.

use std::fmt::Write as _;

use apache_avro::Schema;
use serde_json::Value;

/// A schema that parsed as valid Avro, with its identity key.
#[derive(Debug, Clone)]
pub struct ValidSchema {
    /// The schema text as submitted.
    pub text: String,
    /// The normalized JSON used to compare schemas.
    pub normalized: String,
    /// The parsed schema, for compatibility checks.
    pub parsed: Schema,
}

/// Why a submitted schema was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The schema text is empty.
    #[error("Empty schema")]
    Empty,
    /// The schema text is not JSON.
    #[error("Invalid schema: not JSON: {0}")]
    NotJson(String),
    /// The JSON is not a valid Avro schema.
    #[error("Invalid schema: {0}")]
    NotAvro(String),
}

impl ValidSchema {
    /// Parses and validates `text` as an Avro schema.
    pub fn parse(text: &str) -> Result<ValidSchema, SchemaError> {
        if text.trim().is_empty() {
            return Err(SchemaError::Empty);
        }
        let json: Value = serde_json::from_str(text).map_err(|e| SchemaError::NotJson(e.to_string()))?;
        let parsed = Schema::parse(&json).map_err(|e| SchemaError::NotAvro(e.to_string()))?;
        Ok(ValidSchema {
            text: text.to_owned(),
            normalized: normalize(&json),
            parsed,
        })
    }
}

/// The normalized JSON text of a schema: compact, object keys sorted, arrays in order.
///
/// Written by hand rather than with `serde_json::to_string`, whose key order depends on whether
/// some crate in the build enabled serde_json's `preserve_order` feature.
pub fn normalize(json: &Value) -> String {
    let mut out = String::new();
    write_normalized(json, &mut out);
    out
}

fn write_normalized(json: &Value, out: &mut String) {
    match json {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_normalized(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_normalized(item, out);
            }
            out.push(']');
        }
        Value::String(s) => write_string(s, out),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Null => out.push_str("null"),
    }
}

fn write_string(s: &str, out: &mut String) {
    // A JSON string literal; serializing a &str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_and_key_order_do_not_change_the_normalized_form() {
        let a = ValidSchema::parse(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":1}]}"#)
            .expect("valid");
        let b = ValidSchema::parse(
            "{ \"fields\" : [ {\"default\": 1, \"type\": \"int\", \"name\": \"a\"} ],\n \"name\": \"R\", \"type\": \"record\" }",
        )
        .expect("valid");
        assert_eq!(a.normalized, b.normalized);
        assert_eq!(
            a.normalized,
            r#"{"fields":[{"default":1,"name":"a","type":"int"}],"name":"R","type":"record"}"#
        );
    }

    #[test]
    fn defaults_and_field_order_do_change_the_normalized_form() {
        let base = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"b","type":"int"}]}"#;
        let reordered =
            r#"{"type":"record","name":"R","fields":[{"name":"b","type":"int"},{"name":"a","type":"int"}]}"#;
        let defaulted = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":0},{"name":"b","type":"int"}]}"#;
        let n = |s: &str| ValidSchema::parse(s).expect("valid").normalized;
        assert_ne!(n(base), n(reordered));
        assert_ne!(n(base), n(defaulted));
    }

    #[test]
    fn text_that_is_not_json_or_not_avro_is_refused() {
        assert_eq!(ValidSchema::parse("  ").err(), Some(SchemaError::Empty));
        assert!(matches!(ValidSchema::parse("{not json"), Err(SchemaError::NotJson(_))));
        assert!(matches!(
            ValidSchema::parse(r#"{"type":"record","name":"R"}"#),
            Err(SchemaError::NotAvro(_))
        ));
        assert!(matches!(
            ValidSchema::parse(r#""no_such_type""#),
            Err(SchemaError::NotAvro(_))
        ));
    }

    #[test]
    fn primitive_schemas_are_valid() {
        assert!(ValidSchema::parse(r#""string""#).is_ok());
        assert!(ValidSchema::parse(r#"{"type":"long"}"#).is_ok());
    }
}
