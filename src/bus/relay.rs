//! The outbox relay: publishes committed events to JetStream with their `Nats-Msg-Id`, keeping
//! a window of publish acks in flight, then marks them published. No database transaction is
//! held across a NATS round trip.

use crate::store::outbox;
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const BATCH: i64 = 500;
const LEASE: Duration = Duration::from_secs(30);
const IDLE_POLL: Duration = Duration::from_millis(500);

pub struct Relay {
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub notify: Arc<Notify>,
    pub shutdown: CancellationToken,
}

impl Relay {
    pub async fn run(self) -> anyhow::Result<()> {
        loop {
            let published = match self.round().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay round failed");
                    0
                }
            };
            if self.shutdown.is_cancelled() && published == 0 {
                break;
            }
            if published == 0 {
                tokio::select! {
                    _ = self.notify.notified() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = self.shutdown.cancelled() => {}
                }
            }
        }
        tracing::info!("outbox relay stopped");
        Ok(())
    }

    /// Publishes one claimed batch; returns how many were published.
    pub async fn round(&self) -> anyhow::Result<usize> {
        let pending = outbox::claim(&self.pool, BATCH, LEASE).await?;
        if pending.is_empty() {
            return Ok(0);
        }
        let mut acks: Vec<(i64, PublishAckFuture)> = Vec::with_capacity(pending.len());
        let mut failed = Vec::new();
        for p in &pending {
            let msg = PublishMessage::build()
                .payload(p.payload.clone().into())
                .message_id(&p.msg_id);
            match self.js.send_publish(p.subject.clone(), msg).await {
                Ok(ack) => acks.push((p.id, ack)),
                Err(e) => {
                    tracing::warn!(error = %e, msg_id = %p.msg_id, "publish failed");
                    failed.push(p.id);
                }
            }
        }
        let mut done = Vec::with_capacity(acks.len());
        let results = futures::future::join_all(
            acks.into_iter()
                .map(|(id, ack)| async move { (id, ack.await) }),
        )
        .await;
        for (id, result) in results {
            match result {
                Ok(_) => done.push(id),
                Err(e) => {
                    tracing::warn!(error = %e, outbox_id = id, "publish not acknowledged");
                    failed.push(id);
                }
            }
        }
        if !done.is_empty() {
            outbox::mark_published(&self.pool, &done).await?;
        }
        if !failed.is_empty() {
            outbox::release(&self.pool, &failed).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tracing::debug!(
            published = done.len(),
            failed = failed.len(),
            "outbox relayed"
        );
        Ok(done.len())
    }
}
