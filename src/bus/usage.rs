//! The metered-usage consumer: batches of records stored in one transaction.

use super::ack::{ack_for, delivered, settle};
use crate::store;
use crate::wire;
use async_nats::jetstream::{consumer::PullConsumer, message::Message, AckKind};
use futures::StreamExt;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub struct UsageConsumer {
    pub pool: PgPool,
    pub consumer: PullConsumer,
    pub relay: Arc<Notify>,
    pub shutdown: CancellationToken,
}

impl UsageConsumer {
    pub async fn run(self) -> anyhow::Result<()> {
        while !self.shutdown.is_cancelled() {
            let batch = self
                .consumer
                .batch()
                .max_messages(1000)
                .expires(Duration::from_millis(500))
                .messages();
            let mut stream = tokio::select! {
                m = batch => match m {
                    Ok(m) => m,
                    Err(e) => { tracing::warn!(error = %e, "usage fetch failed"); tokio::time::sleep(Duration::from_secs(1)).await; continue }
                },
                _ = self.shutdown.cancelled() => break,
            };
            let mut messages = Vec::new();
            while let Some(m) = stream.next().await {
                match m {
                    Ok(m) => messages.push(m),
                    Err(e) => tracing::warn!(error = %e, "usage message error"),
                }
            }
            if !messages.is_empty() {
                self.handle(messages).await;
            }
        }
        tracing::info!("usage consumer stopped");
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(messages = messages.len()))]
    async fn handle(&self, messages: Vec<Message>) {
        let mut good = Vec::new();
        let mut records = Vec::new();
        for msg in messages {
            match wire::parse_usage(&msg.payload) {
                Ok(r) => {
                    records.extend(r);
                    good.push(msg);
                }
                Err(e) => {
                    tracing::warn!(error = %e, stream_seq = delivered(&msg).0, "malformed usage terminated");
                    settle(&msg, AckKind::Term).await;
                }
            }
        }
        let result = store::usage::record(&self.pool, &records).await;
        match &result {
            Ok(ingested) => {
                tracing::info!(
                    records = records.len(),
                    inserted = ingested.inserted,
                    late = ingested.late,
                    "usage stored"
                );
                if ingested.late > 0 {
                    self.relay.notify_one();
                }
            }
            Err(e) => tracing::warn!(error = %e, "usage batch failed"),
        }
        for msg in &good {
            let kind = ack_for(result.as_ref().map(|_| ()), delivered(msg).1);
            settle(msg, kind).await;
        }
    }
}
