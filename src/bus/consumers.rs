//! The JetStream consumers: rollup requests and metered usage.
//!
//! Each error class maps to one ack kind, in [`ack_for`]: malformed input is terminated (and a
//! rollup request answered with `billing.rollup.rejected`), transient failures are nak'd with a
//! growing delay, and everything is acked only after its transaction commits.

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

/// After this many deliveries an internal (non-transient) error is treated as permanent.
const MAX_INTERNAL_ATTEMPTS: i64 = 5;
/// How much of a rejected request is echoed back.
const REJECT_ECHO_BYTES: usize = 4096;

/// Nak delay: 1s, 2s, 4s ... capped at one minute.
pub fn backoff(delivered: i64) -> Duration {
    let exp = delivered.clamp(1, 7) as u32 - 1;
    Duration::from_secs((1u64 << exp).min(60))
}

/// The one place an outcome becomes an ack kind.
pub fn ack_for(result: Result<(), &Error>, delivered: i64) -> AckKind {
    match result {
        Ok(()) => AckKind::Ack,
        Err(Error::BadRequest(_)) => AckKind::Term,
        Err(Error::Internal(_)) if delivered >= MAX_INTERNAL_ATTEMPTS => AckKind::Term,
        Err(_) => AckKind::Nak(Some(backoff(delivered))),
    }
}

fn delivered(msg: &Message) -> (u64, i64) {
    msg.info()
        .map(|i| (i.stream_sequence, i.delivered))
        .unwrap_or((0, 1))
}

async fn settle(msg: &Message, kind: AckKind) {
    let result = match kind {
        // Wait for the server to confirm, so a lost ack cannot cause a silent redelivery storm.
        AckKind::Ack => msg.double_ack().await,
        other => msg.ack_with(other).await,
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "ack failed; the message will be redelivered");
    }
}

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
                    Ok(m) => m,
                    Err(e) => { tracing::warn!(error = %e, "rollup fetch failed"); tokio::time::sleep(Duration::from_secs(1)).await; continue }
                },
                _ = self.shutdown.cancelled() => break,
            };
            while let Some(msg) = messages.next().await {
                match msg {
                    Ok(msg) => self.handle(msg).await,
                    Err(e) => tracing::warn!(error = %e, "rollup message error"),
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
                Ok(Outcome::Completed(_)) => settle(&msg, AckKind::Ack).await,
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

pub struct UsageConsumer {
    pub pool: PgPool,
    pub consumer: PullConsumer,
    pub relay: Arc<Notify>,
    pub shutdown: CancellationToken,
}

impl UsageConsumer {
    pub async fn run(self) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_class_has_one_ack_kind() {
        assert!(matches!(ack_for(Ok(()), 1), AckKind::Ack));
        assert!(matches!(ack_for(Err(&Error::bad("x")), 1), AckKind::Term));
        let transient = Error::Transient("db".into());
        assert!(matches!(ack_for(Err(&transient), 9), AckKind::Nak(Some(_))));
        let internal = Error::Internal("x".into());
        assert!(matches!(ack_for(Err(&internal), 1), AckKind::Nak(Some(_))));
        assert!(matches!(ack_for(Err(&internal), 5), AckKind::Term));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(50), Duration::from_secs(60));
    }

    #[test]
    fn rejected_requests_are_echoed_truncated() {
        assert_eq!(echo(br#"{"a":1}"#), json!({"a": 1}));
        assert_eq!(echo(b"nope"), json!("nope"));
        let big = vec![b'x'; 10_000];
        assert_eq!(echo(&big).as_str().unwrap().len(), REJECT_ECHO_BYTES);
    }
}
