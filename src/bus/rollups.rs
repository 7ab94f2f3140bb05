//! The rollup-request consumer. A request is planned (its tenants listed once and split into
//! work items, see `crate::rollup`), its pending items are published on the `BILLING_WORK`
//! queue for every replica to share (`bus::work`), and then it is acked: the request is done
//! when its items are queued, not when they are worked. A redelivered request finds its run
//! planned and republishes the items still pending; the queue's msg-id window drops repeats
//! and a done item is a no-op.

use super::ack::{ack_for, backoff, delivered, settle, Liveness};
use super::{ROLLUP_PROGRESS, ROLLUP_REJECTED, WORK_ITEM};
use crate::error::Error;
use crate::store::{self, outbox::Event};
use crate::wire::{self, RollupRequest, RollupRequestDto};
use async_nats::jetstream::{self, consumer::PullConsumer, message::Message, AckKind};
use futures::StreamExt;
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How much of a rejected request is echoed back.
const REJECT_ECHO_BYTES: usize = 4096;

pub struct RollupConsumer {
    pub pool: PgPool,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub consumer: PullConsumer,
    pub batch_size: i64,
    pub relay: Arc<Notify>,
    pub shutdown: CancellationToken,
}

/// A work item's message body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkItem {
    pub request_id: String,
    pub item: i32,
}

impl RollupConsumer {
    pub async fn run(self) -> anyhow::Result<()> {
        let mut liveness = Liveness::default();
        while !self.shutdown.is_cancelled() {
            let batch = self
                .consumer
                .batch()
                .max_messages(1)
                .expires(Duration::from_secs(1))
                .messages();
            let mut messages = tokio::select! {
                m = batch => match m {
                    Ok(m) => {
                        crate::metrics::part_ok(crate::metrics::Part::RollupConsumer);
                        m
                    }
                    Err(e) => {
                        crate::metrics::part_failed(crate::metrics::Part::RollupConsumer, &e);
                        tracing::warn!(error = %e, "rollup fetch failed");
                        liveness.check(&self.consumer).await?;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
                _ = self.shutdown.cancelled() => break,
            };
            let mut got = false;
            while let Some(msg) = messages.next().await {
                match msg {
                    Ok(msg) => {
                        got = true;
                        self.handle(msg).await
                    }
                    Err(e) => {
                        crate::metrics::part_failed(crate::metrics::Part::RollupConsumer, &e);
                        tracing::warn!(error = %e, "rollup message error")
                    }
                }
            }
            if !got {
                liveness.check(&self.consumer).await?;
            }
        }
        tracing::info!("rollup consumer stopped");
        Ok(())
    }

    async fn handle(&self, msg: Message) {
        let (seq, attempt) = delivered(&msg);
        let span = tracing::info_span!(
            "rollup_request",
            stream_seq = seq,
            attempt,
            request_id = tracing::field::Empty
        );
        async {
            let parsed =
                wire::parse::<RollupRequestDto>(&msg.payload).and_then(RollupRequest::try_from);
            let req = match parsed {
                Ok(req) => req,
                Err(e) => return self.reject(&msg, seq, &e).await,
            };
            let key = req
                .request_id
                .clone()
                .unwrap_or_else(|| format!("seq-{seq}"));
            tracing::Span::current().record("request_id", key.as_str());
            match self.dispatch(&key, &req).await {
                Ok(()) => settle(&msg, AckKind::Ack).await,
                // Logged once, here or in `reject`, where its fate is decided.
                Err(e) => match ack_for(Err(&e), attempt) {
                    AckKind::Term => self.reject(&msg, seq, &e).await,
                    kind => {
                        tracing::error!(error = %e, ?kind, "planning the rollup failed; retrying");
                        settle(&msg, kind).await;
                    }
                },
            }
        }
        .instrument(span)
        .await
    }

    /// Plans the run (first delivery) and queues its pending items.
    async fn dispatch(&self, key: &str, req: &RollupRequest) -> Result<(), Error> {
        let planned = crate::rollup::plan(&self.pool, key, req, self.batch_size).await?;
        self.relay.notify_one();
        if planned.created {
            let progress = json!({"request_id": key, "tenants_done": 0,
                                  "tenants_total": planned.run.tenants_total});
            let _ = self
                .client
                .publish(ROLLUP_PROGRESS, progress.to_string().into())
                .await;
        }
        let mut acks = Vec::with_capacity(planned.pending.len());
        for item in planned.pending {
            let body = serde_json::to_vec(&WorkItem {
                request_id: key.to_string(),
                item,
            })
            .map_err(|e| Error::internal(format!("work item: {e}")))?;
            let msg = jetstream::message::PublishMessage::build()
                .payload(body.into())
                .message_id(format!("{key}:{item}"));
            let ack = self
                .js
                .send_publish(WORK_ITEM, msg)
                .await
                .map_err(|e| Error::transient(format!("queueing work item {item}: {e}")))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await
                .map_err(|e| Error::transient(format!("work item not stored: {e}")))?;
        }
        Ok(())
    }

    /// Answers a request that can never succeed with `billing.rollup.rejected`, then terminates it.
    async fn reject(&self, msg: &Message, seq: u64, error: &Error) {
        tracing::warn!(error = %error, "rollup request rejected");
        crate::metrics::rollup("rejected");
        let request = echo(&msg.payload);
        let event = Event::new(
            ROLLUP_REJECTED,
            format!("rollup-rejected:{seq}"),
            &json!({"reason": error.to_string(), "request": request}),
        );
        let stored = async {
            let mut conn = self.pool.acquire().await?;
            store::outbox::insert(&mut conn, &[event]).await
        }
        .await;
        match stored {
            Ok(()) => {
                self.relay.notify_one();
                settle(msg, AckKind::Term).await
            }
            Err(e) => {
                let (_, attempt) = delivered(msg);
                tracing::warn!(error = %e, "could not record the rejection; retrying");
                settle(msg, AckKind::Nak(Some(backoff(attempt)))).await
            }
        }
    }
}

/// The request as received: its JSON if it parses and is small, else its text, truncated.
fn echo(payload: &[u8]) -> serde_json::Value {
    if payload.len() <= REJECT_ECHO_BYTES {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) {
            return v;
        }
    }
    let text = String::from_utf8_lossy(&payload[..payload.len().min(REJECT_ECHO_BYTES)]);
    serde_json::Value::String(text.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_requests_are_echoed_truncated() {
        assert_eq!(echo(br#"{"a":1}"#), json!({"a": 1}));
        assert_eq!(echo(b"nope"), json!("nope"));
        let big = vec![b'x'; 10_000];
        assert_eq!(echo(&big).as_str().unwrap().len(), REJECT_ECHO_BYTES);
    }
}
