//! Typed identifiers: UUIDs that say what they identify, so an order id cannot be passed where
//! an event id belongs. On the wire (Avro and the outbox's JSON) each is its UUID as a string;
//! a string that is not a UUID fails decoding like any other value that does not fit.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::ContractError;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[cfg_attr(feature = "sqlx", derive(sqlx::Type), sqlx(transparent))]
        pub struct $name(Uuid);

        impl $name {
            /// A new random (version 4) id.
            #[allow(clippy::new_without_default)]
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }

            /// The UUID inside.
            pub fn uuid(self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = ContractError;

            /// Parses the hyphenated form (`8-4-4-4-12` hexadecimal digits, either case), the
            /// only one the platform writes; the braced, URN and simple forms are refused.
            fn from_str(s: &str) -> Result<Self, ContractError> {
                let invalid = |reason: String| ContractError::InvalidId {
                    what: $what,
                    value: s.to_owned(),
                    reason,
                };
                if s.len() != 36 {
                    return Err(invalid(format!(
                        "expected 36 characters (8-4-4-4-12 hexadecimal digits), found {}",
                        s.chars().count()
                    )));
                }
                Uuid::parse_str(s).map(Self).map_err(|error| invalid(error.to_string()))
            }
        }

        // Always the hyphenated string: serde's default for Uuid is bytes in a serializer that
        // is not human-readable (Avro's), which the string fields of the schemas cannot hold.
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                crate::ids::uuid_schema($what)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
    };
}

uuid_id!(
    /// The id of one event; consumers deduplicate on it, and `causation_id` refers to it.
    EventId,
    "event id"
);
uuid_id!(
    /// The id of an order; also the Kafka record key of every event of that order.
    OrderId,
    "order id"
);
uuid_id!(
    /// The id of the payment the payment service took for an order.
    PaymentId,
    "payment id"
);
uuid_id!(
    /// The id a client gave a stock adjustment; retrying with it applies the adjustment once.
    AdjustmentId,
    "adjustment id"
);

/// The OpenAPI `pattern` of an id: the hyphenated form [`FromStr`] takes.
pub const UUID_PATTERN: &str = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$";

/// An id's OpenAPI schema: its UUID as a hyphenated string.
#[cfg(feature = "openapi")]
fn uuid_schema(what: &str) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
        .pattern(Some(UUID_PATTERN))
        .description(Some(format!("The {what}, a UUID.")))
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_prints_as_its_uuid_and_parses_back() {
        let id = OrderId::new();
        assert_eq!(id.to_string(), id.uuid().to_string());
        assert_eq!(id.to_string().parse::<OrderId>(), Ok(id));
    }

    #[test]
    fn only_the_hyphenated_form_parses_in_either_case() {
        let id = OrderId::new();
        let hyphenated = id.to_string();
        assert_eq!(hyphenated.to_uppercase().parse::<OrderId>(), Ok(id));
        for other_form in [
            id.uuid().simple().to_string(),
            id.uuid().braced().to_string(),
            id.uuid().urn().to_string(),
            String::new(),
        ] {
            assert!(other_form.parse::<OrderId>().is_err(), "{other_form}");
        }
    }

    #[test]
    fn a_string_that_is_not_a_uuid_is_an_invalid_id_error_naming_the_kind() {
        let error = "o-1".parse::<OrderId>().expect_err("not a UUID");
        let ContractError::InvalidId { what, value, .. } = error else {
            panic!("wrong error: {error:?}");
        };
        assert_eq!((what, value.as_str()), ("order id", "o-1"));
    }

    #[test]
    fn ids_are_strings_in_json_and_in_avro_values() {
        let id = EventId::new();
        assert_eq!(
            serde_json::to_value(id).expect("json"),
            serde_json::json!(id.to_string())
        );
        let value = apache_avro::to_value(id).expect("avro");
        assert_eq!(value, apache_avro::types::Value::String(id.to_string()));
        assert_eq!(apache_avro::from_value::<EventId>(&value).expect("reads back"), id);
    }
}
