//! One batch of tenants in one transaction: lock them and what they already have, read their
//! subscriptions and usage, price them with the quote engine, and write the result.
//!
//! The order of the writes matters for concurrency. Everything that does not need an invoice
//! number is written first (replaced drafts removed, superseded invoices voided, all lines);
//! then the number counter is taken and the invoice rows and their events go in one statement,
//! right before commit. The counter, the one row every issuing transaction shares, is held for
//! that last statement only, so batches on several replicas overlap instead of queueing.
//!
//! An issued invoice records its parties in that statement (CONTRACT.md 5b): the recipient as
//! the tenant's row says under the batch's lock, the supplier as this worker is configured.

use super::decide;
use super::window::{self, Grace, Outcome};
use super::Action;
use crate::domain::catalog::{Catalog, Tenant};
use crate::domain::document::{Parties, Recipient, Seller};
use crate::domain::invoice::{format_number, Invoice, Line, Status};
use crate::domain::period::Period;
use crate::domain::quote::{quote_tenant, MeteredSubscription};
use crate::domain::rollup::RollupRequest;
use crate::error::Result;
use crate::store::catalog;
use crate::store::invoices::{self, Overlap};
use crate::store::outbox;
use crate::store::outbox::Event;
use crate::store::rollup::{self as q, BatchCounts, TenantFailure, UsageOverflow};
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use std::collections::{BTreeSet, HashMap};
use uuid::Uuid;

/// Prices and writes `tenant_ids` (in id order) for the request, inside the caller's
/// transaction. A tenant that cannot be priced is reported in the counts, not raised; an error
/// here is the database's, and the caller decides whether the batch is retried or split.
/// `grace` says whether this is a rollup, a refresh or a finalization of grace drafts
/// (`window::outcome`). `seller` is this worker's supplier, recorded on the invoices it issues
/// (`None`: documents are off here).
pub async fn run(
    tx: &mut PgConnection,
    key: &str,
    req: &RollupRequest,
    tenant_ids: &[String],
    now: DateTime<Utc>,
    grace: &Grace,
    seller: Option<&Seller>,
) -> Result<BatchCounts> {
    let mut clock = PhaseClock::start();
    // Every read here is bounded by the batch's tenants, over an index.
    crate::store::no_seq_scans(tx).await?;
    let tenants = catalog::lock_tenants(&mut *tx, tenant_ids).await?;
    let existing = invoices::lock_existing(tx, tenant_ids, req.period.start).await?;
    let drafts: Vec<Uuid> = existing
        .values()
        .filter_map(|e| e.live.filter(|l| l.1 == Status::Draft).map(|l| l.0))
        .collect();
    let open_windows = crate::store::grace::windows(tx, &drafts).await?;
    let overlaps = invoices::overlapping(tx, tenant_ids, req.period).await?;
    clock.lap("lock");
    let subs = q::subscriptions(tx, tenant_ids, req.period).await?;
    let successors = q::successors(tx, tenant_ids, req.period).await?;
    clock.lap("subscriptions");
    let mut usage = q::usage(tx, tenant_ids, req.period).await?;
    clock.lap("usage");
    let plan_codes: BTreeSet<String> = subs.iter().map(|s| s.plan.clone()).collect();
    let addon_codes: BTreeSet<String> = subs.iter().flat_map(|s| s.addons.clone()).collect();
    let catalog = catalog::load_catalog(
        tx,
        &plan_codes.into_iter().collect::<Vec<_>>(),
        &addon_codes.into_iter().collect::<Vec<_>>(),
    )
    .await?;
    // A tenant with a usage sum that cannot be priced keeps that reason instead of its
    // subscriptions: it fails alone, and the batch goes on.
    let mut by_tenant: HashMap<String, Metered> = HashMap::new();
    for s in subs {
        let entry = by_tenant
            .entry(s.tenant_id.to_string())
            .or_insert(Ok(vec![]));
        match (usage.take(s.id), entry) {
            (Ok(usage), Ok(metered)) => metered.push(MeteredSubscription {
                next_from: successors.get(&s.id).copied(),
                subscription: s,
                usage,
            }),
            (Err(overflow), entry) => *entry = Err(overflow),
            (Ok(_), Err(_)) => {}
        }
    }
    let mut plan = BatchPlan {
        seller,
        ..BatchPlan::default()
    };
    for tenant in &tenants {
        if let Some(other) = overlaps.get(tenant.id.as_str()) {
            plan.counts.failed.push(TenantFailure {
                tenant_id: tenant.id.to_string(),
                reason: overlap_reason(req.period, other),
            });
            continue;
        }
        let found = existing
            .get(tenant.id.as_str())
            .copied()
            .unwrap_or_default();
        let open = found
            .live
            .and_then(|(id, _)| open_windows.get(&id).copied());
        let outcome = window::outcome(
            grace,
            req.draft,
            decide(req, found),
            open,
            tenant.grace_period.as_ref(),
            now,
        );
        let subs = by_tenant.remove(tenant.id.as_str()).unwrap_or(Ok(vec![]));
        plan.add(req, tenant, outcome, subs, &catalog, now);
    }
    clock.lap("price");
    plan.write(tx, key, now, &mut clock).await?;
    tracing::debug!(tenants = tenant_ids.len(), phases = %clock, "batch written");
    Ok(plan.counts)
}

/// Why a tenant is not billed for `period`: one of its live invoices, for another period, already
/// bills some of its days (CONTRACT.md section 5, v3). A draft has no number yet: its id names it.
fn overlap_reason(period: Period, other: &Overlap) -> String {
    let invoice = match &other.number {
        Some(number) => format!("invoice {number}"),
        None => format!("draft invoice {}", other.id),
    };
    format!(
        "{period} overlaps {invoice} for {} ({}): no two live invoices of a tenant may share a day",
        other.period,
        other.status.as_str()
    )
}

/// [`run`] for the grace-draft loops, where a batch that fails as a whole for a reason other
/// than a transient one (something no pricing check caught) must not fail every tenant in it
/// round after round: its tenants are then run again one at a time, each under a savepoint of
/// the caller's transaction, and one that still fails is reported in the counts, like a tenant
/// that cannot be priced. A transient failure is the caller's, as with [`run`].
pub async fn run_each_alone_on_failure(
    tx: &mut PgConnection,
    key: &str,
    req: &RollupRequest,
    tenant_ids: &[String],
    now: DateTime<Utc>,
    grace: &Grace,
    seller: Option<&Seller>,
) -> Result<BatchCounts> {
    let mut whole = sqlx::Connection::begin(&mut *tx).await?;
    match run(&mut whole, key, req, tenant_ids, now, grace, seller).await {
        Ok(counts) => {
            whole.commit().await?;
            return Ok(counts);
        }
        Err(e) if e.is_transient() => return Err(e),
        Err(e) => {
            whole.rollback().await?;
            tracing::warn!(error = %e, tenants = tenant_ids.len(), key,
                "batch failed; running its tenants one at a time");
        }
    }
    let mut counts = BatchCounts::default();
    for tenant in tenant_ids {
        let mut one = sqlx::Connection::begin(&mut *tx).await?;
        match run(
            &mut one,
            key,
            req,
            std::slice::from_ref(tenant),
            now,
            grace,
            seller,
        )
        .await
        {
            Ok(c) => {
                one.commit().await?;
                counts.issued += c.issued;
                counts.drafted += c.drafted;
                counts.skipped += c.skipped;
                counts.failed.extend(c.failed);
            }
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                one.rollback().await?;
                counts.failed.push(TenantFailure {
                    tenant_id: tenant.clone(),
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok(counts)
}

/// A tenant's subscriptions with their usage, or the usage sum that cannot be priced.
type Metered = std::result::Result<Vec<MeteredSubscription>, UsageOverflow>;

/// Where a batch's time goes, logged at debug level: the cheap profiler that told us the
/// usage read and the outbox write dominate.
struct PhaseClock {
    last: std::time::Instant,
    laps: Vec<(&'static str, std::time::Duration)>,
}

impl PhaseClock {
    fn start() -> Self {
        PhaseClock {
            last: std::time::Instant::now(),
            laps: Vec::new(),
        }
    }

    fn lap(&mut self, what: &'static str) {
        let now = std::time::Instant::now();
        self.laps.push((what, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for PhaseClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (what, t) in &self.laps {
            write!(f, "{what}={}ms ", t.as_millis())?;
        }
        Ok(())
    }
}

/// The in-memory result of pricing one batch, before it is written.
#[derive(Default)]
struct BatchPlan<'a> {
    /// The supplier recorded on the invoices this batch issues.
    seller: Option<&'a Seller>,
    /// Every invoice to insert, in tenant order: new ones, supersessions and recomputed drafts.
    invoices: Vec<Invoice>,
    /// Drafts whose recomputed versions (same id) are in `invoices`.
    replaced_drafts: Vec<Uuid>,
    /// (old issued invoice, its replacement in `invoices`).
    superseded: Vec<(Uuid, Uuid)>,
    counts: BatchCounts,
}

impl<'a> BatchPlan<'a> {
    fn add(
        &mut self,
        req: &RollupRequest,
        tenant: &Tenant,
        outcome: Outcome,
        subs: Metered,
        catalog: &Catalog,
        now: DateTime<Utc>,
    ) {
        let Outcome {
            action,
            status,
            finalizes_at,
        } = outcome;
        if action == Action::Skip {
            self.counts.skipped += 1;
            return;
        }
        let priced = subs.map_err(|e| e.to_string()).and_then(|subs| {
            quote_tenant(tenant, &subs, catalog, req.period).map_err(|e| e.to_string())
        });
        let priced = match priced {
            Ok(p) => p,
            Err(e) => {
                // Logged by the caller, which knows what the failure means for the tenant.
                self.counts.failed.push(TenantFailure {
                    tenant_id: tenant.id.to_string(),
                    reason: e,
                });
                return;
            }
        };
        for (deployment, kind) in &priced.unbilled_kinds {
            tracing::warn!(tenant = %tenant.id, %deployment, resource_kind = %kind,
                "usage of a resource kind the plan does not price: not billed");
        }
        if status == Status::Issued {
            self.counts.issued += 1;
        } else {
            self.counts.drafted += 1;
        }
        let quote = priced.quote;
        // Time-ordered ids (UUIDv7): new rows land at the right edge of the primary-key
        // indexes rather than on random pages, which keeps a batch's inserts cache-friendly.
        let mut inv = Invoice {
            id: Uuid::now_v7(),
            number: None,
            tenant_id: tenant.id.to_string(),
            period_start: req.period.start,
            period_end: req.period.end,
            currency: tenant.currency.to_string(),
            status,
            subtotal_cents: quote.subtotal_cents,
            tax_cents: quote.tax_cents,
            total_cents: quote.total_cents,
            issued_at: (status == Status::Issued).then_some(now),
            finalizes_at,
            paid_at: None,
            voided_at: None,
            void_reason: None,
            supersedes: None,
            superseded_by: None,
            parties: (status == Status::Issued).then(|| Parties {
                seller: self.seller.cloned(),
                recipient: Recipient::of(tenant.id.as_str(), &tenant.legal),
            }),
            lines: Some(
                quote
                    .lines
                    .into_iter()
                    .map(|line| Line {
                        id: Uuid::now_v7(),
                        line,
                    })
                    .collect(),
            ),
        };
        match action {
            Action::RecomputeDraft(id) => {
                inv.id = id;
                self.replaced_drafts.push(id);
            }
            Action::Supersede(old) => {
                inv.supersedes = Some(old);
                self.superseded.push((old, inv.id));
            }
            Action::New => {}
            Action::Skip => unreachable!("handled above"),
        }
        self.invoices.push(inv);
    }

    async fn write(
        &mut self,
        tx: &mut PgConnection,
        key: &str,
        now: DateTime<Utc>,
        clock: &mut PhaseClock,
    ) -> Result<()> {
        if self.invoices.is_empty() {
            return Ok(());
        }
        invoices::delete_drafts(tx, &self.replaced_drafts).await?;
        invoices::void_superseded(tx, &self.superseded, now).await?;
        invoices::insert_lines(tx, self.invoices.iter()).await?;
        clock.lap("lines");
        let mut events: Vec<Event> = Vec::new();
        if !self.superseded.is_empty() {
            let old: Vec<Uuid> = self.superseded.iter().map(|p| p.0).collect();
            for inv in invoices::get_many(tx, &old, None).await? {
                events.push(super::invoice_event(&inv));
            }
        }
        // Issued events go in before the counter is taken, waiting for their numbers: the relay
        // splices each in from its invoice when it publishes.
        let mut issued = 0;
        for inv in self.invoices.iter().filter(|i| i.status == Status::Issued) {
            let mut event = super::invoice_event(inv);
            event.number_of = Some(inv.id);
            events.push(event);
            issued += 1;
        }
        events.extend(super::drafts::drafted_events(&self.invoices));
        outbox::insert(tx, &events).await?;
        clock.lap("outbox");
        if issued > 0 {
            let first = invoices::allocate_numbers(tx, issued).await?;
            for (n, inv) in self
                .invoices
                .iter_mut()
                .filter(|i| i.status == Status::Issued)
                .enumerate()
            {
                inv.number = Some(format_number(first + n as i64));
            }
        }
        clock.lap("number");
        invoices::insert(tx, &self.invoices, key).await?;
        clock.lap("invoices");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::invoice::{LineKind, QuoteLine};

    #[test]
    fn a_spliced_number_serialises_like_a_numbered_invoice() {
        let mut inv = Invoice {
            id: Uuid::new_v4(),
            number: None,
            tenant_id: "acme".into(),
            period_start: "2026-04-01".parse().unwrap(),
            period_end: "2026-05-01".parse().unwrap(),
            currency: "AUD".into(),
            status: Status::Issued,
            subtotal_cents: 100,
            tax_cents: 10,
            total_cents: 110,
            issued_at: Some(Utc::now()),
            finalizes_at: None,
            paid_at: None,
            voided_at: None,
            void_reason: Some("\"number\":null".into()),
            supersedes: None,
            superseded_by: None,
            parties: None,
            lines: Some(vec![Line {
                id: Uuid::new_v4(),
                line: QuoteLine {
                    kind: LineKind::PlanBase,
                    deployment_id: None,
                    resource_kind: None,
                    description: "\"number\":null".into(),
                    quantity: 1.into(),
                    unit_price: None,
                    amount_cents: 100,
                },
            }]),
        };
        let unnumbered = serde_json::to_string(&inv).unwrap();
        inv.number = Some(format_number(1_234_567));
        assert_eq!(
            crate::domain::invoice::with_number(&unnumbered, "INV-1234567"),
            serde_json::to_string(&inv).unwrap()
        );
    }
}
