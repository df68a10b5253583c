//! Database connection and migrations: the shared library's own migrations (outbox, inbox)
//! run first, then the service's, as one migrator.

use std::borrow::Cow;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;

use crate::{Error, Result};

static MACHINERY: Migrator = sqlx::migrate!("./migrations");

/// The shared migrations followed by the service's own (numbered from 100).
pub fn migrator(service: &Migrator) -> Migrator {
    let migrations: Vec<_> = MACHINERY.iter().chain(service.iter()).cloned().collect();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

/// Creates the database named in `url` if it does not exist yet (connecting to the server's
/// `postgres` database to do so).
pub async fn create_database_if_missing(url: &str) -> Result<()> {
    let options = PgConnectOptions::from_str(url)?;
    let name = options.get_database().unwrap_or("postgres").to_string();
    let mut admin = options.database("postgres").connect().await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut admin)
        .await?;
    if !exists {
        let statement = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&statement).execute(&mut admin).await {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it between the check and the statement.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Connects a pool to `url`, creating the database if needed, and applies `migrator`.
///
/// The pool opens connections when work needs them (up to `max_connections`) and closes those
/// idle for a minute, so a quiet service holds few of PostgreSQL's connection slots.
pub async fn connect_and_migrate(url: &str, migrator: &Migrator, max_connections: u32) -> Result<PgPool> {
    create_database_if_missing(url).await?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .idle_timeout(Duration::from_secs(60))
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await?;
    migrator.run(&pool).await.map_err(Error::from)?;
    Ok(pool)
}

/// PostgreSQL's error code for "sorry, too many clients already".
const TOO_MANY_CONNECTIONS: &str = "53300";

/// What most likely caused a database error about connections, for the log line that reports
/// it; empty for other errors. A pool gives up waiting for a connection either because all of
/// its own are busy or because PostgreSQL refuses new ones (every slot of its
/// `max_connections` taken by some client), and sqlx reports both as the same timeout.
pub fn connection_hint(error: &sqlx::Error) -> &'static str {
    match error {
        sqlx::Error::PoolTimedOut => {
            " (no pooled connection became free in time: either every connection of this \
             service's pool is busy, raise DATABASE_MAX_CONNECTIONS, or PostgreSQL refuses new \
             connections because its max_connections are all in use by its clients)"
        }
        sqlx::Error::Database(database) if database.code().as_deref() == Some(TOO_MANY_CONNECTIONS) => {
            " (PostgreSQL's max_connections are all in use by its clients: raise it, or lower \
             DATABASE_MAX_CONNECTIONS of the processes sharing the server)"
        }
        _ => "",
    }
}
