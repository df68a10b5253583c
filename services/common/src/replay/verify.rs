//! Verify: comparing a rebuilt database with the live one, table by table and row by row,
//! every column but the bookkeeping a table declares legitimately different. On a live system
//! the rows of orders and SKUs that events past the replay's end offsets touched are told apart
//! ([`MovedOn`]): the live database saw those events, the rebuilt one did not.

use std::collections::{BTreeMap, HashSet};

use saga_contracts::{OrderId, SagaEvent};
use serde_json::Value;
use sqlx::PgPool;

use super::VerifiedTable;
use crate::Result;

/// A difference between the live and a rebuilt database, as verify reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// The table.
    pub table: &'static str,
    /// The row's key columns and values.
    pub key: Value,
    /// What differs: the row is `missing` from the rebuilt database, `extra` there, or its
    /// `columns` differ.
    pub kind: &'static str,
    /// For `columns`: each differing column with its live and rebuilt value.
    pub columns: Vec<(String, Value, Value)>,
    /// Whether events past the replay's end offsets touched the row's order or SKU: the live
    /// database moved on since, so the difference says nothing about the rebuild.
    pub moved_on: bool,
}

/// The orders and SKUs that events past a replay's end offsets touched.
#[derive(Debug, Default, Clone)]
pub struct MovedOn {
    /// The records past the end offsets.
    pub records: u64,
    /// Their orders.
    pub orders: HashSet<OrderId>,
    /// The SKUs they name (order lines, reservations, stock adjustments).
    pub skus: HashSet<String>,
}

impl MovedOn {
    /// Notes what `event` touched.
    pub fn add(&mut self, event: &SagaEvent) {
        self.records += 1;
        if let Some(order_id) = event.order_id() {
            self.orders.insert(order_id);
        }
        if let Ok(json) = serde_json::to_value(event) {
            collect_skus(&json, &mut self.skus);
        }
    }

    /// Whether `row` (as JSON) belongs to an order or SKU that moved on.
    fn covers(&self, row: &Value) -> bool {
        let order = row
            .get("order_id")
            .and_then(Value::as_str)
            .and_then(|text| text.parse::<uuid::Uuid>().ok())
            .map(OrderId::from);
        let sku = row.get("sku").and_then(Value::as_str);
        order.is_some_and(|order| self.orders.contains(&order)) || sku.is_some_and(|sku| self.skus.contains(sku))
    }
}

fn collect_skus(json: &Value, skus: &mut HashSet<String>) {
    match json {
        Value::Object(fields) => {
            for (name, value) in fields {
                match (name.as_str(), value) {
                    ("sku", Value::String(sku)) => {
                        skus.insert(sku.clone());
                    }
                    _ => collect_skus(value, skus),
                }
            }
        }
        Value::Array(values) => values.iter().for_each(|value| collect_skus(value, skus)),
        _ => {}
    }
}

/// Compares every table of `tables` between `live` and `rebuilt`, row by row by key, every
/// column but the ignored ones. Returns the differences; none means equal.
pub async fn verify(tables: &[VerifiedTable], live: &PgPool, rebuilt: &PgPool) -> Result<Vec<Difference>> {
    verify_since(tables, live, rebuilt, &MovedOn::default()).await
}

/// [`verify`], marking the differences of rows that `moved_on` covers.
pub async fn verify_since(
    tables: &[VerifiedTable],
    live: &PgPool,
    rebuilt: &PgPool,
    moved_on: &MovedOn,
) -> Result<Vec<Difference>> {
    let mut differences = Vec::new();
    for table in tables {
        let (live_rows, rebuilt_rows) = tokio::try_join!(rows_by_key(live, table), rows_by_key(rebuilt, table))?;
        for (key, live_row) in &live_rows {
            match rebuilt_rows.get(key) {
                None => differences.push(Difference {
                    table: table.name,
                    key: key_value(key),
                    kind: "missing",
                    columns: Vec::new(),
                    moved_on: moved_on.covers(live_row),
                }),
                Some(rebuilt_row) if rebuilt_row != live_row => differences.push(Difference {
                    table: table.name,
                    key: key_value(key),
                    kind: "columns",
                    columns: differing_columns(live_row, rebuilt_row),
                    moved_on: moved_on.covers(live_row) || moved_on.covers(rebuilt_row),
                }),
                Some(_) => {}
            }
        }
        for (key, rebuilt_row) in rebuilt_rows.iter().filter(|(key, _)| !live_rows.contains_key(*key)) {
            differences.push(Difference {
                table: table.name,
                key: key_value(key),
                kind: "extra",
                columns: Vec::new(),
                moved_on: moved_on.covers(rebuilt_row),
            });
        }
    }
    Ok(differences)
}

/// Every row of `table` as JSON without its ignored columns, by its key (as JSON text).
async fn rows_by_key(database: &PgPool, table: &VerifiedTable) -> Result<BTreeMap<String, Value>> {
    let rows: Vec<Value> = sqlx::query_scalar(&format!("SELECT to_jsonb(t) FROM {} t", table.name))
        .fetch_all(database)
        .await?;
    let mut by_key = BTreeMap::new();
    for mut row in rows {
        let key: serde_json::Map<String, Value> = table
            .key
            .iter()
            .map(|column| ((*column).to_owned(), row.get(*column).cloned().unwrap_or(Value::Null)))
            .collect();
        if let Some(columns) = row.as_object_mut() {
            for ignored in table.ignored {
                columns.remove(*ignored);
            }
        }
        by_key.insert(Value::Object(key).to_string(), row);
    }
    Ok(by_key)
}

fn key_value(key: &str) -> Value {
    serde_json::from_str(key).unwrap_or(Value::Null)
}

fn differing_columns(live: &Value, rebuilt: &Value) -> Vec<(String, Value, Value)> {
    let empty = serde_json::Map::new();
    let live = live.as_object().unwrap_or(&empty);
    let rebuilt = rebuilt.as_object().unwrap_or(&empty);
    let mut columns: Vec<&String> = live.keys().chain(rebuilt.keys()).collect();
    columns.sort();
    columns.dedup();
    columns
        .into_iter()
        .filter(|column| live.get(*column) != rebuilt.get(*column))
        .map(|column| {
            (
                column.clone(),
                live.get(column).cloned().unwrap_or(Value::Null),
                rebuilt.get(column).cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_of_an_order_or_sku_that_moved_on_is_covered_and_others_are_not() {
        let order = saga_contracts::OrderCreated {
            envelope: saga_contracts::Envelope::for_command(OrderId::new()),
            customer_id: "c".into(),
            customer_email: "c@example.com".into(),
            payment_token: "tok".into(),
            total_minor: 100,
            currency: "EUR".into(),
            items: vec![saga_contracts::OrderLine {
                sku: "SKU-MOVED".into(),
                quantity: 1,
                unit_price_minor: 100,
            }],
            sales_channel: "web".into(),
            idempotency_key: None,
            request_hash: None,
            deadline_at: None,
        };
        let mut moved_on = MovedOn::default();
        moved_on.add(&order.clone().into());
        assert_eq!(moved_on.records, 1);
        let order_id = order.envelope.order_id.to_string();
        assert!(moved_on.covers(&serde_json::json!({"order_id": order_id, "status": "PENDING"})));
        assert!(moved_on.covers(&serde_json::json!({"sku": "SKU-MOVED", "available": 3})));
        assert!(!moved_on.covers(&serde_json::json!({"sku": "SKU-OTHER"})));
        assert!(!moved_on.covers(&serde_json::json!({"order_id": OrderId::new().to_string()})));
    }

    #[test]
    fn differing_columns_name_each_column_with_both_values() {
        let live = serde_json::json!({"a": 1, "b": "x", "c": null});
        let rebuilt = serde_json::json!({"a": 1, "b": "y", "d": 2});
        assert_eq!(
            differing_columns(&live, &rebuilt),
            vec![
                ("b".to_owned(), Value::from("x"), Value::from("y")),
                // A column one side lacks is a difference even where the other holds null.
                ("c".to_owned(), Value::Null, Value::Null),
                ("d".to_owned(), Value::Null, Value::from(2)),
            ]
        );
    }
}
