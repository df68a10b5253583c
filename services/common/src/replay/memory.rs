//! The state a replay rebuilds, held in memory and written to the target database in bulk.
//!
//! A service's rebuild keeps each of its tables as a [`MemoryTable`] of typed rows. Its store
//! code reads and changes rows there instead of sending a statement per row, and the replay
//! runner writes the rows changed since the last write in one transaction, with the replay's
//! progress: one multi-row statement per table and chunk (`jsonb_populate_recordset` over the
//! rows as JSON), instead of several round trips per event. Each table also keeps an undo log
//! of the event being applied, so an event the service refuses leaves no partial change, as the
//! live service's rolled-back transaction leaves none.

use std::collections::{HashMap, HashSet};

use foldhash::fast::RandomState;
use std::fmt::Debug;
use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use crate::{Error, Result};

/// Rows per statement when changed rows are written.
const ROWS_PER_STATEMENT: usize = 5_000;
/// Rows per `COPY` of rows the table does not hold yet.
const ROWS_PER_COPY: usize = 20_000;

/// A row of a table a replay rebuilds: its fields are the table's columns, named alike and in
/// forms PostgreSQL reads from JSON (UUID and timestamp strings, numbers, arrays). Columns the
/// row leaves out take their defaults when it is first written.
pub trait Row: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// What identifies a row (the table's primary key or a unique key).
    type Key: Hash + Eq + Clone + Debug + Send + Sync;
    /// The table's name.
    const TABLE: &'static str;
    /// The columns of the key, for the upsert's conflict target and for deletes.
    const KEY_COLUMNS: &'static [&'static str];
    /// The row's key.
    fn key(&self) -> Self::Key;
}

/// A table of a rebuild, as the replay runner handles it without knowing its rows.
pub trait RebuiltTable: Send {
    /// The table's name.
    fn name(&self) -> &'static str;
    /// Forgets every row (a new run starts from nothing).
    fn clear(&mut self);
    /// Takes in rows read from the database (as `to_jsonb` of each row), when a replay resumes.
    fn load(&mut self, rows: Vec<Value>) -> Result<()>;
    /// Ends the event being applied: keeps its changes, or undoes them.
    fn end_event(&mut self, keep: bool);
    /// The rows changed since the last call, as statements to write them.
    fn take_changes(&mut self) -> Result<Vec<Statement>>;
}

/// One statement that writes rows: SQL with its only parameter, the rows as a JSON array; or,
/// for rows the table does not hold yet, a `COPY` with the rows in its text format, which
/// PostgreSQL reads at about half the cost.
#[derive(Debug, Clone)]
pub struct Statement {
    /// The SQL text: `$1` is the rows; or the `COPY ... FROM STDIN` command.
    pub sql: String,
    /// The rows: a JSON array, or `COPY` text.
    pub rows: String,
    /// Whether this is a `COPY`.
    copy: bool,
    /// A `COPY`'s columns, in the order of its fields.
    columns: Vec<String>,
}

impl Statement {
    /// Inserts `rows` into `table`, or updates the rows whose key exists.
    pub fn upsert<R: Row>(rows: &[R]) -> Result<Self> {
        let columns = columns_of(R::TABLE, rows)?;
        let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
        Ok(Self {
            sql: upsert_sql(R::TABLE, &columns, R::KEY_COLUMNS),
            rows: json_array(R::TABLE, rows)?,
            copy: false,
            columns: Vec::new(),
        })
    }

    /// Inserts `rows` into `table` (a table without a key of its own, like a log).
    pub fn insert<T: Serialize>(table: &str, rows: &[T]) -> Result<Self> {
        let columns = columns_of(table, rows)?;
        let columns = quoted(&columns.iter().map(String::as_str).collect::<Vec<_>>());
        Ok(Self {
            sql: format!(
                "INSERT INTO {table} ({columns}) SELECT {columns} FROM jsonb_populate_recordset(NULL::{table}, $1::jsonb)"
            ),
            rows: json_array(table, rows)?,
            copy: false,
            columns: Vec::new(),
        })
    }

    /// The rows, parsed (for tests and diagnostics). A `COPY`'s fields are read back as JSON
    /// where they are JSON (numbers, booleans, documents), else as strings.
    pub fn parsed_rows(&self) -> Vec<Value> {
        if !self.copy {
            return serde_json::from_str(&self.rows).unwrap_or_default();
        }
        self.rows
            .lines()
            .map(|line| {
                let fields = line.split('\t').map(|field| match unescaped(field) {
                    None => Value::Null,
                    Some(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
                });
                Value::Object(self.columns.iter().cloned().zip(fields).collect())
            })
            .collect()
    }

    /// Runs the statement in `tx`.
    pub async fn execute(&self, tx: &mut PgConnection) -> Result<()> {
        if !self.copy {
            sqlx::query(&self.sql).bind(self.rows.as_str()).execute(tx).await?;
            return Ok(());
        }
        let mut copy = tx.copy_in_raw(&self.sql).await?;
        match copy.send(self.rows.as_bytes()).await {
            Ok(_) => {
                copy.finish().await?;
            }
            Err(error) => {
                // The connection must leave copy mode before anything else runs on it.
                copy.abort(error.to_string()).await.ok();
                return Err(error.into());
            }
        }
        Ok(())
    }
}

/// What undoing one row's changes by an event restores.
#[derive(Debug)]
struct Undo<R: Row> {
    key: R::Key,
    /// The row before the event (`None`: it did not exist).
    before: Option<R>,
    /// Whether it was changed since the last write already.
    was_changed: bool,
    /// Whether it was inserted since the last write already.
    was_fresh: bool,
}

/// A table's rows in memory, with what changed since they were last written and the undo log of
/// the event being applied.
#[derive(Debug)]
pub struct MemoryTable<R: Row> {
    rows: HashMap<R::Key, R, RandomState>,
    changed: HashSet<R::Key, RandomState>,
    /// Rows removed since the last write, to delete by their key columns.
    removed: HashMap<R::Key, R, RandomState>,
    /// Rows first inserted since the last write: the database does not hold them, so removing
    /// one again needs no delete.
    fresh: HashSet<R::Key, RandomState>,
    /// Whether written rows are forgotten, their keys kept (see [`MemoryTable::insert_only`]).
    insert_only: bool,
    /// The keys of the rows written and forgotten.
    written: HashSet<R::Key, RandomState>,
    /// Each row the current event changed, as it was before (`None`: it did not exist).
    undo: Vec<Undo<R>>,
}

impl<R: Row> Default for MemoryTable<R> {
    fn default() -> Self {
        Self {
            rows: HashMap::default(),
            changed: HashSet::default(),
            removed: HashMap::default(),
            fresh: HashSet::default(),
            insert_only: false,
            written: HashSet::default(),
            undo: Vec::new(),
        }
    }
}

impl<R: Row> MemoryTable<R> {
    /// A table whose rows are only ever inserted, never read back, changed or removed (an
    /// inbox, a timeline): once a row is written, only its key stays in memory, for
    /// [`contains`](Self::contains) and [`insert_new`](Self::insert_new).
    pub fn insert_only() -> Self {
        Self {
            insert_only: true,
            ..Self::default()
        }
    }

    /// The row with `key` (none for a row an insert-only table wrote already).
    pub fn get(&self, key: &R::Key) -> Option<&R> {
        self.rows.get(key)
    }

    /// Whether a row has `key`.
    pub fn contains(&self, key: &R::Key) -> bool {
        self.rows.contains_key(key) || self.written.contains(key)
    }

    /// Every row, in no particular order.
    pub fn rows(&self) -> impl Iterator<Item = &R> {
        self.rows.values()
    }

    /// How many rows there are.
    pub fn len(&self) -> usize {
        self.rows.len() + self.written.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remember(&mut self, key: &R::Key) {
        // The row as it was before the event is all an undo needs: once per row and event.
        if self.undo.iter().any(|undo| &undo.key == key) {
            return;
        }
        self.undo.push(Undo {
            key: key.clone(),
            before: self.rows.get(key).cloned(),
            was_changed: self.changed.contains(key),
            was_fresh: self.fresh.contains(key),
        });
        self.changed.insert(key.clone());
        if !self.contains(key) && !self.removed.contains_key(key) {
            self.fresh.insert(key.clone());
        }
    }

    /// Inserts `row`, or replaces the row with its key; returns the row it replaced.
    pub fn upsert(&mut self, row: R) -> Option<R> {
        let key = row.key();
        self.remember(&key);
        self.rows.insert(key, row)
    }

    /// Inserts `row` unless a row has its key (`INSERT ... ON CONFLICT DO NOTHING`); whether it
    /// did.
    pub fn insert_new(&mut self, row: R) -> bool {
        let key = row.key();
        if self.contains(&key) {
            return false;
        }
        self.remember(&key);
        self.rows.insert(key, row);
        true
    }

    /// Changes the row with `key` by `change`; whether there was one.
    pub fn update(&mut self, key: &R::Key, change: impl FnOnce(&mut R)) -> bool {
        if !self.rows.contains_key(key) {
            return false;
        }
        self.remember(key);
        if let Some(row) = self.rows.get_mut(key) {
            change(row);
        }
        true
    }

    /// Removes the row with `key`; the row removed.
    pub fn remove(&mut self, key: &R::Key) -> Option<R> {
        if !self.rows.contains_key(key) {
            return None;
        }
        self.remember(key);
        let row = self.rows.remove(key)?;
        self.removed.insert(key.clone(), row.clone());
        Some(row)
    }
}

impl<R: Row> RebuiltTable for MemoryTable<R> {
    fn name(&self) -> &'static str {
        R::TABLE
    }

    fn clear(&mut self) {
        *self = Self {
            insert_only: self.insert_only,
            ..Self::default()
        };
    }

    fn load(&mut self, rows: Vec<Value>) -> Result<()> {
        for row in rows {
            let row: R = serde_json::from_value(row)
                .map_err(|e| Error::Replay(format!("a row of {} does not read back: {e}", R::TABLE)))?;
            self.rows.insert(row.key(), row);
        }
        Ok(())
    }

    fn end_event(&mut self, keep: bool) {
        if keep {
            self.undo.clear();
            return;
        }
        while let Some(undo) = self.undo.pop() {
            match undo.before {
                Some(row) => self.rows.insert(undo.key.clone(), row),
                None => self.rows.remove(&undo.key),
            };
            if !undo.was_changed {
                self.changed.remove(&undo.key);
            }
            if !undo.was_fresh {
                self.fresh.remove(&undo.key);
            }
        }
    }

    fn take_changes(&mut self) -> Result<Vec<Statement>> {
        let mut inserted: Vec<&R> = Vec::new();
        let mut upserted: Vec<&R> = Vec::new();
        let mut deleted: Vec<&R> = Vec::new();
        for key in &self.changed {
            match self.rows.get(key) {
                Some(row) if self.fresh.contains(key) => inserted.push(row),
                Some(row) => upserted.push(row),
                None if self.fresh.contains(key) => {}
                None => deleted.extend(self.removed.get(key)),
            }
        }
        let mut statements = Vec::new();
        if !inserted.is_empty() {
            let columns = columns_of(R::TABLE, &inserted)?;
            let sql = format!(
                "COPY {} ({}) FROM STDIN",
                R::TABLE,
                quoted(&columns.iter().map(String::as_str).collect::<Vec<_>>())
            );
            for chunk in inserted.chunks(ROWS_PER_COPY) {
                statements.push(Statement {
                    sql: sql.clone(),
                    rows: copy_text(R::TABLE, &columns, chunk)?,
                    copy: true,
                    columns: columns.clone(),
                });
            }
        }
        if !upserted.is_empty() {
            let columns = columns_of(R::TABLE, &upserted)?;
            let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
            let sql = upsert_sql(R::TABLE, &columns, R::KEY_COLUMNS);
            for chunk in upserted.chunks(ROWS_PER_STATEMENT) {
                statements.push(Statement {
                    sql: sql.clone(),
                    rows: json_array(R::TABLE, chunk)?,
                    copy: false,
                    columns: Vec::new(),
                });
            }
        }
        if !deleted.is_empty() {
            let sql = delete_sql(R::TABLE, R::KEY_COLUMNS);
            for chunk in deleted.chunks(ROWS_PER_STATEMENT) {
                statements.push(Statement {
                    sql: sql.clone(),
                    rows: json_array(R::TABLE, chunk)?,
                    copy: false,
                    columns: Vec::new(),
                });
            }
        }
        if self.insert_only {
            for key in &self.changed {
                if self.rows.remove(key).is_some() {
                    self.written.insert(key.clone());
                }
            }
        }
        self.changed.clear();
        self.removed.clear();
        self.fresh.clear();
        Ok(statements)
    }
}

/// The columns the rows name: the fields of the first (every row names the same ones).
fn columns_of<T: Serialize>(table: &str, rows: &[T]) -> Result<Vec<String>> {
    let Some(first) = rows.first() else {
        return Ok(Vec::new());
    };
    match serde_json::to_value(first) {
        Ok(Value::Object(fields)) => Ok(fields.keys().cloned().collect()),
        Ok(other) => Err(Error::Replay(format!("a row of {table} is not an object: {other}"))),
        Err(e) => Err(Error::Replay(format!("a row of {table} does not write: {e}"))),
    }
}

/// The rows in `COPY`'s text format, their fields in the order of `columns`: tab-separated,
/// `\N` for null, strings and JSON documents with backslash, tab, newline and carriage return
/// escaped.
fn copy_text<T: Serialize>(table: &str, columns: &[String], rows: &[T]) -> Result<String> {
    let mut text = String::with_capacity(rows.len() * 160);
    for row in rows {
        let Value::Object(fields) =
            serde_json::to_value(row).map_err(|e| Error::Replay(format!("a row of {table} does not write: {e}")))?
        else {
            return Err(Error::Replay(format!("a row of {table} is not an object")));
        };
        for (index, column) in columns.iter().enumerate() {
            if index > 0 {
                text.push('\t');
            }
            match fields.get(column) {
                None | Some(Value::Null) => text.push_str("\\N"),
                Some(Value::String(value)) => push_escaped(&mut text, value),
                Some(Value::Bool(value)) => text.push_str(if *value { "true" } else { "false" }),
                Some(Value::Number(value)) => text.push_str(&value.to_string()),
                Some(document) => push_escaped(&mut text, &document.to_string()),
            }
        }
        text.push('\n');
    }
    Ok(text)
}

/// A field of `COPY` text as the value it stands for; `None` for null.
fn unescaped(field: &str) -> Option<String> {
    if field == "\\N" {
        return None;
    }
    let mut value = String::with_capacity(field.len());
    let mut characters = field.chars();
    while let Some(character) = characters.next() {
        if character != '\\' {
            value.push(character);
            continue;
        }
        match characters.next() {
            Some('t') => value.push('\t'),
            Some('n') => value.push('\n'),
            Some('r') => value.push('\r'),
            Some(other) => value.push(other),
            None => {}
        }
    }
    Some(value)
}

fn push_escaped(text: &mut String, value: &str) {
    for character in value.chars() {
        match character {
            '\\' => text.push_str("\\\\"),
            '\t' => text.push_str("\\t"),
            '\n' => text.push_str("\\n"),
            '\r' => text.push_str("\\r"),
            other => text.push(other),
        }
    }
}

/// The rows as one JSON array.
fn json_array<T: Serialize>(table: &str, rows: &[T]) -> Result<String> {
    serde_json::to_string(rows).map_err(|e| Error::Replay(format!("a row of {table} does not write: {e}")))
}

fn quoted(columns: &[&str]) -> String {
    columns
        .iter()
        .map(|column| format!("\"{column}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `INSERT` of the rows in `$1`, updating the rows whose key exists.
fn upsert_sql(table: &str, columns: &[&str], key: &[&str]) -> String {
    let updates: Vec<String> = columns
        .iter()
        .filter(|column| !key.contains(column))
        .map(|column| format!("\"{column}\" = EXCLUDED.\"{column}\""))
        .collect();
    let on_conflict = if updates.is_empty() {
        "DO NOTHING".to_owned()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    format!(
        "INSERT INTO {table} ({columns}) SELECT {columns} FROM jsonb_populate_recordset(NULL::{table}, $1::jsonb) \
         ON CONFLICT ({key}) {on_conflict}",
        columns = quoted(columns),
        key = quoted(key),
    )
}

/// `DELETE` of the rows whose keys are in `$1`.
fn delete_sql(table: &str, key: &[&str]) -> String {
    format!(
        "DELETE FROM {table} t USING jsonb_populate_recordset(NULL::{table}, $1::jsonb) gone WHERE ({t_key}) = ({gone_key})",
        t_key = key.iter().map(|c| format!("t.\"{c}\"")).collect::<Vec<_>>().join(", "),
        gone_key = key
            .iter()
            .map(|c| format!("gone.\"{c}\""))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// Reads every row of `table` as JSON, for [`RebuiltTable::load`].
pub(crate) async fn read_rows(database: &PgPool, table: &str) -> Result<Vec<Value>> {
    Ok(sqlx::query_scalar(&format!("SELECT to_jsonb(t) FROM {table} t"))
        .fetch_all(database)
        .await?)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct StockRow {
        sku: String,
        available: i64,
    }

    impl Row for StockRow {
        type Key = String;
        const TABLE: &'static str = "stock";
        const KEY_COLUMNS: &'static [&'static str] = &["sku"];
        fn key(&self) -> String {
            self.sku.clone()
        }
    }

    fn stock(sku: &str, available: i64) -> StockRow {
        StockRow {
            sku: sku.into(),
            available,
        }
    }

    #[test]
    fn an_event_undone_leaves_the_rows_and_the_changes_as_they_were() {
        let mut table = MemoryTable::<StockRow>::default();
        assert!(table.insert_new(stock("A", 5)));
        table.end_event(true);
        assert_eq!(table.take_changes().expect("changes").len(), 1);

        // One event changes A twice, adds B and removes nothing; undone, none of it remains.
        table.update(&"A".into(), |row| row.available -= 2);
        table.update(&"A".into(), |row| row.available -= 1);
        assert!(table.insert_new(stock("B", 1)));
        assert!(!table.insert_new(stock("B", 9)), "B exists");
        table.end_event(false);
        assert_eq!(table.get(&"A".into()), Some(&stock("A", 5)));
        assert!(!table.contains(&"B".into()));
        assert!(table.take_changes().expect("changes").is_empty(), "nothing to write");
    }

    #[test]
    fn new_rows_are_copied_changed_rows_upserted_and_removed_rows_deleted() {
        let mut table = MemoryTable::<StockRow>::default();
        table
            .load(vec![
                serde_json::json!({"sku": "A", "available": 5, "updated_at": "2026-01-01T00:00:00+00:00"}),
                serde_json::json!({"sku": "C", "available": 1}),
            ])
            .expect("loads, ignoring columns the row leaves out");
        table.upsert(stock("B", 2));
        table.update(&"C".into(), |row| row.available = 0);
        table.update(&"A".into(), |row| row.available = 4);
        table.remove(&"A".into());
        table.end_event(true);
        let statements = table.take_changes().expect("changes");
        assert_eq!(statements.len(), 3);
        assert_eq!(statements[0].sql, "COPY stock (\"available\", \"sku\") FROM STDIN");
        assert_eq!(statements[0].rows, "2\tB\n");
        assert_eq!(
            statements[1].sql,
            "INSERT INTO stock (\"available\", \"sku\") SELECT \"available\", \"sku\" FROM \
             jsonb_populate_recordset(NULL::stock, $1::jsonb) ON CONFLICT (\"sku\") DO UPDATE SET \"available\" = EXCLUDED.\"available\""
        );
        assert_eq!(
            statements[1].parsed_rows(),
            vec![serde_json::json!({"sku": "C", "available": 0})]
        );
        assert!(
            statements[2].sql.starts_with("DELETE FROM stock t USING"),
            "{}",
            statements[2].sql
        );
        assert_eq!(
            statements[2].parsed_rows(),
            vec![serde_json::json!({"sku": "A", "available": 4})]
        );
        assert!(table.take_changes().expect("changes").is_empty(), "written once");
    }

    #[test]
    fn copy_text_escapes_what_copy_reads_specially_and_writes_null_and_documents() {
        #[derive(Serialize)]
        struct Line {
            a: Option<String>,
            b: serde_json::Value,
            c: bool,
        }
        let columns = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let rows = [
            Line {
                a: Some("tab\there\\ and\nnewline".into()),
                b: serde_json::json!({"k": "v\\w"}),
                c: true,
            },
            Line {
                a: None,
                b: serde_json::json!([1]),
                c: false,
            },
        ];
        assert_eq!(
            copy_text("t", &columns, &rows).expect("text"),
            "tab\\there\\\\ and\\nnewline\t{\"k\":\"v\\\\\\\\w\"}\ttrue\n\\N\t[1]\tfalse\n"
        );
        let statement = Statement {
            sql: String::new(),
            rows: copy_text("t", &columns, &rows).expect("text"),
            copy: true,
            columns: columns.to_vec(),
        };
        assert_eq!(
            statement.parsed_rows(),
            [
                serde_json::json!({"a": "tab\there\\ and\nnewline", "b": {"k": "v\\w"}, "c": true}),
                serde_json::json!({"a": null, "b": [1], "c": false}),
            ]
        );
    }

    #[test]
    fn a_row_inserted_and_removed_between_two_writes_is_not_written_at_all() {
        let mut table = MemoryTable::<StockRow>::default();
        table.insert_new(stock("A", 1));
        table.end_event(true);
        table.remove(&"A".into());
        table.end_event(true);
        assert!(table.take_changes().expect("changes").is_empty());

        // Once written (copied), removing it deletes it.
        table.insert_new(stock("B", 1));
        table.end_event(true);
        let statements = table.take_changes().expect("changes");
        assert!(statements[0].sql.starts_with("COPY"), "{}", statements[0].sql);
        table.remove(&"B".into());
        table.end_event(true);
        let statements = table.take_changes().expect("changes");
        assert!(statements[0].sql.starts_with("DELETE"), "{}", statements[0].sql);
    }

    #[test]
    fn an_insert_only_table_keeps_only_the_keys_of_rows_it_wrote() {
        let mut table = MemoryTable::<StockRow>::insert_only();
        assert!(table.insert_new(stock("A", 1)));
        table.end_event(true);
        assert_eq!(table.take_changes().expect("changes").len(), 1);
        assert!(table.get(&"A".into()).is_none(), "the row is forgotten");
        assert!(table.contains(&"A".into()), "its key is not");
        assert!(!table.insert_new(stock("A", 2)), "a second insert is refused");
        assert_eq!(table.len(), 1);
        assert!(table.take_changes().expect("changes").is_empty());
        table.clear();
        assert!(table.is_empty());
        assert!(table.insert_new(stock("A", 3)));
        table.end_event(true);
        table.take_changes().expect("changes");
        assert!(table.get(&"A".into()).is_none(), "still insert-only after clear");
    }

    #[test]
    fn a_table_of_key_columns_only_skips_rows_it_has() {
        assert_eq!(
            upsert_sql("replay_seen", &["event_id"], &["event_id"]),
            "INSERT INTO replay_seen (\"event_id\") SELECT \"event_id\" FROM \
             jsonb_populate_recordset(NULL::replay_seen, $1::jsonb) ON CONFLICT (\"event_id\") DO NOTHING"
        );
    }
}
