//! Invoice rows and their lines.

use crate::error::{Error, Result};
use crate::invoice::{format_number, Invoice, Line, LineKind, QuoteLine, Status};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use std::collections::HashMap;
use uuid::Uuid;

pub(crate) const INVOICE_COLUMNS: &str = "id, number, tenant_id, period_start, period_end, currency, status,
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
        out.entry(row.try_get("invoice_id")?).or_default().push(Line {
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
    let rows = sqlx::query(&sql).bind(ids).bind(tenant).fetch_all(&mut *db).await?;
    let mut invoices = rows.iter().map(invoice_from_row).collect::<Result<Vec<_>>>()?;
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
