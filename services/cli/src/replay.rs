//! `sagactl replay` and `sagactl verify`: rebuild one service's state from the topics into an
//! empty database, and compare a rebuilt database with the live one.

use anyhow::{bail, Context};
use saga_common::config::{KafkaConfig, RegistryConfig};
use saga_common::replay::{self, Progress, Rebuild, ReplayOptions};
use saga_contracts::OrderId;

/// The rebuilder of `service` (`order`, `payment`, `inventory`, `notification`, with or without
/// `-service`).
pub(crate) fn rebuilder(service: &str) -> anyhow::Result<Box<dyn Rebuild>> {
    Ok(match service.trim_end_matches("-service") {
        "order" => Box::new(order_service::replay::Rebuilder::new(
            order_service::DEFAULT_SAGA_DEADLINE,
        )),
        "payment" => Box::new(payment_service::replay::rebuilder()),
        "inventory" => Box::new(inventory_service::replay::rebuilder()),
        "notification" => Box::new(notification_service::replay::rebuilder()),
        other => bail!("unknown service {other:?}; one of order, payment, inventory, notification"),
    })
}

/// What `sagactl replay` was asked.
pub(crate) struct ReplayRequest<'a> {
    pub(crate) service: &'a str,
    pub(crate) into: &'a str,
    pub(crate) until: Option<&'a str>,
    pub(crate) order_id: Option<OrderId>,
    pub(crate) batch_size: usize,
}

/// Rebuilds the service into `into`, printing progress; fails if the replay found anything.
pub(crate) async fn replay(
    kafka: &KafkaConfig,
    registry: &RegistryConfig,
    request: &ReplayRequest<'_>,
) -> anyhow::Result<()> {
    let mut rebuild = rebuilder(request.service)?;
    let options = ReplayOptions {
        batch_size: request.batch_size.max(1),
        until_millis: request.until.map(until_millis).transpose()?,
        order_id: request.order_id,
    };
    let report = replay::run(
        rebuild.as_mut(),
        kafka,
        registry,
        request.into,
        &options,
        print_progress,
    )
    .await
    .with_context(|| {
        format!(
            "replaying {} into {}",
            rebuild.spec().name,
            saga_common::config::redact_url(request.into)
        )
    })?;
    println!(
        "{} {}: {} events read in {:.1} s ({:.0} events/s): {} applied, {} duplicates, {} passed over by filters",
        if report.resumed {
            "resumed replay of"
        } else {
            "replay of"
        },
        rebuild.spec().name,
        report.read,
        report.elapsed.as_secs_f64(),
        report.rate(),
        report.applied,
        report.duplicates,
        report.filtered,
    );
    println!(
        "    {:.1} s reading its own topics first; {:.1} s waiting for the broker, {:.1} s for the database",
        report.scanning.as_secs_f64(),
        report.waited_for_records.as_secs_f64(),
        report.waited_for_writes.as_secs_f64(),
    );
    for (topic, read) in &report.per_topic {
        println!("    {topic}: {read} events");
    }
    if report.unconfirmed > 0 {
        println!(
            "    {} re-run decision(s) not yet on the topics (made after the end offsets were taken)",
            report.unconfirmed
        );
    }
    for finding in &report.findings {
        println!(
            "    {}: {}[{}]@{} {} order {}: {}",
            finding.kind,
            finding.topic,
            finding.partition,
            finding.offset,
            finding.event_type.map(|t| t.as_str()).unwrap_or("?"),
            finding.order_id.map(|id| id.to_string()).unwrap_or_default(),
            finding.detail,
        );
        if let (Some(recorded), Some(replayed)) = (&finding.recorded, &finding.replayed) {
            println!("        recorded: {recorded}\n        replayed: {replayed}");
        }
    }
    if !report.findings.is_empty() {
        bail!("the replay found {} difference(s) from the record (listed above, and in the target's replay_findings table)", report.findings.len());
    }
    Ok(())
}

fn print_progress(progress: &Progress) {
    let topics: Vec<String> = progress
        .per_topic
        .iter()
        .map(|(topic, (done, total))| format!("{topic} {done}/{total}"))
        .collect();
    println!(
        "    {}/{} events, {:.0} events/s, {} left; {}",
        progress.done,
        progress.total,
        progress.rate,
        progress
            .eta
            .map(|eta| format!("{} s", eta.as_secs()))
            .unwrap_or_else(|| "?".into()),
        topics.join(", ")
    );
}

/// `--until`: RFC 3339 (`2026-12-02T10:00:00Z`) or Unix milliseconds.
fn until_millis(text: &str) -> anyhow::Result<i64> {
    if let Ok(millis) = text.parse::<i64>() {
        return Ok(millis);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|time| time.timestamp_millis())
        .with_context(|| format!("--until {text:?} is neither RFC 3339 (2026-12-02T10:00:00Z) nor Unix milliseconds"))
}

/// Compares the live database of `service` with `against`; fails, listing every difference,
/// unless they are equal. Rows of orders and SKUs that events past the replay's end offsets
/// touched are not held against the rebuild: the live database saw those events, the rebuilt
/// one did not.
pub(crate) async fn verify(
    kafka: &KafkaConfig,
    registry: &RegistryConfig,
    service: &str,
    live_url: &str,
    against: &str,
) -> anyhow::Result<()> {
    let rebuild = rebuilder(service)?;
    let connect = |url: &str| {
        let url = url.to_owned();
        async move {
            sqlx::PgPool::connect(&url)
                .await
                .with_context(|| format!("connecting to {}", saga_common::config::redact_url(&url)))
        }
    };
    let (live, rebuilt) = (connect(live_url).await?, connect(against).await?);
    let moved_on = replay::moved_on_since(kafka, registry, &rebuilt)
        .await
        .context("reading the topics past the replay's end offsets")?;
    let (moved, differences): (Vec<_>, Vec<_>) = replay::verify_since(rebuild.tables(), &live, &rebuilt, &moved_on)
        .await?
        .into_iter()
        .partition(|difference| difference.moved_on);
    let tables: Vec<&str> = rebuild.tables().iter().map(|table| table.name).collect();
    let since = if moved_on.records == 0 {
        String::new()
    } else {
        format!(
            "; up to the replay's end offsets: {} record(s) since touched {} order(s) and {} SKU(s), {} of their row(s) left out",
            moved_on.records,
            moved_on.orders.len(),
            moved_on.skus.len(),
            moved.len()
        )
    };
    if differences.is_empty() {
        println!("{}: equal ({}){since}", rebuild.spec().name, tables.join(", "));
        return Ok(());
    }
    for difference in &differences {
        match difference.kind {
            "missing" => println!(
                "    {} {}: missing from the rebuilt database",
                difference.table, difference.key
            ),
            "extra" => println!(
                "    {} {}: only in the rebuilt database",
                difference.table, difference.key
            ),
            _ => {
                for (column, live, rebuilt) in &difference.columns {
                    println!(
                        "    {} {}: {column} live {live}, rebuilt {rebuilt}",
                        difference.table, difference.key
                    );
                }
            }
        }
    }
    bail!(
        "{}: {} difference(s) between the live and the rebuilt database{since}",
        rebuild.spec().name,
        differences.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_takes_rfc3339_or_unix_milliseconds() {
        assert_eq!(until_millis("1700000000000").ok(), Some(1_700_000_000_000));
        assert_eq!(until_millis("2023-11-14T22:13:20Z").ok(), Some(1_700_000_000_000));
        assert!(until_millis("yesterday").is_err());
    }
}
