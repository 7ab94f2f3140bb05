//! Grace-window rows: the `finalizes_at` of open drafts, the refresh queue that usage ingestion
//! fills (`draft_refresh`), and the finalizer's scan of due drafts.
//!
//! The refresher and the finalizer lock the tenants they work on first, with `SKIP LOCKED`, in
//! tenant order, the way a rollup batch and an admin transition lock them: so two replicas never
//! take the same tenant, and nothing waits on them in a cycle. Usage ingestion holds its tenants
//! `FOR SHARE` while it inserts and marks, so a tenant being ingested is simply taken next time.

use crate::error::{Error, Result};
use crate::period::Period;
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
pub async fn lock_due_tenants(
    db: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT tenant_id FROM tenants WHERE tenant_id IN (
           SELECT tenant_id FROM invoices WHERE status = 'draft' AND finalizes_at <= $1
           ORDER BY finalizes_at LIMIT $2)
         ORDER BY tenant_id FOR UPDATE SKIP LOCKED",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// The due drafts of locked tenants, by period (read after the lock: a replica that finalized
/// them first has committed by then).
pub async fn due_drafts(
    db: &mut PgConnection,
    tenants: &[String],
    now: DateTime<Utc>,
) -> Result<BTreeMap<Period, Vec<String>>> {
    let rows = sqlx::query(
        "SELECT tenant_id, period_start, period_end FROM invoices
         WHERE tenant_id = ANY($1) AND status = 'draft' AND finalizes_at <= $2
         ORDER BY tenant_id",
    )
    .bind(tenants)
    .bind(now)
    .fetch_all(db)
    .await?;
    by_period(&rows)
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
