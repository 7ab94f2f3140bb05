//! A rollup's lifecycle: which tenants, in what work items, what one transaction holds, and
//! when the rollup is complete.
//!
//! When a request is first seen, [`plan`] lists the period's tenants once and splits them into
//! items of `batch_size` tenants (`rollup_items`). Each item is published on the work queue and
//! any replica may take it: [`work_item`] prices and writes the item's tenants in one
//! transaction (see [`batch`]) that also marks the item done, so a redelivered item changes
//! nothing. If that transaction fails for a reason other than a transient one, the item is
//! worked again one tenant per transaction, so one bad tenant is reported and the others are
//! invoiced. A tenant whose data cannot be priced (a usage sum past an exact decimal, an amount
//! past the cents, a currency mismatch) does not fail the batch: it is reported in the batch's
//! counts and the others are written in the same transaction. After each item,
//! [`try_complete`] checks, under the run row's lock, whether every item is done; the one that
//! finds them all done writes `billing.rollup.completed`, once.
//!
//! With a grace window, a batch writes drafts that [`drafts`] keeps up to date with late usage
//! and [`finalize`] issues when their window closes ([`window`] decides which is which).

pub mod batch;
pub mod drafts;
pub mod finalize;
pub mod window;

use crate::domain::document::Seller;
use crate::domain::grace::GracePeriod;
use crate::domain::invoice::{Invoice, Status};
use crate::domain::rollup::RollupRequest;
use crate::error::{Error, Result};
use crate::store::invoices::Existing;
use crate::store::outbox::{self, Event};
use crate::store::rollup::{self as q, BatchCounts, Run, TenantFailure};
use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

pub const DEFAULT_BATCH_SIZE: i64 = 500;
/// The completed event lists at most this many failures (and counts them all), so it always
/// fits in a NATS message.
pub const MAX_FAILURES_LISTED: usize = 1000;
const MAX_REASON_CHARS: usize = 300;

/// The `billing.rollup.completed` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Completed {
    pub request_id: String,
    pub period_start: chrono::NaiveDate,
    pub period_end: chrono::NaiveDate,
    pub invoices_issued: i32,
    /// Drafts written (an extension of the contract's payload).
    pub invoices_drafted: i32,
    pub invoices_skipped: i32,
    /// At most [`MAX_FAILURES_LISTED`] of them.
    pub tenants_failed: Vec<TenantFailure>,
    /// How many tenants failed in all (an extension: the list above may be cut short).
    pub tenants_failed_total: usize,
    pub unbilled_deployments: i64,
    pub duration_ms: i64,
}

/// `billing.rollup.progress`, after each item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub request_id: String,
    pub tenants_done: i64,
    pub tenants_total: i64,
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

/// A planned run and the items still to do.
#[derive(Debug)]
pub struct Planned {
    pub run: Run,
    /// Whether this delivery created the run (a redelivery finds it).
    pub created: bool,
    pub pending: Vec<i32>,
}

/// Records the run and its items on first sight; on a repeat, returns what is left to do. A run
/// with no tenants at all completes here. `now` is the worker's clock: a period that has not
/// ended yet is refused unless the request is a `draft` run (CONTRACT.md section 5, v3).
pub async fn plan(
    pool: &PgPool,
    key: &str,
    req: &RollupRequest,
    batch_size: i64,
    now: DateTime<Utc>,
) -> Result<Planned> {
    check_ended(req, now)?;
    let mut tx = pool.begin().await?;
    let (run, created) = q::plan(&mut tx, key, req, batch_size).await?;
    if !created {
        check_same_request(key, &run, req)?;
    }
    tx.commit().await?;
    if created {
        tracing::info!(request_id = key, period = %run.request.period, tenants = run.tenants_total,
            items = run.items_total, "rollup planned");
    }
    let pending = q::pending_items(pool, key).await?;
    if pending.is_empty() && !run.completed {
        try_complete(pool, key).await?;
    }
    Ok(Planned {
        run,
        created,
        pending,
    })
}

/// A rollup issues tax invoices only for periods that are over: an unfinished month would be
/// billed short, a future one for nothing. The scheduler asks for the month just ended after
/// its last midnight, so `period_end` may be now but not later. A `draft` run may look at a
/// month so far: its drafts are issued only by an admin, recomputed then.
pub fn check_ended(req: &RollupRequest, now: DateTime<Utc>) -> Result<()> {
    if req.draft || req.period.end_at() <= now {
        return Ok(());
    }
    Err(Error::bad(format!(
        "period has not ended: {} ends at {}, and only a draft run may ask for it before then",
        req.period,
        req.period
            .end_at()
            .to_rfc3339_opts(SecondsFormat::Secs, true)
    )))
}

/// A repeat of a planned run (a redelivery, or the same `request_id` again) must ask for what the
/// run was planned with: with other parameters it is a different request under a used name, and
/// running it as the old one would report the old run's outcome for something never done.
fn check_same_request(key: &str, run: &Run, req: &RollupRequest) -> Result<()> {
    let planned = &run.request;
    let same = planned.period == req.period
        && planned.force == req.force
        && planned.draft == req.draft
        && planned.tenant_ids == req.tenant_ids;
    if same {
        return Ok(());
    }
    Err(Error::Conflict(format!(
        "request_id {key:?} is already the rollup request of {} (received {}); this one asks for {}: \
         a request_id may only repeat the same request",
        describe(planned),
        run.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        describe(req)
    )))
}

/// A request's parameters, as a person reads them: `2026-04, force, 3 tenants (acme, ...)`.
fn describe(req: &RollupRequest) -> String {
    const NAMED: usize = 5;
    let mut out = req.period.to_string();
    if req.force {
        out.push_str(", force");
    }
    if req.draft {
        out.push_str(", draft");
    }
    match &req.tenant_ids {
        None => out.push_str(", every tenant"),
        Some(ids) => {
            let named: Vec<&str> = ids.iter().take(NAMED).map(|t| t.as_str()).collect();
            let more = if ids.len() > NAMED { ", ..." } else { "" };
            out.push_str(&format!(", tenants {}{more}", named.join(", ")));
        }
    }
    out
}

/// How a delivery of a work item ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemOutcome {
    /// This delivery did the item.
    Done,
    /// Another delivery had done it already.
    AlreadyDone,
}

/// Works one item: all its tenants in one transaction, or, if that fails for a non-transient
/// reason, one tenant per transaction from where it left off. As a `last_resort` (after the
/// item's retries), straight to one tenant per transaction, with a transient failure of a
/// tenant reported as that tenant's failure instead of failing the item again. `grace` is the
/// platform's default window (`GRACE_PERIOD`), `seller` this worker's supplier (`SELLER_*`),
/// recorded on the invoices it issues.
#[tracing::instrument(skip_all, fields(request_id = key, item))]
pub async fn work_item(
    pool: &PgPool,
    key: &str,
    item: i32,
    worker: &str,
    grace: &GracePeriod,
    last_resort: bool,
    seller: Option<&Seller>,
) -> Result<ItemOutcome> {
    let grace = window::Grace::rollup(grace.clone());
    let run = {
        let mut conn = pool.acquire().await?;
        q::load(&mut conn, key)
            .await?
            .ok_or_else(|| Error::internal(format!("work item for unknown rollup {key}")))?
    };
    let mut tx = pool.begin().await?;
    let Some(found) = q::lock_item(&mut tx, key, item).await? else {
        return Err(Error::internal(format!("rollup {key} has no item {item}")));
    };
    if found.done {
        return Ok(ItemOutcome::AlreadyDone);
    }
    if item == q::UNBILLED_ITEM {
        let unbilled = q::unbilled_deployments(&mut tx, run.request.period).await?;
        q::record_unbilled(&mut tx, key, unbilled).await?;
        q::finish_item(&mut tx, key, item, worker).await?;
        tx.commit().await?;
        return Ok(ItemOutcome::Done);
    }
    if found.cursor.is_none() && !last_resort {
        let now = Utc::now().trunc_subsecs(0);
        let tenants = &found.tenant_ids;
        match batch::run(&mut tx, key, &run.request, tenants, now, &grace, seller).await {
            Ok(counts) => {
                q::record_item(&mut tx, key, item, &counts, None, Some(worker)).await?;
                tx.commit().await?;
                for f in &counts.failed {
                    tracing::warn!(tenant = %f.tenant_id, reason = %f.reason, "tenant failed");
                }
                return Ok(ItemOutcome::Done);
            }
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                tx.rollback().await?;
                tracing::warn!(error = %e, tenants = found.tenant_ids.len(),
                    "batch failed; retrying its tenants one per transaction");
            }
        }
    } else {
        drop(tx);
    }
    one_by_one(pool, &run, item, worker, &grace, last_resort, seller).await
}

/// The fallback for a failing batch: each tenant in its own transaction, progress recorded in
/// the item with each one, so a crash resumes after the last tenant done and a tenant that
/// still fails is reported once. Errors outside a tenant's own writes (the item's lock and
/// bookkeeping) are the item's, and are raised even as a last resort.
async fn one_by_one(
    pool: &PgPool,
    run: &Run,
    item: i32,
    worker: &str,
    grace: &window::Grace,
    last_resort: bool,
    seller: Option<&Seller>,
) -> Result<ItemOutcome> {
    let key = run.key.as_str();
    loop {
        let mut tx = pool.begin().await?;
        let Some(found) = q::lock_item(&mut tx, key, item).await? else {
            return Err(Error::internal(format!("rollup {key} has no item {item}")));
        };
        if found.done {
            return Ok(ItemOutcome::AlreadyDone);
        }
        let Some(tenant) = next_tenant(&found)?.cloned() else {
            q::finish_item(&mut tx, key, item, worker).await?;
            tx.commit().await?;
            return Ok(ItemOutcome::Done);
        };
        let now = Utc::now().trunc_subsecs(0);
        let one = std::slice::from_ref(&tenant);
        // A savepoint keeps the item's lock while the tenant's own writes are undone.
        let mut attempt = sqlx::Connection::begin(&mut *tx).await?;
        let counts =
            match batch::run(&mut attempt, key, &run.request, one, now, grace, seller).await {
                Ok(counts) => {
                    attempt.commit().await?;
                    for f in &counts.failed {
                        tracing::warn!(tenant = %f.tenant_id, reason = %f.reason, "tenant failed");
                    }
                    counts
                }
                Err(e) if e.is_transient() && !last_resort => return Err(e),
                Err(e) => {
                    attempt.rollback().await?;
                    tracing::warn!(tenant = %tenant, error = %e, "tenant failed");
                    BatchCounts {
                        failed: vec![TenantFailure {
                            tenant_id: tenant.clone(),
                            reason: e.to_string(),
                        }],
                        ..Default::default()
                    }
                }
            };
        q::record_item(&mut tx, key, item, &counts, Some(&tenant), None).await?;
        tx.commit().await?;
    }
}

/// The tenant after the cursor in the item's stored list, the list's own order being the one
/// the database gave it at planning. The cursor is found by equality and the next entry taken:
/// no two ids are compared, so no collation can disagree with another. (A comparison did:
/// Rust's byte order against the database's `ORDER BY tenant_id`, which under a linguistic
/// collation puts `a1` before `B2`, so the tenant after a failing `a1` was skipped, neither
/// invoiced nor reported.)
fn next_tenant(item: &q::Item) -> Result<Option<&String>> {
    let next = match &item.cursor {
        None => 0,
        Some(c) => {
            let at = item.tenant_ids.iter().position(|t| t == c);
            at.ok_or_else(|| Error::internal(format!("cursor tenant {c} is not in its item")))? + 1
        }
    };
    Ok(item.tenant_ids.get(next))
}

/// After an item: under the run's lock, reads the items' totals and, if none is left and the
/// run is not complete yet, writes `billing.rollup.completed` and marks the run complete.
/// Returns the progress, and the completed event if this call wrote it.
pub async fn try_complete(pool: &PgPool, key: &str) -> Result<(Progress, Option<Completed>)> {
    let mut tx = pool.begin().await?;
    let run = q::lock(&mut tx, key).await?;
    let totals = q::totals(&mut tx, key).await?;
    let progress = Progress {
        request_id: key.to_string(),
        tenants_done: totals.tenants_done,
        tenants_total: run.tenants_total,
    };
    if run.completed || totals.items_remaining > 0 {
        return Ok((progress, None));
    }
    // Counted by its own item; a run planned before that item existed counts here.
    let unbilled = match run.unbilled_deployments {
        Some(n) => n,
        None => q::unbilled_deployments(&mut tx, run.request.period).await?,
    };
    let event = completed_event(&run, totals.counts, unbilled, Utc::now());
    outbox::insert(
        &mut tx,
        &[Event::new(
            crate::subjects::ROLLUP_COMPLETED,
            completed_msg_id(key),
            &event,
        )],
    )
    .await?;
    q::mark_completed(&mut tx, key, unbilled).await?;
    tx.commit().await?;
    tracing::info!(
        request_id = key,
        period = %run.request.period,
        tenants = run.tenants_total,
        issued = event.invoices_issued,
        drafted = event.invoices_drafted,
        skipped = event.invoices_skipped,
        failed = event.tenants_failed_total,
        unbilled_deployments = unbilled,
        duration_ms = event.duration_ms,
        "rollup completed"
    );
    Ok((progress, Some(event)))
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
        .of(outbox::Aggregate::Invoice(inv.id))
}

fn completed_event(run: &Run, counts: BatchCounts, unbilled: i64, now: DateTime<Utc>) -> Completed {
    let mut failed: Vec<TenantFailure> = counts
        .failed
        .into_iter()
        .chain(run.failed.iter().cloned())
        .collect();
    let total = failed.len();
    failed.truncate(MAX_FAILURES_LISTED);
    for f in &mut failed {
        if f.reason.chars().count() > MAX_REASON_CHARS {
            f.reason = f.reason.chars().take(MAX_REASON_CHARS).collect::<String>() + "…";
        }
    }
    Completed {
        request_id: run.key.clone(),
        period_start: run.request.period.start,
        period_end: run.request.period.end,
        invoices_issued: counts.issued,
        invoices_drafted: counts.drafted,
        invoices_skipped: counts.skipped,
        tenants_failed: failed,
        tenants_failed_total: total,
        unbilled_deployments: unbilled,
        duration_ms: (now - run.started_at).num_milliseconds().max(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::period::Period;
    use crate::store::invoices::Existing;

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
    fn only_a_period_that_has_ended_is_billed_and_a_draft_run_may_look_earlier() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let april = req(false, false);
        // The scheduler's firing for April: 03:00 on May 1; and May 1's midnight itself.
        assert!(check_ended(&april, at("2026-05-01T03:00:00Z")).is_ok());
        assert!(check_ended(&april, at("2026-05-01T00:00:00Z")).is_ok());
        let early = check_ended(&april, at("2026-04-30T23:59:59Z")).unwrap_err();
        assert!(matches!(early, Error::BadRequest(_)), "{early:?}");
        assert!(
            early.to_string().starts_with("period has not ended"),
            "{early}"
        );
        assert!(check_ended(&req(true, false), at("2026-04-15T00:00:00Z")).is_err());
        assert!(check_ended(&req(false, true), at("2026-04-15T00:00:00Z")).is_ok());
    }

    #[test]
    fn a_request_id_repeats_only_the_request_it_was_first_used_for() {
        let run = Run {
            key: "month-end".into(),
            request: req(false, false),
            started_at: Utc::now(),
            completed: true,
            tenants_total: 1,
            items_total: 2,
            failed: vec![],
            unbilled_deployments: Some(0),
        };
        assert!(check_same_request("month-end", &run, &req(false, false)).is_ok());
        let mut march = req(false, false);
        march.period = Period::parse_month("2026-03").unwrap();
        let mut some = req(false, false);
        some.tenant_ids = Some(vec![
            crate::domain::catalog::TenantId::parse("acme").unwrap()
        ]);
        for other in [req(true, false), req(false, true), march, some] {
            let e = check_same_request("month-end", &run, &other).unwrap_err();
            assert!(matches!(e, Error::Conflict(_)), "{e:?}");
            let reason = e.to_string();
            assert!(
                reason.contains("\"month-end\"") && reason.contains("2026-04, every tenant"),
                "{reason}"
            );
        }
    }

    #[test]
    fn the_cursor_walks_the_stored_order_whatever_byte_order_says() {
        let item = |cursor: Option<&str>| q::Item {
            // en-US order: byte order would put B2 first.
            tenant_ids: vec!["a1".into(), "B2".into(), "c3".into()],
            cursor: cursor.map(str::to_string),
            done: false,
        };
        let walk = [
            (None, Some("a1")),
            (Some("a1"), Some("B2")),
            (Some("B2"), Some("c3")),
        ];
        for (cursor, want) in walk.into_iter().chain([(Some("c3"), None)]) {
            let item = item(cursor);
            let got = next_tenant(&item).unwrap().map(String::as_str);
            assert_eq!(got, want, "after {cursor:?}");
        }
        assert!(next_tenant(&item(Some("zz"))).is_err());
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
