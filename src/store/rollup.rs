//! The rollup's queries: run bookkeeping, the batch reads, and multi-row batch writes.
//! Every write here runs inside the batch transaction that `crate::rollup` opens.

use crate::catalog::{Subscription, TenantId};
use crate::error::{Error, Result};
use crate::invoice::{Invoice, Status};
use crate::period::Period;
use crate::wire::RollupRequest;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Row};
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantFailure {
    pub tenant_id: String,
    pub reason: String,
}

/// A rollup run's committed progress.
#[derive(Debug, Clone, Default)]
pub struct RunState {
    pub cursor: Option<String>,
    pub completed: bool,
    pub issued: i32,
    pub drafted: i32,
    pub skipped: i32,
    pub failed: Vec<TenantFailure>,
    pub started_at: Option<DateTime<Utc>>,
}

fn run_from_row(row: &sqlx::postgres::PgRow) -> Result<RunState> {
    let failed: sqlx::types::Json<Vec<TenantFailure>> = row.try_get("tenants_failed")?;
    Ok(RunState {
        cursor: row.try_get("cursor_tenant")?,
        completed: row
            .try_get::<Option<DateTime<Utc>>, _>("completed_at")?
            .is_some(),
        issued: row.try_get("invoices_issued")?,
        drafted: row.try_get("invoices_drafted")?,
        skipped: row.try_get("invoices_skipped")?,
        failed: failed.0,
        started_at: row.try_get("started_at")?,
    })
}

/// Records a run on first delivery; a redelivery finds the row and resumes from its cursor.
pub async fn start_run(pool: &PgPool, key: &str, req: &RollupRequest) -> Result<RunState> {
    let tenants: Option<Vec<&str>> = req
        .tenant_ids
        .as_ref()
        .map(|ids| ids.iter().map(TenantId::as_str).collect());
    sqlx::query(
        "INSERT INTO rollup_runs (request_id, period_start, period_end, force, draft, tenant_ids)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(key)
    .bind(req.period.start)
    .bind(req.period.end)
    .bind(req.force)
    .bind(req.draft)
    .bind(tenants)
    .execute(pool)
    .await?;
    let row = sqlx::query("SELECT * FROM rollup_runs WHERE request_id = $1")
        .bind(key)
        .fetch_one(pool)
        .await?;
    run_from_row(&row)
}

/// Locks the run row so two deliveries of one request never work the same batch.
pub async fn lock_run(db: &mut PgConnection, key: &str) -> Result<RunState> {
    let row = sqlx::query("SELECT * FROM rollup_runs WHERE request_id = $1 FOR UPDATE")
        .bind(key)
        .fetch_one(db)
        .await?;
    run_from_row(&row)
}

/// Counts of one committed batch.
#[derive(Debug, Clone, Default)]
pub struct BatchCounts {
    pub issued: i32,
    pub drafted: i32,
    pub skipped: i32,
    pub failed: Vec<TenantFailure>,
}

pub async fn advance_run(
    db: &mut PgConnection,
    key: &str,
    cursor: &str,
    counts: &BatchCounts,
) -> Result<()> {
    sqlx::query(
        "UPDATE rollup_runs SET cursor_tenant = $2,
           invoices_issued = invoices_issued + $3, invoices_drafted = invoices_drafted + $4,
           invoices_skipped = invoices_skipped + $5, tenants_failed = tenants_failed || $6
         WHERE request_id = $1",
    )
    .bind(key)
    .bind(cursor)
    .bind(counts.issued)
    .bind(counts.drafted)
    .bind(counts.skipped)
    .bind(sqlx::types::Json(&counts.failed))
    .execute(db)
    .await?;
    Ok(())
}

pub async fn complete_run(
    db: &mut PgConnection,
    key: &str,
    failed: &[TenantFailure],
) -> Result<()> {
    sqlx::query(
        "UPDATE rollup_runs SET completed_at = now(), tenants_failed = tenants_failed || $2
         WHERE request_id = $1",
    )
    .bind(key)
    .bind(sqlx::types::Json(failed))
    .execute(db)
    .await?;
    Ok(())
}

/// The next tenants (in id order, after `cursor`) with a subscription active in the period.
pub async fn next_tenants(
    db: &mut PgConnection,
    req: &RollupRequest,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<String>> {
    let subset: Option<Vec<&str>> = req
        .tenant_ids
        .as_ref()
        .map(|ids| ids.iter().map(TenantId::as_str).collect());
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT tenant_id FROM subscriptions
         WHERE started_at < $1 AND (ended_at IS NULL OR ended_at > $2)
           AND ($3::text[] IS NULL OR tenant_id = ANY($3))
           AND ($4::text IS NULL OR tenant_id > $4)
         ORDER BY tenant_id LIMIT $5",
    )
    .bind(req.period.end_at())
    .bind(req.period.start_at())
    .bind(subset)
    .bind(cursor)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// The tenants with an active subscription in the period (the rollup's total, for progress).
pub async fn count_tenants(pool: &PgPool, req: &RollupRequest) -> Result<i64> {
    let subset: Option<Vec<&str>> = req
        .tenant_ids
        .as_ref()
        .map(|ids| ids.iter().map(TenantId::as_str).collect());
    Ok(sqlx::query_scalar(
        "SELECT count(DISTINCT tenant_id) FROM subscriptions
         WHERE started_at < $1 AND (ended_at IS NULL OR ended_at > $2)
           AND ($3::text[] IS NULL OR tenant_id = ANY($3))",
    )
    .bind(req.period.end_at())
    .bind(req.period.start_at())
    .bind(subset)
    .fetch_one(pool)
    .await?)
}

/// What a tenant already has for the period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Existing {
    /// Any invoice at all, void included.
    pub any: bool,
    /// The live (not void) invoice, if any.
    pub live: Option<(Uuid, Status)>,
}

pub async fn existing(
    db: &mut PgConnection,
    tenants: &[String],
    period_start: chrono::NaiveDate,
) -> Result<HashMap<String, Existing>> {
    let rows = sqlx::query(
        "SELECT tenant_id, id, status FROM invoices WHERE tenant_id = ANY($1) AND period_start = $2",
    )
    .bind(tenants)
    .bind(period_start)
    .fetch_all(db)
    .await?;
    let mut out: HashMap<String, Existing> = HashMap::new();
    for row in rows {
        let e = out.entry(row.try_get("tenant_id")?).or_default();
        e.any = true;
        let status = Status::parse(row.try_get("status")?)
            .ok_or_else(|| Error::Internal("unknown invoice status".into()))?;
        if status != Status::Void {
            e.live = Some((row.try_get("id")?, status));
        }
    }
    Ok(out)
}

/// The tenants' subscriptions active in the period, with their add-ons, in a stable order.
pub async fn subscriptions(
    db: &mut PgConnection,
    tenants: &[String],
    period: Period,
) -> Result<Vec<Subscription>> {
    let rows = sqlx::query(
        "SELECT s.id, s.tenant_id, s.deployment_id, s.plan_code, s.started_at, s.ended_at,
                coalesce(array_agg(a.addon_code ORDER BY a.position)
                         FILTER (WHERE a.addon_code IS NOT NULL), '{}') AS addons
         FROM subscriptions s LEFT JOIN subscription_addons a ON a.subscription_id = s.id
         WHERE s.tenant_id = ANY($1) AND s.started_at < $2 AND (s.ended_at IS NULL OR s.ended_at > $3)
         GROUP BY s.id
         ORDER BY s.tenant_id, s.deployment_id, s.started_at",
    )
    .bind(tenants)
    .bind(period.end_at())
    .bind(period.start_at())
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Subscription {
                id: r.try_get("id")?,
                tenant_id: TenantId::parse(r.try_get("tenant_id")?)?,
                deployment_id: r.try_get("deployment_id")?,
                plan: r.try_get("plan_code")?,
                addons: r.try_get("addons")?,
                started_at: r.try_get("started_at")?,
                ended_at: r.try_get("ended_at")?,
            })
        })
        .collect()
}

/// Usage summed per subscription and resource kind, counting only records inside both the
/// period and the subscription's own window (so a plan change splits usage by `occurred_at`).
pub async fn usage(
    db: &mut PgConnection,
    tenants: &[String],
    period: Period,
) -> Result<HashMap<Uuid, BTreeMap<String, Decimal>>> {
    let rows = sqlx::query(
        "SELECT s.id, u.resource_kind, sum(u.quantity) AS quantity
         FROM subscriptions s
         JOIN usage_records u ON u.deployment_id = s.deployment_id
          AND u.occurred_at >= greatest(s.started_at, $2)
          AND u.occurred_at < least(coalesce(s.ended_at, 'infinity'), $3)
         WHERE s.tenant_id = ANY($1) AND s.started_at < $3 AND (s.ended_at IS NULL OR s.ended_at > $2)
         GROUP BY s.id, u.resource_kind",
    )
    .bind(tenants)
    .bind(period.start_at())
    .bind(period.end_at())
    .fetch_all(db)
    .await?;
    let mut out: HashMap<Uuid, BTreeMap<String, Decimal>> = HashMap::new();
    for r in rows {
        out.entry(r.try_get("id")?)
            .or_default()
            .insert(r.try_get("resource_kind")?, r.try_get("quantity")?);
    }
    Ok(out)
}

/// Reserves `n` consecutive invoice numbers and returns the first. The counter row stays locked
/// until commit, and a rollback returns the numbers: no gaps.
pub async fn allocate_numbers(db: &mut PgConnection, n: i64) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "UPDATE invoice_numbers SET last_number = last_number + $1 RETURNING last_number - $1 + 1",
    )
    .bind(n)
    .fetch_one(db)
    .await?)
}

/// The stored form of an invoice's number.
pub(crate) fn number_of(inv: &Invoice) -> Result<Option<i64>> {
    inv.number
        .as_deref()
        .map(|n| {
            crate::invoice::parse_number(n)
                .ok_or_else(|| Error::Internal(format!("bad invoice number {n}")))
        })
        .transpose()
}

/// Voids superseded invoices, pointing each at its replacement (which the same transaction
/// inserts; the foreign key is deferred to commit).
pub async fn void_superseded(
    db: &mut PgConnection,
    pairs: &[(Uuid, Uuid)],
    now: DateTime<Utc>,
) -> Result<()> {
    if pairs.is_empty() {
        return Ok(());
    }
    let (old, new): (Vec<Uuid>, Vec<Uuid>) = pairs.iter().copied().unzip();
    sqlx::query(
        "UPDATE invoices i SET status = 'void', voided_at = $3, void_reason = 'superseded',
           superseded_by = t.new_id, updated_at = now()
         FROM unnest($1::uuid[], $2::uuid[]) AS t(old_id, new_id)
         WHERE i.id = t.old_id AND i.status = 'issued'",
    )
    .bind(&old)
    .bind(&new)
    .bind(now)
    .execute(db)
    .await?;
    Ok(())
}

/// Writes invoices: inserts new ones and rewrites recomputed drafts in place, then their lines.
pub async fn write_invoices(
    db: &mut PgConnection,
    new: &[Invoice],
    recomputed_drafts: &[Invoice],
    request_key: &str,
) -> Result<()> {
    if !new.is_empty() {
        let numbers = new.iter().map(number_of).collect::<Result<Vec<_>>>()?;
        sqlx::query(
            "INSERT INTO invoices (id, number, tenant_id, period_start, period_end, currency, status,
               subtotal_cents, tax_cents, total_cents, issued_at, supersedes, rollup_request_id)
             SELECT *, $13 FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::date[], $5::date[],
               $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $11::timestamptz[],
               $12::uuid[])",
        )
        .bind(new.iter().map(|i| i.id).collect::<Vec<_>>())
        .bind(numbers)
        .bind(new.iter().map(|i| i.tenant_id.as_str()).collect::<Vec<_>>())
        .bind(new.iter().map(|i| i.period_start).collect::<Vec<_>>())
        .bind(new.iter().map(|i| i.period_end).collect::<Vec<_>>())
        .bind(new.iter().map(|i| i.currency.as_str()).collect::<Vec<_>>())
        .bind(new.iter().map(|i| i.status.as_str()).collect::<Vec<_>>())
        .bind(new.iter().map(|i| i.subtotal_cents).collect::<Vec<_>>())
        .bind(new.iter().map(|i| i.tax_cents).collect::<Vec<_>>())
        .bind(new.iter().map(|i| i.total_cents).collect::<Vec<_>>())
        .bind(new.iter().map(|i| i.issued_at).collect::<Vec<_>>())
        .bind(new.iter().map(|i| i.supersedes).collect::<Vec<_>>())
        .bind(request_key)
        .execute(&mut *db)
        .await?;
    }
    if !recomputed_drafts.is_empty() {
        let drafts = recomputed_drafts;
        let ids: Vec<Uuid> = drafts.iter().map(|i| i.id).collect();
        sqlx::query("DELETE FROM invoice_lines WHERE invoice_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *db)
            .await?;
        let numbers = drafts.iter().map(number_of).collect::<Result<Vec<_>>>()?;
        sqlx::query(
            "UPDATE invoices i SET number = t.number, status = t.status, currency = t.currency,
               subtotal_cents = t.subtotal, tax_cents = t.tax, total_cents = t.total,
               issued_at = t.issued_at, period_end = t.period_end, rollup_request_id = $10,
               updated_at = now()
             FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::bigint[],
               $6::bigint[], $7::bigint[], $8::timestamptz[], $9::date[])
               AS t(id, number, status, currency, subtotal, tax, total, issued_at, period_end)
             WHERE i.id = t.id AND i.status = 'draft'",
        )
        .bind(&ids)
        .bind(numbers)
        .bind(drafts.iter().map(|i| i.status.as_str()).collect::<Vec<_>>())
        .bind(
            drafts
                .iter()
                .map(|i| i.currency.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(drafts.iter().map(|i| i.subtotal_cents).collect::<Vec<_>>())
        .bind(drafts.iter().map(|i| i.tax_cents).collect::<Vec<_>>())
        .bind(drafts.iter().map(|i| i.total_cents).collect::<Vec<_>>())
        .bind(drafts.iter().map(|i| i.issued_at).collect::<Vec<_>>())
        .bind(drafts.iter().map(|i| i.period_end).collect::<Vec<_>>())
        .bind(request_key)
        .execute(&mut *db)
        .await?;
    }
    insert_lines(db, new.iter().chain(recomputed_drafts)).await
}

async fn insert_lines<'a>(
    db: &mut PgConnection,
    invoices: impl Iterator<Item = &'a Invoice>,
) -> Result<()> {
    let mut ids = Vec::new();
    let mut invoice_ids = Vec::new();
    let mut positions = Vec::new();
    let mut kinds = Vec::new();
    let mut deployments = Vec::new();
    let mut resource_kinds = Vec::new();
    let mut descriptions = Vec::new();
    let mut quantities = Vec::new();
    let mut unit_prices = Vec::new();
    let mut amounts = Vec::new();
    for inv in invoices {
        for (pos, l) in inv.lines.iter().flatten().enumerate() {
            ids.push(l.id);
            invoice_ids.push(inv.id);
            positions.push(pos as i32);
            kinds.push(l.line.kind.as_str());
            deployments.push(l.line.deployment_id);
            resource_kinds.push(l.line.resource_kind.as_deref());
            descriptions.push(l.line.description.as_str());
            quantities.push(l.line.quantity);
            unit_prices.push(l.line.unit_price);
            amounts.push(l.line.amount_cents);
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO invoice_lines (id, invoice_id, position, kind, deployment_id, resource_kind,
           description, quantity, unit_price, amount_cents)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::uuid[], $6::text[],
           $7::text[], $8::numeric[], $9::numeric[], $10::bigint[])",
    )
    .bind(ids)
    .bind(invoice_ids)
    .bind(positions)
    .bind(kinds)
    .bind(deployments)
    .bind(resource_kinds)
    .bind(descriptions)
    .bind(quantities)
    .bind(unit_prices)
    .bind(amounts)
    .execute(db)
    .await?;
    Ok(())
}

/// Deployments with usage in the period that no subscription window covers.
pub async fn unbilled_deployments(db: &mut PgConnection, period: Period) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(DISTINCT u.deployment_id) FROM usage_records u
         WHERE u.occurred_at >= $1 AND u.occurred_at < $2
           AND NOT EXISTS (SELECT 1 FROM subscriptions s WHERE s.deployment_id = u.deployment_id
                 AND u.occurred_at >= s.started_at AND (s.ended_at IS NULL OR u.occurred_at < s.ended_at))",
    )
    .bind(period.start_at())
    .bind(period.end_at())
    .fetch_one(db)
    .await?)
}

/// Of the requested tenants, those with no subscription active in the period.
pub async fn requested_without_subscription(
    db: &mut PgConnection,
    req: &RollupRequest,
) -> Result<Vec<String>> {
    let Some(ids) = &req.tenant_ids else {
        return Ok(vec![]);
    };
    let ids: Vec<&str> = ids.iter().map(TenantId::as_str).collect();
    Ok(sqlx::query_scalar(
        "SELECT t FROM unnest($1::text[]) AS t WHERE NOT EXISTS (
           SELECT 1 FROM subscriptions s WHERE s.tenant_id = t
             AND s.started_at < $2 AND (s.ended_at IS NULL OR s.ended_at > $3))
         ORDER BY t",
    )
    .bind(ids)
    .bind(req.period.end_at())
    .bind(req.period.start_at())
    .fetch_all(db)
    .await?)
}
