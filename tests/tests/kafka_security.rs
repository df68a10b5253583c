//! The saga over Apache Kafka with SASL_SSL only: a one-node cluster of the test's own whose one
//! client listener is SASL_SSL (TLS with a CA made for the test by `deploy/kafka/tls.sh`,
//! SCRAM-SHA-512 and PLAIN accounts), the schema registry and the four services logging in with
//! SCRAM over TLS. An order runs end to end; a client logging in with PLAIN is let in; a client
//! with a wrong password, without TLS, or without SASL is refused.

use saga_common::auth::Scope;
use std::time::Duration;

use kafka_security::{KafkaSecurity, SaslMechanism, SecurityProtocol};
use saga_common::config::KafkaConfig;
use saga_common::kafka;
use saga_tests::eventually;
use saga_tests::harness::cluster::{Cluster, ClusterConfig, ClusterSecurity, KafkaSource};
use saga_tests::harness::run::workspace_root;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn the_saga_runs_over_sasl_ssl_and_clients_without_the_right_credentials_or_tls_are_refused() -> anyhow::Result<()>
{
    let mut config = ClusterConfig::for_test(
        "kafka_security",
        KafkaSource::Own {
            nodes: 1,
            node_script: workspace_root().join("deploy/kafka/node.sh"),
        },
        ClusterSecurity::Plaintext,
    );
    let tls_dir = config.run_dir.join("tls");
    let made = std::process::Command::new(workspace_root().join("deploy/kafka/tls.sh"))
        .arg(&tls_dir)
        .status()?;
    anyhow::ensure!(made.success(), "deploy/kafka/tls.sh failed");
    let ca = tls_dir.join("ca.pem").display().to_string();
    let password = uuid::Uuid::new_v4().simple().to_string();
    let client = KafkaSecurity::sasl_ssl(SaslMechanism::ScramSha512, "saga", &password, &ca);
    config.security = ClusterSecurity::SaslSsl {
        tls_dir,
        client: Box::new(client.clone()),
        accounts: vec![format!("saga:{password}")],
        broker_password: uuid::Uuid::new_v4().simple().to_string(),
    };
    let run_dir = config.run_dir.clone();
    let mut cluster = Cluster::new(config)?;
    let started = cluster.start_all().await;
    let checked = match started {
        Ok(()) => check(&cluster, &client, &password, &ca).await,
        Err(error) => Err(error),
    };
    cluster.stop_all().await;
    if checked.is_ok() {
        cluster.drop_databases().await?;
        let _ = std::fs::remove_dir_all(&run_dir);
    } else {
        eprintln!("broker, registry and service logs are in {}", run_dir.display());
    }
    checked
}

async fn check(cluster: &Cluster, client: &KafkaSecurity, password: &str, ca: &str) -> anyhow::Result<()> {
    // The saga end to end, every client of it over SASL_SSL.
    let http = reqwest::Client::new();
    let sku = format!("SKU-SEC-{}", &cluster.config.run_id[..6]);
    cluster.restock(&sku, 3).await?;
    let order_id = cluster.place_one(&sku, "sasl@example.com").await?;
    let get = |url: String| {
        let http = http.clone();
        let request = cluster.api_keys.authorize(http.get(url), Scope::Read);
        async move { request.send().await.ok()?.json::<Value>().await.ok() }
    };
    let order_url = format!("http://{}/orders/{order_id}", cluster.http["order-service"]);
    let order = eventually("the order decided", Duration::from_secs(60), || async {
        get(order_url.clone())
            .await
            .filter(|order| order["status"] != "PENDING")
    })
    .await?;
    assert_eq!(order["status"], "CONFIRMED", "{order}");
    let emails_url = format!(
        "http://{}/notifications/{order_id}",
        cluster.http["notification-service"]
    );
    eventually("the confirmation email sent", Duration::from_secs(60), || async {
        let emails = get(emails_url.clone()).await?;
        emails
            .as_array()?
            .iter()
            .any(|email| email["status"] == "sent")
            .then_some(())
    })
    .await?;

    // Who the brokers let in.
    let bootstrap = cluster.kafka().bootstrap_servers;
    let connects = |security: KafkaSecurity| {
        let config = KafkaConfig {
            security,
            ..KafkaConfig::new(bootstrap.clone())
        };
        async move { kafka::cluster_metadata(&config, Duration::from_secs(8)).await.is_ok() }
    };
    assert!(connects(client.clone()).await, "SCRAM-SHA-512 over TLS is let in");
    assert!(
        connects(KafkaSecurity::sasl_ssl(SaslMechanism::Plain, "saga", password, ca)).await,
        "PLAIN over TLS is let in"
    );
    assert!(
        !connects(KafkaSecurity::sasl_ssl(
            SaslMechanism::ScramSha512,
            "saga",
            "not-the-password",
            ca
        ))
        .await,
        "a wrong password is refused"
    );
    assert!(
        !connects(KafkaSecurity {
            protocol: SecurityProtocol::SaslPlaintext,
            ..client.clone()
        })
        .await,
        "SASL without TLS is refused"
    );
    assert!(!connects(KafkaSecurity::plaintext()).await, "plaintext is refused");
    Ok(())
}
