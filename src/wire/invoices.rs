//! Invoice requests and replies: `invoices.list/get/preview/issue/mark_paid/void/render` and
//! `revenue.summary` (CONTRACT.md section 6).

pub use crate::domain::invoice::{DeploymentRevenue, KindRevenue};
use crate::domain::invoice::{Invoice, QuoteLine};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `{"id"}`: `invoices.get`.
#[derive(Deserialize)]
pub struct IdRequest {
    pub id: Uuid,
}

/// `invoices.render`.
#[derive(Deserialize)]
pub struct RenderRequest {
    pub id: Uuid,
    #[serde(default)]
    pub format: Option<String>,
}

/// `revenue.summary` and a tenant's `invoices.preview`.
#[derive(Deserialize)]
pub struct PeriodRequest {
    #[serde(default)]
    pub period_start: Option<NaiveDate>,
}

/// `billing.admin.invoices.preview` (an extension: the admin's preview of one tenant).
#[derive(Deserialize)]
pub struct AdminPreviewRequest {
    pub tenant_id: String,
    #[serde(default)]
    pub period_start: Option<NaiveDate>,
}

/// `invoices.list`.
#[derive(Deserialize)]
pub struct ListRequest {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub period_start: Option<NaiveDate>,
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
}

/// `invoices.issue`, `.mark_paid`, `.void`.
#[derive(Deserialize)]
pub struct TransitionRequest {
    pub id: Uuid,
    #[serde(default)]
    pub paid_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `invoices.list`'s answer: a page, newest period first, and where the next one starts.
#[derive(Serialize)]
pub struct InvoiceList {
    pub invoices: Vec<Invoice>,
    pub next_cursor: Option<String>,
}

/// `invoices.preview`'s answer: the invoice the rollup would produce from usage so far.
#[derive(Serialize)]
pub struct Preview {
    pub tenant_id: String,
    pub period_start: NaiveDate,
    pub period_end: NaiveDate,
    pub currency: String,
    /// Always `"preview"`: nothing was persisted.
    pub status: &'static str,
    pub subtotal_cents: i64,
    pub tax_cents: i64,
    pub total_cents: i64,
    /// When the open draft this preview anticipates is issued, if there is one.
    pub finalizes_at: Option<DateTime<Utc>>,
    pub lines: Vec<QuoteLine>,
}

/// `invoices.render`'s answer: HTML as text, PDF as base64.
#[derive(Serialize)]
pub struct Rendered {
    pub content_type: &'static str,
    pub body: String,
}

/// `revenue.summary`'s answer.
#[derive(Serialize)]
pub struct RevenueSummary {
    pub period_start: NaiveDate,
    pub by_deployment: Vec<DeploymentRevenue>,
    pub by_resource_kind: Vec<KindRevenue>,
}

impl RevenueSummary {
    pub fn new(
        period_start: NaiveDate,
        by_deployment: Vec<DeploymentRevenue>,
        by_resource_kind: Vec<KindRevenue>,
    ) -> Self {
        RevenueSummary {
            period_start,
            by_deployment,
            by_resource_kind,
        }
    }
}
