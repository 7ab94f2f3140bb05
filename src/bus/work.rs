//! The work-queue consumer that every replica runs: it takes rollup work items from
//! `BILLING_WORK` one at a time per free slot (no prefetch, so an item waits in the queue, where
//! any replica can take it, rather than in one replica's buffer), works each in its own task,
//! and signals progress every few seconds so that only a dead replica's items are redelivered.
//!
//! After an item, the run's completion is checked (the last item writes
//! `billing.rollup.completed`) and `billing.rollup.progress` is published; then the item is
//! acked. A crash anywhere before the ack redelivers the item, which finds itself done.

use super::ack::{ack_for, delivered, settle, Liveness};
use super::rollups::WorkItem;
use super::{ROLLUP_PROGRESS, WORK_PROGRESS_EVERY};
use crate::error::Error;
use crate::rollup::{self, ItemOutcome};
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
    /// Who did an item (`rollup_items.processed_by`): host and process id.
    pub worker_id: String,
    /// The platform's grace window for the drafts a rollup writes.
    pub grace: crate::grace::GracePeriod,
    pub relay: Arc<Notify>,
    pub shutdown: CancellationToken,
}

impl WorkConsumer {
    pub async fn run(self) -> anyhow::Result<()> {
        let slots = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let mut liveness = Liveness::default();
        let result = loop {
            let slot = tokio::select! {
                s = slots.clone().acquire_owned() => s?,
                _ = self.shutdown.cancelled() => break Ok(()),
            };
            while tasks.try_join_next().is_some() {}
            let batch = self
                .consumer
                .batch()
                .max_messages(1)
                .expires(Duration::from_secs(1))
                .messages();
            let mut messages = tokio::select! {
                m = batch => match m {
                    Ok(m) => {
                        crate::metrics::part_ok(crate::metrics::Part::WorkConsumer);
                        m
                    }
                    Err(e) => {
                        crate::metrics::part_failed(crate::metrics::Part::WorkConsumer, &e);
                        tracing::warn!(error = %e, "work fetch failed");
                        if let Err(e) = liveness.check(&self.consumer).await {
                            break Err(e);
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
                _ = self.shutdown.cancelled() => break Ok(()),
            };
            match messages.next().await {
                Some(Ok(msg)) => {
                    let this = self.clone();
                    tasks.spawn(async move {
                        this.handle(msg).await;
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
        // Items in hand finish (each is one bounded transaction) and are acked.
        while tasks.join_next().await.is_some() {}
        tracing::info!("work consumer stopped");
        result
    }

    async fn handle(&self, msg: Message) {
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
            let ticker = self.in_progress(&msg);
            let result = self.work(&item).await;
            ticker.cancel();
            match result {
                Ok(()) => settle(&msg, AckKind::Ack).await,
                Err(e) => {
                    // An item is never terminated: its tenants would be left unbilled.
                    let kind = match ack_for(Err(&e), attempt) {
                        AckKind::Term => AckKind::Nak(Some(super::ack::backoff(attempt))),
                        other => other,
                    };
                    tracing::error!(error = %e, ?kind, "work item failed");
                    settle(&msg, kind).await;
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn work(&self, item: &WorkItem) -> Result<(), Error> {
        let outcome = rollup::work_item(
            &self.pool,
            &item.request_id,
            item.item,
            &self.worker_id,
            &self.grace,
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

    /// Tells the server the item is still being worked, so it is not redelivered elsewhere.
    fn in_progress(&self, msg: &Message) -> CancellationToken {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let client = self.client.clone();
        let reply = msg.reply.clone();
        tokio::spawn(async move {
            let Some(reply) = reply else { return };
            let mut every = tokio::time::interval(WORK_PROGRESS_EVERY);
            every.tick().await;
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        let _ = client
                            .publish(reply.clone(), bytes::Bytes::from(AckKind::Progress))
                            .await;
                    }
                    _ = token.cancelled() => break,
                }
            }
        });
        stop
    }
}

/// `host:pid`, naming this replica in `rollup_items.processed_by`.
pub fn worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "worker".into());
    format!("{host}:{}", std::process::id())
}
