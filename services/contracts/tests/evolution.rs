//! Schema evolution, proven on the checked-in schemas and on real Avro binary data: every file
//! is a well-formed event schema, every event type is BACKWARD_TRANSITIVE compatible, old and new
//! versions of `order.created` read each other's data, incompatible changes are rejected, and
//! every event round-trips through the binary encoding.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::types::{Record, Value};
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{AvroResult, Schema};
use saga_contracts::compatibility::{check, CompatibilityLevel};
use saga_contracts::*;

/// One `.avsc` file as found on disk.
struct SchemaFile {
    file_name: String,
    text: String,
    schema: Schema,
    event_type: String,
    version: u32,
}

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

/// Every schema file, parsed with apache-avro, sorted by event type then version.
fn schema_files() -> Vec<SchemaFile> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(schema_dir()).expect("schemas/ is readable") {
        let path = entry.expect("directory entry").path();
        let file_name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let Some(stem) = file_name.strip_suffix(".avsc") else {
            continue;
        };
        let (event_type, version) = stem
            .rsplit_once(".v")
            .unwrap_or_else(|| panic!("{file_name} is not named <event_type>.v<N>.avsc"));
        let version: u32 = version
            .parse()
            .unwrap_or_else(|e| panic!("{file_name}: version is not a number: {e}"));
        let event_type = event_type.to_owned();
        let text = std::fs::read_to_string(&path).expect("readable");
        let schema = Schema::parse_str(&text).unwrap_or_else(|e| panic!("{file_name} is not a valid Avro schema: {e}"));
        files.push(SchemaFile {
            file_name,
            text,
            schema,
            event_type,
            version,
        });
    }
    files.sort_by(|a, b| (&a.event_type, a.version).cmp(&(&b.event_type, b.version)));
    assert!(!files.is_empty(), "no schema files found");
    files
}

/// Parsed versions of every event type, oldest first, keyed by the `event_type` string.
fn versions_by_event_type() -> BTreeMap<String, Vec<Schema>> {
    let mut map: BTreeMap<String, Vec<Schema>> = BTreeMap::new();
    for file in schema_files() {
        map.entry(file.event_type).or_default().push(file.schema);
    }
    map
}

/// Avro binary encoding of `value` with `schema` (what follows the Confluent header).
fn write_datum(schema: &Schema, value: Value) -> Vec<u8> {
    GenericDatumWriter::builder(schema)
        .build()
        .expect("writer")
        .write_value_to_vec(value)
        .expect("value is valid for the writer schema")
}

/// Decodes `bytes` written with `writer`, resolved to `reader` if given.
fn read_datum(writer: &Schema, bytes: &[u8], reader: Option<&Schema>) -> AvroResult<Value> {
    GenericDatumReader::builder(writer)
        .maybe_reader_schema(reader)
        .build()?
        .read_value(&mut &bytes[..])
}

fn order_created_version(version: u32) -> Schema {
    let versions = EventType::OrderCreated.versions();
    let found = versions.iter().find(|v| v.version == version).expect("version exists");
    Schema::parse_str(found.json).expect("valid")
}

fn record_fields(value: &Value) -> &[(String, Value)] {
    match value {
        Value::Record(fields) => fields,
        other => panic!("not a record: {other:?}"),
    }
}

fn field<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    record_fields(value).iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

const V1_EVENT_ID: &str = "2d0f3b7a-6c1e-4e39-9d4b-5a8e1c2f0001";
const V1_ORDER_ID: &str = "2d0f3b7a-6c1e-4e39-9d4b-5a8e1c2f0002";
const V1_CAUSE_ID: &str = "2d0f3b7a-6c1e-4e39-9d4b-5a8e1c2f0003";

/// A value of order.created v1, built by hand against the v1 schema (as an old producer would).
fn order_created_v1_value(schema: &Schema) -> Value {
    let mut record = Record::new(schema).expect("record schema");
    record.put("event_id", V1_EVENT_ID);
    record.put("order_id", V1_ORDER_ID);
    record.put(
        "causation_id",
        Value::Union(1, Box::new(Value::String(V1_CAUSE_ID.into()))),
    );
    record.put("occurred_at", Value::TimestampMillis(1_700_000_000_000));
    record.put("customer_id", "c-1");
    record.put("customer_email", "c@example.com");
    record.put("payment_token", "tok-1");
    record.put("total_minor", 2_500_i64);
    record.put("currency", "EUR");
    record.put(
        "items",
        Value::Array(vec![Value::Record(vec![
            ("sku".into(), Value::String("SKU-1".into())),
            ("quantity".into(), Value::Int(2)),
            ("unit_price_minor".into(), Value::Long(1_250)),
        ])]),
    );
    record.into()
}

/// One sample event per event type, with nullable fields both set and unset across samples.
fn sample(event_type: EventType) -> SagaEvent {
    let caused = Envelope {
        event_id: EventId::new(),
        order_id: OrderId::new(),
        causation_id: Some(EventId::new()),
        occurred_at: 1_700_000_000_000 + event_type as i64,
    };
    let lines = vec![
        StockLine {
            sku: "SKU-1".into(),
            quantity: 2,
        },
        StockLine {
            sku: "SKU-2".into(),
            quantity: 1,
        },
    ];
    match event_type {
        EventType::OrderCreated => OrderCreated {
            envelope: Envelope {
                causation_id: None,
                ..caused
            },
            customer_id: "c-1".into(),
            customer_email: "c@example.com".into(),
            payment_token: "tok-1".into(),
            total_minor: 3_750,
            currency: "USD".into(),
            items: vec![
                OrderLine {
                    sku: "SKU-1".into(),
                    quantity: 2,
                    unit_price_minor: 1_250,
                },
                OrderLine {
                    sku: "SKU-2".into(),
                    quantity: 1,
                    unit_price_minor: 1_250,
                },
            ],
            sales_channel: "mobile".into(),
            idempotency_key: Some("key-1".into()),
            request_hash: Some("hash-1".into()),
            deadline_at: Some(caused.occurred_at + 30_000),
        }
        .into(),
        EventType::OrderConfirmed => OrderConfirmed {
            envelope: caused,
            customer_email: "c@example.com".into(),
            total_minor: 3_750,
            currency: "USD".into(),
        }
        .into(),
        EventType::OrderFailed => OrderFailed {
            envelope: caused,
            reason: "card_declined".into(),
            failure_reason: FailureReason::PaymentDeclined,
            customer_email: "c@example.com".into(),
            total_minor: 3_750,
            currency: "USD".into(),
        }
        .into(),
        EventType::PaymentSucceeded => PaymentSucceeded {
            envelope: caused,
            payment_id: PaymentId::new(),
            amount_minor: 3_750,
            currency: "USD".into(),
            gateway_reference: Some("gw-1".into()),
        }
        .into(),
        EventType::PaymentFailed => PaymentFailed {
            envelope: caused,
            reason: "card_declined".into(),
            failure_reason: FailureReason::PaymentDeclined,
            amount_minor: 3_750,
            currency: "USD".into(),
        }
        .into(),
        EventType::PaymentRefunded => PaymentRefunded {
            envelope: caused,
            payment_id: PaymentId::new(),
            amount_minor: 3_750,
            currency: "USD".into(),
            reason: "order_failed".into(),
        }
        .into(),
        EventType::InventoryReserved => InventoryReserved {
            envelope: caused,
            items: lines,
        }
        .into(),
        EventType::InventoryReservationFailed => InventoryReservationFailed {
            envelope: caused,
            reason: "out_of_stock".into(),
            failure_reason: FailureReason::OutOfStock,
            unavailable_skus: vec!["SKU-2".into()],
        }
        .into(),
        EventType::InventoryCommitted => InventoryCommitted {
            envelope: caused,
            items: lines,
        }
        .into(),
        EventType::InventoryReleased => InventoryReleased {
            envelope: caused,
            items: vec![],
            reason: "order_failed".into(),
        }
        .into(),
        EventType::StockAdjusted => StockAdjusted {
            envelope: Envelope {
                order_id: None,
                causation_id: None,
                ..caused.with_optional_order()
            },
            sku: "SKU-1".into(),
            delta: -3,
            reason: "count correction".into(),
            adjustment_id: Some(AdjustmentId::new()),
        }
        .into(),
        EventType::NotificationSent => NotificationSent {
            envelope: caused,
            order_outcome: OrderOutcome::Confirmed,
            recipient: "c@example.com".into(),
            subject: "Order confirmed".into(),
            message_id: "<order-1.confirmed@saga.example>".into(),
            attempts: 1,
        }
        .into(),
        EventType::NotificationFailed => NotificationFailed {
            envelope: caused,
            order_outcome: OrderOutcome::Failed,
            recipient: "c@example.com".into(),
            message_id: "<order-1.failed@saga.example>".into(),
            attempts: 3,
            error: "550 mailbox unavailable".into(),
        }
        .into(),
    }
}

#[test]
fn every_schema_file_is_a_saga_events_record_with_its_event_type_attribute() {
    for file in schema_files() {
        let Schema::Record(record) = &file.schema else {
            panic!("{} is not a record schema", file.file_name);
        };
        assert_eq!(record.name.namespace(), Some("saga.events"), "{}", file.file_name);
        assert_eq!(
            record.attributes.get("event_type"),
            Some(&serde_json::Value::from(file.event_type.as_str())),
            "{}: the event_type attribute must match the file name",
            file.file_name
        );
        assert!(file.version >= 1, "{}", file.file_name);
    }
}

#[test]
fn every_event_type_and_version_pair_is_unique_and_versions_have_no_gaps() {
    let files = schema_files();
    let pairs: BTreeSet<(String, u32)> = files.iter().map(|f| (f.event_type.clone(), f.version)).collect();
    assert_eq!(pairs.len(), files.len());
    for (event_type, versions) in versions_by_event_type() {
        let numbers: Vec<u32> = files
            .iter()
            .filter(|f| f.event_type == event_type)
            .map(|f| f.version)
            .collect();
        let expected: Vec<u32> = (1..=versions.len() as u32).collect();
        assert_eq!(numbers, expected, "{event_type}");
    }
}

#[test]
fn the_record_name_stays_the_same_across_versions_of_an_event() {
    for (event_type, versions) in versions_by_event_type() {
        let names: BTreeSet<String> = versions
            .iter()
            .map(|schema| schema.name().expect("named").fullname(None))
            .collect();
        assert_eq!(names.len(), 1, "{event_type} changes its record name: {names:?}");
    }
}

#[test]
fn event_type_all_covers_exactly_the_event_types_in_the_schema_directory() {
    let on_disk: BTreeSet<String> = versions_by_event_type().into_keys().collect();
    let in_code: BTreeSet<String> = EventType::ALL.iter().map(|t| t.as_str().to_owned()).collect();
    assert_eq!(in_code, on_disk);
    assert_eq!(EventType::ALL.len(), on_disk.len(), "no duplicates in ALL");
}

#[test]
fn the_embedded_versions_are_exactly_the_files_on_disk() {
    let files = schema_files();
    for event_type in EventType::ALL {
        let on_disk: Vec<(u32, &str)> = files
            .iter()
            .filter(|f| f.event_type == event_type.as_str())
            .map(|f| (f.version, f.text.as_str()))
            .collect();
        let embedded: Vec<(u32, &str)> = event_type.versions().iter().map(|v| (v.version, v.json)).collect();
        assert_eq!(embedded, on_disk, "{event_type}");
        let latest = files
            .iter()
            .rfind(|f| f.event_type == event_type.as_str())
            .expect("exists");
        assert_eq!(event_type.schema(), &latest.schema, "{event_type}");
    }
}

#[test]
fn every_event_type_is_backward_transitive_by_the_compatibility_module() {
    for (event_type, versions) in versions_by_event_type() {
        for n in 1..versions.len() {
            assert_eq!(
                check(CompatibilityLevel::BackwardTransitive, &versions[n], &versions[..n]),
                Ok(()),
                "{event_type} v{} against v1..v{n}",
                n + 1
            );
        }
    }
}

#[test]
fn every_event_type_is_backward_transitive_by_apache_avros_checker() {
    for (event_type, versions) in versions_by_event_type() {
        for (newer, reader) in versions.iter().enumerate() {
            for (older, writer) in versions[..=newer].iter().enumerate() {
                assert_eq!(
                    SchemaCompatibility::can_read(writer, reader),
                    Ok(Compatibility::Full),
                    "{event_type}: v{} cannot read v{} data",
                    newer + 1,
                    older + 1
                );
            }
        }
    }
}

#[test]
fn order_created_v1_data_reads_with_the_v2_schema_taking_the_default_channel() {
    let (v1, v2) = (order_created_version(1), order_created_version(2));
    let bytes = write_datum(&v1, order_created_v1_value(&v1));

    let read = read_datum(&v1, &bytes, Some(&v2)).expect("v2 reads v1");

    assert!(read.validate(&v2));
    assert_eq!(field(&read, "sales_channel"), Some(&Value::String("api".into())));
    assert_eq!(
        field(&read, "occurred_at"),
        Some(&Value::TimestampMillis(1_700_000_000_000))
    );
    let v1_value = order_created_v1_value(&v1);
    for (name, value) in record_fields(&v1_value) {
        assert_eq!(field(&read, name), Some(value), "{name}");
    }
}

#[test]
fn order_created_latest_data_reads_with_the_v1_schema_dropping_the_fields_added_since() {
    let (v1, latest) = (order_created_version(1), order_created_latest());
    let event = sample(EventType::OrderCreated);
    let value = event.to_avro_value().expect("encodes");
    let bytes = write_datum(&latest, value.clone());

    let read = read_datum(&latest, &bytes, Some(&v1)).expect("v1 reads the latest");

    assert!(read.validate(&v1));
    for added in ADDED_TO_ORDER_CREATED {
        assert_eq!(field(&read, added), None, "{added}");
    }
    let written_without_additions: Vec<(String, Value)> = record_fields(&value)
        .iter()
        .filter(|(name, _)| !ADDED_TO_ORDER_CREATED.contains(&name.as_str()))
        .cloned()
        .collect();
    assert_eq!(record_fields(&read), written_without_additions.as_slice());
}

/// The fields order.created gained after v1: the channel (v2), the idempotency key, its request
/// hash and the deadline (v3).
const ADDED_TO_ORDER_CREATED: [&str; 4] = ["sales_channel", "idempotency_key", "request_hash", "deadline_at"];

/// The latest version of order.created.
fn order_created_latest() -> Schema {
    order_created_version(EventType::OrderCreated.versions().len() as u32)
}

#[test]
fn order_created_v1_data_decodes_into_the_latest_struct_through_saga_event() {
    let v1 = order_created_version(1);
    let bytes = write_datum(&v1, order_created_v1_value(&v1));
    // What a consumer gets from the registry decoder: the value in the writer's schema.
    let writer_value = read_datum(&v1, &bytes, None).expect("decodes");

    let event = SagaEvent::from_avro_value("saga.events.OrderCreated", writer_value)
        .expect("a v1 event is a valid OrderCreated");

    let expected = OrderCreated {
        envelope: Envelope {
            event_id: V1_EVENT_ID.parse().expect("uuid"),
            order_id: V1_ORDER_ID.parse().expect("uuid"),
            causation_id: Some(V1_CAUSE_ID.parse().expect("uuid")),
            occurred_at: 1_700_000_000_000,
        },
        customer_id: "c-1".into(),
        customer_email: "c@example.com".into(),
        payment_token: "tok-1".into(),
        total_minor: 2_500,
        currency: "EUR".into(),
        items: vec![OrderLine {
            sku: "SKU-1".into(),
            quantity: 2,
            unit_price_minor: 1_250,
        }],
        sales_channel: "api".into(),
        idempotency_key: None,
        request_hash: None,
        deadline_at: None,
    };
    assert_eq!(event, SagaEvent::OrderCreated(expected));
}

#[test]
fn order_created_latest_data_decoded_by_a_v1_reader_still_has_every_v1_field() {
    // An old consumer's view: decode new data with the v1 schema as reader.
    let (v1, latest) = (order_created_version(1), order_created_latest());
    let SagaEvent::OrderCreated(original) = sample(EventType::OrderCreated) else {
        unreachable!()
    };
    let value = SagaEvent::from(original.clone()).to_avro_value().expect("encodes");
    let bytes = write_datum(&latest, value);
    let read = read_datum(&latest, &bytes, Some(&v1)).expect("v1 reads the latest");

    // Reading that v1 view back into this build gives the original with the later fields at
    // their defaults.
    let event = SagaEvent::from_avro_value("saga.events.OrderCreated", read).expect("decodes");
    assert_eq!(
        event,
        SagaEvent::OrderCreated(OrderCreated {
            sales_channel: "api".into(),
            idempotency_key: None,
            request_hash: None,
            deadline_at: None,
            ..original
        })
    );
}

/// order.created v1 plus `extra` as an additional field.
fn order_created_v1_plus(extra: serde_json::Value) -> Schema {
    let mut json: serde_json::Value = serde_json::from_str(EventType::OrderCreated.versions()[0].json).expect("json");
    json["fields"].as_array_mut().expect("fields").push(extra);
    Schema::parse_str(&json.to_string()).expect("valid")
}

#[test]
fn a_v2_that_adds_a_field_without_a_default_is_rejected_as_backward() {
    let v1 = order_created_version(1);
    let bad_v2 = order_created_v1_plus(serde_json::json!({"name": "sales_channel", "type": "string"}));

    for level in [CompatibilityLevel::Backward, CompatibilityLevel::BackwardTransitive] {
        let errors = check(level, &bad_v2, std::slice::from_ref(&v1)).expect_err("incompatible");
        assert!(errors[0].contains("sales_channel"), "{errors:?}");
    }
    assert!(SchemaCompatibility::can_read(&v1, &bad_v2).is_err());
    // And it really cannot read old data.
    let bytes = write_datum(&v1, order_created_v1_value(&v1));
    assert!(read_datum(&v1, &bytes, Some(&bad_v2)).is_err());
}

#[test]
fn changing_a_field_type_from_string_to_int_is_rejected() {
    let v1 = order_created_version(1);
    let mut json: serde_json::Value = serde_json::from_str(EventType::OrderCreated.versions()[0].json).expect("json");
    for field in json["fields"].as_array_mut().expect("fields") {
        if field["name"] == "customer_id" {
            field["type"] = "int".into();
        }
    }
    let changed = Schema::parse_str(&json.to_string()).expect("valid");

    for level in [
        CompatibilityLevel::Backward,
        CompatibilityLevel::BackwardTransitive,
        CompatibilityLevel::Forward,
        CompatibilityLevel::FullTransitive,
    ] {
        let errors = check(level, &changed, std::slice::from_ref(&v1)).expect_err("incompatible");
        assert!(errors.iter().all(|e| e.contains("customer_id")), "{errors:?}");
    }
    assert!(SchemaCompatibility::can_read(&v1, &changed).is_err());
}

#[test]
fn every_saga_event_round_trips_through_avro_binary() {
    for event_type in EventType::ALL {
        let event = sample(event_type);
        assert_eq!(event.event_type(), event_type);
        let schema = event_type.schema();

        let value = event.to_avro_value().expect("encodes");
        assert!(value.validate(schema), "{event_type}: value valid for schema");
        let bytes = write_datum(schema, value);
        let decoded = read_datum(schema, &bytes, None).expect("reads");
        let back = SagaEvent::from_avro_value(event_type.record_name(), decoded)
            .unwrap_or_else(|e| panic!("{event_type}: {e}"));

        assert_eq!(back, event, "{event_type}");
    }
}

#[test]
fn data_of_one_event_presented_as_another_is_rejected_not_misread() {
    let event = sample(EventType::PaymentFailed);
    let schema = EventType::PaymentFailed.schema();
    let bytes = write_datum(schema, event.to_avro_value().expect("encodes"));
    let decoded = read_datum(schema, &bytes, None).expect("reads");

    let error = SagaEvent::from_avro_value("saga.events.OrderCreated", decoded.clone())
        .expect_err("a PaymentFailed is not an OrderCreated");
    assert!(
        matches!(error, ContractError::ValueDoesNotMatchSchema { .. }),
        "{error:?}"
    );

    let error = SagaEvent::from_avro_value("saga.events.PaymentExploded", decoded).expect_err("unknown record");
    assert_eq!(
        error,
        ContractError::UnknownRecordName {
            record_name: "saga.events.PaymentExploded".into()
        }
    );
}

/// The three failure events as a v1 writer wrote them (free-text reason only), read by this
/// build: the reason text survives, and `reason()` gives the enum it names.
#[test]
fn v1_failure_events_read_with_the_v2_schema_and_their_reason_text_names_the_failure_reason() {
    let cases = [
        (
            EventType::OrderFailed,
            "payment_declined",
            FailureReason::PaymentDeclined,
        ),
        (
            EventType::OrderFailed,
            "deadline_exceeded",
            FailureReason::DeadlineExceeded,
        ),
        (
            EventType::PaymentFailed,
            "card_declined",
            FailureReason::PaymentDeclined,
        ),
        (
            EventType::InventoryReservationFailed,
            "out_of_stock",
            FailureReason::OutOfStock,
        ),
        (
            EventType::InventoryReservationFailed,
            "order_already_failed",
            FailureReason::OrderAlreadyFailed,
        ),
    ];
    for (event_type, text, expected) in cases {
        let v1 = Schema::parse_str(event_type.versions()[0].json).expect("v1 parses");
        // The latest sample as a v1 writer would have written it: without failure_reason.
        let latest = sample(event_type).to_avro_value().expect("encodes");
        let mut record = Record::new(&v1).expect("record schema");
        for (name, value) in record_fields(&latest) {
            if name == "reason" {
                record.put(name, Value::String(text.into()));
            } else if name != "failure_reason" {
                record.put(name, value.clone());
            }
        }
        let bytes = write_datum(&v1, record.into());
        let writer_value = read_datum(&v1, &bytes, None).expect("decodes as v1");
        let event = SagaEvent::from_avro_value(event_type.record_name(), writer_value).expect("v1 data reads");
        let (reason_text, failure_reason, reason) = match &event {
            SagaEvent::OrderFailed(e) => (e.reason.clone(), e.failure_reason, e.reason()),
            SagaEvent::PaymentFailed(e) => (e.reason.clone(), e.failure_reason, e.reason()),
            SagaEvent::InventoryReservationFailed(e) => (e.reason.clone(), e.failure_reason, e.reason()),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(reason_text, text, "{event_type}");
        assert_eq!(failure_reason, FailureReason::Unknown, "{event_type}: v1 has no enum");
        assert_eq!(reason, expected, "{event_type} {text}");
    }
}

/// A v3 writer may add a failure reason this build does not know; it reads as unknown (the
/// enum's default) instead of making the event undecodable.
#[test]
fn a_failure_reason_symbol_this_build_does_not_know_reads_as_unknown() {
    let latest: serde_json::Value = serde_json::from_str(EventType::PaymentFailed.schema_json()).expect("json");
    let mut v3 = latest.clone();
    for field in v3["fields"].as_array_mut().expect("fields") {
        if field["name"] == "failure_reason" {
            field["type"]["symbols"]
                .as_array_mut()
                .expect("symbols")
                .push("fraud_suspected".into());
        }
    }
    let v3 = Schema::parse_str(&v3.to_string()).expect("v3 parses");
    let Value::Record(mut fields) = sample(EventType::PaymentFailed).to_avro_value().expect("encodes") else {
        panic!("not a record");
    };
    for (name, value) in &mut fields {
        if name == "failure_reason" {
            *value = Value::Enum(5, "fraud_suspected".into());
        }
    }
    let bytes = write_datum(&v3, Value::Record(fields));
    let reader = EventType::PaymentFailed.schema();
    let read = read_datum(&v3, &bytes, Some(reader)).expect("the default stands in for the unknown symbol");
    let SagaEvent::PaymentFailed(failed) =
        SagaEvent::from_avro_value(EventType::PaymentFailed.record_name(), read).expect("decodes")
    else {
        panic!("wrong variant");
    };
    assert_eq!(failed.failure_reason, FailureReason::Unknown);
}

/// Every older version of every event type, as an old producer wrote it, still decodes into
/// this build's types: what replaying a topic from its beginning needs.
#[test]
fn data_written_with_every_older_version_decodes_into_this_build() {
    for event_type in EventType::ALL {
        let latest = sample(event_type).to_avro_value().expect("encodes");
        for version in &event_type.versions()[..event_type.versions().len() - 1] {
            let schema = Schema::parse_str(version.json).expect("parses");
            let mut record = Record::new(&schema).expect("record schema");
            let known: Vec<String> = record.fields.iter().map(|(name, _)| name.clone()).collect();
            for (name, value) in record_fields(&latest) {
                if known.contains(name) {
                    record.put(name, value.clone());
                }
            }
            let bytes = write_datum(&schema, record.into());
            let writer_value = read_datum(&schema, &bytes, None).expect("decodes with its own schema");
            let event = SagaEvent::from_avro_value(event_type.record_name(), writer_value)
                .unwrap_or_else(|e| panic!("{event_type} v{} does not decode: {e}", version.version));
            assert_eq!(event.event_type(), event_type);
            assert_eq!(
                event.event_id(),
                sample_event_id(&latest),
                "{event_type} v{}",
                version.version
            );
        }
    }
}

fn sample_event_id(value: &Value) -> EventId {
    match field(value, "event_id") {
        Some(Value::String(id)) => id.parse().expect("a UUID"),
        other => panic!("no event id: {other:?}"),
    }
}
