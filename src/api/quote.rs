//! `billing.quote`: a provisioning-time quote, priced by the same engine as the rollup.

use super::{check_date, to_value, Ctx};
use crate::domain::catalog::{Catalog, Currency, Subscription, TaxPolicy, Tenant, TenantId};
use crate::domain::period::Period;
use crate::domain::quote::{self, MeteredSubscription};
use crate::error::{Error, Result};
use crate::store;
use crate::wire::{self, QuoteRequest};
use chrono::Utc;
use serde_json::Value;
use uuid::Uuid;

/// A provisioning-time quote: the same engine as the rollup, on projected usage.
pub(super) async fn quote(ctx: &Ctx<'_>, payload: &[u8]) -> Result<Value> {
    let req: QuoteRequest = wire::parse(payload)?;
    let (pool, now) = (ctx.pool, Utc::now());
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
