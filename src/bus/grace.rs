//! The grace-draft loop every replica runs (CONTRACT.md section 5a): about once a second it
//! refreshes the open drafts that new usage marked (`rollup::drafts`), then issues the drafts
//! whose window has closed (`rollup::finalize`), each in batches of tenants until nothing is
//! left that no other replica holds. It never holds a transaction between rounds, so shutdown
//! waits at most for the batch in hand.

use crate::metrics::{self, Part};
use crate::rollup::{drafts, finalize};
use chrono::Utc;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often the loop looks for marked and due drafts: a draft reflects new usage, and is
/// issued after its `finalizes_at`, within about this long.
pub const EVERY: Duration = Duration::from_secs(1);

/// Batches of each kind per round, so that a flood of marks cannot hold up the finalizer (or
/// the reverse): what is left is taken the next round.
const MAX_BATCHES: usize = 20;

pub struct DraftLoop {
    pub pool: PgPool,
    /// Tenants per transaction.
    pub batch: i64,
    pub every: Duration,
    /// The supplier recorded on the invoices this replica issues (`None`: documents off).
    pub seller: Option<Arc<crate::domain::document::Seller>>,
    pub relay: Arc<Notify>,
    pub shutdown: CancellationToken,
}

impl DraftLoop {
    pub async fn run(self) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => break,
            }
            // The two are independent: a refresh that fails (its marks stay for the next
            // round) must not keep due drafts from being issued, nor the reverse.
            let refreshed = self.refresh().await;
            let finalized = self.finalize().await;
            if let Err(e) = &refreshed {
                metrics::part_failed(Part::GraceDrafts, e);
                tracing::warn!(error = %e, "grace-draft refresh failed; retrying next round");
            }
            match finalized {
                Ok(_) if refreshed.is_ok() => metrics::part_ok(Part::GraceDrafts),
                Ok(_) => {}
                Err(e) => {
                    metrics::part_failed(Part::GraceDrafts, &e);
                    tracing::warn!(error = %e, "grace-draft finalizer failed; retrying next round");
                }
            }
        }
        tracing::info!("grace-draft loop stopped");
        Ok(())
    }

    /// Refreshes marked drafts, batch by batch.
    async fn refresh(&self) -> crate::error::Result<()> {
        let batch = self.batch.max(1);
        for _ in 0..MAX_BATCHES {
            let taken = drafts::refresh(&self.pool, batch, Utc::now()).await?;
            if (taken as i64) < batch || self.shutdown.is_cancelled() {
                break;
            }
        }
        Ok(())
    }

    /// Issues due drafts, batch by batch; returns how many it issued.
    async fn finalize(&self) -> crate::error::Result<usize> {
        let batch = self.batch.max(1);
        let mut issued = 0;
        for _ in 0..MAX_BATCHES {
            let round =
                finalize::round(&self.pool, batch, Utc::now(), self.seller.as_deref()).await?;
            issued += round.issued;
            if round.issued > 0 {
                // Publish as we go: a long backlog of due drafts is announced batch by batch.
                self.relay.notify_one();
            }
            if (round.tenants as i64) < batch || self.shutdown.is_cancelled() {
                break;
            }
        }
        Ok(issued)
    }
}
