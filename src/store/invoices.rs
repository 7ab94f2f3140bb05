//! Invoice rows and their lines: reads, the numbering counter, and the guarded writes that the
//! rollup and the admin transitions share.

use crate::domain::abn::Abn;
use crate::domain::document::{Parties, Recipient, Seller};
use crate::domain::invoice::{
    format_number, DeploymentRevenue, Invoice, KindRevenue, Line, LineKind, QuoteLine, Status,
};
use crate::domain::period::Period;
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use std::collections::HashMap;
use uuid::Uuid;

pub(crate) const INVOICE_COLUMNS: &str =
    "id, number, tenant_id, period_start, period_end, currency, status,
    subtotal_cents, tax_cents, total_cents, issued_at, paid_at, voided_at, void_reason,
    supersedes, superseded_by, finalizes_at,
    seller_name, seller_abn, seller_address, recipient_name, recipient_abn, recipient_address";

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
            .ok_or_else(|| Error::internal(format!("unknown status {status}")))?,
        subtotal_cents: row.try_get("subtotal_cents")?,
        tax_cents: row.try_get("tax_cents")?,
        total_cents: row.try_get("total_cents")?,
        issued_at: row.try_get("issued_at")?,
        finalizes_at: row.try_get("finalizes_at")?,
        paid_at: row.try_get("paid_at")?,
        voided_at: row.try_get("voided_at")?,
        void_reason: row.try_get("void_reason")?,
        supersedes: row.try_get("supersedes")?,
        superseded_by: row.try_get("superseded_by")?,
        parties: parties_from_row(row)?,
        lines: None,
    })
}

/// The parties an issued invoice recorded, if it recorded its recipient (see migration 0074).
fn parties_from_row(row: &PgRow) -> Result<Option<Parties>> {
    let Some(recipient_name) = row.try_get::<Option<String>, _>("recipient_name")? else {
        return Ok(None);
    };
    let id: Uuid = row.try_get("id")?;
    // Checked on the way in; as for tenants, an ABN edited by hand into one that fails the
    // checksum is logged and treated as absent rather than stopping every read of the invoice.
    let abn = |column: &str| -> Result<Option<Abn>> {
        Ok(row.try_get::<Option<&str>, _>(column)?.and_then(|digits| {
            Abn::parse(digits)
                .map_err(
                    |e| tracing::warn!(invoice = %id, column, error = %e, "ignoring a stored ABN"),
                )
                .ok()
        }))
    };
    let seller = match (
        row.try_get::<Option<String>, _>("seller_name")?,
        abn("seller_abn")?,
    ) {
        (Some(name), Some(abn)) => Some(Seller {
            name,
            abn,
            address: row.try_get("seller_address")?,
        }),
        _ => None,
    };
    Ok(Some(Parties {
        seller,
        recipient: Recipient {
            name: recipient_name,
            abn: abn("recipient_abn")?,
            address: row.try_get("recipient_address")?,
        },
    }))
}

/// Records the parties of an issued invoice that did not record them all (see
/// [`Parties::completed`]): only the parts still missing are written, so of two renders at once
/// the first to commit decides, and both return what is stored.
pub async fn record_parties(db: &mut PgConnection, id: Uuid, parties: &Parties) -> Result<Parties> {
    let seller = parties.seller.as_ref();
    let recipient = &parties.recipient;
    let row = sqlx::query(
        "UPDATE invoices SET
           seller_name = CASE WHEN seller_name IS NULL THEN $2 ELSE seller_name END,
           seller_abn = CASE WHEN seller_name IS NULL THEN $3 ELSE seller_abn END,
           seller_address = CASE WHEN seller_name IS NULL THEN $4 ELSE seller_address END,
           recipient_name = CASE WHEN recipient_name IS NULL THEN $5 ELSE recipient_name END,
           recipient_abn = CASE WHEN recipient_name IS NULL THEN $6 ELSE recipient_abn END,
           recipient_address =
             CASE WHEN recipient_name IS NULL THEN $7 ELSE recipient_address END
         WHERE id = $1 AND number IS NOT NULL
         RETURNING id, seller_name, seller_abn, seller_address,
                   recipient_name, recipient_abn, recipient_address",
    )
    .bind(id)
    .bind(seller.map(|s| s.name.as_str()))
    .bind(seller.map(|s| s.abn.digits()))
    .bind(seller.and_then(|s| s.address.as_deref()))
    .bind(recipient.name.as_str())
    .bind(recipient.abn.as_ref().map(Abn::digits))
    .bind(recipient.address.as_deref())
    .fetch_optional(db)
    .await?
    .ok_or_else(|| Error::NotFound(format!("issued invoice {id} not found")))?;
    parties_from_row(&row)?
        .ok_or_else(|| Error::internal(format!("invoice {id}: its recipient was not recorded")))
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
                        .ok_or_else(|| Error::internal(format!("unknown line kind {kind}")))?,
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

/// Locks an invoice for a status change: its tenant first, then the invoice, the order a rollup
/// batch takes them in, so an admin transition and a rollup of the same tenant run one after
/// the other, never interleaved.
pub async fn lock(db: &mut PgConnection, id: Uuid) -> Result<Invoice> {
    sqlx::query(
        "SELECT 1 FROM tenants WHERE tenant_id = (SELECT tenant_id FROM invoices WHERE id = $1)
         FOR UPDATE",
    )
    .bind(id)
    .execute(&mut *db)
    .await?;
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
    let number = number_of(inv)?;
    let done = sqlx::query(
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
    expect_rows("status change", 1, done.rows_affected())
}

/// Amounts of live invoices for a period, grouped by deployment and by (line kind, resource kind).
pub async fn revenue_summary(
    db: &mut PgConnection,
    period_start: chrono::NaiveDate,
) -> Result<(Vec<DeploymentRevenue>, Vec<KindRevenue>)> {
    let by_deployment = sqlx::query(
        "SELECT l.deployment_id, i.currency, sum(l.amount_cents)::bigint AS amount_cents
         FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id
         WHERE i.period_start = $1 AND i.status IN ('issued', 'paid') AND l.kind <> 'tax'
         GROUP BY l.deployment_id, i.currency ORDER BY amount_cents DESC, l.deployment_id",
    )
    .bind(period_start)
    .fetch_all(&mut *db)
    .await?
    .iter()
    .map(|r| {
        Ok(DeploymentRevenue {
            deployment_id: r.try_get("deployment_id")?,
            currency: r.try_get("currency")?,
            amount_cents: r.try_get("amount_cents")?,
        })
    })
    .collect::<Result<_>>()?;
    let by_kind = sqlx::query(
        "SELECT l.kind, l.resource_kind, i.currency, sum(l.amount_cents)::bigint AS amount_cents
         FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id
         WHERE i.period_start = $1 AND i.status IN ('issued', 'paid')
         GROUP BY l.kind, l.resource_kind, i.currency ORDER BY l.kind, l.resource_kind NULLS FIRST",
    )
    .bind(period_start)
    .fetch_all(&mut *db)
    .await?
    .iter()
    .map(|r| {
        Ok(KindRevenue {
            kind: r.try_get("kind")?,
            resource_kind: r.try_get("resource_kind")?,
            currency: r.try_get("currency")?,
            amount_cents: r.try_get("amount_cents")?,
        })
    })
    .collect::<Result<_>>()?;
    Ok((by_deployment, by_kind))
}

/// What a tenant already has for a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Existing {
    /// Any invoice at all, void included.
    pub any: bool,
    /// The live (not void) invoice, if any.
    pub live: Option<(Uuid, Status)>,
}

/// Locks and reads the tenants' invoices for a period. Taken after the tenants' own locks, in
/// the same order as an admin transition (tenant, then invoice), so that a rollup and an admin
/// `issue`/`void` of the same invoice exclude each other instead of interleaving.
pub async fn lock_existing(
    db: &mut PgConnection,
    tenants: &[String],
    period_start: chrono::NaiveDate,
) -> Result<HashMap<String, Existing>> {
    let rows = sqlx::query(
        "SELECT tenant_id, id, status FROM invoices WHERE tenant_id = ANY($1) AND period_start = $2
         ORDER BY id FOR UPDATE",
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

/// A tenant's live invoice for another period that shares days with the one being billed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub id: Uuid,
    pub number: Option<String>,
    pub period: Period,
    pub status: Status,
}

/// Of the tenants (locked by the caller), those with a live invoice for a period other than
/// `period` that shares a day with it, and that invoice. No two live invoices of a tenant may
/// share a day (`invoices_live_periods_disjoint` refuses it); a batch asks first so that such a
/// tenant fails alone instead of failing its batch. Because a tenant's live invoices are
/// disjoint, their ends follow the order of their starts: only the one starting last before
/// `period` ends can reach into it, so each tenant costs one backward probe of
/// `invoices_one_live_per_period`, however long its history.
pub async fn overlapping(
    db: &mut PgConnection,
    tenants: &[String],
    period: Period,
) -> Result<HashMap<String, Overlap>> {
    let rows = sqlx::query(
        "SELECT t.tenant_id, i.id, i.number, i.period_start, i.period_end, i.status
         FROM unnest($1::text[]) AS t(tenant_id)
         CROSS JOIN LATERAL (
           SELECT id, number, period_start, period_end, status FROM invoices
           WHERE tenant_id = t.tenant_id AND status <> 'void' AND period_start < $3
           ORDER BY period_start DESC LIMIT 1) i
         WHERE i.period_end > $2 AND (i.period_start, i.period_end) <> ($2, $3)",
    )
    .bind(tenants)
    .bind(period.start)
    .bind(period.end)
    .fetch_all(db)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let status: &str = row.try_get("status")?;
        let stored = Period::new(row.try_get("period_start")?, row.try_get("period_end")?)
            .map_err(|e| Error::internal(format!("stored invoice period: {e}")))?;
        out.insert(
            row.try_get("tenant_id")?,
            Overlap {
                id: row.try_get("id")?,
                number: row.try_get::<Option<i64>, _>("number")?.map(format_number),
                period: stored,
                status: Status::parse(status)
                    .ok_or_else(|| Error::internal(format!("unknown status {status}")))?,
            },
        );
    }
    Ok(out)
}

/// Reserves `n` consecutive invoice numbers and returns the first. The counter row stays locked
/// until commit and a rollback returns the numbers, so there are no gaps; callers take it as
/// late as they can, right before their last write, so concurrent batches overlap.
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
            crate::domain::invoice::parse_number(n)
                .ok_or_else(|| Error::internal(format!("bad invoice number {n}")))
        })
        .transpose()
}

/// A guarded write must touch exactly the rows it was meant for; anything else means the state
/// moved under the caller, and the whole transaction must not commit.
fn expect_rows(what: &str, want: usize, got: u64) -> Result<()> {
    if got == want as u64 {
        Ok(())
    } else {
        Err(Error::internal(format!(
            "{what}: {got} rows changed, expected {want}; refusing to commit"
        )))
    }
}

/// Deletes drafts (with their lines) so that their recomputed versions can be inserted under
/// the same ids.
pub async fn delete_drafts(db: &mut PgConnection, ids: &[Uuid]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let done = sqlx::query("DELETE FROM invoices WHERE id = ANY($1) AND status = 'draft'")
        .bind(ids)
        .execute(db)
        .await?;
    expect_rows(
        "deleting recomputed drafts",
        ids.len(),
        done.rows_affected(),
    )
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
    let done = sqlx::query(
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
    expect_rows(
        "voiding superseded invoices",
        pairs.len(),
        done.rows_affected(),
    )
}

/// Inserts the lines of new invoices (before the invoices themselves: the foreign key is
/// deferred, so the invoice rows can be the batch's last write).
pub async fn insert_lines<'a>(
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

/// Inserts invoice rows: the last write of a batch, made while the number counter is held.
/// Issued ones record their parties in the same statement (the database refuses them otherwise).
pub async fn insert(db: &mut PgConnection, invoices: &[Invoice], request_key: &str) -> Result<()> {
    let numbers = invoices.iter().map(number_of).collect::<Result<Vec<_>>>()?;
    let parties = PartyColumns::of(invoices.iter().map(|i| i.parties.as_ref()));
    sqlx::query(
        "INSERT INTO invoices (id, number, tenant_id, period_start, period_end, currency, status,
           subtotal_cents, tax_cents, total_cents, issued_at, supersedes, finalizes_at,
           seller_name, seller_abn, seller_address, recipient_name, recipient_abn,
           recipient_address, rollup_request_id)
         SELECT *, $20 FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::date[], $5::date[],
           $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $11::timestamptz[],
           $12::uuid[], $13::timestamptz[], $14::text[], $15::text[], $16::text[], $17::text[],
           $18::text[], $19::text[])",
    )
    .bind(invoices.iter().map(|i| i.id).collect::<Vec<_>>())
    .bind(numbers)
    .bind(
        invoices
            .iter()
            .map(|i| i.tenant_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(invoices.iter().map(|i| i.period_start).collect::<Vec<_>>())
    .bind(invoices.iter().map(|i| i.period_end).collect::<Vec<_>>())
    .bind(
        invoices
            .iter()
            .map(|i| i.currency.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        invoices
            .iter()
            .map(|i| i.status.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        invoices
            .iter()
            .map(|i| i.subtotal_cents)
            .collect::<Vec<_>>(),
    )
    .bind(invoices.iter().map(|i| i.tax_cents).collect::<Vec<_>>())
    .bind(invoices.iter().map(|i| i.total_cents).collect::<Vec<_>>())
    .bind(invoices.iter().map(|i| i.issued_at).collect::<Vec<_>>())
    .bind(invoices.iter().map(|i| i.supersedes).collect::<Vec<_>>())
    .bind(invoices.iter().map(|i| i.finalizes_at).collect::<Vec<_>>())
    .bind(parties.seller_name)
    .bind(parties.seller_abn)
    .bind(parties.seller_address)
    .bind(parties.recipient_name)
    .bind(parties.recipient_abn)
    .bind(parties.recipient_address)
    .bind(request_key)
    .execute(db)
    .await?;
    Ok(())
}

/// Documents' parties as the arrays of a multi-row insert, one entry per document (all `None`
/// where a document recorded none).
#[derive(Default)]
struct PartyColumns<'a> {
    seller_name: Vec<Option<&'a str>>,
    seller_abn: Vec<Option<&'a str>>,
    seller_address: Vec<Option<&'a str>>,
    recipient_name: Vec<Option<&'a str>>,
    recipient_abn: Vec<Option<&'a str>>,
    recipient_address: Vec<Option<&'a str>>,
}

impl<'a> PartyColumns<'a> {
    fn of(documents: impl Iterator<Item = Option<&'a Parties>>) -> Self {
        let mut c = PartyColumns::default();
        for p in documents {
            let seller = p.and_then(|p| p.seller.as_ref());
            let recipient = p.map(|p| &p.recipient);
            c.seller_name.push(seller.map(|s| s.name.as_str()));
            c.seller_abn.push(seller.map(|s| s.abn.digits()));
            c.seller_address
                .push(seller.and_then(|s| s.address.as_deref()));
            c.recipient_name.push(recipient.map(|r| r.name.as_str()));
            c.recipient_abn
                .push(recipient.and_then(|r| r.abn.as_ref()).map(Abn::digits));
            c.recipient_address
                .push(recipient.and_then(|r| r.address.as_deref()));
        }
        c
    }
}
