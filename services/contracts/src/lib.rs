//! The saga's event contracts, generated from the Avro schemas in `schemas/`.
//!
//! The `.avsc` files are the single source of truth; `build.rs` turns the latest version of each
//! event type into a plain struct ([`OrderCreated`], [`PaymentSucceeded`], ...) and embeds the
//! text of every version. This crate guarantees that:
//!
//! - the Rust types are exactly the latest schemas (field names, types, nullability, docs); a
//!   schema construct the generator does not understand fails the build instead of drifting;
//! - every event carries the common [`Envelope`] (event id, order id, causation id,
//!   occurred-at), checked at build time; ids are typed ([`EventId`], [`OrderId`],
//!   [`PaymentId`]), and an envelope is only ever made by [`Envelope::caused_by`] or
//!   [`Envelope::for_command`];
//! - [`EventType`] lists exactly the event types under `schemas/` (checked at compile time), each
//!   with its Kafka [`Topic`], record name and all of its schema versions;
//! - [`SagaEvent::to_avro_value`] yields a value valid for [`EventType::schema`], and
//!   [`SagaEvent::from_avro_value`] reads a value written with any older or newer compatible
//!   version of the record (Avro schema resolution), returning a [`ContractError`], never
//!   panicking, on input that does not fit.
//!
//! [`compatibility`] holds the schema-evolution rules (Confluent compatibility levels), free of
//! anything event-specific so the schema registry uses it as well.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use apache_avro::types::Value;
use apache_avro::Schema;

pub mod compatibility;
mod envelope;
mod error;
mod ids;

pub use envelope::{now_millis, Envelope, Event, OrderRef};
pub use error::{ContractError, Result};
pub use ids::{AdjustmentId, EventId, OrderId, PaymentId, UUID_PATTERN};

/// The generated event and nested record structs, one per record of the latest schemas.
#[allow(non_snake_case, non_camel_case_types)]
mod events {
    include!(concat!(env!("OUT_DIR"), "/events.rs"));
}
pub use events::*;

/// Generated: per event type a static named after its record, and `EVENT_TYPE_COUNT`.
#[allow(non_upper_case_globals)]
mod schema_info {
    include!(concat!(env!("OUT_DIR"), "/schema_info.rs"));
}

/// One version of an event type's schema, as checked in under `schemas/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaVersion {
    /// The `N` of `<event_type>.vN.avsc`; versions count up from 1.
    pub version: u32,
    /// The file's text.
    pub json: &'static str,
}

/// What `build.rs` knows about one event type.
struct EventSchemaInfo {
    event_type: &'static str,
    record_name: &'static str,
    versions: &'static [SchemaVersion],
}

/// The Kafka topics events travel on. Each carries several event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// `order.*` events.
    Orders,
    /// `payment.*` events.
    Payments,
    /// `inventory.*` events.
    Inventory,
    /// `notification.*` events: what the notification service sent.
    Notifications,
}

impl Topic {
    /// Every topic.
    pub const ALL: [Topic; 4] = [Topic::Orders, Topic::Payments, Topic::Inventory, Topic::Notifications];

    /// The topic's name before any deployment prefix: `orders`, `payments`, `inventory`.
    pub fn base_name(&self) -> &'static str {
        match self {
            Topic::Orders => "orders",
            Topic::Payments => "payments",
            Topic::Inventory => "inventory",
            Topic::Notifications => "notifications",
        }
    }
}

/// Declares [`EventType`] and [`SagaEvent`] from one list: each entry is a record name under
/// `schemas/` (also the generated struct's name) and the topic it is published on.
macro_rules! saga_events {
    ($($variant:ident on $topic:ident),+ $(,)?) => {
        const EVENT_TYPE_COUNT: usize = [$(stringify!($variant)),+].len();

        const _: () = assert!(
            EVENT_TYPE_COUNT == schema_info::EVENT_TYPE_COUNT,
            "schemas/ defines a different number of event types than saga_events! lists in \
             services/contracts/src/lib.rs"
        );

        /// The type of an event: one per event type under `schemas/`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType {
            $(
                #[doc = concat!("Events of type [`", stringify!($variant), "`].")]
                $variant,
            )+
        }

        impl EventType {
            /// Every event type, in declaration order.
            pub const ALL: [EventType; EVENT_TYPE_COUNT] = [$(EventType::$variant),+];

            fn info(self) -> &'static EventSchemaInfo {
                match self {
                    $(EventType::$variant => &schema_info::$variant,)+
                }
            }

            /// The Kafka topic events of this type are published on.
            pub fn topic(self) -> Topic {
                match self {
                    $(EventType::$variant => Topic::$topic,)+
                }
            }
        }

        /// Any event of the saga, as this build reads and writes it (the latest schema version).
        /// Its serde form (`{"type": "OrderCreated", "event": {...}}`) is what the outbox stores.
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(tag = "type", content = "event")]
        pub enum SagaEvent {
            $(
                #[doc = concat!("A [`", stringify!($variant), "`] event.")]
                $variant($variant),
            )+
        }

        impl SagaEvent {
            /// The event's type.
            pub fn event_type(&self) -> EventType {
                match self {
                    $(SagaEvent::$variant(_) => EventType::$variant,)+
                }
            }

            /// The event's envelope, its order made optional.
            pub fn envelope(&self) -> Envelope<Option<OrderId>> {
                match self {
                    $(SagaEvent::$variant(event) => event.envelope.with_optional_order(),)+
                }
            }

            /// The serde view of the event, before resolution against its schema.
            fn to_serde_value(&self) -> apache_avro::AvroResult<Value> {
                match self {
                    $(SagaEvent::$variant(event) => apache_avro::to_value(event),)+
                }
            }

            /// Deserializes a value already resolved against `event_type`'s schema.
            fn from_resolved_value(
                event_type: EventType,
                value: &Value,
            ) -> apache_avro::AvroResult<SagaEvent> {
                match event_type {
                    $(EventType::$variant => apache_avro::from_value(value).map(SagaEvent::$variant),)+
                }
            }
        }

        $(
            impl From<$variant> for SagaEvent {
                fn from(event: $variant) -> Self {
                    SagaEvent::$variant(event)
                }
            }
        )+
    };
}

saga_events! {
    OrderCreated on Orders,
    OrderConfirmed on Orders,
    OrderFailed on Orders,
    PaymentSucceeded on Payments,
    PaymentFailed on Payments,
    PaymentRefunded on Payments,
    InventoryReserved on Inventory,
    InventoryReservationFailed on Inventory,
    InventoryCommitted on Inventory,
    InventoryReleased on Inventory,
    StockAdjusted on Inventory,
    NotificationSent on Notifications,
    NotificationFailed on Notifications,
}

/// The latest schema of every event type, parsed once, indexed like [`EventType::ALL`].
static LATEST_SCHEMAS: LazyLock<[Schema; EVENT_TYPE_COUNT]> = LazyLock::new(|| {
    EventType::ALL.map(|event_type| {
        Schema::parse_str(event_type.schema_json()).unwrap_or_else(|error| {
            panic!(
                "the latest schema of {event_type} is not valid Avro ({error}); \
                 `cargo test -p saga-contracts` catches this before release"
            )
        })
    })
});

impl EventType {
    /// The event type as in the schema's `event_type` attribute and the Kafka header, e.g.
    /// `order.created`, `payment.success`, `inventory.reservation_failed`.
    pub fn as_str(self) -> &'static str {
        self.info().event_type
    }

    /// The full Avro record name, e.g. `saga.events.OrderCreated` (the registry subject is
    /// topic + record name).
    pub fn record_name(self) -> &'static str {
        self.info().record_name
    }

    /// The event type whose record has this full name, if any.
    pub fn from_record_name(record_name: &str) -> Option<EventType> {
        EventType::ALL
            .into_iter()
            .find(|event_type| event_type.record_name() == record_name)
    }

    /// The latest schema, parsed; the one this build writes and reads into.
    pub fn schema(self) -> &'static Schema {
        &LATEST_SCHEMAS[self as usize]
    }

    /// The text of the latest schema file.
    pub fn schema_json(self) -> &'static str {
        match self.versions() {
            [.., latest] => latest.json,
            [] => unreachable!("build.rs emits at least one version per event type"),
        }
    }

    /// Every version of the schema, oldest first (v1, v2, ...).
    pub fn versions(self) -> &'static [SchemaVersion] {
        self.info().versions
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = ContractError;

    /// Parses the `event_type` string, e.g. `"order.created"`.
    fn from_str(s: &str) -> Result<Self> {
        EventType::ALL
            .into_iter()
            .find(|event_type| event_type.as_str() == s)
            .ok_or_else(|| ContractError::UnknownEventType {
                event_type: s.to_owned(),
            })
    }
}

impl SagaEvent {
    /// The unique id of this event; consumers deduplicate on it.
    pub fn event_id(&self) -> EventId {
        self.envelope().event_id
    }

    /// The order this event belongs to; `None` only for events that belong to no order
    /// ([`StockAdjusted`]).
    pub fn order_id(&self) -> Option<OrderId> {
        self.envelope().order_id
    }

    /// The `event_id` of the event that caused this one; `None` when a command caused it.
    pub fn causation_id(&self) -> Option<EventId> {
        self.envelope().causation_id
    }

    /// When the fact happened, milliseconds since the Unix epoch (UTC).
    pub fn occurred_at_millis(&self) -> i64 {
        self.envelope().occurred_at
    }

    /// The event as an Avro value valid for [`EventType::schema`] of its type (logical types
    /// such as timestamp-millis included), ready for a datum writer or the registry encoder.
    pub fn to_avro_value(&self) -> Result<Value> {
        let event_type = self.event_type();
        self.to_serde_value()
            .and_then(|value| value.resolve(event_type.schema()))
            .map_err(|error| ContractError::Encode {
                record_name: event_type.record_name().to_owned(),
                reason: error.to_string(),
            })
    }

    /// Reads a value decoded with the writer's schema of record `record_name` (its full name),
    /// which may be an older or newer version than this build's.
    ///
    /// The value is resolved against this build's schema by Avro's rules: fields the writer
    /// lacks take the reader's default, fields the reader does not know are dropped. Unknown
    /// records and values that do not fit are errors (poison messages), never panics.
    pub fn from_avro_value(record_name: &str, writer_value: Value) -> Result<SagaEvent> {
        let event_type = EventType::from_record_name(record_name).ok_or_else(|| ContractError::UnknownRecordName {
            record_name: record_name.to_owned(),
        })?;
        let mismatch = |error: apache_avro::Error| ContractError::ValueDoesNotMatchSchema {
            record_name: record_name.to_owned(),
            reason: error.to_string(),
        };
        let resolved = writer_value.resolve(event_type.schema()).map_err(mismatch)?;
        SagaEvent::from_resolved_value(event_type, &resolved).map_err(mismatch)
    }
}

impl FailureReason {
    /// The reason a v1 writer meant by its free-text `reason` (v1 had no enum): the reason's
    /// own name, or a payment gateway's decline code, which is a declined payment.
    pub fn from_v1_text(text: &str) -> FailureReason {
        FailureReason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == text)
            .unwrap_or(match text {
                "card_declined" | "invalid_token" | "insufficient_funds" => FailureReason::PaymentDeclined,
                _ => FailureReason::Unknown,
            })
    }
}

/// Events that say why something failed: `failure_reason` from v2 on, the text of `reason`
/// for data a v1 writer wrote.
macro_rules! failure_reason_of {
    ($($event:ident),+) => {$(
        impl $event {
            /// Why it failed; for v1 data (no `failure_reason`) read from the `reason` text.
            pub fn reason(&self) -> FailureReason {
                match self.failure_reason {
                    FailureReason::Unknown => FailureReason::from_v1_text(&self.reason),
                    known => known,
                }
            }
        }
    )+};
}

failure_reason_of!(OrderFailed, PaymentFailed, InventoryReservationFailed);

#[cfg(test)]
mod tests {
    use apache_avro::types::Value;

    use super::*;

    const ORDER: &str = "0b9e4c2e-55c1-4f0e-9a51-3f6f1d7b1a01";
    const EVENT: &str = "6f1c2d3e-0000-4000-8000-000000000001";
    const CAUSE: &str = "6f1c2d3e-0000-4000-8000-000000000000";

    fn id<T: FromStr<Err = ContractError>>(text: &str) -> T {
        text.parse().expect("a UUID")
    }

    fn order_created() -> OrderCreated {
        OrderCreated {
            envelope: Envelope {
                event_id: id(EVENT),
                order_id: id(ORDER),
                causation_id: None,
                occurred_at: 1_700_000_000_123,
            },
            customer_id: "c-1".into(),
            customer_email: "c@example.com".into(),
            payment_token: "tok".into(),
            total_minor: 2_500,
            currency: "EUR".into(),
            items: vec![OrderLine {
                sku: "SKU-1".into(),
                quantity: 2,
                unit_price_minor: 1_250,
            }],
            sales_channel: "web".into(),
            idempotency_key: None,
            request_hash: None,
            deadline_at: None,
        }
    }

    fn stock_adjusted() -> StockAdjusted {
        StockAdjusted {
            envelope: Envelope {
                event_id: EventId::new(),
                order_id: None,
                causation_id: Some(id(CAUSE)),
                occurred_at: 42,
            },
            sku: "SKU-1".into(),
            delta: -3,
            reason: "count correction".into(),
            adjustment_id: Some(AdjustmentId::new()),
        }
    }

    /// A field of a record, or of the map serde makes of a struct with a flattened envelope.
    fn field<'a>(value: &'a Value, name: &str) -> &'a Value {
        match value {
            Value::Record(fields) => &fields.iter().find(|(n, _)| n == name).expect("field exists").1,
            Value::Map(entries) => entries.get(name).expect("field exists"),
            other => panic!("not a record: {other:?}"),
        }
    }

    #[test]
    fn topics_have_their_kafka_base_names() {
        let names: Vec<_> = Topic::ALL.iter().map(Topic::base_name).collect();
        assert_eq!(names, ["orders", "payments", "inventory", "notifications"]);
    }

    #[test]
    fn event_types_print_as_their_schema_attribute_and_parse_back() {
        for event_type in EventType::ALL {
            assert_eq!(event_type.to_string(), event_type.as_str());
            assert_eq!(event_type.as_str().parse::<EventType>(), Ok(event_type));
        }
        assert_eq!(EventType::OrderCreated.as_str(), "order.created");
        assert_eq!(EventType::PaymentSucceeded.as_str(), "payment.success");
        assert_eq!(
            EventType::InventoryReservationFailed.as_str(),
            "inventory.reservation_failed"
        );
        assert_eq!(EventType::StockAdjusted.as_str(), "inventory.stock_adjusted");
    }

    #[test]
    fn parsing_an_unknown_event_type_is_an_unknown_event_type_error() {
        assert_eq!(
            "order.teleported".parse::<EventType>(),
            Err(ContractError::UnknownEventType {
                event_type: "order.teleported".into()
            })
        );
    }

    #[test]
    fn every_event_type_is_found_by_its_full_record_name() {
        for event_type in EventType::ALL {
            let record_name = event_type.record_name();
            assert_eq!(
                record_name,
                format!("saga.events.{event_type:?}"),
                "record name of {event_type}"
            );
            assert_eq!(EventType::from_record_name(record_name), Some(event_type));
        }
        assert_eq!(EventType::from_record_name("OrderCreated"), None);
        assert_eq!(EventType::from_record_name("saga.events.Nope"), None);
    }

    #[test]
    fn every_event_type_is_published_on_the_topic_of_its_prefix() {
        for event_type in EventType::ALL {
            let (prefix, _) = event_type.as_str().split_once('.').expect("dotted");
            let expected = match prefix {
                "order" => Topic::Orders,
                "payment" => Topic::Payments,
                "inventory" => Topic::Inventory,
                "notification" => Topic::Notifications,
                other => panic!("{event_type} has an unexpected prefix {other}"),
            };
            assert_eq!(event_type.topic(), expected, "{event_type}");
        }
    }

    #[test]
    fn every_latest_schema_is_the_named_record_with_its_event_type_attribute() {
        for event_type in EventType::ALL {
            let schema = event_type.schema();
            let Schema::Record(record) = schema else {
                panic!("{event_type} is not a record");
            };
            assert_eq!(record.name.fullname(None), event_type.record_name());
            assert_eq!(
                record.attributes.get("event_type"),
                Some(&serde_json::Value::from(event_type.as_str()))
            );
        }
    }

    #[test]
    fn schema_json_is_the_last_version_and_versions_count_up_from_one() {
        for event_type in EventType::ALL {
            let versions = event_type.versions();
            let numbers: Vec<u32> = versions.iter().map(|v| v.version).collect();
            let expected: Vec<u32> = (1..=versions.len() as u32).collect();
            assert_eq!(numbers, expected, "{event_type}");
            assert_eq!(event_type.schema_json(), versions.last().expect("non-empty").json);
        }
        assert_eq!(EventType::OrderCreated.versions().len(), 3);
    }

    #[test]
    fn saga_event_accessors_expose_the_envelope() {
        let event = SagaEvent::from(order_created());
        assert_eq!(event.event_type(), EventType::OrderCreated);
        assert_eq!(event.event_id(), id(EVENT));
        assert_eq!(event.order_id(), Some(id(ORDER)));
        assert_eq!(event.causation_id(), None);
        assert_eq!(event.occurred_at_millis(), 1_700_000_000_123);

        let adjustment = SagaEvent::from(stock_adjusted());
        assert_eq!(adjustment.event_type(), EventType::StockAdjusted);
        assert_eq!(adjustment.order_id(), None);
        assert_eq!(adjustment.causation_id(), Some(id(CAUSE)));
    }

    #[test]
    fn an_envelope_caused_by_an_event_continues_its_order_and_names_it_as_cause() {
        let created = order_created();
        let envelope = Envelope::caused_by(&created);
        assert_eq!(envelope.order_id, created.envelope.order_id);
        assert_eq!(envelope.causation_id, Some(created.envelope.event_id));
        assert_ne!(envelope.event_id, created.envelope.event_id);
        assert!(envelope.occurred_at >= created.envelope.occurred_at);

        let command = Envelope::for_command(id(ORDER));
        assert_eq!((command.order_id, command.causation_id), (id(ORDER), None));
        assert_ne!(command.event_id, Envelope::for_command(id(ORDER)).event_id);
        assert_eq!(command.at(7).occurred_at, 7);
    }

    #[test]
    fn the_envelope_is_four_top_level_fields_in_json_as_before_it_was_a_struct() {
        let json = serde_json::to_value(SagaEvent::from(order_created())).expect("json");
        let event = &json["event"];
        assert_eq!(event["event_id"], EVENT);
        assert_eq!(event["order_id"], ORDER);
        assert_eq!(event["causation_id"], serde_json::Value::Null);
        assert_eq!(event["occurred_at"], 1_700_000_000_123_i64);
        assert!(event.get("envelope").is_none());
    }

    #[test]
    fn an_event_id_that_is_not_a_uuid_does_not_decode() {
        let Value::Record(mut fields) = SagaEvent::from(order_created()).to_avro_value().expect("encodes") else {
            panic!("not a record");
        };
        for (name, value) in &mut fields {
            if name == "event_id" {
                *value = Value::String("e-1".into());
            }
        }
        let error =
            SagaEvent::from_avro_value("saga.events.OrderCreated", Value::Record(fields)).expect_err("must not decode");
        assert!(error.to_string().contains("not a UUID"), "{error}");
    }

    #[test]
    fn a_failure_reason_comes_from_the_enum_or_for_v1_data_from_the_reason_text() {
        let failed = |reason: &str, failure_reason| PaymentFailed {
            envelope: Envelope::caused_by(&order_created()),
            reason: reason.into(),
            failure_reason,
            amount_minor: 1,
            currency: "EUR".into(),
        };
        assert_eq!(
            failed("card_declined", FailureReason::PaymentDeclined).reason(),
            FailureReason::PaymentDeclined
        );
        assert_eq!(
            failed("card_declined", FailureReason::Unknown).reason(),
            FailureReason::PaymentDeclined
        );
        assert_eq!(
            failed("out_of_stock", FailureReason::Unknown).reason(),
            FailureReason::OutOfStock
        );
        assert_eq!(
            failed("gremlins", FailureReason::Unknown).reason(),
            FailureReason::Unknown
        );
        assert_eq!(FailureReason::DeadlineExceeded.to_string(), "deadline_exceeded");
    }

    #[test]
    fn serde_gives_a_long_that_resolution_turns_into_timestamp_millis_and_back() {
        // The pitfall: apache_avro::to_value knows no schema, so an i64 becomes Value::Long.
        let raw = apache_avro::to_value(order_created()).expect("serializes");
        assert_eq!(field(&raw, "occurred_at"), &Value::Long(1_700_000_000_123));

        let value = SagaEvent::from(order_created()).to_avro_value().expect("encodes");
        assert_eq!(field(&value, "occurred_at"), &Value::TimestampMillis(1_700_000_000_123));
        let back: OrderCreated = apache_avro::from_value(&value).expect("deserializes");
        assert_eq!(back.envelope.occurred_at, 1_700_000_000_123);
    }

    #[test]
    fn to_avro_value_is_valid_for_the_latest_schema_with_proper_union_branches() {
        let value = SagaEvent::from(stock_adjusted()).to_avro_value().expect("encodes");
        assert!(value.validate(EventType::StockAdjusted.schema()));
        assert_eq!(field(&value, "order_id"), &Value::Union(0, Box::new(Value::Null)));
        assert_eq!(
            field(&value, "causation_id"),
            &Value::Union(1, Box::new(Value::String(CAUSE.into())))
        );
    }

    #[test]
    fn from_avro_value_reads_back_what_to_avro_value_wrote() {
        let event = SagaEvent::from(order_created());
        let value = event.to_avro_value().expect("encodes");
        assert_eq!(SagaEvent::from_avro_value("saga.events.OrderCreated", value), Ok(event));
    }

    #[test]
    fn from_avro_value_rejects_an_unknown_record_name() {
        let value = SagaEvent::from(order_created()).to_avro_value().expect("encodes");
        assert_eq!(
            SagaEvent::from_avro_value("saga.events.OrderTeleported", value),
            Err(ContractError::UnknownRecordName {
                record_name: "saga.events.OrderTeleported".into()
            })
        );
    }

    #[test]
    fn from_avro_value_rejects_a_record_missing_a_field_without_default() {
        let Value::Record(mut fields) = SagaEvent::from(order_created()).to_avro_value().expect("encodes") else {
            panic!("not a record");
        };
        fields.retain(|(name, _)| name != "customer_email");
        let error =
            SagaEvent::from_avro_value("saga.events.OrderCreated", Value::Record(fields)).expect_err("must not decode");
        let ContractError::ValueDoesNotMatchSchema { record_name, reason } = error else {
            panic!("wrong error: {error:?}");
        };
        assert_eq!(record_name, "saga.events.OrderCreated");
        assert!(reason.contains("customer_email"), "{reason}");
    }

    #[test]
    fn from_avro_value_rejects_a_field_of_the_wrong_type() {
        let Value::Record(mut fields) = SagaEvent::from(order_created()).to_avro_value().expect("encodes") else {
            panic!("not a record");
        };
        for (name, value) in &mut fields {
            if name == "total_minor" {
                *value = Value::String("a lot".into());
            }
        }
        assert!(matches!(
            SagaEvent::from_avro_value("saga.events.OrderCreated", Value::Record(fields)),
            Err(ContractError::ValueDoesNotMatchSchema { .. })
        ));
    }

    #[test]
    fn from_avro_value_rejects_a_value_that_is_not_a_record() {
        for value in [Value::Null, Value::String("order".into()), Value::Array(vec![])] {
            assert!(matches!(
                SagaEvent::from_avro_value("saga.events.OrderCreated", value),
                Err(ContractError::ValueDoesNotMatchSchema { .. })
            ));
        }
    }

    #[test]
    fn from_avro_value_drops_unknown_fields_and_fills_missing_ones_with_defaults() {
        let Value::Record(mut fields) = SagaEvent::from(order_created()).to_avro_value().expect("encodes") else {
            panic!("not a record");
        };
        // As if written by an older version (no sales_channel, no causation_id) that was also
        // extended by a newer one with a field we do not know.
        fields.retain(|(name, _)| name != "sales_channel" && name != "causation_id");
        fields.push(("gift_wrap".into(), Value::Boolean(true)));
        let event = SagaEvent::from_avro_value("saga.events.OrderCreated", Value::Record(fields)).expect("decodes");
        let SagaEvent::OrderCreated(order) = event else {
            panic!("wrong variant: {event:?}");
        };
        assert_eq!(order.sales_channel, "api");
        assert_eq!(order.envelope.causation_id, None);
        assert_eq!(order.items, order_created().items);
    }
}
