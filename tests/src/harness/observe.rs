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

/// What keeps the system busy, and where every service's consumer group stands.
#[derive(Debug, Clone, Default)]
pub struct Busy {
    /// Why the system is not quiet; empty when it is.
    pub reasons: Vec<String>,
    /// Each service's consumer group's position, by service.
    pub groups: BTreeMap<String, GroupPosition>,
}

/// What still keeps the system busy; no reasons when it is quiet.
pub async fn busy(cluster: &ClusterView, databases: &Databases, placed: &[String]) -> anyhow::Result<Busy> {
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
    let charging: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE status IN ('pending', 'refunding')")
        .fetch_one(databases.pool("payment-service")?)
        .await?;
    if charging > 0 {
        reasons.push(format!("{charging} payments still being charged or refunded"));
    }
    // Emails set aside as failed (a recipient rejected for good) are settled, not in progress;
    // the invariants judge them.
    let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications WHERE status = 'pending'")
        .fetch_one(databases.pool("notification-service")?)
        .await?;
    if unsent > 0 {
        reasons.push(format!("{unsent} emails not sent yet"));
    }
    let kafka = cluster.kafka.clone();
    let mut groups = BTreeMap::new();
    for service in cluster.databases.keys() {
        let position = group_position(&kafka, &kafka.prefixed(service), &consumed_topics(service)).await?;
        if position.lag > 0 {
            reasons.push(format!("{service}: consumer lag {}", position.lag));
        }
        groups.insert(service.clone(), position);
    }
    Ok(Busy { reasons, groups })
}

/// Where a consumer group stands on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPosition {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// The group's committed offset (the partition's start if it committed none).
    pub committed: i64,
    /// The partition's end (high watermark).
    pub end: i64,
}

impl PartitionPosition {
    /// Records the group has not committed yet.
    pub fn lag(&self) -> i64 {
        (self.end - self.committed).max(0)
    }
}

/// Where a consumer group stands on its topics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupPosition {
    /// The group's id.
    pub group: String,
    /// Sum of the committed offsets over every partition (grows as the group makes progress).
    pub committed: i64,
    /// Records not yet committed.
    pub lag: i64,
    /// Every partition it reads.
    pub partitions: Vec<PartitionPosition>,
}

impl GroupPosition {
    /// The partitions with lag, as `topic[partition] lag n (committed c of end e)`.
    pub fn lagging_partitions(&self) -> Vec<String> {
        self.partitions
            .iter()
            .filter(|p| p.lag() > 0)
            .map(|p| {
                format!(
                    "{}[{}] lag {} (committed {} of {})",
                    p.topic,
                    p.partition,
                    p.lag(),
                    p.committed,
                    p.end
                )
            })
            .collect()
    }
}

/// Where the consumer group `group` stands on `topics`.
pub async fn group_position(
    kafka: &saga_common::config::KafkaConfig,
    group: &str,
    topics: &[Topic],
) -> anyhow::Result<GroupPosition> {
    let probe: StreamConsumer = kafka::consumer(kafka, group)?;
    let names: Vec<String> = topics.iter().map(|t| kafka.topic(*t)).collect();
    let group = group.to_string();
    tokio::task::spawn_blocking(move || {
        let mut position = GroupPosition {
            group,
            ..GroupPosition::default()
        };
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
                let partition = PartitionPosition {
                    topic: topic.clone(),
                    partition,
                    committed,
                    end: high,
                };
                position.committed += committed;
                position.lag += partition.lag();
                position.partitions.push(partition);
            }
        }
        Ok::<GroupPosition, anyhow::Error>(position)
    })
    .await?
}

/// Why the system did not go quiet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotQuiet {
    /// `timeout` passed; what was still busy at the last check.
    TimedOut(Vec<String>),
    /// Consumer groups had lag and committed nothing for the stall limit; one line per group.
    Stalled(Vec<String>),
}

/// Watches consumer groups for a stall: lag, and committed offsets that do not move.
#[derive(Debug)]
pub struct StallWatch {
    limit: Duration,
    /// Per group: its committed offsets when they last moved (or it had no lag), and since when.
    progress: BTreeMap<String, (i64, tokio::time::Instant)>,
}

impl StallWatch {
    /// A watch that calls a group stalled after `limit` with lag and no commit.
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            progress: BTreeMap::new(),
        }
    }

    /// Takes in the groups' positions seen at `now`; returns a line per stalled group naming it,
    /// its lag and its lagging partitions.
    pub fn observe(&mut self, groups: &BTreeMap<String, GroupPosition>, now: tokio::time::Instant) -> Vec<String> {
        let mut stalled = Vec::new();
        for position in groups.values() {
            let seen = self
                .progress
                .entry(position.group.clone())
                .or_insert((position.committed, now));
            if position.lag == 0 || position.committed != seen.0 {
                *seen = (position.committed, now);
            } else if now.duration_since(seen.1) >= self.limit {
                stalled.push(format!(
                    "consumer group {} stalled: lag {}, committed offsets unchanged for {} s: {}",
                    position.group,
                    position.lag,
                    now.duration_since(seen.1).as_secs(),
                    position.lagging_partitions().join(", ")
                ));
            }
        }
        stalled
    }
}

/// Waits until [`busy`] reports nothing twice in a row, one second apart. Returns how long that
/// took; or, if `timeout` passes first, the last reasons; or, as soon as a consumer group has had
/// lag without committing anything for `stall_limit`, the stalled groups.
pub async fn wait_for_quiescence(
    cluster: &ClusterView,
    databases: &Databases,
    placed: &[String],
    timeout: Duration,
    stall_limit: Duration,
) -> Result<Duration, NotQuiet> {
    let started = tokio::time::Instant::now();
    let mut quiet_checks = 0;
    let mut last = Vec::new();
    let mut stalls = StallWatch::new(stall_limit);
    while started.elapsed() < timeout {
        match busy(cluster, databases, placed).await {
            Ok(busy) if busy.reasons.is_empty() => {
                quiet_checks += 1;
                if quiet_checks == 2 {
                    return Ok(started.elapsed());
                }
            }
            Ok(busy) => {
                quiet_checks = 0;
                let stalled = stalls.observe(&busy.groups, tokio::time::Instant::now());
                if !stalled.is_empty() {
                    return Err(NotQuiet::Stalled(stalled));
                }
                last = busy.reasons;
            }
            Err(error) => {
                quiet_checks = 0;
                last = vec![format!("could not observe: {error:#}")];
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(NotQuiet::TimedOut(last))
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

/// Outbox rows a relay parked because retrying could not publish them, one line per service
/// that has any, with the first reason. A parked row is an event the saga never saw, so any
/// fails the run.
pub async fn parked_outbox_rows(cluster: &ClusterView, databases: &Databases) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for service in cluster.databases.keys() {
        let parked = saga_common::outbox::list_parked(databases.pool(service)?).await?;
        if let Some(first) = parked.first() {
            lines.push(format!(
                "{service}: {} outbox row(s) parked, the first ({} {}) because {}",
                parked.len(),
                first.event_type,
                first.event_id,
                first.reason
            ));
        }
    }
    Ok(lines)
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
    let payments: Vec<PaymentRecord> =
        sqlx::query_as("SELECT order_id::text AS order_id, status, amount_minor, refunded_minor FROM payments")
            .fetch_all(databases.pool("payment-service")?)
            .await?;
    for payment in payments {
        state.payments.insert(payment.order_id.clone(), payment);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn position(group: &str, committed: &[i64], end: &[i64]) -> GroupPosition {
        let partitions: Vec<PartitionPosition> = committed
            .iter()
            .zip(end)
            .enumerate()
            .map(|(partition, (committed, end))| PartitionPosition {
                topic: "h1.orders".into(),
                partition: partition as i32,
                committed: *committed,
                end: *end,
            })
            .collect();
        GroupPosition {
            group: group.into(),
            committed: partitions.iter().map(|p| p.committed).sum(),
            lag: partitions.iter().map(PartitionPosition::lag).sum(),
            partitions,
        }
    }

    fn groups(positions: &[GroupPosition]) -> BTreeMap<String, GroupPosition> {
        positions.iter().map(|p| (p.group.clone(), p.clone())).collect()
    }

    #[test]
    fn a_group_with_lag_that_commits_nothing_for_the_limit_is_stalled_with_its_partitions() {
        let start = tokio::time::Instant::now();
        let mut watch = StallWatch::new(Duration::from_secs(60));
        let stuck = groups(&[position("h1.payment-service", &[5, 7], &[5, 10])]);
        assert!(watch.observe(&stuck, start).is_empty());
        assert!(watch.observe(&stuck, start + Duration::from_secs(59)).is_empty());
        let stalled = watch.observe(&stuck, start + Duration::from_secs(60));
        assert_eq!(
            stalled,
            vec![
                "consumer group h1.payment-service stalled: lag 3, committed offsets unchanged for 60 s: \
                  h1.orders[1] lag 3 (committed 7 of 10)"
                    .to_string()
            ]
        );
    }

    #[test]
    fn a_group_that_commits_or_has_no_lag_is_not_stalled() {
        let start = tokio::time::Instant::now();
        let mut watch = StallWatch::new(Duration::from_secs(60));
        watch.observe(
            &groups(&[position("moving", &[1], &[9]), position("idle", &[4], &[4])]),
            start,
        );
        let later = groups(&[position("moving", &[2], &[9]), position("idle", &[4], &[4])]);
        assert!(watch.observe(&later, start + Duration::from_secs(61)).is_empty());
        assert!(watch.observe(&later, start + Duration::from_secs(120)).is_empty());
        let stalled = watch.observe(&later, start + Duration::from_secs(121));
        assert_eq!(stalled.len(), 1, "{stalled:?}");
        assert!(
            stalled[0].starts_with("consumer group moving stalled: lag 7"),
            "{stalled:?}"
        );
    }
}
