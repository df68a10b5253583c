//! Verify: comparing a rebuilt database with the live one, table by table and row by row,
//! every column but the bookkeeping a table declares legitimately different.

use std::collections::BTreeMap;

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
}

/// Compares every table of `tables` between `live` and `rebuilt`, row by row by key, every
/// column but the ignored ones. Returns the differences; none means equal.
pub async fn verify(tables: &[VerifiedTable], live: &PgPool, rebuilt: &PgPool) -> Result<Vec<Difference>> {
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
                }),
                Some(rebuilt_row) if rebuilt_row != live_row => differences.push(Difference {
                    table: table.name,
                    key: key_value(key),
                    kind: "columns",
                    columns: differing_columns(live_row, rebuilt_row),
                }),
                Some(_) => {}
            }
        }
        for key in rebuilt_rows.keys().filter(|key| !live_rows.contains_key(*key)) {
            differences.push(Difference {
                table: table.name,
                key: key_value(key),
                kind: "extra",
                columns: Vec::new(),
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
