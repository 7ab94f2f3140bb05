//! Open grace drafts (CONTRACT.md section 5a): opened by a rollup batch, refreshed when usage
//! for their period arrives. Issuing them is [`super::finalize`]'s.
//!
//! Usage ingestion marks the (tenant, period) of an open draft in `draft_refresh`, in the
//! transaction that stores the usage. [`refresh`] takes the marked tenants in batches and
//! recomputes only their drafts, with the rollup's own pricing and writing
//! ([`super::batch::run`] in refresh mode): a draft keeps its id and its `finalizes_at`, and its
//! amounts follow the usage within one refresher round (about a second). Nothing is recomputed
//! for tenants without new usage, however many drafts are open.

use super::batch;
use super::window::{Grace, Mode};
use crate::domain::invoice::{Invoice, Status};
use crate::domain::rollup::RollupRequest;
use crate::error::Result;
use crate::store::{self, outbox::Event};
use chrono::{DateTime, SubsecRound, Utc};
use sqlx::PgPool;

pub const DRAFTED: &str = "billing.invoice.drafted";

/// The announcements of the drafts a batch opens a window for: `billing.invoice.drafted`,
/// msg id `<id>:draft` (the outbox keeps one per id, so a recomputed draft is not announced
/// again). Written with the batch's other events, before the number counter is taken.
pub fn drafted_events(written: &[Invoice]) -> Vec<Event> {
    written
        .iter()
        .filter(|i| i.status == Status::Draft && i.finalizes_at.is_some())
        .map(|i| {
            Event::new(DRAFTED, format!("{}:draft", i.id), i)
                .of(store::outbox::Aggregate::Invoice(i.id))
        })
        .collect()
}

/// A request that makes `decide` recompute each tenant's live draft (refresh and finalize
/// modes then skip anything that is not an open grace draft).
pub(super) fn recompute(period: crate::domain::period::Period) -> RollupRequest {
    RollupRequest {
        period,
        force: true,
        tenant_ids: None,
        draft: true,
        request_id: None,
    }
}

/// One refresher round: up to `batch` marked tenants locked and their drafts recomputed in one
/// transaction. Returns how many tenants it took (0 when nothing is marked or every marked
/// tenant is busy elsewhere). A draft that cannot be recomputed (its usage no longer prices)
/// keeps its last amounts and loses its mark, so it is not tried again until new usage marks
/// it; the others are refreshed in the same transaction.
pub async fn refresh(pool: &PgPool, batch: i64, now: DateTime<Utc>) -> Result<usize> {
    let mut tx = pool.begin().await?;
    let tenants = store::grace::lock_marked_tenants(&mut tx, batch).await?;
    if tenants.is_empty() {
        return Ok(0);
    }
    let marked = store::grace::take_marks(&mut tx, &tenants).await?;
    let grace = Grace::with_mode(Mode::Refresh);
    let now = now.trunc_subsecs(0);
    let mut drafts = 0;
    for (period, ids) in &marked {
        let counts = batch::run_each_alone_on_failure(
            &mut tx,
            "grace-refresh",
            &recompute(*period),
            ids,
            now,
            &grace,
            // A refresh never issues.
            None,
        )
        .await?;
        drafts += counts.drafted;
        for f in counts.failed {
            tracing::warn!(tenant = %f.tenant_id, reason = %f.reason, %period,
                "draft could not be refreshed; it keeps its last amounts");
        }
    }
    tx.commit().await?;
    tracing::debug!(tenants = tenants.len(), drafts, "grace drafts refreshed");
    Ok(tenants.len())
}
