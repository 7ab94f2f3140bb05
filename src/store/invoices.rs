//! Invoice rows and their lines.

use crate::error::{Error, Result};
use crate::invoice::{format_number, Invoice, Line, LineKind, QuoteLine, Status};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use std::collections::HashMap;
use uuid::Uuid;

pub(crate) const INVOICE_COLUMNS: &str =
    "id, number, tenant_id, period_start, period_end, currency, status,
    subtotal_cents, tax_cents, total_cents, issued_at, paid_at, voided_at, void_reason,
    supersedes, superseded_by";

pub(crate) fn invoice_from_row(row: &PgRow) -> Result<Invoice> {
    let status: &str = row.try_get("status")?;
    Ok(Invoice {
        id: row.try_get("id")?,
        number: row.try_get::<Option<i64>, _>("number")?.map(format_number),
        tenant_id: row.try_get("tenant_id")?,
        period_start: row.try_get("period_start")?,
        period_end: row.try_get("period_end")?,
        currency: row.try_get("currency")?,
        status: Status::parse(status)
            .ok_or_else(|| Error::Internal(format!("unknown status {status}")))?,
        subtotal_cents: row.try_get("subtotal_cents")?,
        tax_cents: row.try_get("tax_cents")?,
        total_cents: row.try_get("total_cents")?,
        issued_at: row.try_get("issued_at")?,
        paid_at: row.try_get("paid_at")?,
        voided_at: row.try_get("voided_at")?,
        void_reason: row.try_get("void_reason")?,
        supersedes: row.try_get("supersedes")?,
        superseded_by: row.try_get("superseded_by")?,
        lines: None,
    })
}

/// Loads the lines of the given invoices, in their order.
pub async fn lines_for(db: &mut PgConnection, ids: &[Uuid]) -> Result<HashMap<Uuid, Vec<Line>>> {
    let rows = sqlx::query(
        "SELECT * FROM invoice_lines WHERE invoice_id = ANY($1) ORDER BY invoice_id, position",
    )
    .bind(ids)
    .fetch_all(db)
    .await?;
    let mut out: HashMap<Uuid, Vec<Line>> = HashMap::new();
    for row in rows {
        let kind: &str = row.try_get("kind")?;
        out.entry(row.try_get("invoice_id")?)
            .or_default()
            .push(Line {
                id: row.try_get("id")?,
                line: QuoteLine {
                    kind: LineKind::parse(kind)
                        .ok_or_else(|| Error::Internal(format!("unknown line kind {kind}")))?,
                    deployment_id: row.try_get("deployment_id")?,
                    resource_kind: row.try_get("resource_kind")?,
                    description: row.try_get("description")?,
                    quantity: row.try_get("quantity")?,
                    unit_price: row.try_get("unit_price")?,
                    amount_cents: row.try_get("amount_cents")?,
                },
            });
    }
    Ok(out)
}

/// Loads invoices by id, with lines. `tenant` scopes the lookup: another tenant's invoice is
/// simply not found.
pub async fn get_many(
    db: &mut PgConnection,
    ids: &[Uuid],
    tenant: Option<&str>,
) -> Result<Vec<Invoice>> {
    let sql = format!(
        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = ANY($1) AND ($2::text IS NULL OR tenant_id = $2)"
    );
    let rows = sqlx::query(&sql)
        .bind(ids)
        .bind(tenant)
        .fetch_all(&mut *db)
        .await?;
    let mut invoices = rows
        .iter()
        .map(invoice_from_row)
        .collect::<Result<Vec<_>>>()?;
    let mut lines = lines_for(db, ids).await?;
    for inv in &mut invoices {
        inv.lines = Some(lines.remove(&inv.id).unwrap_or_default());
    }
    Ok(invoices)
}

pub async fn get(db: &mut PgConnection, id: Uuid, tenant: Option<&str>) -> Result<Invoice> {
    get_many(db, &[id], tenant)
        .await?
        .pop()
        .ok_or_else(|| Error::NotFound(format!("invoice {id} not found")))
}

/// The numbers of the given invoices (`None` for a draft that was never issued).
pub async fn numbers(db: &mut PgConnection, ids: &[Uuid]) -> Result<HashMap<Uuid, Option<String>>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Uuid, Option<i64>)> =
        sqlx::query_as("SELECT id, number FROM invoices WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(db)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, n)| (id, n.map(format_number)))
        .collect())
}

/// The live invoice of a tenant for a period, if any.
pub async fn live_for_period(
    db: &mut PgConnection,
    tenant: &str,
    period_start: chrono::NaiveDate,
) -> Result<Option<Invoice>> {
    let sql = format!(
        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE tenant_id = $1 AND period_start = $2 AND status <> 'void'"
    );
    let row = sqlx::query(&sql)
        .bind(tenant)
        .bind(period_start)
        .fetch_optional(&mut *db)
        .await?;
    match row {
        Some(row) => {
            let id: Uuid = row.try_get("id")?;
            get(db, id, None).await.map(Some)
        }
        None => Ok(None),
    }
}

/// Filters for a list; `tenant` is the caller's scope or an admin's filter.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub tenant: Option<String>,
    pub status: Option<Status>,
    pub period_start: Option<chrono::NaiveDate>,
    /// Keyset position: strictly after this (period_start, id), newest period first.
    pub after: Option<(chrono::NaiveDate, Uuid)>,
    pub limit: i64,
}

/// One page of invoices without lines, and whether another page follows.
pub async fn list(db: &mut PgConnection, f: &ListFilter) -> Result<(Vec<Invoice>, bool)> {
    let sql = format!(
        "SELECT {INVOICE_COLUMNS} FROM invoices
         WHERE ($1::text IS NULL OR tenant_id = $1)
           AND ($2::text IS NULL OR status = $2)
           AND ($3::date IS NULL OR period_start = $3)
           AND ($4::date IS NULL OR (period_start, id) < ($4, $5))
         ORDER BY period_start DESC, id DESC
         LIMIT $6"
    );
    let rows = sqlx::query(&sql)
        .bind(f.tenant.as_deref())
        .bind(f.status.map(Status::as_str))
        .bind(f.period_start)
        .bind(f.after.map(|a| a.0))
        .bind(f.after.map(|a| a.1))
        .bind(f.limit + 1)
        .fetch_all(db)
        .await?;
    let more = rows.len() as i64 > f.limit;
    let invoices = rows
        .iter()
        .take(f.limit as usize)
        .map(invoice_from_row)
        .collect::<Result<Vec<_>>>()?;
    Ok((invoices, more))
}

/// Locks an invoice for a status change.
pub async fn lock(db: &mut PgConnection, id: Uuid) -> Result<Invoice> {
    let sql = format!("SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1 FOR UPDATE");
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(&mut *db)
        .await?
        .ok_or_else(|| Error::NotFound(format!("invoice {id} not found")))?;
    invoice_from_row(&row)
}

/// Writes a status change decided by the caller (`crate::api`), which checked the transition.
pub async fn set_status(db: &mut PgConnection, inv: &Invoice) -> Result<()> {
    let number = super::rollup::number_of(inv)?;
    sqlx::query(
        "UPDATE invoices SET status = $2, number = $3, issued_at = $4, paid_at = $5,
           voided_at = $6, void_reason = $7, updated_at = now() WHERE id = $1",
    )
    .bind(inv.id)
    .bind(inv.status.as_str())
    .bind(number)
    .bind(inv.issued_at)
    .bind(inv.paid_at)
    .bind(inv.voided_at)
    .bind(inv.void_reason.as_deref())
    .execute(db)
    .await?;
    Ok(())
}

/// Amounts of live invoices for a period, grouped by deployment and by (line kind, resource kind).
pub async fn revenue_summary(
    db: &mut PgConnection,
    period_start: chrono::NaiveDate,
) -> Result<serde_json::Value> {
    let by_deployment = sqlx::query(
        "SELECT l.deployment_id, i.currency, sum(l.amount_cents)::bigint AS amount_cents, count(DISTINCT i.id) AS invoices
         FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id
         WHERE i.period_start = $1 AND i.status IN ('issued', 'paid') AND l.kind <> 'tax'
         GROUP BY l.deployment_id, i.currency ORDER BY amount_cents DESC, l.deployment_id",
    )
    .bind(period_start)
    .fetch_all(&mut *db)
    .await?;
    let by_kind = sqlx::query(
        "SELECT l.kind, l.resource_kind, i.currency, sum(l.amount_cents)::bigint AS amount_cents
         FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id
         WHERE i.period_start = $1 AND i.status IN ('issued', 'paid')
         GROUP BY l.kind, l.resource_kind, i.currency ORDER BY l.kind, l.resource_kind NULLS FIRST",
    )
    .bind(period_start)
    .fetch_all(&mut *db)
    .await?;
    let dep = by_deployment
        .iter()
        .map(|r| {
            Ok(serde_json::json!({
                "deployment_id": r.try_get::<Option<Uuid>, _>("deployment_id")?,
                "currency": r.try_get::<String, _>("currency")?,
                "amount_cents": r.try_get::<i64, _>("amount_cents")?,
            }))
        })
        .collect::<Result<Vec<_>>>()?;
    let kind = by_kind
        .iter()
        .map(|r| {
            Ok(serde_json::json!({
                "kind": r.try_get::<String, _>("kind")?,
                "resource_kind": r.try_get::<Option<String>, _>("resource_kind")?,
                "currency": r.try_get::<String, _>("currency")?,
                "amount_cents": r.try_get::<i64, _>("amount_cents")?,
            }))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(serde_json::json!({
        "period_start": period_start,
        "by_deployment": dep,
        "by_resource_kind": kind,
    }))
}
