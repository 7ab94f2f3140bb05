//! Invoices: the tenant's and the admin's reads, the preview of what the rollup would issue,
//! the admin's transitions (issue, mark paid, void) and the revenue summary.

use super::{check_date, scope_tenant, to_value, Ctx, Scope, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};
use crate::domain::catalog::TenantId;
use crate::domain::invoice::{check_paid_at, Invoice, Status};
use crate::domain::period::Period;
use crate::domain::quote::{self, MeteredSubscription};
use crate::error::{Error, Result};
use crate::rollup::invoice_event;
use crate::store::{self, invoices::ListFilter};
use crate::wire::{
    self, AdminPreviewRequest, IdRequest, InvoiceList, ListRequest, PeriodRequest, Preview,
    RevenueSummary, TransitionRequest,
};
use chrono::{DateTime, NaiveDate, SubsecRound, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

pub(super) async fn get(ctx: &Ctx<'_>, scope: &Scope, payload: &[u8]) -> Result<Value> {
    let req: IdRequest = wire::parse(payload)?;
    let mut conn = ctx.pool.acquire().await?;
    to_value(store::invoices::get(&mut conn, req.id, scope_tenant(scope)).await?)
}

/// `revenue.summary`: the period's issued and paid amounts by deployment and by resource kind.
pub(super) async fn revenue_summary(ctx: &Ctx<'_>, payload: &[u8]) -> Result<Value> {
    let req: PeriodRequest = wire::parse(payload)?;
    let start = req
        .period_start
        .ok_or_else(|| Error::bad("period_start is required"))?;
    let start = check_date("period_start", start)?;
    let mut conn = ctx.pool.acquire().await?;
    let (by_deployment, by_kind) = store::invoices::revenue_summary(&mut conn, start).await?;
    to_value(RevenueSummary::new(start, by_deployment, by_kind))
}

/// A tenant's preview on its own subject; the admin's names the tenant in its payload.
pub(super) async fn preview(ctx: &Ctx<'_>, scope: &Scope, payload: &[u8]) -> Result<Value> {
    let (tenant, period_start) = match scope {
        Scope::Tenant(tenant) => {
            let req: PeriodRequest = wire::parse(payload)?;
            (tenant.clone(), req.period_start)
        }
        Scope::Admin => {
            let req: AdminPreviewRequest = wire::parse(payload)?;
            (TenantId::parse(&req.tenant_id)?, req.period_start)
        }
    };
    preview_of(ctx.pool, &tenant, period_start, Utc::now()).await
}

/// Cursors are `<period_start>~<invoice id>` of the last row returned; opaque to callers.
fn encode_cursor(inv: &Invoice) -> String {
    format!("{}~{}", inv.period_start, inv.id)
}

fn decode_cursor(c: &str) -> Result<(NaiveDate, Uuid)> {
    let bad = || Error::bad("cursor is not one this service returned");
    let (d, id) = c.split_once('~').ok_or_else(bad)?;
    let d = d.parse().map_err(|_| bad())?;
    check_date("cursor", d).map_err(|_| bad())?;
    Ok((d, id.parse().map_err(|_| bad())?))
}

pub(super) async fn list(ctx: &Ctx<'_>, scope: &Scope, payload: &[u8]) -> Result<Value> {
    let req: ListRequest = wire::parse(payload)?;
    let limit = req.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(Error::bad(format!("limit must be 1-{MAX_LIST_LIMIT}")));
    }
    let status = req
        .status
        .as_deref()
        .map(|s| Status::parse(s).ok_or_else(|| Error::bad(format!("unknown status {s:?}"))))
        .transpose()?;
    // A tenant's scope is its subject; a tenant_id in its payload can never widen it.
    let tenant = match scope {
        Scope::Tenant(t) => Some(t.to_string()),
        Scope::Admin => req
            .tenant_id
            .as_deref()
            .map(TenantId::parse)
            .transpose()?
            .map(|t| t.to_string()),
    };
    let filter = ListFilter {
        tenant,
        status,
        period_start: req
            .period_start
            .map(|d| check_date("period_start", d))
            .transpose()?,
        after: req.cursor.as_deref().map(decode_cursor).transpose()?,
        limit,
    };
    let mut conn = ctx.pool.acquire().await?;
    let (invoices, more) = store::invoices::list(&mut conn, &filter).await?;
    let next_cursor = more.then(|| invoices.last().map(encode_cursor)).flatten();
    to_value(InvoiceList {
        invoices,
        next_cursor,
    })
}

/// Admin status changes. Paying a paid invoice returns it unchanged; any other illegal
/// transition is a `conflict`; a `paid_at` before the invoice's issue or in the future is a
/// `bad_request` (CONTRACT.md section 5, v3). The change and its event commit together.
pub(super) async fn transition(ctx: &Ctx<'_>, payload: &[u8], to: Status) -> Result<Value> {
    let req: TransitionRequest = wire::parse(payload)?;
    if let Some(at) = req.paid_at {
        check_date("paid_at", at.date_naive())?;
    }
    let now = Utc::now().trunc_subsecs(0);
    let mut tx = ctx.pool.begin().await?;
    let mut inv = store::invoices::lock(&mut tx, req.id).await?;
    // Checked before anything else, a paid invoice's repeat included: a payment time outside
    // [issued_at, now] is wrong whatever the invoice's state.
    if let (Status::Paid, Some(at)) = (to, req.paid_at) {
        check_paid_at(at, inv.issued_at, Utc::now()).map_err(Error::bad)?;
    }
    if inv.status == Status::Paid && to == Status::Paid {
        drop(tx);
        let mut conn = ctx.pool.acquire().await?;
        return to_value(store::invoices::get(&mut conn, req.id, None).await?);
    }
    if !inv.status.can_become(to) {
        return Err(Error::Conflict(format!(
            "invoice {} is {}; it cannot become {}",
            inv.id,
            inv.status.as_str(),
            to.as_str()
        )));
    }
    // A draft is issued the way a grace window closes: recomputed from all usage stored so
    // far, then numbered (CONTRACT.md section 5a), so usage that arrived while it was a draft
    // is billed.
    if to == Status::Issued {
        let issued = crate::rollup::finalize::early(&mut tx, &inv, now, ctx.seller).await?;
        tx.commit().await?;
        ctx.relay.notify_one();
        return to_value(issued);
    }
    // Issued invoices and open grace drafts were announced, so their voiding is too.
    let was_announced = inv.status == Status::Issued || inv.finalizes_at.is_some();
    match to {
        Status::Paid => inv.paid_at = Some(req.paid_at.unwrap_or(now)),
        Status::Void => {
            let reason = req.reason.unwrap_or_else(|| "voided by admin".into());
            // PostgreSQL text cannot hold NUL.
            if reason.trim().is_empty() || reason.len() > 500 || reason.contains('\0') {
                return Err(Error::bad("reason must be 1-500 characters, without NUL"));
            }
            inv.voided_at = Some(now);
            inv.void_reason = Some(reason);
        }
        // Issuing returned above; nothing returns to draft.
        Status::Draft | Status::Issued => {
            return Err(Error::Conflict("nothing returns to draft".into()))
        }
    }
    inv.status = to;
    store::invoices::set_status(&mut tx, &inv).await?;
    let full = store::invoices::get(&mut tx, inv.id, None).await?;
    // A draft that was never announced (a `draft` run's) is voided silently.
    if to != Status::Void || was_announced {
        store::outbox::insert(&mut tx, &[invoice_event(&full)]).await?;
    }
    tx.commit().await?;
    ctx.relay.notify_one();
    to_value(full)
}

/// The invoice the rollup would produce for a tenant from usage so far (not persisted).
async fn preview_of(
    pool: &PgPool,
    tenant_id: &TenantId,
    period_start: Option<NaiveDate>,
    now: DateTime<Utc>,
) -> Result<Value> {
    let period = match period_start {
        Some(s) => Period::monthly(check_date("period_start", s)?).map_err(Error::bad)?,
        None => Period::month_before(now + chrono::Months::new(1)),
    };
    let mut tx = pool.begin().await?;
    let tenant = store::catalog::tenant(&mut *tx, tenant_id)
        .await?
        .ok_or_else(|| store::catalog::unknown_tenant(tenant_id))?;
    let ids = vec![tenant_id.to_string()];
    let subs = store::rollup::subscriptions(&mut tx, &ids, period).await?;
    let successors = store::rollup::successors(&mut tx, &ids, period).await?;
    let mut usage = store::rollup::usage(&mut tx, &ids, period).await?;
    let plans: Vec<String> = subs.iter().map(|s| s.plan.clone()).collect();
    let addons: Vec<String> = subs.iter().flat_map(|s| s.addons.clone()).collect();
    let catalog = store::catalog::load_catalog(&mut tx, &plans, &addons).await?;
    let finalizes_at = store::grace::open_window(&mut tx, tenant_id.as_str(), period.start).await?;
    tx.rollback().await?;
    let metered: Vec<MeteredSubscription> = subs
        .into_iter()
        .map(|s| {
            Ok(MeteredSubscription {
                usage: usage.take(s.id).map_err(Error::bad)?,
                next_from: successors.get(&s.id).copied(),
                subscription: s,
            })
        })
        .collect::<Result<_>>()?;
    let q = quote::quote_tenant(&tenant, &metered, &catalog, period)?.quote;
    to_value(Preview {
        tenant_id: tenant.id.to_string(),
        period_start: period.start,
        period_end: period.end,
        currency: tenant.currency.to_string(),
        status: "preview",
        subtotal_cents: q.subtotal_cents,
        tax_cents: q.tax_cents,
        total_cents: q.total_cents,
        finalizes_at,
        lines: q.lines,
    })
}
