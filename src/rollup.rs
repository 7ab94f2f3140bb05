//! A rollup's lifecycle: which tenants, in what batches, and what one transaction holds.
//!
//! Tenants are taken in id order, `batch_size` per transaction. Each transaction locks its
//! tenants, reads what they already have, prices them with the quote engine, writes invoices,
//! lines and outbox events with multi-row statements, and advances the run's cursor. A crash or
//! redelivery resumes after the last committed batch, so no tenant is billed twice and the
//! counts in `billing.rollup.completed` stay exact.

use crate::catalog::{Catalog, Tenant};
use crate::error::{Error, Result};
use crate::invoice::{format_number, Invoice, Line, Status};
use crate::quote::{quote_tenant, MeteredSubscription};
use crate::store::outbox::{self, Event};
use crate::store::rollup::{self as q, BatchCounts, Existing, TenantFailure};
use crate::store::{catalog, invoices};
use crate::wire::RollupRequest;
use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use sqlx::PgPool;
use std::collections::{BTreeSet, HashMap};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const DEFAULT_BATCH_SIZE: i64 = 500;

/// The `billing.rollup.completed` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Completed {
    pub request_id: String,
    pub period_start: chrono::NaiveDate,
    pub period_end: chrono::NaiveDate,
    pub invoices_issued: i32,
    /// Drafts written by a `draft` rollup (an extension of the contract's payload).
    pub invoices_drafted: i32,
    pub invoices_skipped: i32,
    pub tenants_failed: Vec<TenantFailure>,
    pub unbilled_deployments: i64,
    pub duration_ms: i64,
}

/// Progress after each committed batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub tenants_done: i64,
    pub tenants_total: i64,
}

#[derive(Debug)]
pub enum Outcome {
    Completed(Completed),
    /// Shutdown was requested between batches; the committed batches stand.
    Interrupted,
}

/// What to do for one tenant, given what it already has for the period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Skip,
    New,
    RecomputeDraft(Uuid),
    Supersede(Uuid),
}

/// CONTRACT.md section 5: without `force` any invoice for the period means skip; with `force` a
/// draft is recomputed, an issued invoice superseded (never by a draft), a paid one left alone,
/// and a voided one replaced.
pub fn decide(req: &RollupRequest, existing: Existing) -> Action {
    if !req.force {
        return if existing.any {
            Action::Skip
        } else {
            Action::New
        };
    }
    match existing.live {
        None => Action::New,
        Some((_, Status::Paid)) => Action::Skip,
        Some((id, Status::Draft)) => Action::RecomputeDraft(id),
        Some((_, Status::Issued)) if req.draft => Action::Skip,
        Some((id, Status::Issued)) => Action::Supersede(id),
        Some((_, Status::Void)) => Action::New,
    }
}

pub struct Rollup<'a> {
    pub pool: &'a PgPool,
    pub batch_size: i64,
    pub shutdown: CancellationToken,
}

impl Rollup<'_> {
    /// Runs (or resumes) the rollup identified by `key`, calling `progress` after each batch.
    #[tracing::instrument(skip_all, fields(request_id = %key, period = %req.period))]
    pub async fn run(
        &self,
        key: &str,
        req: &RollupRequest,
        mut progress: impl FnMut(Progress),
    ) -> Result<Outcome> {
        let run = q::start_run(self.pool, key, req).await?;
        let total = q::count_tenants(self.pool, req).await?;
        tracing::info!(tenants = total, resumed_after = ?run.cursor, "rollup started");
        // A repeat of a finished request skips the loop: its completed event already exists.
        let mut finished = run.completed;
        while !finished {
            if self.shutdown.is_cancelled() {
                return Ok(Outcome::Interrupted);
            }
            let mut tx = self.pool.begin().await?;
            let state = q::lock_run(&mut tx, key).await?;
            if state.completed {
                finished = true;
                continue;
            }
            let tenants =
                q::next_tenants(&mut tx, req, state.cursor.as_deref(), self.batch_size).await?;
            let Some(last) = tenants.last().cloned() else {
                self.complete(&mut tx, key, req, &state).await?;
                tx.commit().await?;
                finished = true;
                continue;
            };
            let counts = self.batch(&mut tx, key, req, &tenants).await?;
            q::advance_run(&mut tx, key, &last, &counts).await?;
            tx.commit().await?;
            let done = (state.issued + state.drafted + state.skipped) as i64
                + (counts.issued + counts.drafted + counts.skipped) as i64
                + (state.failed.len() + counts.failed.len()) as i64;
            progress(Progress {
                tenants_done: done,
                tenants_total: total,
            });
        }
        let payload = outbox::payload_of(self.pool, &completed_msg_id(key))
            .await?
            .ok_or_else(|| Error::Internal(format!("rollup {key} completed without its event")))?;
        let completed = serde_json::from_value(payload)
            .map_err(|e| Error::Internal(format!("stored completed event: {e}")))?;
        Ok(Outcome::Completed(completed))
    }

    async fn complete(
        &self,
        tx: &mut sqlx::PgConnection,
        key: &str,
        req: &RollupRequest,
        state: &q::RunState,
    ) -> Result<()> {
        let missing: Vec<TenantFailure> = q::requested_without_subscription(tx, req)
            .await?
            .into_iter()
            .map(|tenant_id| TenantFailure {
                tenant_id,
                reason: format!("no subscription active in {}", req.period),
            })
            .collect();
        let unbilled = q::unbilled_deployments(tx, req.period).await?;
        let mut state = state.clone();
        state.failed.extend(missing.iter().cloned());
        let event = completed_event(key, req, &state, unbilled, Utc::now());
        q::complete_run(tx, key, &missing).await?;
        outbox::insert(
            tx,
            &[Event::new(
                "billing.rollup.completed",
                completed_msg_id(key),
                &event,
            )],
        )
        .await?;
        tracing::info!(
            issued = event.invoices_issued,
            drafted = event.invoices_drafted,
            skipped = event.invoices_skipped,
            failed = event.tenants_failed.len(),
            unbilled_deployments = unbilled,
            "rollup completed"
        );
        Ok(())
    }

    async fn batch(
        &self,
        tx: &mut sqlx::PgConnection,
        key: &str,
        req: &RollupRequest,
        tenant_ids: &[String],
    ) -> Result<BatchCounts> {
        let tenants = catalog::lock_tenants(&mut *tx, tenant_ids).await?;
        let existing = q::existing(tx, tenant_ids, req.period.start).await?;
        let subs = q::subscriptions(tx, tenant_ids, req.period).await?;
        let mut usage = q::usage(tx, tenant_ids, req.period).await?;
        let plan_codes: BTreeSet<String> = subs.iter().map(|s| s.plan.clone()).collect();
        let addon_codes: BTreeSet<String> = subs.iter().flat_map(|s| s.addons.clone()).collect();
        let catalog = catalog::load_catalog(
            tx,
            &plan_codes.into_iter().collect::<Vec<_>>(),
            &addon_codes.into_iter().collect::<Vec<_>>(),
        )
        .await?;
        let mut by_tenant: HashMap<String, Vec<MeteredSubscription>> = HashMap::new();
        for s in subs {
            let usage = usage.remove(&s.id).unwrap_or_default();
            by_tenant
                .entry(s.tenant_id.to_string())
                .or_default()
                .push(MeteredSubscription {
                    subscription: s,
                    usage,
                });
        }

        let now = Utc::now().trunc_subsecs(0);
        let mut plan = BatchPlan::default();
        for tenant in &tenants {
            let action = decide(
                req,
                existing
                    .get(tenant.id.as_str())
                    .copied()
                    .unwrap_or_default(),
            );
            let subs = by_tenant.remove(tenant.id.as_str()).unwrap_or_default();
            plan.add(req, tenant, action, &subs, &catalog, now);
        }

        let to_number = plan.invoices_to_number();
        if to_number > 0 {
            let first = q::allocate_numbers(tx, to_number as i64).await?;
            plan.assign_numbers(first);
        }
        let pairs: Vec<(Uuid, Uuid)> = plan.superseded.clone();
        q::void_superseded(tx, &pairs, now).await?;
        q::write_invoices(tx, &plan.new, &plan.drafts, key).await?;
        let mut events: Vec<Event> = Vec::new();
        if !pairs.is_empty() {
            let old: Vec<Uuid> = pairs.iter().map(|p| p.0).collect();
            for inv in invoices::get_many(tx, &old, None).await? {
                events.push(invoice_event(&inv));
            }
        }
        for inv in plan.new.iter().chain(&plan.drafts) {
            if inv.status == Status::Issued {
                events.push(invoice_event(inv));
            }
        }
        outbox::insert(tx, &events).await?;
        Ok(plan.counts)
    }
}

fn completed_msg_id(key: &str) -> String {
    format!("rollup-completed:{key}")
}

/// The event announcing an invoice's current status, msg id `<invoice id>:<status>`.
pub fn invoice_event(inv: &Invoice) -> Event {
    let subject = inv
        .status
        .event_subject()
        .unwrap_or("billing.invoice.draft");
    Event::new(subject, format!("{}:{}", inv.id, inv.status.as_str()), inv)
}

fn completed_event(
    key: &str,
    req: &RollupRequest,
    state: &q::RunState,
    unbilled: i64,
    now: DateTime<Utc>,
) -> Completed {
    Completed {
        request_id: key.to_string(),
        period_start: req.period.start,
        period_end: req.period.end,
        invoices_issued: state.issued,
        invoices_drafted: state.drafted,
        invoices_skipped: state.skipped,
        tenants_failed: state.failed.clone(),
        unbilled_deployments: unbilled,
        duration_ms: state
            .started_at
            .map_or(0, |s| (now - s).num_milliseconds().max(0)),
    }
}

/// The in-memory result of pricing one batch, before it is written.
#[derive(Default)]
struct BatchPlan {
    new: Vec<Invoice>,
    drafts: Vec<Invoice>,
    superseded: Vec<(Uuid, Uuid)>,
    counts: BatchCounts,
}

impl BatchPlan {
    fn add(
        &mut self,
        req: &RollupRequest,
        tenant: &Tenant,
        action: Action,
        subs: &[MeteredSubscription],
        catalog: &Catalog,
        now: DateTime<Utc>,
    ) {
        if action == Action::Skip {
            self.counts.skipped += 1;
            return;
        }
        let priced = match quote_tenant(tenant, subs, catalog, req.period) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(tenant = %tenant.id, error = %e, "tenant failed");
                self.counts.failed.push(TenantFailure {
                    tenant_id: tenant.id.to_string(),
                    reason: e.to_string(),
                });
                return;
            }
        };
        for (deployment, kind) in &priced.unbilled_kinds {
            tracing::warn!(tenant = %tenant.id, %deployment, resource_kind = %kind,
                "usage of a resource kind the plan does not price: not billed");
        }
        let status = if req.draft {
            Status::Draft
        } else {
            Status::Issued
        };
        if status == Status::Issued {
            self.counts.issued += 1;
        } else {
            self.counts.drafted += 1;
        }
        let quote = priced.quote;
        let mut inv = Invoice {
            id: Uuid::new_v4(),
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
            paid_at: None,
            voided_at: None,
            void_reason: None,
            supersedes: None,
            superseded_by: None,
            lines: Some(
                quote
                    .lines
                    .into_iter()
                    .map(|line| Line {
                        id: Uuid::new_v4(),
                        line,
                    })
                    .collect(),
            ),
        };
        match action {
            Action::RecomputeDraft(id) => {
                inv.id = id;
                self.drafts.push(inv);
            }
            Action::Supersede(old) => {
                inv.supersedes = Some(old);
                self.superseded.push((old, inv.id));
                self.new.push(inv);
            }
            Action::New => self.new.push(inv),
            Action::Skip => unreachable!("handled above"),
        }
    }

    fn invoices_to_number(&self) -> usize {
        self.new
            .iter()
            .chain(&self.drafts)
            .filter(|i| i.status == Status::Issued)
            .count()
    }

    /// Numbers follow tenant order within the batch.
    fn assign_numbers(&mut self, first: i64) {
        let mut issued: Vec<&mut Invoice> = self
            .new
            .iter_mut()
            .chain(self.drafts.iter_mut())
            .filter(|i| i.status == Status::Issued)
            .collect();
        issued.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
        for (n, inv) in issued.into_iter().enumerate() {
            inv.number = Some(format_number(first + n as i64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::period::Period;

    fn req(force: bool, draft: bool) -> RollupRequest {
        RollupRequest {
            period: Period::parse_month("2026-04").unwrap(),
            force,
            tenant_ids: None,
            draft,
            request_id: None,
        }
    }

    #[test]
    fn decisions_follow_the_contract() {
        let id = Uuid::nil();
        let none = Existing::default();
        let only_void = Existing {
            any: true,
            live: None,
        };
        let live = |s| Existing {
            any: true,
            live: Some((id, s)),
        };
        let cases = [
            (false, false, none, Action::New),
            (false, false, only_void, Action::Skip),
            (false, false, live(Status::Draft), Action::Skip),
            (false, false, live(Status::Issued), Action::Skip),
            (false, false, live(Status::Paid), Action::Skip),
            (true, false, none, Action::New),
            (true, false, only_void, Action::New),
            (true, false, live(Status::Draft), Action::RecomputeDraft(id)),
            (true, false, live(Status::Issued), Action::Supersede(id)),
            (true, false, live(Status::Paid), Action::Skip),
            (true, true, live(Status::Draft), Action::RecomputeDraft(id)),
            (true, true, live(Status::Issued), Action::Skip),
        ];
        for (force, draft, existing, want) in cases {
            assert_eq!(
                decide(&req(force, draft), existing),
                want,
                "{force} {draft} {existing:?}"
            );
        }
    }
}
