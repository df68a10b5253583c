//! Watching the system: waiting for quiescence (every order decided, every outbox empty, every
//! consumer group at the end of its topics, every charge settled, every email sent), then reading the state the
//! invariants are checked against from the databases, the SMTP server and the dead-letter topics.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use saga_common::kafka;
use saga_contracts::Topic;
use serde_json::Value;
use sqlx::{PgPool, Row};

use super::cluster::ClusterView;
use super::state::{
    DeadLetterRecord, EmailRecord, OrderRecord, PaymentRecord, RecordPosition, ReservationRecord, StockRecord,
    SystemState,
};
use crate::TopicReader;

/// Which topics each service's consumer group reads.
pub fn consumed_topics(service: &str) -> Vec<Topic> {
    match service {
        "order-service" => vec![Topic::Payments, Topic::Inventory],
        _ => vec![Topic::Orders],
    }
}

/// Connection pools to the services' databases.
pub struct Databases {
    pools: BTreeMap<String, PgPool>,
}

impl Databases {
    /// Connects to every service database of `cluster`.
    pub async fn connect(cluster: &ClusterView) -> anyhow::Result<Self> {
        let mut pools = BTreeMap::new();
        for (service, url) in &cluster.databases {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect(url)
                .await?;
            pools.insert(service.clone(), pool);
        }
        Ok(Self { pools })
    }

    fn pool(&self, service: &str) -> anyhow::Result<&PgPool> {
        self.pools
            .get(service)
            .ok_or_else(|| anyhow::anyhow!("no database for {service}"))
    }
}

/// What still keeps the system busy; empty when it is quiet.
pub async fn busy(cluster: &ClusterView, databases: &Databases, placed: &[String]) -> anyhow::Result<Vec<String>> {
    let mut reasons = Vec::new();
    let orders = databases.pool("order-service")?;
    let decided: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE status <> 'PENDING' AND order_id::text = ANY($1)")
            .bind(placed)
            .fetch_one(orders)
            .await?;
    if decided < placed.len() as i64 {
        reasons.push(format!(
            "{} of {} orders undecided",
            placed.len() as i64 - decided,
            placed.len()
        ));
    }
    for service in cluster.databases.keys() {
        let pending = saga_common::outbox::pending(databases.pool(service)?).await?;
        if pending > 0 {
            reasons.push(format!("{service}: {pending} events in the outbox"));
        }
    }
    let charging: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE status = 'pending'")
        .fetch_one(databases.pool("payment-service")?)
        .await?;
    if charging > 0 {
        reasons.push(format!("{charging} payments still being charged"));
    }
    let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications WHERE status <> 'sent'")
        .fetch_one(databases.pool("notification-service")?)
        .await?;
    if unsent > 0 {
        reasons.push(format!("{unsent} emails not sent"));
    }
    let kafka = cluster.kafka.clone();
    for service in cluster.databases.keys() {
        let lag = group_position(&kafka, service, &consumed_topics(service)).await?.lag;
        if lag > 0 {
            reasons.push(format!("{service}: consumer lag {lag}"));
        }
    }
    Ok(reasons)
}

/// Where a consumer group stands on its topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupPosition {
    /// Sum of the committed offsets over every partition (grows as the group makes progress).
    pub committed: i64,
    /// Records not yet committed.
    pub lag: i64,
}

/// Where the consumer group `group` stands on `topics`.
pub async fn group_position(
    kafka: &saga_common::config::KafkaConfig,
    group: &str,
    topics: &[Topic],
) -> anyhow::Result<GroupPosition> {
    let probe: StreamConsumer = kafka::consumer(kafka, group)?;
    let names: Vec<String> = topics.iter().map(|t| kafka.topic(*t)).collect();
    tokio::task::spawn_blocking(move || {
        let mut position = GroupPosition { committed: 0, lag: 0 };
        for topic in &names {
            let metadata = probe.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            let partitions = metadata.topics().first().map(|t| t.partitions().len()).unwrap_or(0) as i32;
            let mut list = TopicPartitionList::new();
            for partition in 0..partitions {
                list.add_partition(topic, partition);
            }
            let committed = probe.committed_offsets(list, Duration::from_secs(10))?;
            for partition in 0..partitions {
                let (low, high) = probe.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
                let committed = match committed.find_partition(topic, partition).map(|p| p.offset()) {
                    Some(Offset::Offset(offset)) => offset,
                    _ => low,
                };
                position.committed += committed;
                position.lag += (high - committed).max(0);
            }
        }
        Ok::<GroupPosition, anyhow::Error>(position)
    })
    .await?
}

/// Waits until [`busy`] reports nothing twice in a row, one second apart. Returns how long that
/// took, or the last reasons if `timeout` passes first.
pub async fn wait_for_quiescence(
    cluster: &ClusterView,
    databases: &Databases,
    placed: &[String],
    timeout: Duration,
) -> Result<Duration, Vec<String>> {
    let started = tokio::time::Instant::now();
    let mut quiet_checks = 0;
    let mut last = Vec::new();
    while started.elapsed() < timeout {
        match busy(cluster, databases, placed).await {
            Ok(reasons) if reasons.is_empty() => {
                quiet_checks += 1;
                if quiet_checks == 2 {
                    return Ok(started.elapsed());
                }
            }
            Ok(reasons) => {
                quiet_checks = 0;
                last = reasons;
            }
            Err(error) => {
                quiet_checks = 0;
                last = vec![format!("could not observe: {error:#}")];
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(last)
}

fn lines(items: &Value) -> Vec<(String, i64)> {
    items
        .as_array()
        .into_iter()
        .flatten()
        .map(|line| {
            (
                line["sku"].as_str().unwrap_or_default().to_string(),
                line["quantity"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

/// Reads everything the invariants need.
pub async fn snapshot(
    cluster: &ClusterView,
    databases: &Databases,
    placed: &[String],
    email_domain: &str,
    maildev_url: &str,
) -> anyhow::Result<SystemState> {
    let mut state = SystemState {
        placed_orders: placed.to_vec(),
        ..SystemState::default()
    };
    for row in sqlx::query(
        "SELECT order_id::text AS order_id, status, failure_reason, total_minor, customer_email, items FROM orders",
    )
    .fetch_all(databases.pool("order-service")?)
    .await?
    {
        let order_id: String = row.try_get("order_id")?;
        state.orders.insert(
            order_id.clone(),
            OrderRecord {
                order_id,
                status: row.try_get("status")?,
                failure_reason: row.try_get("failure_reason")?,
                total_minor: row.try_get("total_minor")?,
                customer_email: row.try_get("customer_email")?,
                items: lines(&row.try_get::<Value, _>("items")?),
            },
        );
    }
    for row in sqlx::query("SELECT order_id::text AS order_id, status, amount_minor, refunded_minor FROM payments")
        .fetch_all(databases.pool("payment-service")?)
        .await?
    {
        let order_id: String = row.try_get("order_id")?;
        state.payments.insert(
            order_id.clone(),
            PaymentRecord {
                order_id,
                status: row.try_get("status")?,
                amount_minor: row.try_get("amount_minor")?,
                refunded_minor: row.try_get("refunded_minor")?,
            },
        );
    }
    let inventory = databases.pool("inventory-service")?;
    for row in sqlx::query("SELECT order_id::text AS order_id, status, items FROM reservations")
        .fetch_all(inventory)
        .await?
    {
        let order_id: String = row.try_get("order_id")?;
        state.reservations.insert(
            order_id.clone(),
            ReservationRecord {
                order_id,
                status: row.try_get("status")?,
                items: lines(&row.try_get::<Value, _>("items")?),
            },
        );
    }
    for row in sqlx::query(
        "SELECT s.sku, s.available, s.reserved, s.committed, \
         COALESCE((SELECT sum(a.delta) FROM stock_adjustments a WHERE a.sku = s.sku), 0)::bigint AS adjustments \
         FROM stock s",
    )
    .fetch_all(inventory)
    .await?
    {
        state.stock.insert(
            row.try_get("sku")?,
            StockRecord {
                available: row.try_get("available")?,
                reserved: row.try_get("reserved")?,
                committed: row.try_get("committed")?,
                adjustments: row.try_get("adjustments")?,
            },
        );
    }
    let mails: Vec<Value> = reqwest::get(format!("{maildev_url}/email")).await?.json().await?;
    for mail in mails {
        for to in mail["to"].as_array().into_iter().flatten() {
            let address = to["address"].as_str().unwrap_or_default();
            if address.ends_with(email_domain) {
                state.emails.push(EmailRecord {
                    to: address.to_string(),
                    message_id: mail["headers"]["message-id"].as_str().unwrap_or_default().to_string(),
                    subject: mail["subject"].as_str().unwrap_or_default().to_string(),
                });
            }
        }
    }
    let (kafka, registry) = (cluster.kafka.clone(), cluster.registry.clone());
    for service in cluster.databases.keys() {
        let topic = kafka.dead_letter_topic(service);
        for record in TopicReader::new(&kafka, &registry, &topic)?
            .read_raw_to_end(Duration::from_secs(60))
            .await?
        {
            let header = |name: &str| {
                record
                    .headers
                    .iter()
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
                    .unwrap_or_default()
            };
            state.dead_letters.push(DeadLetterRecord {
                dead_letter_topic: topic.clone(),
                origin: RecordPosition {
                    topic: header("dlq.origin.topic"),
                    partition: header("dlq.origin.partition").parse().unwrap_or(-1),
                    offset: header("dlq.origin.offset").parse().unwrap_or(-1),
                },
                error: header("dlq.error"),
            });
        }
    }
    Ok(state)
}
