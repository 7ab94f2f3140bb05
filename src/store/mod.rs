//! PostgreSQL adapter: connection, embedded migrations, and one module of queries per concern.
//! Rows become domain values here; nothing else in the crate writes SQL.

pub mod catalog;
pub mod grace;
pub mod invoices;
pub mod outbox;
pub mod rollup;
pub mod usage;

use crate::error::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use std::str::FromStr;
use std::time::Duration;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects to `url`, creating the database first if it does not exist. Every session runs in
/// UTC so that `date` and `timestamptz` compare as the contract's UTC periods, and without JIT.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| Error::bad(format!("DATABASE_URL: {e}")))?
        // JIT off: every statement here is short, and JIT compiling one costs 30-140 ms
        // (measured on the number counter's one-row update, whose cost a transaction with
        // sequential scans disabled inflates past `jit_above_cost`).
        .options([("timezone", "UTC"), ("jit", "off")])
        .log_statements(tracing::log::LevelFilter::Trace);
    create_database_if_missing(&options).await?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(|conn, _| Box::pin(async move { watch_for_hangups(conn).await }))
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// Asks the server (PostgreSQL 14 and later) to check every few seconds, while it runs a
/// statement, that this client is still there. A worker that dies or releases an item at
/// shutdown in the middle of a long statement (a lock wait) would otherwise leave its session
/// running that statement, holding the item's locks, until the statement ends by itself.
async fn watch_for_hangups(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT set_config('client_connection_check_interval', '2s', false)
         WHERE current_setting('server_version_num')::int >= 140000",
    )
    .execute(conn)
    .await?;
    Ok(())
}

async fn create_database_if_missing(options: &PgConnectOptions) -> Result<()> {
    let Some(name) = options.get_database().map(str::to_string) else {
        return Ok(());
    };
    match sqlx::PgConnection::connect_with(options).await {
        Ok(_) => return Ok(()),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {}
        Err(e) => return Err(e.into()),
    }
    let mut admin = sqlx::PgConnection::connect_with(&options.clone().database("postgres")).await?;
    // Replicas starting together on a fresh installation race here, and PostgreSQL reports a
    // concurrent CREATE DATABASE of the same name not only as "already exists" (42P04) but, while
    // the other's is not yet committed, as a unique violation on pg_database (23505). So they
    // take turns on an advisory lock (released when this session ends) and look again.
    sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
        .bind(format!("invoicer: create database {name}"))
        .execute(&mut admin)
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if exists {
        return Ok(());
    }
    let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    match sqlx::query(&sql).execute(&mut admin).await {
        Ok(_) => {
            tracing::info!(database = %name, "created database");
            Ok(())
        }
        // Created by a process that does not take the lock (an operator, an older version).
        Err(sqlx::Error::Database(e))
            if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Applies pending migrations (idempotent; concurrent callers serialise on sqlx's lock).
pub async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await.map_err(|e| match e {
        sqlx::migrate::MigrateError::Execute(e) => Error::from(e),
        other => Error::internal(format!("migration failed: {other}")),
    })
}

/// For the rest of the transaction, no plan scans a whole table sequentially.
///
/// For queries that are bounded by design (an item's tenants, a claim of the oldest events)
/// over tables that grow from nothing to millions of rows within one month end, faster than
/// autovacuum re-analyses them: planned from an empty table's statistics, a sequential scan
/// looks free, and repeated per batch it makes the month end quadratic.
///
/// Sorts stay allowed: with them disabled too, a `GROUP BY id` or `ORDER BY id` over an item's
/// rows walks the whole primary key to get them in order (measured at 10,000 tenants: the
/// item's subscriptions read went from 10 ms to 278 ms, 28,500 rows filtered out, and the 1-worker
/// rollup from 3.5 s to 27.9 s). Where an ordered walk is the right plan, disable sorts for
/// that statement alone (`outbox::claim`).
pub async fn no_seq_scans(tx: &mut sqlx::PgConnection) -> Result<()> {
    set_local(tx, &[("enable_seqscan", "off")]).await
}

/// Sets planner settings for the rest of the transaction, in one round trip.
pub(crate) async fn set_local(
    tx: &mut sqlx::PgConnection,
    settings: &[(&str, &str)],
) -> Result<()> {
    let (names, values): (Vec<&str>, Vec<&str>) = settings.iter().copied().unzip();
    sqlx::query("SELECT set_config(n, v, true) FROM unnest($1::text[], $2::text[]) AS s(n, v)")
        .bind(names)
        .bind(values)
        .execute(tx)
        .await?;
    Ok(())
}
