//! `sagactl outbox`: the outbox rows a service's relay parked because retrying could not
//! publish them, listed and redriven through the service's admin routes.

use anyhow::{bail, Context};
use saga_common::auth::Scope;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::endpoints::Endpoints;

/// Prints every parked row of `service` with its reason; the count last.
pub(crate) async fn parked(endpoints: &Endpoints, service: &str) -> anyhow::Result<()> {
    let base = endpoints.of(service)?;
    let response = endpoints
        .authorize(
            reqwest::Client::new().get(format!("{base}/admin/outbox/parked")),
            Scope::Admin,
        )
        .send()
        .await
        .with_context(|| format!("asking {service} at {base} for its parked outbox rows"))?;
    let rows: Vec<Value> = checked(service, response).await?.json().await?;
    for row in &rows {
        println!(
            "{}  {}  order {}  parked {}  reason: {}",
            row["event_id"].as_str().unwrap_or_default(),
            row["event_type"].as_str().unwrap_or_default(),
            row["partition_key"].as_str().unwrap_or_default(),
            row["parked_at"].as_str().unwrap_or_default(),
            row["reason"].as_str().unwrap_or_default(),
        );
    }
    println!("{} parked outbox row(s) in {service}", rows.len());
    Ok(())
}

/// Moves parked rows of `service` back to the end of its outbox: those in `event_ids`, or all.
pub(crate) async fn redrive(endpoints: &Endpoints, service: &str, event_ids: &[Uuid]) -> anyhow::Result<()> {
    let base = endpoints.of(service)?;
    let body = if event_ids.is_empty() {
        json!({})
    } else {
        json!({ "event_ids": event_ids })
    };
    let response = endpoints
        .authorize(
            reqwest::Client::new().post(format!("{base}/admin/outbox/parked/redrive")),
            Scope::Admin,
        )
        .json(&body)
        .send()
        .await
        .with_context(|| format!("asking {service} at {base} to redrive parked outbox rows"))?;
    let answer: Value = checked(service, response).await?.json().await?;
    let moved = answer["redriven"].as_array().cloned().unwrap_or_default();
    for event_id in &moved {
        println!("redriven {}", event_id.as_str().unwrap_or_default());
    }
    println!("{} row(s) back in the outbox of {service}", moved.len());
    if !event_ids.is_empty() && moved.len() < event_ids.len() {
        bail!(
            "{} of the given event ids were not parked in {service}",
            event_ids.len() - moved.len()
        );
    }
    Ok(())
}

async fn checked(service: &str, response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    let hint = crate::endpoints::credential_hint(status, Scope::Admin);
    bail!("{service} answered {status}: {body}{hint}")
}
