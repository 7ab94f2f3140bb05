//! The transactional outbox: events are inserted in the transaction of the change they announce
//! and published later by `bus::relay`, with `msg_id` as the `Nats-Msg-Id`.

use crate::error::Result;
use sqlx::{PgConnection, PgPool, Row};
use std::time::Duration;

/// An event to publish once its transaction commits; the payload is JSON text, serialised once.
#[derive(Debug, Clone)]
pub struct Event {
    pub subject: String,
    pub msg_id: String,
    pub payload: String,
}

impl Event {
    pub fn new(subject: &str, msg_id: String, payload: &impl serde::Serialize) -> Self {
        Event {
            subject: subject.to_string(),
            msg_id,
            payload: serde_json::to_string(payload).expect("event payloads serialise"),
        }
    }
}

/// Adds events in one statement. A repeated `msg_id` is ignored: the event already exists.
pub async fn insert(db: &mut PgConnection, events: &[Event]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let subjects: Vec<&str> = events.iter().map(|e| e.subject.as_str()).collect();
    let ids: Vec<&str> = events.iter().map(|e| e.msg_id.as_str()).collect();
    let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
    sqlx::query(
        "INSERT INTO outbox (subject, msg_id, payload)
         SELECT s, m, p::jsonb FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS t(s, m, p, o)
         ORDER BY o
         ON CONFLICT (msg_id) DO NOTHING",
    )
    .bind(&subjects)
    .bind(&ids)
    .bind(&payloads)
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
}

/// Claims up to `limit` unpublished events for `lease`, oldest first. Another relay skips them
/// until the lease runs out, so replicas rarely publish the same row twice (and when they do,
/// the stream drops the repeat by its msg id).
pub async fn claim(pool: &PgPool, limit: i64, lease: Duration) -> Result<Vec<Pending>> {
    let rows = sqlx::query(
        "WITH c AS (
            SELECT id FROM outbox
            WHERE published_at IS NULL AND (claimed_until IS NULL OR claimed_until < now())
            ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
         UPDATE outbox o SET claimed_until = now() + $2 * interval '1 millisecond'
         FROM c WHERE o.id = c.id
         RETURNING o.id, o.subject, o.msg_id, o.payload::text AS payload",
    )
    .bind(limit)
    .bind(lease.as_millis() as f64)
    .fetch_all(pool)
    .await?;
    let mut pending: Vec<Pending> = rows
        .iter()
        .map(|r| {
            Ok(Pending {
                id: r.try_get("id")?,
                subject: r.try_get("subject")?,
                msg_id: r.try_get("msg_id")?,
                payload: r.try_get("payload")?,
            })
        })
        .collect::<Result<_>>()?;
    pending.sort_by_key(|p| p.id);
    Ok(pending)
}

pub async fn mark_published(pool: &PgPool, ids: &[i64]) -> Result<()> {
    sqlx::query("UPDATE outbox SET published_at = now(), claimed_until = NULL WHERE id = ANY($1)")
        .bind(ids)
        .execute(pool)
        .await?;
    Ok(())
}

/// Gives claimed rows back after a failed publish, so the next round retries them at once.
pub async fn release(pool: &PgPool, ids: &[i64]) -> Result<()> {
    sqlx::query(
        "UPDATE outbox SET claimed_until = NULL WHERE id = ANY($1) AND published_at IS NULL",
    )
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(())
}

/// Events not yet published (for health checks and tests).
pub async fn backlog(pool: &PgPool) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(pool)
            .await?,
    )
}

/// The payload of the event with this msg id, if it was ever written.
pub async fn payload_of(pool: &PgPool, msg_id: &str) -> Result<Option<serde_json::Value>> {
    let row: Option<sqlx::types::Json<serde_json::Value>> =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE msg_id = $1")
            .bind(msg_id)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|j| j.0))
}
