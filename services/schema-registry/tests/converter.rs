//! `schema_registry_converter` (what the services use) against the registry: it auto-registers
//! through `TopicRecordNameStrategyWithSchema`, encodes, and decodes back, with and without basic
//! authentication.

mod common;

use apache_avro::types::Value;
use common::{order_incompatible, order_v1, order_v2, TestRegistry, READER, WRITER};
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{SchemaType, SubjectNameStrategy, SuppliedSchema};
use serde_json::json;

fn strategy(topic: &str, schema: String) -> SubjectNameStrategy {
    SubjectNameStrategy::TopicRecordNameStrategyWithSchema(
        topic.to_owned(),
        SuppliedSchema::new(Some("saga.test.Order".to_owned()), SchemaType::Avro, schema),
    )
}

fn order(id: &str, amount: i64) -> Value {
    Value::Record(vec![
        ("id".to_owned(), Value::String(id.to_owned())),
        ("amount".to_owned(), Value::Long(amount)),
    ])
}

fn schema_id(bytes: &[u8]) -> u32 {
    assert_eq!(bytes.first(), Some(&0), "Confluent magic byte");
    u32::from_be_bytes(bytes[1..5].try_into().expect("4 id bytes"))
}

#[tokio::test]
async fn the_avro_encoder_auto_registers_and_the_avro_decoder_round_trips() {
    let sr = TestRegistry::start().await;
    let encoder = AvroEncoder::new(SrSettings::new(sr.url()));
    let decoder = AvroDecoder::new(SrSettings::new(sr.url()));

    let bytes = encoder
        .encode_value(order("o-1", 1250), &strategy("orders", order_v1()))
        .await
        .expect("encoded");
    let id = schema_id(&bytes);

    let reply = sr.get("/subjects/orders-saga.test.Order/versions/latest").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["id"], json!(id));
    assert_eq!(reply.body["version"], json!(1));

    let decoded = decoder.decode(Some(&bytes)).await.expect("decoded");
    assert_eq!(decoded.value, order("o-1", 1250));
    assert_eq!(
        decoded.name.map(|name| name.fullname(None)),
        Some("saga.test.Order".to_owned())
    );
    sr.shutdown().await;
}

#[tokio::test]
async fn an_evolved_schema_gets_a_new_id_and_old_and_new_bytes_both_decode() {
    let sr = TestRegistry::start().await;
    let decoder = AvroDecoder::new(SrSettings::new(sr.url()));

    let v1_bytes = AvroEncoder::new(SrSettings::new(sr.url()))
        .encode_value(order("o-1", 100), &strategy("orders", order_v1()))
        .await
        .expect("v1 encoded");
    let v2_value = Value::Record(vec![
        ("id".to_owned(), Value::String("o-2".to_owned())),
        ("amount".to_owned(), Value::Long(200)),
        ("currency".to_owned(), Value::String("USD".to_owned())),
    ]);
    let v2_bytes = AvroEncoder::new(SrSettings::new(sr.url()))
        .encode_value(v2_value.clone(), &strategy("orders", order_v2()))
        .await
        .expect("v2 encoded");
    assert_ne!(schema_id(&v1_bytes), schema_id(&v2_bytes));
    assert_eq!(
        sr.get("/subjects/orders-saga.test.Order/versions").await.body,
        json!([1, 2])
    );

    // A fresh encoder with v1 again finds the existing registration: same id.
    let again = AvroEncoder::new(SrSettings::new(sr.url()))
        .encode_value(order("o-3", 300), &strategy("orders", order_v1()))
        .await
        .expect("v1 encoded again");
    assert_eq!(schema_id(&again), schema_id(&v1_bytes));

    assert_eq!(
        decoder.decode(Some(&v1_bytes)).await.expect("v1").value,
        order("o-1", 100)
    );
    assert_eq!(decoder.decode(Some(&v2_bytes)).await.expect("v2").value, v2_value);
    sr.shutdown().await;
}

#[tokio::test]
async fn the_avro_encoder_reports_an_incompatible_schema_as_an_error() {
    let sr = TestRegistry::start().await;
    AvroEncoder::new(SrSettings::new(sr.url()))
        .encode_value(order("o-1", 1), &strategy("orders", order_v1()))
        .await
        .expect("v1 encoded");
    let refused = AvroEncoder::new(SrSettings::new(sr.url()))
        .encode_value(
            Value::Record(vec![
                ("id".to_owned(), Value::String("o-2".to_owned())),
                ("amount".to_owned(), Value::Long(2)),
                ("required".to_owned(), Value::Int(1)),
            ]),
            &strategy("orders", order_incompatible()),
        )
        .await;
    let error = refused.expect_err("an incompatible schema is refused");
    assert!(!error.retriable, "a 409 is not worth retrying: {error:?}");
    assert!(
        format!("{error:?}").contains("409"),
        "the registry's error code reaches the client: {error:?}"
    );
    sr.shutdown().await;
}

#[tokio::test]
async fn with_basic_authentication_the_converter_encodes_and_decodes_and_without_it_gets_401() {
    let sr = TestRegistry::start_with_users().await;
    let settings = |(user, password): (&str, &str)| {
        SrSettings::new_builder(sr.url())
            .set_basic_authorization(user, Some(password))
            .build()
            .expect("settings")
    };
    let bytes = AvroEncoder::new(settings(WRITER))
        .encode_value(order("o-1", 1250), &strategy("orders", order_v1()))
        .await
        .expect("encoded as the read-write user");
    let reply = sr.get("/subjects/orders-saga.test.Order/versions/latest").await;
    assert_eq!(reply.body["id"], json!(schema_id(&bytes)));
    // A read-only user can decode: fetching a schema by id is a read.
    let decoded = AvroDecoder::new(settings(READER))
        .decode(Some(&bytes))
        .await
        .expect("decoded as the read-only user");
    assert_eq!(decoded.value, order("o-1", 1250));

    let refused = AvroDecoder::new(SrSettings::new(sr.url()))
        .decode(Some(&bytes))
        .await
        .expect_err("no credentials, no schema");
    assert!(!refused.retriable, "{refused:?}");
    assert!(format!("{refused:?}").contains("401"), "{refused:?}");
    // A read-only user cannot register a new schema.
    let refused = AvroEncoder::new(settings(READER))
        .encode_value(order("o-2", 1), &strategy("payments", order_v1()))
        .await
        .expect_err("a read-only user cannot register");
    assert!(format!("{refused:?}").contains("403"), "{refused:?}");
    sr.shutdown().await;
}
