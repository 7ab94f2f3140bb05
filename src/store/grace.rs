//! Grace-window rows: the `finalizes_at` of open drafts, the refresh queue that usage ingestion
//! fills (`draft_refresh`), the finalizer's scan of due drafts, and its record of the drafts it
//! could not finalize (`draft_finalize_failures`), which wait out a delay before they are due
//! again.
//!
//! The refresher and the finalizer lock the tenants they work on first, with `SKIP LOCKED`, in
//! tenant order, the way a rollup batch and an admin transition lock them: so two replicas never
//! take the same tenant, and nothing waits on them in a cycle. Usage ingestion holds its tenants
//! `FOR SHARE` while it inserts and marks, so a tenant being ingested is simply taken next time.

use crate::domain::period::Period;
use crate::error::{Error, Result};
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgConnection, Row};
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// The windows of those of `ids` that are open grace drafts.
pub async fn windows(db: &mut PgConnection, ids: &[Uuid]) -> Result<HashMap<Uuid, DateTime<Utc>>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(
        "SELECT id, finalizes_at FROM invoices
         WHERE id = ANY($1) AND status = 'draft' AND finalizes_at IS NOT NULL",
    )
    .bind(ids)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("finalizes_at")?)))
        .collect()
}

/// Locks up to `limit` tenants with marked drafts, oldest mark first, skipping tenants another
/// transaction holds.
pub async fn lock_marked_tenants(db: &mut PgConnection, limit: i64) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT tenant_id FROM tenants WHERE tenant_id IN (
           SELECT tenant_id FROM draft_refresh GROUP BY tenant_id ORDER BY min(marked_at) LIMIT $1)
         ORDER BY tenant_id FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// Removes the marks of locked tenants and returns the open drafts they point at, grouped by
/// period. A mark whose draft was issued or voided since is simply dropped.
pub async fn take_marks(
    db: &mut PgConnection,
    tenants: &[String],
) -> Result<BTreeMap<Period, Vec<String>>> {
    let rows = sqlx::query(
        "WITH taken AS (
           DELETE FROM draft_refresh WHERE tenant_id = ANY($1) RETURNING tenant_id, period_start)
         SELECT i.tenant_id, i.period_start, i.period_end FROM invoices i
         JOIN taken t ON t.tenant_id = i.tenant_id AND t.period_start = i.period_start
         WHERE i.status = 'draft' AND i.finalizes_at IS NOT NULL
         ORDER BY i.tenant_id",
    )
    .bind(tenants)
    .fetch_all(db)
    .await?;
    by_period(&rows)
}

/// Locks up to `limit` tenants with drafts due by `now`, skipping tenants another transaction
/// holds (another replica finalizing them, a rollup, an admin, an ingestion).
///
/// Due drafts are taken in the order they became due: a draft that never failed at its
/// `finalizes_at`, one whose finalization failed at the end of its delay (`retry_at`). A
/// failed draft still in its delay is not taken at all, so drafts that keep failing never
/// fill the batches ahead of drafts due after them. Each half is a walk of its own index, in
/// order, stopped at `limit`.
pub async fn lock_due_tenants(
    db: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT tenant_id FROM tenants WHERE tenant_id IN (
           SELECT tenant_id FROM (
             (SELECT i.tenant_id, i.finalizes_at AS due FROM invoices i
              WHERE i.status = 'draft' AND i.finalizes_at <= $1
                AND NOT EXISTS (SELECT 1 FROM draft_finalize_failures f WHERE f.invoice_id = i.id)
              ORDER BY i.finalizes_at LIMIT $2)
             UNION ALL
             (SELECT i.tenant_id, f.retry_at FROM draft_finalize_failures f
              JOIN invoices i ON i.id = f.invoice_id
              WHERE f.retry_at <= $1 AND i.status = 'draft' AND i.finalizes_at <= $1
              ORDER BY f.retry_at LIMIT $2)
           ) d ORDER BY due LIMIT $2)
         ORDER BY tenant_id FOR UPDATE SKIP LOCKED",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// The due drafts of locked tenants, by period (read after the lock: a replica that finalized
/// them first has committed by then), without those waiting out a failure's delay.
pub async fn due_drafts(
    db: &mut PgConnection,
    tenants: &[String],
    now: DateTime<Utc>,
) -> Result<BTreeMap<Period, Vec<String>>> {
    let rows = sqlx::query(
        "SELECT tenant_id, period_start, period_end FROM invoices i
         WHERE tenant_id = ANY($1) AND status = 'draft' AND finalizes_at <= $2
           AND NOT EXISTS (SELECT 1 FROM draft_finalize_failures f
                           WHERE f.invoice_id = i.id AND f.retry_at > $2)
         ORDER BY tenant_id",
    )
    .bind(tenants)
    .bind(now)
    .fetch_all(db)
    .await?;
    by_period(&rows)
}

/// A due draft whose finalization failed, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedDraft {
    pub invoice_id: Uuid,
    pub tenant_id: String,
    /// Failed finalizations in a row, this one included.
    pub attempts: i32,
    pub retry_at: DateTime<Utc>,
    pub reason: String,
}

/// Records that the open drafts of `failed` tenants for the period starting `period_start`
/// could not be finalized at `now`, with the reason, and when each is tried again: `delay`
/// after its count of attempts in a row.
pub async fn record_failed_finalizations(
    db: &mut PgConnection,
    period_start: NaiveDate,
    failed: &[(String, String)],
    now: DateTime<Utc>,
    delay: impl Fn(i32) -> chrono::TimeDelta,
) -> Result<Vec<FailedDraft>> {
    let tenants: Vec<&str> = failed.iter().map(|f| f.0.as_str()).collect();
    let rows = sqlx::query(
        "SELECT i.id, i.tenant_id, coalesce(f.attempts, 0) AS attempts FROM invoices i
         LEFT JOIN draft_finalize_failures f ON f.invoice_id = i.id
         WHERE i.tenant_id = ANY($1) AND i.period_start = $2 AND i.status = 'draft'
         ORDER BY i.id",
    )
    .bind(&tenants)
    .bind(period_start)
    .fetch_all(&mut *db)
    .await?;
    let reasons: HashMap<&str, &str> = failed
        .iter()
        .map(|(t, r)| (t.as_str(), r.as_str()))
        .collect();
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let tenant_id: String = r.try_get("tenant_id")?;
        let attempts = r.try_get::<i32, _>("attempts")?.saturating_add(1);
        out.push(FailedDraft {
            invoice_id: r.try_get("id")?,
            reason: reasons
                .get(tenant_id.as_str())
                .copied()
                .unwrap_or_default()
                .to_string(),
            tenant_id,
            attempts,
            retry_at: now + delay(attempts),
        });
    }
    let ids: Vec<Uuid> = out.iter().map(|f| f.invoice_id).collect();
    let attempts: Vec<i32> = out.iter().map(|f| f.attempts).collect();
    let retry_at: Vec<DateTime<Utc>> = out.iter().map(|f| f.retry_at).collect();
    let reason_of: Vec<&str> = out.iter().map(|f| f.reason.as_str()).collect();
    sqlx::query(
        "INSERT INTO draft_finalize_failures (invoice_id, attempts, failed_at, retry_at, reason)
         SELECT id, n, $4, retry, reason
         FROM unnest($1::uuid[], $2::int[], $3::timestamptz[], $5::text[]) AS t(id, n, retry, reason)
         ON CONFLICT (invoice_id) DO UPDATE SET attempts = excluded.attempts,
           failed_at = excluded.failed_at, retry_at = excluded.retry_at, reason = excluded.reason",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&retry_at)
    .bind(now)
    .bind(&reason_of)
    .execute(db)
    .await?;
    Ok(out)
}

/// When the open draft of a tenant's period is issued, if it has one.
pub async fn open_window(
    db: &mut PgConnection,
    tenant: &str,
    period_start: NaiveDate,
) -> Result<Option<DateTime<Utc>>> {
    Ok(sqlx::query_scalar(
        "SELECT finalizes_at FROM invoices
         WHERE tenant_id = $1 AND period_start = $2 AND status = 'draft' AND finalizes_at IS NOT NULL",
    )
    .bind(tenant)
    .bind(period_start)
    .fetch_optional(db)
    .await?)
}

fn by_period(rows: &[sqlx::postgres::PgRow]) -> Result<BTreeMap<Period, Vec<String>>> {
    let mut out: BTreeMap<Period, Vec<String>> = BTreeMap::new();
    for r in rows {
        let period = Period::new(r.try_get("period_start")?, r.try_get("period_end")?)
            .map_err(|e| Error::internal(format!("stored invoice period: {e}")))?;
        out.entry(period).or_default().push(r.try_get("tenant_id")?);
    }
    Ok(out)
}
