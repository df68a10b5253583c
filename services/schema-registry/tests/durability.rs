//! Durability: everything the registry answered survives a restart, because it is in the topic.

mod common;

use std::time::Duration;

use common::{bootstrap_servers, order_incompatible, order_v1, order_v2, record_schema, TestRegistry};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use schema_registry::record::Record;
use serde_json::json;

#[tokio::test]
async fn state_survives_a_restart_and_new_ids_continue_after_the_old_ones() {
    let first = TestRegistry::start().await;
    let topic = first.topic.clone();
    let other = record_schema("Other", r#"[{"name":"x","type":"int"}]"#);
    assert_eq!(first.register("orders", &order_v1()).await, 1);
    assert_eq!(first.register("orders", &order_v2()).await, 2);
    assert_eq!(first.register("others", &other).await, 3);
    assert_eq!(first.register("copy", &order_v1()).await, 1);
    assert_eq!(first.delete("/subjects/orders/versions/1").await.status, 200);
    let reply = first
        .put("/config", &json!({ "compatibility": "FULL_TRANSITIVE" }))
        .await;
    assert_eq!(reply.status, 200);
    let reply = first.put("/config/others", &json!({ "compatibility": "NONE" })).await;
    assert_eq!(reply.status, 200);
    first.shutdown().await;

    let second = TestRegistry::start_on(topic).await;
    assert_eq!(second.get("/subjects").await.body, json!(["copy", "orders", "others"]));
    assert_eq!(second.get("/subjects/orders/versions").await.body, json!([2]));
    assert_eq!(
        second.get("/subjects/orders/versions?deleted=true").await.body,
        json!([1, 2])
    );
    assert_eq!(
        second.get("/subjects/orders/versions/latest").await.body,
        json!({ "subject": "orders", "version": 2, "id": 2, "schema": order_v2() })
    );
    assert_eq!(second.get("/schemas/ids/1").await.body, json!({ "schema": order_v1() }));
    assert_eq!(second.get("/schemas/ids/3").await.body, json!({ "schema": other }));
    assert_eq!(
        second.get("/config").await.body,
        json!({ "compatibilityLevel": "FULL_TRANSITIVE" })
    );
    assert_eq!(
        second.get("/config/others").await.body,
        json!({ "compatibilityLevel": "NONE" })
    );

    // Same schemas, same ids; new schemas continue after the largest id.
    assert_eq!(second.register("orders", &order_v2()).await, 2);
    assert_eq!(second.register("copy", &order_v1()).await, 1);
    let newer = record_schema("Newer", r#"[{"name":"y","type":"long"}]"#);
    assert_eq!(second.register("newer", &newer).await, 4);
    // The restored global level still applies.
    let reply = second
        .post("/subjects/copy/versions", &json!({ "schema": order_incompatible() }))
        .await;
    assert_eq!(reply.status, 409);
    second.shutdown().await;
}

#[tokio::test]
async fn a_permanently_deleted_schemas_id_is_not_handed_out_again_after_a_restart() {
    let first = TestRegistry::start().await;
    let topic = first.topic.clone();
    assert_eq!(first.register("keep", &order_v1()).await, 1);
    let doomed = record_schema("Doomed", r#"[{"name":"x","type":"int"}]"#);
    assert_eq!(first.register("doomed", &doomed).await, 2);
    assert_eq!(first.delete("/subjects/doomed").await.status, 200);
    assert_eq!(first.delete("/subjects/doomed?permanent=true").await.status, 200);
    first.shutdown().await;

    let second = TestRegistry::start_on(topic).await;
    assert_eq!(second.get("/subjects?deleted=true").await.body, json!(["keep"]));
    assert_eq!(second.get("/schemas/ids/2").await.status, 404);
    let fresh = record_schema("Fresh", r#"[{"name":"y","type":"int"}]"#);
    assert_eq!(second.register("fresh", &fresh).await, 3);
    second.shutdown().await;
}

#[tokio::test]
async fn every_change_is_a_documented_json_record_in_a_one_partition_topic() {
    let sr = TestRegistry::start().await;
    let topic = sr.topic.clone();
    sr.register("s", &order_v1()).await;
    sr.register("s", &order_v1()).await; // no change, no record
    assert_eq!(
        sr.put("/config/s", &json!({ "compatibility": "FULL" })).await.status,
        200
    );
    assert_eq!(sr.delete("/subjects/s").await.status, 200);
    sr.shutdown().await;

    assert_eq!(
        topic_retention_ms(&topic).await.as_deref(),
        Some("-1"),
        "the schemas topic keeps its records forever"
    );
    let records = tokio::task::spawn_blocking(move || read_all(&topic))
        .await
        .expect("reader task");
    assert_eq!(
        records,
        vec![
            Record::SchemaRegistered {
                subject: "s".into(),
                version: 1,
                id: 1,
                schema_type: "AVRO".into(),
                schema: order_v1(),
            },
            Record::CompatibilitySet {
                subject: Some("s".into()),
                compatibility: "FULL".into()
            },
            Record::SubjectDeleted {
                subject: "s".into(),
                permanent: false
            },
        ]
    );
}

/// The `retention.ms` the broker reports for a topic.
async fn topic_retention_ms(topic: &str) -> Option<String> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers())
        .create()
        .expect("admin client");
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .expect("describe configs");
    let resource = results
        .into_iter()
        .next()
        .expect("one result")
        .expect("the topic's configuration");
    resource.get("retention.ms").and_then(|entry| entry.value.clone())
}

/// Reads every record of the topic and checks it has exactly one partition.
fn read_all(topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers())
        .set("group.id", format!("durability-test-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len());
    assert_eq!(partitions, Some(1), "the schemas topic has one partition");
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, rdkafka::Offset::Offset(low))
        .expect("assignment");
    consumer.assign(&assignment).expect("assign");
    let mut records = Vec::new();
    let mut next = low;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while next < high && std::time::Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(500)) {
            use rdkafka::Message;
            let message = message.expect("a message");
            next = message.offset() + 1;
            let payload = message.payload().expect("a payload");
            records.push(Record::from_bytes(payload).expect("a registry record"));
        }
    }
    records
}
