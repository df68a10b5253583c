//! `--verify-replay`: after quiescence, every service is rebuilt from the run's topics into a
//! new database and compared with its live one.

use saga_common::replay::{self, Rebuild, ReplayOptions};
use serde::{Deserialize, Serialize};

use super::cluster::ClusterView;

/// How one service's rebuild went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayCheck {
    /// The service.
    pub service: String,
    /// Records the replay read.
    pub events: u64,
    /// Records per second.
    pub events_per_sec: f64,
    /// Mismatches, unrecorded decisions and events not applied, one line each.
    pub findings: Vec<String>,
    /// Records that did not decode: the poison the run injected.
    pub undecodable: usize,
    /// Differences verify found between the live and the rebuilt database, one line each.
    pub differences: Vec<String>,
}

impl ReplayCheck {
    /// Whether the rebuilt database is the live one and the replay found nothing amiss.
    pub fn passed(&self) -> bool {
        self.findings.is_empty() && self.differences.is_empty()
    }
}

/// The rebuilder of a service, by its name (`order-service`, ...).
fn rebuilder(service: &str) -> Option<Box<dyn Rebuild>> {
    Some(match service {
        "order-service" => Box::new(order_service::replay::Rebuilder::new(
            order_service::DEFAULT_SAGA_DEADLINE,
        )),
        "payment-service" => Box::new(payment_service::replay::rebuilder()),
        "inventory-service" => Box::new(inventory_service::replay::rebuilder()),
        "notification-service" => Box::new(notification_service::replay::rebuilder()),
        _ => return None,
    })
}

/// Rebuilds every service of `view` into `<its database>_rebuilt` and verifies it.
pub async fn rebuild_and_verify(view: &ClusterView) -> anyhow::Result<Vec<ReplayCheck>> {
    let mut checks = Vec::new();
    for (service, live_url) in &view.databases {
        let Some(mut rebuild) = rebuilder(service) else {
            continue;
        };
        let rebuilt_url = format!("{live_url}_rebuilt");
        let report = replay::run(
            rebuild.as_mut(),
            &view.kafka,
            &view.registry,
            &rebuilt_url,
            &ReplayOptions::default(),
            |_| {},
        )
        .await?;
        let live = sqlx::PgPool::connect(live_url).await?;
        let rebuilt = sqlx::PgPool::connect(&rebuilt_url).await?;
        let differences = replay::verify(rebuild.tables(), &live, &rebuilt).await?;
        checks.push(ReplayCheck {
            service: service.clone(),
            events: report.read,
            events_per_sec: report.rate(),
            findings: report
                .findings
                .iter()
                .filter(|finding| finding.kind != "undecodable")
                .map(|finding| {
                    format!(
                        "{} {}[{}]@{} {}: {}",
                        finding.kind,
                        finding.topic,
                        finding.partition,
                        finding.offset,
                        finding.order_id.map(|id| id.to_string()).unwrap_or_default(),
                        finding.detail
                    )
                })
                .collect(),
            undecodable: report
                .findings
                .iter()
                .filter(|finding| finding.kind == "undecodable")
                .count(),
            differences: differences
                .iter()
                .map(|difference| {
                    let columns: Vec<String> = difference
                        .columns
                        .iter()
                        .map(|(column, live, rebuilt)| format!("{column} live {live} rebuilt {rebuilt}"))
                        .collect();
                    format!(
                        "{} {} {}: {}",
                        difference.table,
                        difference.key,
                        difference.kind,
                        columns.join(", ")
                    )
                })
                .collect(),
        });
        live.close().await;
        rebuilt.close().await;
    }
    Ok(checks)
}
