//! The rollup-request consumer. A request is planned (its tenants listed once and split into
//! work items, see `crate::rollup`), its pending items are published on the `BILLING_WORK`
//! queue for every replica to share (`bus::work`), and then it is acked: the request is done
//! when its items are queued, not when they are worked. A redelivered request finds its run
//! planned and republishes the items still pending; the queue's msg-id window drops repeats
//! and a done item is a no-op.
//!
//! While a request is handled, its delivery is kept alive with in-progress signals, so a replica
//! that dies while planning loses it to another within the consumer's 10 s `ack_wait`. A request
//! that fails transiently (the database unreachable) is retried with growing delays within
//! `ROLLUP_RETRY_WINDOW` and then rejected with its cause; the rejection is published straight
//! to JetStream when the outbox cannot take it, so even a database outage ends in an answer.

use super::ack::{
    ack_for, backoff, delivered, in_progress, pull, settle, Liveness, Pulled, RetryWindow,
};
use super::{WORK_ITEM, WORK_PROGRESS_EVERY};
use crate::domain::rollup::RollupRequest;
use crate::error::Error;
use crate::store::{self, outbox::Event};
use crate::subjects::{ROLLUP_PROGRESS, ROLLUP_REJECTED};
use crate::wire::{self, RollupRequestDto};
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
    /// How long a request that keeps failing transiently is retried before it is rejected.
    pub retry: RetryWindow,
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
            let request = self
                .consumer
                .batch()
                .max_messages(1)
                .expires(Duration::from_secs(1))
                .messages();
            let part = crate::metrics::Part::RollupConsumer;
            let mut messages =
                match pull(request, &self.consumer, part, &mut liveness, &self.shutdown).await? {
                    Pulled::Batch(b) => b,
                    Pulled::Retry => continue,
                    Pulled::Shutdown => break,
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
            // Planning a large month takes a while; a live replica keeps its delivery, a dead
            // one's goes to another replica after the consumer's ack_wait.
            let _alive = in_progress(&self.client, &msg, WORK_PROGRESS_EVERY);
            let parsed =
                wire::parse::<RollupRequestDto>(&msg.payload).and_then(RollupRequest::try_from);
            let req = match parsed {
                Ok(req) => req,
                Err(e) => {
                    tracing::warn!(error = %e, "malformed rollup request");
                    return self.reject(&msg, seq, &e.to_string()).await;
                }
            };
            let key = req
                .request_id
                .clone()
                .unwrap_or_else(|| format!("seq-{seq}"));
            tracing::Span::current().record("request_id", key.as_str());
            match self.dispatch(&key, &req).await {
                Ok(()) => settle(&msg, AckKind::Ack).await,
                Err(e) => self.failed(&msg, seq, attempt, &e).await,
            }
        }
        .instrument(span)
        .await
    }

    /// A request that could not be planned or queued: retried while that may still help (a
    /// transient failure, within the retry window), otherwise rejected with its cause.
    async fn failed(&self, msg: &Message, seq: u64, attempt: i64, e: &Error) {
        let kind = ack_for(Err(e), attempt);
        let retry = match kind {
            AckKind::Nak(_) if e.is_transient() => self.retry.next_delay(attempt),
            AckKind::Nak(delay) => delay,
            _ => None,
        };
        match retry {
            Some(delay) => {
                tracing::warn!(error = %e, ?delay, "planning the rollup failed; retrying");
                settle(msg, AckKind::Nak(Some(delay))).await
            }
            None if matches!(kind, AckKind::Term) => {
                if matches!(e, Error::BadRequest(_) | Error::Conflict(_)) {
                    tracing::warn!(error = %e, "rollup request refused");
                } else {
                    tracing::error!(error = %e, "planning the rollup failed for good");
                }
                self.reject(msg, seq, &e.to_string()).await
            }
            None => {
                let reason = format!(
                    "still failing after {attempt} attempts over the retry window of {}: {e}",
                    humantime::format_duration(self.retry.0)
                );
                tracing::error!(error = %e, attempt, "planning the rollup keeps failing; rejecting it");
                self.reject(msg, seq, &reason).await
            }
        }
    }

    /// Plans the run (first delivery) and queues its pending items.
    async fn dispatch(&self, key: &str, req: &RollupRequest) -> Result<(), Error> {
        let planned =
            crate::rollup::plan(&self.pool, key, req, self.batch_size, chrono::Utc::now()).await?;
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

    /// Answers a request that will not be worked with `billing.rollup.rejected`, then terminates
    /// it. The event goes through the outbox like every other; when the database is what
    /// failed, it is published directly, with the same msg id, so it is never lost with it.
    async fn reject(&self, msg: &Message, seq: u64, reason: &str) {
        crate::metrics::rollup("rejected");
        let event = Event::new(
            ROLLUP_REJECTED,
            format!("rollup-rejected:{seq}"),
            &json!({"reason": reason, "request": echo(&msg.payload)}),
        );
        let stored = async {
            let mut conn = self.pool.acquire().await?;
            store::outbox::insert(&mut conn, std::slice::from_ref(&event)).await
        }
        .await;
        let announced = match stored {
            Ok(()) => {
                self.relay.notify_one();
                Ok(())
            }
            Err(db) => {
                tracing::warn!(error = %db, "could not store the rejection; publishing it directly");
                self.publish(&event).await
            }
        };
        match announced {
            Ok(()) => settle(msg, AckKind::Term).await,
            Err(e) => {
                let (_, attempt) = delivered(msg);
                tracing::warn!(error = %e, "could not announce the rejection; retrying");
                settle(msg, AckKind::Nak(Some(backoff(attempt)))).await
            }
        }
    }

    async fn publish(&self, event: &Event) -> Result<(), Error> {
        let msg = jetstream::message::PublishMessage::build()
            .payload(event.payload.clone().into())
            .message_id(&event.msg_id);
        self.js
            .send_publish(event.subject.clone(), msg)
            .await
            .map_err(|e| Error::transient(format!("publishing {}: {e}", event.subject)))?
            .await
            .map_err(|e| Error::transient(format!("{} not stored: {e}", event.subject)))?;
        Ok(())
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
