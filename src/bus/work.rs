//! The work-queue consumer that every replica runs: it takes rollup work items from
//! `BILLING_WORK` one at a time per free slot (no prefetch, so an item waits in the queue, where
//! any replica can take it, rather than in one replica's buffer), works each in its own task,
//! and signals progress every few seconds so that only a dead replica's items are redelivered.
//!
//! After an item, the run's completion is checked (the last item writes
//! `billing.rollup.completed`) and `billing.rollup.progress` is published; then the item is
//! acked. A crash anywhere before the ack redelivers the item, which finds itself done.
//!
//! On shutdown, items in hand get [`WORK_DRAIN_GRACE`] to finish; any still running are then
//! released (rolled back and nak'd for another replica), so a wedged item cannot hold up a stop.
//!
//! An item is never terminated. One that keeps failing is retried within `ROLLUP_RETRY_WINDOW`,
//! then worked one tenant per transaction with every failure final, so the run completes and
//! reports those tenants in `tenants_failed` with the cause.

use super::ack::{backoff, delivered, in_progress, pull, settle, Liveness, Pulled, RetryWindow};
use super::rollups::WorkItem;
use super::{WORK_DRAIN_GRACE, WORK_PROGRESS_EVERY};
use crate::error::Error;
use crate::rollup::{self, ItemOutcome};
use crate::subjects::ROLLUP_PROGRESS;
use async_nats::jetstream::{consumer::PullConsumer, message::Message, AckKind};
use futures::StreamExt;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[derive(Clone)]
pub struct WorkConsumer {
    pub pool: PgPool,
    pub client: async_nats::Client,
    pub consumer: PullConsumer,
    /// Items worked at once by this replica.
    pub concurrency: usize,
    /// How long an item that keeps failing is retried as it is, before its tenants are worked
    /// one at a time with every failure final.
    pub retry: RetryWindow,
    /// Who did an item (`rollup_items.processed_by`): host and process id.
    pub worker_id: String,
    /// The platform's grace window for the drafts a rollup writes.
    pub grace: crate::domain::grace::GracePeriod,
    /// The supplier recorded on the invoices this replica issues (`None`: documents off).
    pub seller: Option<Arc<crate::domain::document::Seller>>,
    pub relay: Arc<Notify>,
    pub shutdown: CancellationToken,
}

impl WorkConsumer {
    pub async fn run(self) -> anyhow::Result<()> {
        let slots = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let abandon = CancellationToken::new();
        let mut liveness = Liveness::default();
        let result = loop {
            let slot = tokio::select! {
                s = slots.clone().acquire_owned() => s?,
                _ = self.shutdown.cancelled() => break Ok(()),
            };
            while tasks.try_join_next().is_some() {}
            let request = self
                .consumer
                .batch()
                .max_messages(1)
                .expires(Duration::from_secs(1))
                .messages();
            let part = crate::metrics::Part::WorkConsumer;
            let mut messages =
                match pull(request, &self.consumer, part, &mut liveness, &self.shutdown).await {
                    Ok(Pulled::Batch(b)) => b,
                    Ok(Pulled::Retry) => continue,
                    Ok(Pulled::Shutdown) => break Ok(()),
                    Err(e) => break Err(e),
                };
            match messages.next().await {
                Some(Ok(msg)) => {
                    let this = self.clone();
                    let abandon = abandon.clone();
                    tasks.spawn(async move {
                        this.handle(msg, abandon).await;
                        drop(slot);
                    });
                }
                Some(Err(e)) => tracing::warn!(error = %e, "work message error"),
                None => {
                    if let Err(e) = liveness.check(&self.consumer).await {
                        break Err(e);
                    }
                }
            }
        };
        // Items in hand get a grace period to finish and be acked. An item is one transaction,
        // but a slow statement or a lock wait can hold it for any time: what is still running
        // after the grace is released (rolled back and nak'd, so another replica takes it now).
        let drained = tokio::time::timeout(WORK_DRAIN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(items = tasks.len(), grace = ?WORK_DRAIN_GRACE,
                "items still running at shutdown; releasing them");
            abandon.cancel();
            while tasks.join_next().await.is_some() {}
        }
        tracing::info!("work consumer stopped");
        result
    }

    async fn handle(&self, msg: Message, abandon: CancellationToken) {
        let (seq, attempt) = delivered(&msg);
        let item: WorkItem = match serde_json::from_slice(&msg.payload) {
            Ok(item) => item,
            Err(e) => {
                tracing::error!(error = %e, stream_seq = seq, "malformed work item terminated");
                return settle(&msg, AckKind::Term).await;
            }
        };
        let span = tracing::info_span!("work_item", request_id = %item.request_id,
            item = item.item, attempt);
        async {
            let ticker = in_progress(&self.client, &msg, WORK_PROGRESS_EVERY);
            let worked = async {
                match self.work(&item, false).await {
                    Ok(()) => AckKind::Ack,
                    Err(e) => self.failed(&item, attempt, &e).await,
                }
            };
            let kind = tokio::select! {
                kind = worked => kind,
                // Dropping the work rolls its transaction back; the item is redelivered at once.
                _ = abandon.cancelled() => {
                    tracing::warn!("work item released unfinished at shutdown");
                    AckKind::Nak(None)
                }
            };
            drop(ticker);
            settle(&msg, kind).await;
        }
        .instrument(span)
        .await
    }

    /// An item that failed. It is never terminated (its tenants would be left unbilled, and the
    /// run never complete): it is retried within the retry window, then worked one tenant at a
    /// time with every failure final, so the run completes with the cause reported. Only an
    /// item whose outcome cannot even be recorded (the database unreachable) stays queued.
    async fn failed(&self, item: &WorkItem, attempt: i64, e: &Error) -> AckKind {
        // Whatever its class, a failure is retried (not terminated as bus::ack would have a
        // malformed message be): an item is ours, so its failure is in its tenants or in us.
        if let Some(delay) = self.retry.next_delay(attempt) {
            tracing::error!(error = %e, ?delay, "work item failed; retrying");
            return AckKind::Nak(Some(delay));
        }
        match self.work(item, true).await {
            Ok(()) => {
                tracing::error!(error = %e, attempt,
                    "work item kept failing; its tenants were worked one at a time");
                AckKind::Ack
            }
            Err(last) => {
                let delay = backoff(attempt);
                tracing::error!(error = %last, ?delay,
                    "work item cannot be recorded after its retries; it stays queued");
                AckKind::Nak(Some(delay))
            }
        }
    }

    async fn work(&self, item: &WorkItem, last_resort: bool) -> Result<(), Error> {
        let outcome = rollup::work_item(
            &self.pool,
            &item.request_id,
            item.item,
            &self.worker_id,
            &self.grace,
            last_resort,
            self.seller.as_deref(),
        )
        .await?;
        let (progress, completed) = rollup::try_complete(&self.pool, &item.request_id).await?;
        if completed.is_some() {
            crate::metrics::rollup("completed");
        }
        if outcome == ItemOutcome::Done || completed.is_some() {
            self.relay.notify_one();
            if let Ok(body) = serde_json::to_vec(&progress) {
                let _ = self.client.publish(ROLLUP_PROGRESS, body.into()).await;
            }
        }
        Ok(())
    }
}

/// `host:pid`, naming this replica in `rollup_items.processed_by`.
pub fn worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "worker".into());
    format!("{host}:{}", std::process::id())
}
