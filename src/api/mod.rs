//! The request-reply endpoints, independent of the transport: a payload and the caller's scope
//! in, a JSON value or a typed error out. `bus::service` puts them on NATS, after checking
//! the reply subject. One module per resource, each with its handlers (the request types are
//! `wire`'s, the queries `store`'s):
//!
//! | module | endpoints |
//! |---|---|
//! | [`catalog`] | `billing.admin.{plans,addons,tenants,subscriptions}.put` |
//! | [`invoices`] | `invoices.list/get/preview`, the admin's `issue/mark_paid/void`, `revenue.summary` |
//! | [`documents`] | `invoices.render`: tax invoice documents |
//! | [`quote`] | `billing.quote` |
//! | [`health`] | `billing.admin.health` |

mod catalog;
mod documents;
mod health;
mod invoices;
mod quote;

pub use documents::MAX_DOCUMENT_REPLY_BYTES;

use crate::domain::catalog::TenantId;
use crate::domain::document::Seller;
use crate::domain::invoice::Status;
use crate::error::{Error, Result};
use chrono::{Datelike, NaiveDate};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::Notify;

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

/// Answers one request on `ep` from the caller in `scope`.
pub async fn handle(ctx: &Ctx<'_>, ep: Endpoint, scope: &Scope, payload: &[u8]) -> Result<Value> {
    match ep {
        Endpoint::PlansPut => catalog::put_plan(ctx, payload).await,
        Endpoint::AddonsPut => catalog::put_addon(ctx, payload).await,
        Endpoint::SubscriptionsPut => catalog::put_subscription(ctx, payload).await,
        Endpoint::TenantsPut => catalog::put_tenant(ctx, payload).await,
        Endpoint::AdminList | Endpoint::TenantList => invoices::list(ctx, scope, payload).await,
        Endpoint::AdminGet | Endpoint::TenantGet => invoices::get(ctx, scope, payload).await,
        Endpoint::AdminIssue => invoices::transition(ctx, payload, Status::Issued).await,
        Endpoint::AdminMarkPaid => invoices::transition(ctx, payload, Status::Paid).await,
        Endpoint::AdminVoid => invoices::transition(ctx, payload, Status::Void).await,
        Endpoint::RevenueSummary => invoices::revenue_summary(ctx, payload).await,
        Endpoint::TenantPreview | Endpoint::AdminPreview => {
            invoices::preview(ctx, scope, payload).await
        }
        Endpoint::Quote => quote::quote(ctx, payload).await,
        Endpoint::Health => health::health(ctx, payload).await,
        Endpoint::AdminRender | Endpoint::TenantRender => {
            documents::render(ctx, scope, payload).await
        }
    }
}

/// Dates on the wire are RFC 3339 full-dates. chrono also reads years such as `-5000` that
/// PostgreSQL cannot store, which would surface as an internal error; they are the caller's.
pub(crate) fn check_date(field: &str, d: NaiveDate) -> Result<NaiveDate> {
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
