//! The finalizer: at `finalizes_at`, an open grace draft is recomputed one last time from all
//! usage stored by then and issued, in one transaction (CONTRACT.md section 5a).
//!
//! Every replica runs it. A round locks up to a batch of tenants with due drafts, `FOR UPDATE
//! SKIP LOCKED`, so replicas split the due tenants between them instead of queueing on them,
//! and reads the due drafts only under those locks: a replica that got there first has
//! committed, and its drafts are no longer drafts. The recompute, the number, the invoice row
//! and its `billing.invoice.issued` outbox row are [`super::batch::run`]'s writes in finalize
//! mode, inside that one transaction, so a crash anywhere leaves the draft as it was (the next
//! round takes it again) or issued with its event: never both, never neither. Usage ingestion
//! waits on the same tenant locks, so a record is either in the final recompute or, arriving
//! after the commit, reported as `billing.usage.late`.
//!
//! An admin's `billing.admin.invoices.issue` on an open draft is [`early`]: the same recompute
//! and issue, inside the admin's transaction.

use super::batch;
use super::drafts::recompute;
use super::window::{Grace, Mode};
use crate::domain::document::Seller;
use crate::domain::invoice::Invoice;
use crate::domain::period::Period;
use crate::error::{Error, Result};
use crate::store;
use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use sqlx::{PgConnection, PgPool};

/// The delay before a due draft whose finalization failed `attempts` times in a row is tried
/// again: 5 s, doubling, at most 5 minutes. Its data has to change before it can succeed (the
/// catalog fixed, usage corrected), or an admin issues or voids it; meanwhile it is tried, and
/// logged, at most every 5 minutes instead of every round.
pub fn retry_delay(attempts: i32) -> TimeDelta {
    const FIRST_SECS: i64 = 5;
    const MAX_SECS: i64 = 300;
    let doublings = attempts.clamp(1, 16) as u32 - 1;
    TimeDelta::seconds((FIRST_SECS << doublings).min(MAX_SECS))
}

/// One finalizer round at `now`: returns how many drafts it issued, and how many tenants it took
/// (0 when nothing is due or every due tenant is busy elsewhere). A draft that cannot be
/// finalized stays a draft, its failure recorded with the cause, and waits [`retry_delay`]
/// before it is taken again, in the same transaction as the others' issue. `seller` is this
/// worker's supplier, recorded on what it issues.
pub async fn round(
    pool: &PgPool,
    batch: i64,
    now: DateTime<Utc>,
    seller: Option<&Seller>,
) -> Result<Round> {
    let mut tx = pool.begin().await?;
    let tenants = store::grace::lock_due_tenants(&mut tx, now, batch).await?;
    if tenants.is_empty() {
        return Ok(Round::default());
    }
    let due = store::grace::due_drafts(&mut tx, &tenants, now).await?;
    let grace = Grace::with_mode(Mode::Finalize { due_by: Some(now) });
    let issued_at = now.trunc_subsecs(0);
    let mut issued = 0;
    let mut failed = Vec::new();
    for (period, ids) in &due {
        let counts = batch::run_each_alone_on_failure(
            &mut tx,
            "grace-finalize",
            &recompute(*period),
            ids,
            issued_at,
            &grace,
            seller,
        )
        .await?;
        issued += counts.issued;
        if counts.failed.is_empty() {
            continue;
        }
        let reasons: Vec<(String, String)> = counts
            .failed
            .into_iter()
            .map(|f| (f.tenant_id, f.reason))
            .collect();
        let recorded = store::grace::record_failed_finalizations(
            &mut tx,
            period.start,
            &reasons,
            now,
            retry_delay,
        )
        .await?;
        failed.extend(recorded.into_iter().map(|f| (*period, f)));
    }
    tx.commit().await?;
    for (period, f) in &failed {
        // The draft stays open: an operator fixes its data (it is then issued at its next
        // attempt), or issues or voids it.
        tracing::error!(tenant = %f.tenant_id, invoice = %f.invoice_id, %period,
            attempts = f.attempts, retry_at = %f.retry_at, reason = %f.reason,
            "a due draft could not be finalized; it stays a draft until it is tried again");
    }
    if issued > 0 {
        tracing::info!(issued, tenants = tenants.len(), "grace drafts finalized");
    }
    Ok(Round {
        tenants: tenants.len(),
        issued: issued as usize,
    })
}

/// What a finalizer round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    pub tenants: usize,
    pub issued: usize,
}

/// Issues a draft (an open grace draft before its time, or a `draft` run's), recomputed from all
/// usage stored so far, in the caller's transaction (which holds the tenant's and the invoice's
/// locks), recording `seller` as its supplier. Returns the issued invoice with its lines.
pub async fn early(
    tx: &mut PgConnection,
    draft: &Invoice,
    now: DateTime<Utc>,
    seller: Option<&Seller>,
) -> Result<Invoice> {
    let period = Period::new(draft.period_start, draft.period_end)
        .map_err(|e| Error::internal(format!("stored invoice period: {e}")))?;
    let grace = Grace::with_mode(Mode::IssueDraft);
    let counts = batch::run(
        tx,
        "admin-issue",
        &recompute(period),
        std::slice::from_ref(&draft.tenant_id),
        now,
        &grace,
        seller,
    )
    .await?;
    if let Some(f) = counts.failed.first() {
        return Err(Error::Conflict(format!(
            "invoice {} cannot be recomputed to be issued: {}",
            draft.id, f.reason
        )));
    }
    if counts.issued != 1 {
        return Err(Error::internal(format!(
            "issuing draft {}: {} invoices issued, expected 1",
            draft.id, counts.issued
        )));
    }
    store::invoices::get(tx, draft.id, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_draft_waits_longer_each_time_up_to_five_minutes() {
        let secs: Vec<i64> = [1, 2, 3, 4, 6, 7, 8, 100, i32::MAX]
            .into_iter()
            .map(|n| retry_delay(n).num_seconds())
            .collect();
        assert_eq!(secs, [5, 10, 20, 40, 160, 300, 300, 300, 300]);
        assert_eq!(
            retry_delay(0).num_seconds(),
            5,
            "never less than the first delay"
        );
    }
}
