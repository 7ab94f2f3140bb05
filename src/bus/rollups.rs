//! The rollup-request consumer: one request at a time, acked after its rollup completes.

use super::ack::{ack_for, backoff, delivered, settle};
use super::{ROLLUP_PROGRESS, ROLLUP_REJECTED};
use crate::error::Error;
use crate::rollup::{Outcome, Rollup};
use crate::store::{self, outbox::Event};
use crate::wire::{self, RollupRequest, RollupRequestDto};
use async_nats::jetstream::{consumer::PullConsumer, message::Message, AckKind};
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
    pub consumer: PullConsumer,
    pub batch_size: i64,
    pub relay: Arc<Notify>,
    pub shutdown: CancellationToken,
}

impl RollupConsumer {
    pub async fn run(self) {
        while !self.shutdown.is_cancelled() {
            // One request at a time and no prefetch: a rollup may take a while and prefetched
            // requests would sit unacked, timing out behind it.
            let batch = self
                .consumer
                .batch()
                .max_messages(1)
                .expires(Duration::from_secs(1))
                .messages();
            let mut messages = tokio::select! {
                m = batch => match m {
                    Ok(m) => { crate::metrics::part_ok(crate::metrics::Part::RollupConsumer); m }
                    Err(e) => { crate::metrics::part_failed(crate::metrics::Part::RollupConsumer, &e); tracing::warn!(error = %e, "rollup fetch failed"); tokio::time::sleep(Duration::from_secs(1)).await; continue }
                },
                _ = self.shutdown.cancelled() => break,
            };
            while let Some(msg) = messages.next().await {
                match msg {
                    Ok(msg) => self.handle(msg).await,
                    Err(e) => {
                        crate::metrics::part_failed(crate::metrics::Part::RollupConsumer, &e);
                        tracing::warn!(error = %e, "rollup message error")
                    }
                }
            }
        }
        tracing::info!("rollup consumer stopped");
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
            let parsed = wire::parse::<RollupRequestDto>(&msg.payload).and_then(RollupRequest::try_from);
            let req = match parsed {
                Ok(req) => req,
                Err(e) => return self.reject(&msg, seq, &e).await,
            };
            let key = req.request_id.clone().unwrap_or_else(|| format!("seq-{seq}"));
            tracing::Span::current().record("request_id", key.as_str());

            let ticker = self.progress_ticker(&msg);
            let client = self.client.clone();
            let progress_key = key.clone();
            let rollup = Rollup {
                pool: &self.pool,
                batch_size: self.batch_size,
                shutdown: self.shutdown.clone(),
            };
            let relay = self.relay.clone();
            let result = rollup
                .run(&key, &req, move |p| {
                    relay.notify_one();
                    let client = client.clone();
                    let body = json!({"request_id": progress_key, "tenants_done": p.tenants_done, "tenants_total": p.tenants_total});
                    tokio::spawn(async move {
                        let _ = client.publish(ROLLUP_PROGRESS, body.to_string().into()).await;
                    });
                })
                .await;
            ticker.cancel();
            self.relay.notify_one();
            match result {
                Ok(Outcome::Completed(_)) => { crate::metrics::rollup("completed"); settle(&msg, AckKind::Ack).await }
                // Shutting down: hand the rest to another replica now, not after ack_wait.
                Ok(Outcome::Interrupted) => settle(&msg, AckKind::Nak(None)).await,
                Err(e) => {
                    let kind = ack_for(Err(&e), attempt);
                    tracing::error!(error = %e, ?kind, "rollup failed");
                    if matches!(kind, AckKind::Term) {
                        self.reject(&msg, seq, &e).await;
                    } else {
                        settle(&msg, kind).await;
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Keeps a long rollup's message from being redelivered while it is being worked.
    fn progress_ticker(&self, msg: &Message) -> CancellationToken {
        let token = self.shutdown.child_token();
        let stop = token.clone();
        let client = self.client.clone();
        let reply = msg.reply.clone();
        tokio::spawn(async move {
            let Some(reply) = reply else { return };
            let mut every = tokio::time::interval(Duration::from_secs(10));
            every.tick().await;
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        let _ = client.publish(reply.clone(), bytes::Bytes::from(AckKind::Progress)).await;
                    }
                    _ = stop.cancelled() => break,
                }
            }
        });
        token
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
