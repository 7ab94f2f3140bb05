//! Request handlers, independent of the transport: a payload and the caller's scope in, a
//! JSON value or a typed error out. `bus::service` puts them on NATS.

use crate::domain::catalog::TenantPut;
use crate::domain::catalog::{
    Addon, Catalog, Currency, Plan, Subscription, TaxPolicy, Tenant, TenantId,
};
use crate::domain::document::{self, Format, Parties, Recipient, Related, Seller, TaxInvoiceView};
use crate::domain::invoice::{check_paid_at, format_number, Invoice, Status};
use crate::domain::money::Dec;
use crate::domain::period::Period;
use crate::domain::quote::{self, MeteredSubscription};
use crate::error::{Error, Result};
use crate::rollup::invoice_event;
use crate::store::{self, invoices::ListFilter};
use crate::wire::{self, AddonDto, PlanDto, SubscriptionDto, TenantDto, TenantPutDto};
use chrono::{DateTime, Datelike, NaiveDate, SubsecRound, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::BTreeMap;
use tokio::sync::Notify;
use uuid::Uuid;

pub const MAX_LIST_LIMIT: i64 = 500;
pub const DEFAULT_LIST_LIMIT: i64 = 50;

/// Who is asking, as derived from the subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Admin,
    Tenant(TenantId),
}

/// Every request-reply endpoint of CONTRACT.md section 6; `bus::service` puts each on NATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    PlansPut,
    AddonsPut,
    SubscriptionsPut,
    TenantsPut,
    AdminList,
    AdminGet,
    AdminIssue,
    AdminMarkPaid,
    AdminVoid,
    RevenueSummary,
    TenantList,
    TenantGet,
    TenantPreview,
    AdminPreview,
    Quote,
    Health,
    AdminRender,
    TenantRender,
}

impl Endpoint {
    pub const ALL: [Endpoint; 18] = [
        Endpoint::PlansPut,
        Endpoint::AddonsPut,
        Endpoint::SubscriptionsPut,
        Endpoint::TenantsPut,
        Endpoint::AdminList,
        Endpoint::AdminGet,
        Endpoint::AdminIssue,
        Endpoint::AdminMarkPaid,
        Endpoint::AdminVoid,
        Endpoint::RevenueSummary,
        Endpoint::TenantList,
        Endpoint::TenantGet,
        Endpoint::TenantPreview,
        Endpoint::AdminPreview,
        Endpoint::Quote,
        Endpoint::Health,
        Endpoint::AdminRender,
        Endpoint::TenantRender,
    ];

    pub fn subject(self) -> &'static str {
        match self {
            Endpoint::PlansPut => "billing.admin.plans.put",
            Endpoint::AddonsPut => "billing.admin.addons.put",
            Endpoint::SubscriptionsPut => "billing.admin.subscriptions.put",
            Endpoint::TenantsPut => "billing.admin.tenants.put",
            Endpoint::AdminList => "billing.admin.invoices.list",
            Endpoint::AdminGet => "billing.admin.invoices.get",
            Endpoint::AdminIssue => "billing.admin.invoices.issue",
            Endpoint::AdminMarkPaid => "billing.admin.invoices.mark_paid",
            Endpoint::AdminVoid => "billing.admin.invoices.void",
            Endpoint::RevenueSummary => "billing.admin.revenue.summary",
            Endpoint::TenantList => "billing.tenant.*.invoices.list",
            Endpoint::TenantGet => "billing.tenant.*.invoices.get",
            Endpoint::TenantPreview => "billing.tenant.*.invoices.preview",
            // An extension of the contract: the admin cannot ask on a tenant's subject (its
            // answer goes only to that tenant's inbox), so it previews on its own.
            Endpoint::AdminPreview => "billing.admin.invoices.preview",
            Endpoint::Quote => "billing.quote",
            Endpoint::Health => "billing.admin.health",
            Endpoint::AdminRender => "billing.admin.invoices.render",
            Endpoint::TenantRender => "billing.tenant.*.invoices.render",
        }
    }

    /// Services API endpoint names may not contain dots or wildcards.
    pub fn name(self) -> String {
        self.subject()
            .trim_start_matches("billing.")
            .replace(".*", "")
            .replace('.', "-")
    }

    /// The caller's scope, from the subject it was reached on.
    pub fn scope(self, subject: &str) -> Result<Scope, Error> {
        if !self.subject().starts_with("billing.tenant.") {
            return Ok(Scope::Admin);
        }
        let tenant = subject
            .split('.')
            .nth(2)
            .ok_or_else(|| Error::bad("subject has no tenant"))?;
        Ok(Scope::Tenant(TenantId::parse(tenant)?))
    }
}

pub struct Ctx<'a> {
    pub pool: &'a PgPool,
    pub relay: &'a Notify,
    /// The supplier on tax invoice documents; `None` when documents are not enabled.
    pub seller: Option<&'a Seller>,
    /// Requests this replica refused to act on (their reply subject was not the asker's
    /// inbox), reported by `billing.admin.health`.
    pub requests_refused: u64,
}

fn to_value(v: impl serde::Serialize) -> Result<Value> {
    serde_json::to_value(v).map_err(Error::internal)
}

pub async fn handle(ctx: &Ctx<'_>, ep: Endpoint, scope: &Scope, payload: &[u8]) -> Result<Value> {
    match ep {
        Endpoint::PlansPut => {
            let plan = Plan::try_from(wire::parse::<PlanDto>(payload)?)?;
            store::catalog::put_plan(ctx.pool, &plan).await?;
            to_value(PlanDto::from(&plan))
        }
        Endpoint::AddonsPut => {
            let addon = Addon::try_from(wire::parse::<AddonDto>(payload)?)?;
            store::catalog::put_addon(ctx.pool, &addon).await?;
            to_value(AddonDto::from(&addon))
        }
        Endpoint::SubscriptionsPut => {
            let sub = Subscription::try_from(wire::parse::<SubscriptionDto>(payload)?)?;
            store::catalog::put_subscription(ctx.pool, &sub).await?;
            to_value(SubscriptionDto::from(&sub))
        }
        Endpoint::TenantsPut => {
            let put = TenantPut::try_from(wire::parse::<TenantPutDto>(payload)?)?;
            let tenant = store::catalog::put_tenant(ctx.pool, &put).await?;
            to_value(TenantDto::from(&tenant))
        }
        Endpoint::AdminList | Endpoint::TenantList => list(ctx, scope, payload).await,
        Endpoint::AdminGet | Endpoint::TenantGet => {
            let req: IdRequest = wire::parse(payload)?;
            let mut conn = ctx.pool.acquire().await?;
            let inv = store::invoices::get(&mut conn, req.id, scope_tenant(scope)).await?;
            to_value(inv)
        }
        Endpoint::AdminIssue => transition(ctx, payload, Status::Issued).await,
        Endpoint::AdminMarkPaid => transition(ctx, payload, Status::Paid).await,
        Endpoint::AdminVoid => transition(ctx, payload, Status::Void).await,
        Endpoint::RevenueSummary => {
            let req: PeriodRequest = wire::parse(payload)?;
            let start = req
                .period_start
                .ok_or_else(|| Error::bad("period_start is required"))?;
            let start = check_date("period_start", start)?;
            let mut conn = ctx.pool.acquire().await?;
            store::invoices::revenue_summary(&mut conn, start).await
        }
        Endpoint::TenantPreview => {
            let Scope::Tenant(tenant) = scope else {
                return Err(Error::bad("preview is a tenant endpoint"));
            };
            let req: PeriodRequest = wire::parse(payload)?;
            preview(ctx.pool, tenant, req.period_start, Utc::now()).await
        }
        Endpoint::AdminPreview => {
            let req: AdminPreviewRequest = wire::parse(payload)?;
            let tenant = TenantId::parse(&req.tenant_id)?;
            preview(ctx.pool, &tenant, req.period_start, Utc::now()).await
        }
        Endpoint::Quote => quote_request(ctx.pool, wire::parse(payload)?, Utc::now()).await,
        Endpoint::Health => {
            let _: HealthRequest = wire::parse(payload)?;
            Ok(health(ctx.pool, ctx.requests_refused).await)
        }
        Endpoint::AdminRender | Endpoint::TenantRender => render(ctx, scope, payload).await,
    }
}

/// `billing.admin.health` takes no fields; `{}` asks.
#[derive(Deserialize)]
struct HealthRequest {}

/// Readiness, always answered (a probe wants the reasons, not an error): the database answers,
/// the consumers and the relay run, and the outbox drains. The reply itself proves that NATS
/// and the service work.
async fn health(pool: &PgPool, requests_refused: u64) -> Value {
    use crate::metrics::{self, Check, MAX_RELAY_LAG};
    let now = Utc::now();
    let started = std::time::Instant::now();
    let mut checks = Vec::new();
    let pending = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        store::outbox::pending(pool),
    )
    .await;
    let (backlog, lag) = match pending {
        Ok(Ok(p)) => {
            checks.push(Check {
                name: "database",
                ok: true,
                detail: format!("answered in {} ms", started.elapsed().as_millis()),
            });
            let lag = p.oldest_age_seconds(now);
            checks.push(Check {
                name: "outbox_backlog",
                ok: lag < MAX_RELAY_LAG.as_secs() as i64,
                detail: format!("{} events pending, oldest {lag}s", p.count),
            });
            (Some(p.count), Some(lag))
        }
        Ok(Err(e)) => {
            checks.push(Check {
                name: "database",
                ok: false,
                detail: e.to_string(),
            });
            (None, None)
        }
        Err(_) => {
            checks.push(Check {
                name: "database",
                ok: false,
                detail: "no answer within 2s".into(),
            });
            (None, None)
        }
    };
    checks.extend(metrics::part_checks(now));
    json!({
        "ready": checks.iter().all(|c| c.ok),
        "version": env!("CARGO_PKG_VERSION"),
        "checks": checks,
        "outbox_backlog": backlog,
        "outbox_oldest_pending_seconds": lag,
        "requests_refused": requests_refused,
        // Which installation this worker bills into (`invoicer demo` checks it is its own).
        "database": pool.connect_options().get_database(),
    })
}

/// Dates on the wire are RFC 3339 full-dates. chrono also reads years such as `-5000` that
/// PostgreSQL cannot store, which would surface as an internal error; they are the caller's.
fn check_date(field: &str, d: NaiveDate) -> Result<NaiveDate> {
    if (1..=9999).contains(&d.year()) {
        Ok(d)
    } else {
        Err(Error::bad(format!(
            "{field} {d} is out of range (years 0001-9999)"
        )))
    }
}

fn scope_tenant(scope: &Scope) -> Option<&str> {
    match scope {
        Scope::Admin => None,
        Scope::Tenant(t) => Some(t.as_str()),
    }
}

#[derive(Deserialize)]
struct IdRequest {
    id: Uuid,
}

#[derive(Deserialize)]
struct RenderRequest {
    id: Uuid,
    #[serde(default)]
    format: Option<String>,
}

/// NATS's default `max_payload` is 1 MiB; a reply must fit in it with its JSON envelope.
pub const MAX_DOCUMENT_REPLY_BYTES: usize = 1_000_000;

/// A tax invoice document (CONTRACT.md 5b), scoped like `.get`: another tenant's invoice is
/// `not_found`. HTML is returned as text, PDF as base64.
async fn render(ctx: &Ctx<'_>, scope: &Scope, payload: &[u8]) -> Result<Value> {
    use base64::Engine;
    let req: RenderRequest = wire::parse(payload)?;
    let format = match req.format.as_deref() {
        None => Format::Html,
        Some(f) => Format::parse(f)
            .ok_or_else(|| Error::bad(format!("format {f:?} must be \"html\" or \"pdf\"")))?,
    };
    let seller = ctx.seller.ok_or_else(|| {
        Error::Conflict(
            "tax invoice documents are not enabled: the worker has no seller configured \
             (set SELLER_NAME and SELLER_ABN, and optionally SELLER_ADDRESS)"
                .into(),
        )
    })?;
    let mut conn = ctx.pool.acquire().await?;
    let invoice = store::invoices::get(&mut conn, req.id, scope_tenant(scope)).await?;
    let (seller, recipient) = document_parties(&mut conn, &invoice, seller).await?;
    let related_ids: Vec<Uuid> = [invoice.superseded_by, invoice.supersedes]
        .into_iter()
        .flatten()
        .collect();
    let numbers = store::invoices::numbers(&mut conn, &related_ids).await?;
    drop(conn);
    let related_of = |id: Option<Uuid>| {
        id.map(|id| document::view::RelatedInvoice {
            id,
            number: numbers.get(&id).cloned().flatten(),
        })
    };
    let related = Related {
        replaced_by: related_of(invoice.superseded_by),
        replaces: related_of(invoice.supersedes),
    };
    let view =
        TaxInvoiceView::build(&invoice, &seller, &recipient, &related).map_err(Error::internal)?;
    // Laying out and subsetting fonts is CPU work: keep it off the async workers.
    let bytes = tokio::task::spawn_blocking(move || document::render(&view, format))
        .await
        .map_err(|e| Error::internal(format!("rendering task: {e}")))?
        .map_err(Error::internal)?;
    let body = match format {
        Format::Html => String::from_utf8(bytes)
            .map_err(|e| Error::internal(format!("rendered HTML is not UTF-8: {e}")))?,
        Format::Pdf => base64::engine::general_purpose::STANDARD.encode(bytes),
    };
    if body.len() > MAX_DOCUMENT_REPLY_BYTES {
        return Err(Error::Conflict(format!(
            "the {} document of invoice {} is {} bytes, more than a NATS reply can carry \
             ({MAX_DOCUMENT_REPLY_BYTES}); try the other format",
            format.as_str(),
            invoice.id,
            body.len()
        )));
    }
    Ok(json!({"content_type": format.content_type(), "body": body}))
}

/// Who a document shows (CONTRACT.md 5b). An issued invoice (paid or void since, too) shows the
/// parties it recorded when it was issued; one that did not record them all (issued before they
/// were recorded, or by a worker without a supplier) gets the rest from who is in force now,
/// recorded by this first render so that every later one shows the same. A draft, even a void
/// one, was never a tax invoice: it shows who is in force now and records nothing.
async fn document_parties(
    conn: &mut sqlx::PgConnection,
    invoice: &Invoice,
    seller_now: &Seller,
) -> Result<(Seller, Recipient)> {
    let issued = invoice.number.is_some();
    let recorded = invoice.parties.as_ref().filter(|_| issued);
    if let Some(Parties {
        seller: Some(seller),
        recipient,
    }) = recorded
    {
        return Ok((seller.clone(), recipient.clone()));
    }
    let tenant_id = TenantId::parse(&invoice.tenant_id)?;
    let legal = store::catalog::tenant(&mut *conn, &tenant_id)
        .await?
        .map(|t| t.legal)
        .unwrap_or_default();
    let recipient_now = Recipient::of(tenant_id.as_str(), &legal);
    if !issued {
        return Ok((seller_now.clone(), recipient_now));
    }
    let completed = Parties::completed(recorded, seller_now, recipient_now);
    let recorded = store::invoices::record_parties(conn, invoice.id, &completed).await?;
    let seller = recorded.seller.ok_or_else(|| {
        Error::internal(format!(
            "invoice {}: its supplier was not recorded",
            invoice.id
        ))
    })?;
    Ok((seller, recorded.recipient))
}

#[derive(Deserialize)]
struct PeriodRequest {
    #[serde(default)]
    period_start: Option<NaiveDate>,
}

#[derive(Deserialize)]
struct AdminPreviewRequest {
    tenant_id: String,
    #[serde(default)]
    period_start: Option<NaiveDate>,
}

#[derive(Deserialize)]
struct ListRequest {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    period_start: Option<NaiveDate>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    tenant_id: Option<String>,
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

async fn list(ctx: &Ctx<'_>, scope: &Scope, payload: &[u8]) -> Result<Value> {
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
    Ok(json!({"invoices": invoices, "next_cursor": next_cursor}))
}

#[derive(Deserialize)]
struct TransitionRequest {
    id: Uuid,
    #[serde(default)]
    paid_at: Option<DateTime<Utc>>,
    #[serde(default)]
    reason: Option<String>,
}

/// Admin status changes. Paying a paid invoice returns it unchanged; any other illegal
/// transition is a `conflict`; a `paid_at` before the invoice's issue or in the future is a
/// `bad_request` (CONTRACT.md section 5, v3). The change and its event commit together.
async fn transition(ctx: &Ctx<'_>, payload: &[u8], to: Status) -> Result<Value> {
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
        Status::Issued => {
            let n = store::invoices::allocate_numbers(&mut tx, 1).await?;
            inv.number = Some(format_number(n));
            inv.issued_at = Some(now);
        }
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
        Status::Draft => return Err(Error::Conflict("nothing returns to draft".into())),
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
pub async fn preview(
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
    Ok(json!({
        "tenant_id": tenant.id.as_str(),
        "period_start": period.start,
        "period_end": period.end,
        "currency": tenant.currency.as_str(),
        "status": "preview",
        "subtotal_cents": q.subtotal_cents,
        "tax_cents": q.tax_cents,
        "total_cents": q.total_cents,
        // When the open draft this preview anticipates is issued, if there is one.
        "finalizes_at": finalizes_at,
        "lines": q.lines,
    }))
}

#[derive(Deserialize)]
pub struct QuoteRequest {
    plan: String,
    #[serde(default)]
    addons: Vec<String>,
    #[serde(default)]
    usage: BTreeMap<String, Dec>,
    #[serde(default)]
    period_start: Option<NaiveDate>,
    #[serde(default)]
    active_from: Option<DateTime<Utc>>,
    #[serde(default)]
    active_to: Option<DateTime<Utc>>,
    #[serde(default)]
    tax_rate: Option<Dec>,
}

/// A provisioning-time quote: the same engine as the rollup, on projected usage.
pub async fn quote_request(pool: &PgPool, req: QuoteRequest, now: DateTime<Utc>) -> Result<Value> {
    let period = match req.period_start {
        Some(s) => Period::monthly(check_date("period_start", s)?).map_err(Error::bad)?,
        None => Period::month_before(now + chrono::Months::new(1)),
    };
    // Codes go into a query below: one that cannot be a code (say, with a NUL, which
    // PostgreSQL refuses in text) is the caller's mistake, not an internal error.
    crate::domain::catalog::check_token("plan", &req.plan)?;
    for code in &req.addons {
        crate::domain::catalog::check_token("addons", code)?;
    }
    for (kind, qty) in &req.usage {
        crate::domain::catalog::check_token("usage", kind)?;
        if qty.0.is_sign_negative() && !qty.0.is_zero() {
            return Err(Error::bad("usage quantities must not be negative"));
        }
    }
    let mut conn = pool.acquire().await?;
    let catalog: Catalog =
        store::catalog::load_catalog(&mut conn, std::slice::from_ref(&req.plan), &req.addons)
            .await?;
    drop(conn);
    let plan = catalog
        .plans
        .get(&req.plan)
        .ok_or_else(|| Error::bad(format!("unknown plan {:?}", req.plan)))?;
    let tax = TaxPolicy::new(
        req.tax_rate.map_or(TaxPolicy::default().rate, |d| d.0),
        "GST".into(),
        false,
    )?;
    let tenant = Tenant {
        id: TenantId::parse("quote")?,
        currency: Currency::parse(plan.currency.as_str())?,
        tax,
        legal: Default::default(),
        grace_period: None,
    };
    let sub = Subscription {
        id: Uuid::nil(),
        tenant_id: tenant.id.clone(),
        deployment_id: Uuid::nil(),
        plan: req.plan.clone(),
        addons: req.addons.clone(),
        started_at: req.active_from.unwrap_or_else(|| period.start_at()),
        ended_at: req.active_to,
    }
    .validate()?;
    let usage = req.usage.iter().map(|(k, v)| (k.clone(), v.0)).collect();
    let q = quote::quote_tenant(
        &tenant,
        &[MeteredSubscription {
            subscription: sub,
            usage,
            next_from: None,
        }],
        &catalog,
        period,
    )?
    .quote;
    let mut v = to_value(&q)?;
    // A quote has no deployment yet.
    if let Some(lines) = v["lines"].as_array_mut() {
        for l in lines {
            l["deployment_id"] = Value::Null;
        }
    }
    Ok(v)
}
