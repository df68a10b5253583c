//! An index the local broker's SQLite storage lacks.
//!
//! Tansu 0.6.0 reads each fetched record's headers with a query on `header (topition,
//! offset_id)`, a table with no index on those columns: every fetched record scans every header
//! stored (5.6 ms per record at 90,000 headers), so fetching costs grow with the square of the
//! topics and a long run saturates the broker. The index changes no data and no behaviour.

use std::path::Path;

/// Creates the index on the headers of the broker's storage if it is missing. The broker creates
/// its tables when it starts, so call this once it listens; a missing table is not an error.
pub fn index_record_headers(broker_db: &Path) -> anyhow::Result<bool> {
    let connection = rusqlite::Connection::open(broker_db)?;
    connection.busy_timeout(std::time::Duration::from_secs(10))?;
    let has_table: bool = connection.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'header'",
        [],
        |row| row.get(0),
    )?;
    if has_table {
        connection.execute(
            "CREATE INDEX IF NOT EXISTS header_by_record ON header (topition, offset_id)",
            [],
        )?;
    }
    Ok(has_table)
}
