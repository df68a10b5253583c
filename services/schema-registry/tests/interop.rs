//! Interop with a client nobody here wrote: Confluent's Python `confluent-kafka` (its
//! `SchemaRegistryClient`, `AvroSerializer` and `AvroDeserializer`), driven through
//! `tests/interop/confluent_roundtrip.py`, against an open registry and one that requires basic
//! authentication.
//!
//! Needs `python3` with the packages of the repository's `tests/requirements.txt`; without them
//! these tests fail (they do not skip) and say what to install.

mod common;

use std::process::Command;

use apache_avro::types::Value as Avro;
use common::{user_info, TestRegistry, READER, WRITER};
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{SchemaType, SubjectNameStrategy, SuppliedSchema};
use serde_json::{json, Value};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/confluent_roundtrip.py");
const INSTALL_HINT: &str =
    "install the Python packages with `pip install -r tests/requirements.txt` from the repository root";

const PAYMENT_SCHEMA: &str = r#"{"type":"record","name":"PaymentCaptured","namespace":"saga.interop","fields":[
  {"name":"event_id","type":"string"},
  {"name":"amount_minor","type":"long"},
  {"name":"currency","type":"string"},
  {"name":"attempt","type":"int"},
  {"name":"captured","type":"boolean"},
  {"name":"status","type":{"type":"enum","name":"Status","symbols":["OK","DECLINED"]}},
  {"name":"tags","type":{"type":"array","items":"string"}},
  {"name":"note","type":["null","string"],"default":null}
]}"#;

/// Runs the script with `args` and parses what it prints. Fails the test, with the script's
/// stderr and an install hint, if python3 or its packages are missing or the script fails.
async fn python(args: Vec<String>) -> Value {
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg("-W")
            .arg("ignore")
            .arg(SCRIPT)
            .args(&args)
            .output()
    })
    .await
    .expect("the python task ran");
    let output =
        output.unwrap_or_else(|error| panic!("cannot run python3 ({error}); install Python 3 and {INSTALL_HINT}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => {}
        Some(3) => panic!("confluent-kafka is not installed for python3: {INSTALL_HINT}\n{stderr}"),
        _ => panic!(
            "the interop script failed ({}):\n{stderr}\n(if it is an import problem: {INSTALL_HINT})",
            output.status
        ),
    }
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "the interop script printed no JSON ({error}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn payment_in_rust() -> Avro {
    Avro::Record(vec![
        ("event_id".into(), Avro::String("e-1".into())),
        ("amount_minor".into(), Avro::Long(12_999)),
        ("currency".into(), Avro::String("EUR".into())),
        ("attempt".into(), Avro::Int(2)),
        ("captured".into(), Avro::Boolean(true)),
        ("status".into(), Avro::Enum(1, "DECLINED".into())),
        (
            "tags".into(),
            Avro::Array(vec![Avro::String("a".into()), Avro::String("b".into())]),
        ),
        ("note".into(), Avro::Union(1, Box::new(Avro::String("retry".into())))),
    ])
}

#[tokio::test]
async fn bytes_encoded_by_schema_registry_converter_are_decoded_by_confluents_python_deserializer() {
    let sr = TestRegistry::start().await;
    let strategy = SubjectNameStrategy::TopicRecordNameStrategyWithSchema(
        "payments".into(),
        SuppliedSchema::new(
            Some("saga.interop.PaymentCaptured".into()),
            SchemaType::Avro,
            PAYMENT_SCHEMA.into(),
        ),
    );
    let bytes = AvroEncoder::new(SrSettings::new(sr.url()))
        .encode_value(payment_in_rust(), &strategy)
        .await
        .expect("encoded in Rust");

    let decoded = python(vec!["decode".into(), sr.url(), "payments".into(), hex(&bytes)]).await;
    assert_eq!(
        decoded,
        json!({
            "event_id": "e-1",
            "amount_minor": 12999,
            "currency": "EUR",
            "attempt": 2,
            "captured": true,
            "status": "DECLINED",
            "tags": ["a", "b"],
            "note": "retry",
        })
    );
    sr.shutdown().await;
}

#[tokio::test]
async fn bytes_serialized_by_confluents_python_serializer_are_decoded_by_schema_registry_converter() {
    let sr = TestRegistry::start().await;
    let value = json!({
        "event_id": "e-2",
        "amount_minor": 500,
        "currency": "USD",
        "attempt": 1,
        "captured": false,
        "status": "OK",
        "tags": [],
        "note": null,
    });
    let encoded = python(vec![
        "encode".into(),
        sr.url(),
        "payments".into(),
        PAYMENT_SCHEMA.into(),
        value.to_string(),
    ])
    .await;
    let subject = encoded["subject"].as_str().expect("subject");
    assert_eq!(subject, "payments-saga.interop.PaymentCaptured");
    // The Python serializer auto-registered the schema under the topic-record-name subject.
    let registered = sr.get(&format!("/subjects/{subject}/versions/latest")).await;
    assert_eq!(registered.status, 200, "{registered:?}");

    let bytes = unhex(encoded["hex"].as_str().expect("hex"));
    assert_eq!(
        u32::from_be_bytes(bytes[1..5].try_into().expect("id bytes")),
        u32::try_from(registered.body["id"].as_u64().expect("id")).expect("u32"),
        "the bytes carry the id the registry assigned"
    );
    let decoded = AvroDecoder::new(SrSettings::new(sr.url()))
        .decode(Some(&bytes))
        .await
        .expect("decoded in Rust");
    assert_eq!(
        decoded.value,
        Avro::Record(vec![
            ("event_id".into(), Avro::String("e-2".into())),
            ("amount_minor".into(), Avro::Long(500)),
            ("currency".into(), Avro::String("USD".into())),
            ("attempt".into(), Avro::Int(1)),
            ("captured".into(), Avro::Boolean(false)),
            ("status".into(), Avro::Enum(0, "OK".into())),
            ("tags".into(), Avro::Array(vec![])),
            ("note".into(), Avro::Union(0, Box::new(Avro::Null))),
        ])
    );
    sr.shutdown().await;
}

#[tokio::test]
async fn confluents_python_schema_registry_client_gets_the_answers_it_expects() {
    let sr = TestRegistry::start().await;
    let subject = "payments-saga.interop.PaymentCaptured";
    let report = python(vec!["client".into(), sr.url(), subject.into(), PAYMENT_SCHEMA.into()]).await;
    let expected_schema: Value = serde_json::from_str(PAYMENT_SCHEMA).expect("json");
    assert_eq!(
        report,
        json!({
            "schema_types": ["AVRO"],
            "registered_id": 1,
            "registered_again_id": 1,
            "fetched_schema": expected_schema,
            "fetched_schema_type": "AVRO",
            "lookup": { "id": 1, "version": 1, "subject": subject },
            "latest": { "id": 1, "version": 1, "subject": subject },
            "version_1": { "id": 1, "version": 1 },
            "subjects": [subject],
            "versions": [1],
            "schema_versions": [{ "subject": subject, "version": 1 }],
            "subjects_by_id": [subject],
            "compatible_with_itself": true,
            "global_level": "BACKWARD",
            "set_level": { "compatibility": "FULL_TRANSITIVE" },
            "subject_level": "FULL_TRANSITIVE",
            "unknown_id": { "http_status": 404, "error_code": 40403 },
            "unknown_subject": { "http_status": 404, "error_code": 40401 },
            "invalid_schema": { "http_status": 422, "error_code": 42201 },
            "deleted_versions": [1],
            "permanently_deleted_versions": [1],
            "subjects_after_delete": [],
        })
    );
    sr.shutdown().await;
}

#[tokio::test]
async fn confluents_python_client_with_basic_auth_user_info_registers_and_reads_and_is_refused_without_it() {
    let sr = TestRegistry::start_with_users().await;
    let subject = "payments-saga.interop.PaymentCaptured";
    let value = json!({
        "event_id": "e-3",
        "amount_minor": 700,
        "currency": "EUR",
        "attempt": 1,
        "captured": true,
        "status": "OK",
        "tags": ["x"],
        "note": null,
    });
    let report = python(vec![
        "auth".into(),
        sr.url(),
        subject.into(),
        PAYMENT_SCHEMA.into(),
        value.to_string(),
        user_info(WRITER),
        user_info(READER),
    ])
    .await;
    let expected_schema: Value = serde_json::from_str(PAYMENT_SCHEMA).expect("json");
    let unauthorized = json!({ "http_status": 401, "error_code": 401 });
    let forbidden = json!({ "http_status": 403, "error_code": 40301 });
    assert_eq!(
        report,
        json!({
            "registered_id": 1,
            "fetched_by_reader": expected_schema,
            "reader_latest_version": 1,
            "reader_subjects": [subject],
            "round_trip": value,
            "anonymous_read": unauthorized,
            "anonymous_register": unauthorized,
            "wrong_password_read": unauthorized,
            "reader_register": forbidden,
            "reader_set_level": forbidden,
            "subjects_after": ["auth-saga.interop.PaymentCaptured", subject],
        })
    );
    sr.shutdown().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digits"))
        .collect()
}
