//! One order followed through a trace: the four service binaries export their spans over OTLP to
//! a receiver the test stands up, an order is placed and confirmed, and its trace must hold spans
//! from every service, each one reaching the POST /orders request through its parents, with the
//! messaging spans in causal order (publish → consume) and the gateway and SMTP calls in it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use saga_common::config::RegistryUserInfo;
use saga_tests::eventually;
use saga_tests::harness::cluster::{Cluster, ClusterConfig, ClusterSecurity, KafkaSource, SERVICES};
use saga_tests::harness::run::env_or;
use saga_tests::otlp::{OtlpReceiver, ReceivedSpan};

/// OTLP span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

#[tokio::test(flavor = "multi_thread")]
async fn one_order_is_one_trace_across_all_four_services() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let config = ClusterConfig::for_test(
        "tracing",
        KafkaSource::Existing {
            bootstrap_servers: env_or("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            registry_url: env_or("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081"),
            registry_user_info: RegistryUserInfo::from_env().map_err(anyhow::Error::msg)?,
        },
        ClusterSecurity::Plaintext,
    );
    let run_dir = config.run_dir.clone();
    let mut cluster = Cluster::new(config)?;
    for process in cluster.services.values_mut() {
        process.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint);
        // Export each batch after 200 ms instead of 5 s, so the test does not wait long.
        process.set_env("OTEL_BSP_SCHEDULE_DELAY", "200");
    }
    cluster.start_all().await?;
    let checked = follow_one_order(&cluster, &receiver).await;
    cluster.stop_all().await;
    if checked.is_ok() {
        cluster.drop_databases().await?;
        let _ = std::fs::remove_dir_all(&run_dir);
    } else {
        eprintln!("service logs are in {}", run_dir.display());
    }
    checked
}

async fn follow_one_order(cluster: &Cluster, receiver: &OtlpReceiver) -> anyhow::Result<()> {
    let sku = format!("SKU-TRACE-{}", &cluster.config.run_id[..6]);
    cluster.restock(&sku, 5).await?;
    let order_id = cluster.place_one(&sku, "trace@example.com").await?;

    // The order's trace: the one holding the span that placed it.
    let trace_id = eventually(
        "the span placing the order exported",
        Duration::from_secs(30),
        || async {
            receiver
                .spans()
                .into_iter()
                .find(|span| span.service == "order-service" && span.attribute("order_id") == Some(order_id.as_str()))
                .map(|span| span.trace_id)
        },
    )
    .await?;
    // Complete once the email went out and the notification.sent record it caused was published.
    let trace = eventually("the trace up to the email's event", Duration::from_secs(60), || async {
        let trace: Vec<ReceivedSpan> = receiver
            .spans()
            .into_iter()
            .filter(|span| span.trace_id == trace_id)
            .collect();
        let published_email_event = trace.iter().any(|span| {
            span.service == "notification-service"
                && span.kind == PRODUCER
                && span.attribute("event_type") == Some("notification.sent")
        });
        published_email_event.then_some(trace)
    })
    .await?;
    let by_id: BTreeMap<&str, &ReceivedSpan> = trace.iter().map(|span| (span.span_id.as_str(), span)).collect();
    let describe = |span: &ReceivedSpan| format!("{} '{}'", span.service, span.name);
    let ancestry = |span: &ReceivedSpan| -> Vec<&ReceivedSpan> {
        let mut chain = Vec::new();
        let mut parent = span.parent_span_id.as_deref();
        while let Some(id) = parent {
            let Some(next) = by_id.get(id) else { break };
            chain.push(*next);
            parent = next.parent_span_id.as_deref();
        }
        chain
    };

    println!("trace {trace_id} of order {order_id}:\n{}", render_tree(&trace));

    let services: BTreeSet<&str> = trace.iter().map(|span| span.service.as_str()).collect();
    assert_eq!(
        services,
        SERVICES.into_iter().collect(),
        "the services in the order's trace"
    );

    // One root: the request that placed the order, a server span; every span descends from it.
    let roots: Vec<&ReceivedSpan> = trace.iter().filter(|span| span.parent_span_id.is_none()).collect();
    assert_eq!(
        roots.len(),
        1,
        "one root: {:?}",
        roots.iter().map(|s| describe(s)).collect::<Vec<_>>()
    );
    let root = roots[0];
    assert_eq!(
        (root.service.as_str(), root.name.as_str(), root.kind),
        ("order-service", "POST /orders", SERVER)
    );
    assert_eq!(root.attribute("http.response.status_code"), Some("202"));
    for span in &trace {
        if span.span_id != root.span_id {
            let chain = ancestry(span);
            assert_eq!(
                chain.last().map(|s| s.span_id.as_str()),
                Some(root.span_id.as_str()),
                "{} does not reach the POST /orders span through its parents",
                describe(span)
            );
        }
    }

    // Every consumer span is the child of the producer span of the record it processed, in
    // another service (or the order service's own records, which it does not consume).
    let consumers: Vec<&ReceivedSpan> = trace.iter().filter(|span| span.kind == CONSUMER).collect();
    for consumer in &consumers {
        let parent = by_id[consumer.parent_span_id.as_deref().unwrap_or_default()];
        assert_eq!(
            parent.kind,
            PRODUCER,
            "{} is not the child of a publish",
            describe(consumer)
        );
        assert_eq!(
            parent.attribute("messaging.destination.name"),
            consumer.attribute("messaging.destination.name"),
            "{} follows a publish to another topic",
            describe(consumer)
        );
        assert_eq!(consumer.attribute("messaging.system"), Some("kafka"));
        for attribute in [
            "messaging.destination.partition.id",
            "messaging.kafka.offset",
            "messaging.consumer.group.name",
            "messaging.kafka.message.key",
        ] {
            assert!(
                consumer.attribute(attribute).is_some(),
                "{} lacks {attribute}",
                describe(consumer)
            );
        }
        assert_eq!(
            consumer.attribute("messaging.kafka.message.key"),
            Some(order_id.as_str())
        );
    }
    let consumed_by = |service: &str, topic_suffix: &str| {
        consumers.iter().any(|span| {
            span.service == service
                && span
                    .attribute("messaging.destination.name")
                    .is_some_and(|topic| topic.ends_with(topic_suffix))
        })
    };
    assert!(consumed_by("payment-service", ".orders"), "payment consumed the order");
    assert!(
        consumed_by("inventory-service", ".orders"),
        "inventory consumed the order"
    );
    assert!(consumed_by("order-service", ".payments"), "order consumed the payment");
    assert!(
        consumed_by("order-service", ".inventory"),
        "order consumed the reservation"
    );
    assert!(
        consumed_by("notification-service", ".orders"),
        "notification consumed the decision"
    );

    // The gateway charge, under the payment service's handling of order.created.
    let charge = trace
        .iter()
        .find(|span| span.service == "payment-service" && span.kind == CLIENT && span.name == "payment gateway charge")
        .ok_or_else(|| anyhow::anyhow!("no gateway charge span in the trace"))?;
    assert!(
        ancestry(charge)
            .iter()
            .any(|span| span.kind == CONSUMER && span.service == "payment-service"),
        "the charge is not under the payment service's consumer span"
    );

    // The email: under the notification service's consumer of the decision, which descends from
    // the order service's decision, itself caused by what payment and inventory published.
    let email = trace
        .iter()
        .find(|span| span.service == "notification-service" && span.kind == CLIENT && span.name == "smtp send")
        .ok_or_else(|| anyhow::anyhow!("no SMTP span in the trace"))?;
    let mut services_up: Vec<&str> = ancestry(email).iter().map(|span| span.service.as_str()).collect();
    services_up.dedup();
    assert_eq!(services_up.first(), Some(&"notification-service"), "{services_up:?}");
    assert_eq!(services_up.last(), Some(&"order-service"), "{services_up:?}");
    assert!(
        services_up.len() >= 4 && services_up[1] == "order-service",
        "the email's ancestry goes notification → order (decision) → a participant → order: {services_up:?}"
    );
    assert!(
        ["payment-service", "inventory-service"].contains(&services_up[2]),
        "the decision follows a participant's event: {services_up:?}"
    );
    Ok(())
}

/// The trace as an indented tree, children under their parents, for the test's output.
fn render_tree(trace: &[ReceivedSpan]) -> String {
    fn render(trace: &[ReceivedSpan], parent: Option<&str>, depth: usize, out: &mut String) {
        for span in trace.iter().filter(|span| span.parent_span_id.as_deref() == parent) {
            out.push_str(&format!("{}{} [{}]\n", "  ".repeat(depth), span.name, span.service));
            render(trace, Some(&span.span_id), depth + 1, out);
        }
    }
    let mut out = String::new();
    render(trace, None, 0, &mut out);
    out
}
