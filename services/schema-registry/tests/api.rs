//! The REST API against a registry backed by the real broker: every endpoint, every error code.

mod common;

use common::{order_incompatible, order_v1, order_v2, record_schema, Reply, TestRegistry};
use reqwest::Method;
use serde_json::{json, Value};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

fn assert_error(reply: &Reply, status: u16, error_code: i64) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.error_code(), Some(error_code), "{reply:?}");
    assert!(
        reply.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "an error has a message: {reply:?}"
    );
    assert_eq!(reply.content_type, CONTENT_TYPE, "{reply:?}");
}

fn assert_ok(reply: &Reply) {
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.content_type, CONTENT_TYPE, "{reply:?}");
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).expect("valid JSON")
}

#[tokio::test]
async fn a_registered_schema_can_be_read_back_by_subject_version_and_id() {
    let sr = TestRegistry::start().await;
    let schema = order_v1();
    let reply = sr
        .post(
            "/subjects/orders-value/versions",
            &json!({ "schema": schema, "schemaType": "AVRO", "references": [] }),
        )
        .await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!({ "id": 1 }));

    let reply = sr.get("/subjects").await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!(["orders-value"]));

    let reply = sr.get("/subjects/orders-value/versions").await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!([1]));

    for version in ["1", "latest", "-1"] {
        let reply = sr.get(&format!("/subjects/orders-value/versions/{version}")).await;
        assert_ok(&reply);
        assert_eq!(
            reply.body,
            json!({ "subject": "orders-value", "version": 1, "id": 1, "schema": schema })
        );
        let raw = sr
            .get(&format!("/subjects/orders-value/versions/{version}/schema"))
            .await;
        assert_ok(&raw);
        assert_eq!(parse(&raw.text), parse(&schema));
    }

    let reply = sr.get("/schemas/ids/1").await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!({ "schema": schema }));
    // Query parameters Confluent's clients send are accepted; fetchMaxId adds maxId.
    let reply = sr
        .get("/schemas/ids/1?subject=orders-value&format=resolved&deleted=true&fetchMaxId=true")
        .await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!({ "schema": schema, "maxId": 1 }));

    let raw = sr.get("/schemas/ids/1/schema").await;
    assert_ok(&raw);
    assert_eq!(parse(&raw.text), parse(&schema));

    let reply = sr.get("/schemas/ids/1/versions").await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!([{ "subject": "orders-value", "version": 1 }]));

    let reply = sr.get("/schemas/ids/1/subjects").await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!(["orders-value"]));

    let reply = sr.get("/schemas/types").await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!(["AVRO"]));

    let reply = sr.get("/subjects/orders-value/versions/1/referencedby").await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!([]));
    sr.shutdown().await;
}

#[tokio::test]
async fn registering_the_same_schema_twice_returns_the_same_id_and_adds_no_version() {
    let sr = TestRegistry::start().await;
    let first = sr.register("s", &order_v1()).await;
    // Same schema, other whitespace and key order, with Confluent's normalize parameter.
    let reformatted = serde_json::to_string_pretty(&parse(&order_v1())).expect("json");
    let reply = sr
        .post("/subjects/s/versions?normalize=true", &json!({ "schema": reformatted }))
        .await;
    assert_ok(&reply);
    assert_eq!(reply.body["id"].as_u64(), Some(u64::from(first)));
    let again = sr.register("s", &order_v1()).await;
    assert_eq!(again, first);
    assert_eq!(sr.get("/subjects/s/versions").await.body, json!([1]));
    sr.shutdown().await;
}

#[tokio::test]
async fn an_identical_schema_under_another_subject_reuses_the_global_id() {
    let sr = TestRegistry::start().await;
    let a = sr.register("a", &order_v1()).await;
    let other = sr
        .register("b", &record_schema("Other", r#"[{"name":"x","type":"int"}]"#))
        .await;
    let c = sr.register("c", &order_v1()).await;
    assert_eq!((a, other, c), (1, 2, 1));
    assert_eq!(sr.get("/subjects/c/versions").await.body, json!([1]));
    let reply = sr.get("/schemas/ids/1/versions").await;
    assert_eq!(
        reply.body,
        json!([{ "subject": "a", "version": 1 }, { "subject": "c", "version": 1 }])
    );
    assert_eq!(sr.get("/subjects").await.body, json!(["a", "b", "c"]));
    assert_eq!(sr.get("/subjects?subjectPrefix=b").await.body, json!(["b"]));
    sr.shutdown().await;
}

#[tokio::test]
async fn ids_are_assigned_in_order_and_never_reused_after_deletes() {
    let sr = TestRegistry::start().await;
    assert_eq!(sr.register("keep", &order_v1()).await, 1);
    let doomed = record_schema("Doomed", r#"[{"name":"x","type":"int"}]"#);
    assert_eq!(sr.register("doomed", &doomed).await, 2);
    assert_ok(&sr.delete("/subjects/doomed").await);
    assert_ok(&sr.delete("/subjects/doomed?permanent=true").await);
    assert_error(&sr.get("/schemas/ids/2").await, 404, 40403);

    let fresh = record_schema("Fresh", r#"[{"name":"y","type":"int"}]"#);
    assert_eq!(sr.register("fresh", &fresh).await, 3, "id 2 is not handed out again");
    // The very same schema as before keeps its old id, as in Confluent.
    assert_eq!(sr.register("doomed", &doomed).await, 2);
    assert_eq!(sr.get("/subjects/doomed/versions").await.body, json!([1]));
    sr.shutdown().await;
}

#[tokio::test]
async fn lookup_finds_a_registered_schema_and_reports_unknown_subjects_and_schemas() {
    let sr = TestRegistry::start().await;
    sr.register("s", &order_v1()).await;
    sr.register("s", &order_v2()).await;

    let reply = sr
        .post(
            "/subjects/s?normalize=False&deleted=False",
            &json!({ "schema": order_v1() }),
        )
        .await;
    assert_ok(&reply);
    assert_eq!(
        reply.body,
        json!({ "subject": "s", "version": 1, "id": 1, "schema": order_v1() })
    );

    let other = record_schema("Other", r#"[{"name":"x","type":"int"}]"#);
    assert_error(&sr.post("/subjects/s", &json!({ "schema": other })).await, 404, 40403);
    assert_error(
        &sr.post("/subjects/nope", &json!({ "schema": order_v1() })).await,
        404,
        40401,
    );
    sr.shutdown().await;
}

#[tokio::test]
async fn an_incompatible_schema_is_refused_with_409_and_compatibility_checks_say_why() {
    let sr = TestRegistry::start().await;
    sr.register("s", &order_v1()).await;

    let reply = sr
        .post("/subjects/s/versions", &json!({ "schema": order_incompatible() }))
        .await;
    assert_error(&reply, 409, 409);
    assert_eq!(sr.get("/subjects/s/versions").await.body, json!([1]));

    for path in [
        "/compatibility/subjects/s/versions/latest",
        "/compatibility/subjects/s/versions/1",
        "/compatibility/subjects/s/versions",
    ] {
        let reply = sr.post(path, &json!({ "schema": order_incompatible() })).await;
        assert_ok(&reply);
        assert_eq!(reply.body, json!({ "is_compatible": false }), "{path}");

        let reply = sr
            .post(
                &format!("{path}?verbose=true"),
                &json!({ "schema": order_incompatible() }),
            )
            .await;
        assert_ok(&reply);
        assert_eq!(reply.body["is_compatible"], json!(false));
        assert!(
            reply.body["messages"].as_array().is_some_and(|m| !m.is_empty()),
            "{reply:?}"
        );

        let reply = sr.post(path, &json!({ "schema": order_v2() })).await;
        assert_ok(&reply);
        assert_eq!(reply.body, json!({ "is_compatible": true }), "{path}");
    }

    assert_error(
        &sr.post("/compatibility/subjects/s/versions/7", &json!({ "schema": order_v2() }))
            .await,
        404,
        40402,
    );
    assert_error(
        &sr.post(
            "/compatibility/subjects/s/versions/first",
            &json!({ "schema": order_v2() }),
        )
        .await,
        422,
        42202,
    );
    // Nothing to be incompatible with yet.
    let reply = sr
        .post(
            "/compatibility/subjects/new/versions/latest",
            &json!({ "schema": order_v1() }),
        )
        .await;
    assert_eq!(reply.body, json!({ "is_compatible": true }));

    assert_eq!(sr.register("s", &order_v2()).await, 2);
    sr.shutdown().await;
}

#[tokio::test]
async fn compatibility_levels_are_set_read_and_deleted_globally_and_per_subject() {
    let sr = TestRegistry::start().await;
    let reply = sr.get("/config").await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!({ "compatibilityLevel": "BACKWARD" }));

    let reply = sr.put("/config", &json!({ "compatibility": "FULL_TRANSITIVE" })).await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!({ "compatibility": "FULL_TRANSITIVE" }));
    assert_eq!(
        sr.get("/config").await.body,
        json!({ "compatibilityLevel": "FULL_TRANSITIVE" })
    );

    assert_error(&sr.get("/config/s").await, 404, 40408);
    assert_eq!(
        sr.get("/config/s?defaultToGlobal=true").await.body,
        json!({ "compatibilityLevel": "FULL_TRANSITIVE" })
    );

    sr.register("s", &order_v1()).await;
    assert_error(
        &sr.post("/subjects/s/versions", &json!({ "schema": order_incompatible() }))
            .await,
        409,
        409,
    );
    let reply = sr.put("/config/s", &json!({ "compatibility": "none" })).await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!({ "compatibility": "NONE" }));
    assert_eq!(sr.get("/config/s").await.body, json!({ "compatibilityLevel": "NONE" }));
    assert_eq!(sr.register("s", &order_incompatible()).await, 2);

    let reply = sr.delete("/config/s").await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!({ "compatibilityLevel": "NONE" }));
    assert_error(&sr.get("/config/s").await, 404, 40408);
    assert_error(&sr.delete("/config/s").await, 404, 40408);

    assert_error(
        &sr.put("/config", &json!({ "compatibility": "SIDEWAYS" })).await,
        422,
        42203,
    );
    assert_error(
        &sr.put("/config/s", &json!({ "compatibility": "SIDEWAYS" })).await,
        422,
        42203,
    );
    assert_error(&sr.put("/config", &json!({})).await, 422, 42203);

    let reply = sr.delete("/config").await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!({ "compatibilityLevel": "FULL_TRANSITIVE" }));
    assert_eq!(
        sr.get("/config").await.body,
        json!({ "compatibilityLevel": "BACKWARD" })
    );
    assert_eq!(sr.get("/mode").await.body, json!({ "mode": "READWRITE" }));
    sr.shutdown().await;
}

#[tokio::test]
async fn soft_deleted_versions_leave_listings_but_their_ids_still_resolve() {
    let sr = TestRegistry::start().await;
    sr.register("s", &order_v1()).await;
    sr.register("s", &order_v2()).await;

    let reply = sr.delete("/subjects/s/versions/1").await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!(1));
    assert_eq!(sr.get("/subjects/s/versions").await.body, json!([2]));
    assert_eq!(sr.get("/subjects/s/versions?deleted=true").await.body, json!([1, 2]));
    assert_error(&sr.get("/subjects/s/versions/1").await, 404, 40402);
    let reply = sr.get("/subjects/s/versions/1?deleted=true").await;
    assert_ok(&reply);
    assert_eq!(reply.body["id"], json!(1));

    // The id of a soft-deleted version still resolves: old messages stay readable.
    let reply = sr.get("/schemas/ids/1").await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!({ "schema": order_v1() }));
    assert_eq!(sr.get("/schemas/ids/1/versions").await.body, json!([]));
    assert_eq!(
        sr.get("/schemas/ids/1/versions?deleted=true").await.body,
        json!([{ "subject": "s", "version": 1 }])
    );

    assert_error(&sr.delete("/subjects/s/versions/1").await, 404, 40406);
    assert_error(&sr.delete("/subjects/s/versions/2?permanent=true").await, 404, 40407);
    assert_error(&sr.delete("/subjects/s/versions/9").await, 404, 40402);
    let reply = sr.delete("/subjects/s/versions/1?permanent=true").await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!(1));
    assert_eq!(sr.get("/subjects/s/versions?deleted=true").await.body, json!([2]));
    assert_error(&sr.get("/schemas/ids/1").await, 404, 40403);

    let reply = sr.delete("/subjects/s/versions/latest").await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!(2));
    assert_error(&sr.get("/subjects/s/versions").await, 404, 40401);
    sr.shutdown().await;
}

#[tokio::test]
async fn deleting_a_subject_is_soft_first_and_permanent_only_after() {
    let sr = TestRegistry::start().await;
    sr.register("s", &order_v1()).await;
    sr.register("s", &order_v2()).await;

    assert_error(&sr.delete("/subjects/s?permanent=true").await, 404, 40405);
    let reply = sr.delete("/subjects/s").await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!([1, 2]));
    assert_eq!(sr.get("/subjects").await.body, json!([]));
    assert_eq!(sr.get("/subjects?deleted=true").await.body, json!(["s"]));
    assert_eq!(sr.get("/subjects?deletedOnly=true").await.body, json!(["s"]));
    assert_error(&sr.get("/subjects/s/versions").await, 404, 40401);
    assert_error(&sr.get("/subjects/s/versions/latest").await, 404, 40401);
    assert_ok(&sr.get("/schemas/ids/2").await);
    assert_error(&sr.delete("/subjects/s").await, 404, 40404);

    let reply = sr.delete("/subjects/s?permanent=true").await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!([1, 2]));
    assert_eq!(sr.get("/subjects?deleted=true").await.body, json!([]));
    assert_error(&sr.get("/schemas/ids/2").await, 404, 40403);
    assert_error(&sr.delete("/subjects/s").await, 404, 40401);
    sr.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_confluent_shaped_4xx_errors_and_never_a_500() {
    let sr = TestRegistry::start().await;
    sr.register("s", &order_v1()).await;
    let vnd = Some("application/vnd.schemaregistry.v1+json");

    let malformed = sr
        .send(
            Method::POST,
            "/subjects/s/versions",
            vnd,
            Some(b"{\"schema\": ".to_vec()),
        )
        .await;
    assert_error(&malformed, 400, 400);
    assert_error(
        &sr.post("/subjects/s/versions", &json!({ "schemaType": "AVRO" })).await,
        422,
        42201,
    );
    assert_error(
        &sr.post("/subjects/s/versions", &json!({ "schema": 5 })).await,
        422,
        422,
    );
    assert_error(
        &sr.post("/subjects/s/versions", &json!({ "schema": "{\"type\":\"record\"}" }))
            .await,
        422,
        42201,
    );
    assert_error(
        &sr.post("/subjects/s/versions", &json!({ "schema": "not json at all" }))
            .await,
        422,
        42201,
    );
    assert_error(
        &sr.post(
            "/subjects/s/versions",
            &json!({ "schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF" }),
        )
        .await,
        422,
        42201,
    );
    assert_error(
        &sr.post(
            "/subjects/s/versions",
            &json!({ "schema": order_v2(), "references": [{ "name": "x", "subject": "y", "version": 1 }] }),
        )
        .await,
        422,
        42201,
    );
    assert_error(
        &sr.send(
            Method::POST,
            "/subjects/s/versions",
            Some("text/plain"),
            Some(json!({ "schema": order_v1() }).to_string().into_bytes()),
        )
        .await,
        415,
        415,
    );

    assert_error(&sr.get("/subjects/nope/versions").await, 404, 40401);
    assert_error(&sr.get("/subjects/nope/versions/1").await, 404, 40401);
    assert_error(&sr.get("/subjects/s/versions/2").await, 404, 40402);
    assert_error(&sr.get("/subjects/s/versions/2/schema").await, 404, 40402);
    for bad in ["abc", "0", "-2", "1.5", "99999999999"] {
        assert_error(&sr.get(&format!("/subjects/s/versions/{bad}")).await, 422, 42202);
    }
    assert_error(&sr.delete("/subjects/s/versions/abc").await, 422, 42202);
    assert_error(&sr.get("/schemas/ids/42").await, 404, 40403);
    assert_error(&sr.get("/schemas/ids/42/schema").await, 404, 40403);
    assert_error(&sr.get("/schemas/ids/42/versions").await, 404, 40403);
    assert_error(&sr.get("/schemas/ids/not-a-number").await, 404, 404);
    assert_error(&sr.get("/no/such/endpoint").await, 404, 404);
    assert_error(&sr.send(Method::PATCH, "/subjects", None, None).await, 405, 405);
    // After all that, the registry still works.
    assert_eq!(sr.register("s", &order_v2()).await, 2);
    sr.shutdown().await;
}

#[tokio::test]
async fn json_octet_stream_and_missing_content_types_are_accepted() {
    let sr = TestRegistry::start().await;
    let body = json!({ "schema": order_v1() }).to_string().into_bytes();
    for content_type in [
        Some("application/json"),
        Some("application/octet-stream"),
        Some("application/vnd.schemaregistry+json"),
        None,
    ] {
        let reply = sr
            .send(Method::POST, "/subjects/s/versions", content_type, Some(body.clone()))
            .await;
        assert_ok(&reply);
        assert_eq!(reply.body, json!({ "id": 1 }), "{content_type:?}");
    }
    sr.shutdown().await;
}

#[tokio::test]
async fn root_health_and_url_encoded_subjects_work() {
    let sr = TestRegistry::start().await;
    let reply = sr.get("/").await;
    assert_ok(&reply);
    assert_eq!(reply.body, json!({}));
    assert_ok(&sr.get("/health").await);

    let id = sr.register("team%2Forders-value", &order_v1()).await;
    assert_eq!(sr.get("/subjects").await.body, json!(["team/orders-value"]));
    let reply = sr.get("/subjects/team%2Forders-value/versions/latest").await;
    assert_ok(&reply);
    assert_eq!(reply.body["subject"], json!("team/orders-value"));
    assert_eq!(reply.body["id"], json!(id));
    sr.shutdown().await;
}
