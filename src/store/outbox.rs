//! The transactional outbox: events are inserted in the transaction of the change they announce
//! and published later by `bus::relay`, with `msg_id` as the `Nats-Msg-Id`. A row that fails
//! counts its attempts and backs off on its own; one that can never be published is parked
//! for an operator; published rows are pruned after a retention period. The events of one
//! [`Aggregate`] go out one at a time, in the order they were written.

use crate::error::Result;
use sqlx::{PgConnection, PgPool, Row};
use std::time::Duration;

/// What an event is about when the order of its events matters (CONTRACT.md 8): the relay
/// publishes the events of one aggregate one at a time, in the order they were written, so a
/// reader never sees an invoice paid or voided before it sees it issued. An event that must
/// follow another belongs to that one's aggregate: an adjustment note of an invoice to the
/// invoice. A credit grant's events would be one of their own (`credit:<grant id>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Invoice(uuid::Uuid),
}

impl Aggregate {
    /// The stored `ordering_key`.
    pub fn key(&self) -> String {
        match self {
            Aggregate::Invoice(id) => format!("invoice:{id}"),
        }
    }
}

/// An event to publish once its transaction commits; the payload is JSON text, serialised once.
#[derive(Debug, Clone)]
pub struct Event {
    pub subject: String,
    pub msg_id: String,
    pub payload: String,
    /// The invoice whose number the relay splices into the payload (`"number":null` until then).
    pub number_of: Option<uuid::Uuid>,
    /// Published after every earlier event of the same aggregate; `None`: in no particular order.
    pub ordering_key: Option<String>,
}

impl Event {
    pub fn new(subject: &str, msg_id: String, payload: &impl serde::Serialize) -> Self {
        Event {
            subject: subject.to_string(),
            msg_id,
            payload: serde_json::to_string(payload).expect("event payloads serialise"),
            number_of: None,
            ordering_key: None,
        }
    }

    /// Publishes this event after the earlier events of `aggregate`.
    pub fn of(mut self, aggregate: Aggregate) -> Self {
        self.ordering_key = Some(aggregate.key());
        self
    }
}

/// Adds events in one statement, in order (ids ascending: the order the relay keeps within an
/// aggregate). A repeated `msg_id` is ignored: the event already exists.
pub async fn insert(db: &mut PgConnection, events: &[Event]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let subjects: Vec<&str> = events.iter().map(|e| e.subject.as_str()).collect();
    let ids: Vec<&str> = events.iter().map(|e| e.msg_id.as_str()).collect();
    let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
    let numbers: Vec<Option<uuid::Uuid>> = events.iter().map(|e| e.number_of).collect();
    let keys: Vec<Option<&str>> = events.iter().map(|e| e.ordering_key.as_deref()).collect();
    sqlx::query(
        "INSERT INTO outbox (subject, msg_id, payload, number_of, ordering_key)
         SELECT s, m, p, n, k
         FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::text[])
           WITH ORDINALITY AS t(s, m, p, n, k, o)
         ORDER BY o
         ON CONFLICT (msg_id) DO NOTHING",
    )
    .bind(&subjects)
    .bind(&ids)
    .bind(&payloads)
    .bind(&numbers)
    .bind(&keys)
    .execute(db)
    .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub subject: String,
    pub msg_id: String,
    pub payload: String,
    /// Failed attempts so far.
    pub attempts: i32,
    /// `Some` when the payload waits for an invoice's number: that number, if it has one.
    pub number: Option<Option<i64>>,
}

impl Pending {
    /// The payload as published: with the invoice's number spliced in where it waits for one.
    pub fn body(&self) -> std::result::Result<String, String> {
        match self.number {
            None => Ok(self.payload.clone()),
            Some(Some(n)) => Ok(crate::domain::invoice::with_number(
                &self.payload,
                &crate::domain::invoice::format_number(n),
            )),
            Some(None) => Err("the event's invoice has no number".into()),
        }
    }
}

/// Claims up to `limit` events due for publishing for `lease`, oldest first: unpublished, not
/// parked, and past their own retry delay. Another relay skips them until the lease runs out,
/// so replicas rarely publish the same row twice (and when they do, the stream drops the repeat
/// by its msg id).
///
/// An event with an ordering key is claimed only while no earlier event of its key is
/// unpublished, whatever holds that one back (its retry delay, its parking, another relay's
/// lease): so at most one event per aggregate is ever claimed, by any relay, and the next is
/// claimable only once the previous one is marked published, that is once the stream has
/// acknowledged it. This is what keeps one invoice's events in order across retries and
/// replicas, with no lock held across a publish. The check is one probe of
/// `outbox_unpublished_by_key` per keyed row the claim walks past, written as a correlated
/// sub-plan (the `OR`) so that it stays a probe per row rather than becoming a join over the
/// whole backlog. `EXPLAIN ANALYZE` on 202,000 pending events (a month end's 200,000 issued
/// events behind 1,000 invoices whose issued event backs off, each holding back its paid
/// event), planned from an empty table's statistics as after `ANALYZE`: `outbox_pending`
/// walked in id order, 2,000 rows filtered out, and 1,500 index-only probes of about 9 µs
/// each; see README, "Events in order".
///
/// The oldest-first read must walk the pending index in order. A month end grows the outbox
/// from almost nothing to a hundred thousand rows within seconds, faster than autovacuum
/// re-analyses it; planned from an empty table's statistics, the query sorted every pending row
/// on every claim (measured: 10 s a claim at 100,000 pending, so the relay fell minutes behind
/// the rollup), and looked each number up by scanning all of `invoices`. Sorts and sequential
/// scans are disabled for this one statement, which leaves the ordered index scan and the
/// primary-key lookups as the plan whatever the statistics say. And it is planned at every
/// execution: a session keeps a prepared statement's generic plan, and one made against an
/// empty outbox rescanned the claimed rows for every row of the outbox (measured at 100,000
/// events: 9 s a claim, the relay minutes behind the rollup; planned afresh, 10 ms). Items do
/// not force custom plans: their deferred foreign-key checks, one prepared lookup per line,
/// would be planned afresh too.
pub async fn claim(pool: &PgPool, limit: i64, lease: Duration) -> Result<Vec<Pending>> {
    let mut tx = pool.begin().await?;
    crate::store::set_local(
        &mut tx,
        &[
            ("enable_seqscan", "off"),
            ("enable_sort", "off"),
            ("plan_cache_mode", "force_custom_plan"),
        ],
    )
    .await?;
    let rows = sqlx::query(
        "WITH c AS (
            SELECT id, number_of FROM outbox
            WHERE published_at IS NULL AND parked_at IS NULL
              AND (claimed_until IS NULL OR claimed_until < now())
              AND (next_attempt_at IS NULL OR next_attempt_at <= now())
              AND (ordering_key IS NULL OR NOT EXISTS (
                    SELECT 1 FROM outbox e
                    WHERE e.ordering_key = outbox.ordering_key AND e.id < outbox.id
                      AND e.published_at IS NULL))
            ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
         UPDATE outbox o SET claimed_until = now() + $2 * interval '1 millisecond'
         FROM c LEFT JOIN invoices i ON i.id = c.number_of
         WHERE o.id = c.id
         RETURNING o.id, o.subject, o.msg_id, o.payload, o.attempts,
                   o.number_of IS NOT NULL AS numbered, i.number",
    )
    .bind(limit)
    .bind(lease.as_millis() as f64)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut pending: Vec<Pending> = rows
        .iter()
        .map(|r| {
            Ok(Pending {
                id: r.try_get("id")?,
                subject: r.try_get("subject")?,
                msg_id: r.try_get("msg_id")?,
                payload: r.try_get("payload")?,
                attempts: r.try_get("attempts")?,
                number: r
                    .try_get::<bool, _>("numbered")?
                    .then(|| r.try_get("number"))
                    .transpose()?,
            })
        })
        .collect::<Result<_>>()?;
    pending.sort_by_key(|p| p.id);
    Ok(pending)
}

/// Marks rows published, by primary key whatever the statistics say (see [`claim`]).
pub async fn mark_published(pool: &PgPool, ids: &[i64]) -> Result<()> {
    let mut tx = pool.begin().await?;
    crate::store::no_seq_scans(&mut tx).await?;
    sqlx::query(
        "UPDATE outbox SET published_at = now(), claimed_until = NULL, next_attempt_at = NULL
         WHERE id = ANY($1)",
    )
    .bind(ids)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Gives claimed rows back after a failure that was not theirs (NATS unreachable), without
/// counting an attempt: the next round retries them. The error is kept, so an operator can see
/// why the backlog grows.
pub async fn release(pool: &PgPool, ids: &[i64], error: &str) -> Result<()> {
    sqlx::query(
        "UPDATE outbox SET claimed_until = NULL, last_error = $2
         WHERE id = ANY($1) AND published_at IS NULL",
    )
    .bind(ids)
    .bind(storable(error))
    .execute(pool)
    .await?;
    Ok(())
}

/// Error texts are stored: short, and free of the NUL that text columns refuse.
fn storable(error: &str) -> String {
    error.chars().take(1000).filter(|c| *c != '\0').collect()
}

/// A failed publish attempt of one row.
#[derive(Debug, Clone)]
pub struct Failure {
    pub id: i64,
    pub error: String,
    /// Parked now (it can never succeed, or this was its last attempt), else retried after
    /// `retry_in`.
    pub park: bool,
    pub retry_in: Duration,
}

/// Records failed attempts: each row's attempt count and last error, then its own retry time
/// or its parking. Returns how many rows were parked.
pub async fn record_failures(pool: &PgPool, failures: &[Failure]) -> Result<u64> {
    if failures.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = failures.iter().map(|f| f.id).collect();
    // Error texts are stored: keep them short, and free of the NUL text columns refuse.
    let errors: Vec<String> = failures
        .iter()
        .map(|f| {
            f.error
                .chars()
                .take(1000)
                .collect::<String>()
                .replace('\0', "")
        })
        .collect();
    let park: Vec<bool> = failures.iter().map(|f| f.park).collect();
    let delays: Vec<f64> = failures
        .iter()
        .map(|f| f.retry_in.as_millis() as f64)
        .collect();
    let parked = sqlx::query_scalar::<_, i64>(
        "WITH f AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::bool[], $4::float8[])
                    AS t(id, error, park, delay_ms))
         UPDATE outbox o SET
             attempts = o.attempts + 1,
             last_error = f.error,
             claimed_until = NULL,
             next_attempt_at = CASE WHEN f.park THEN NULL
                                    ELSE now() + f.delay_ms * interval '1 millisecond' END,
             parked_at = CASE WHEN f.park THEN now() END
         FROM f WHERE o.id = f.id AND o.published_at IS NULL
         RETURNING (o.parked_at IS NOT NULL)::int::bigint",
    )
    .bind(&ids)
    .bind(&errors)
    .bind(&park)
    .bind(&delays)
    .fetch_all(pool)
    .await?;
    Ok(parked.iter().sum::<i64>() as u64)
}

/// Deletes published rows older than `retention`, a chunk at a time so no statement holds many
/// locks; returns how many.
pub async fn prune(pool: &PgPool, retention: Duration) -> Result<u64> {
    const CHUNK: i64 = 10_000;
    let mut deleted = 0;
    loop {
        let n = sqlx::query(
            "DELETE FROM outbox WHERE id IN (
                SELECT id FROM outbox
                WHERE published_at < now() - $1 * interval '1 millisecond'
                LIMIT $2)",
        )
        .bind(retention.as_millis() as f64)
        .bind(CHUNK)
        .execute(pool)
        .await?
        .rows_affected();
        deleted += n;
        if n < CHUNK as u64 {
            return Ok(deleted);
        }
    }
}

/// Events waiting to be published, not counting parked ones (for health checks and tests).
pub async fn backlog(pool: &PgPool) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE published_at IS NULL AND parked_at IS NULL",
    )
    .fetch_one(pool)
    .await?)
}

/// What an operator watches: events waiting, of them those that have failed at least once,
/// events parked, and the age of the oldest waiting event.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    pub pending: i64,
    pub retrying: i64,
    pub parked: i64,
    pub oldest_pending_secs: Option<f64>,
}

pub async fn stats(pool: &PgPool) -> Result<Stats> {
    let row = sqlx::query(
        "SELECT count(*) FILTER (WHERE parked_at IS NULL) AS pending,
                count(*) FILTER (WHERE parked_at IS NULL AND attempts > 0) AS retrying,
                count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked,
                extract(epoch FROM now() - min(created_at) FILTER (WHERE parked_at IS NULL))::float8
                    AS oldest
         FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(Stats {
        pending: row.try_get("pending")?,
        retrying: row.try_get("retrying")?,
        parked: row.try_get("parked")?,
        oldest_pending_secs: row.try_get("oldest")?,
    })
}

/// A parked event, as an operator sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Parked {
    pub id: i64,
    pub subject: String,
    pub msg_id: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub parked_at: chrono::DateTime<chrono::Utc>,
    pub payload_bytes: i32,
}

/// Parked events, oldest first.
pub async fn parked(pool: &PgPool, limit: i64) -> Result<Vec<Parked>> {
    Ok(sqlx::query_as(
        "SELECT id, subject, msg_id, attempts, last_error, created_at, parked_at,
                octet_length(payload::text) AS payload_bytes
         FROM outbox WHERE parked_at IS NOT NULL AND published_at IS NULL
         ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Puts parked events back in line with a fresh attempt count (all of them when `ids` is
/// `None`): once the cause is fixed, e.g. the server's `max_payload` raised. Returns how many.
pub async fn unpark(pool: &PgPool, ids: Option<&[i64]>) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE outbox SET parked_at = NULL, attempts = 0, next_attempt_at = NULL
         WHERE parked_at IS NOT NULL AND published_at IS NULL
           AND ($1::bigint[] IS NULL OR id = ANY($1))",
    )
    .bind(ids)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Unpublished events: how many, and since when (for health checks and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingStats {
    pub count: i64,
    pub oldest: Option<chrono::DateTime<chrono::Utc>>,
}

impl PendingStats {
    /// Seconds the oldest unpublished event has waited (0 when there is none).
    pub fn oldest_age_seconds(&self, now: chrono::DateTime<chrono::Utc>) -> i64 {
        self.oldest.map_or(0, |at| (now - at).num_seconds().max(0))
    }
}

pub async fn pending(pool: &PgPool) -> Result<PendingStats> {
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL) AS count,
                (SELECT created_at FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT 1)
                  AS oldest",
    )
    .fetch_one(pool)
    .await?;
    Ok(PendingStats {
        count: row.try_get("count")?,
        oldest: row.try_get("oldest")?,
    })
}
