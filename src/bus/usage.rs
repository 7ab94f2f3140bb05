//! The metered-usage consumer: usage is revenue and is never dropped.
//!
//! Each fetched batch of messages is parsed record by record and stored with one multi-row
//! insert. A record that cannot be parsed or breaks the contract is refused on its own, with a
//! `billing.usage.rejected` event written through the outbox in the same transaction; the good
//! records beside it are stored. A database error is never the record's fault (everything
//! PostgreSQL would refuse is refused at the edge, in `wire::usage`): the messages are nak'd with
//! a growing delay and retried until they succeed, never terminated. When a batch fails for a
//! reason other than a lost connection, its messages are retried one by one at once, so that
//! whatever is wrong with one message cannot hold up the others.

use super::ack::{backoff, delivered, pull, settle, Liveness, Pulled};
use crate::domain::usage::UsageRecord;
use crate::error::Error;
use crate::store::{self, outbox::Event, usage::Ingested};
use crate::subjects::USAGE_REJECTED;
use crate::wire::{self, UsageMessage};
use async_nats::jetstream::{consumer::PullConsumer, message::Message, AckKind};
use futures::StreamExt;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// Messages per fetch: one transaction stores all of their records.
const FETCH_MESSAGES: usize = 1000;
/// Batches stored at once (each in its own transaction and connection).
const WRITERS: usize = 2;
/// Bytes per fetch, to bound memory and the size of one transaction. Never below the server's
/// `max_payload` plus headers, or a message that size could never be fetched.
const FETCH_BYTES: usize = 8 << 20;

pub struct UsageConsumer {
    pub pool: PgPool,
    pub consumer: PullConsumer,
    pub relay: Arc<Notify>,
    pub shutdown: CancellationToken,
    /// The server's `max_payload`: the largest message a fetch must be able to carry.
    pub max_payload: usize,
}

/// A fetched message and what it carries.
struct Parsed {
    msg: Message,
    records: Vec<UsageRecord>,
    rejections: Vec<Event>,
}

impl UsageConsumer {
    /// Fetches and parses the next batch while up to [`WRITERS`] earlier ones are being
    /// stored: parsing, the database and the acks overlap instead of taking turns.
    pub async fn run(self) -> anyhow::Result<()> {
        let this = Arc::new(self);
        let (batches, mut next) = mpsc::channel::<Vec<Parsed>>(WRITERS);
        let fetcher = tokio::spawn(this.clone().fetch(batches));
        futures::stream::poll_fn(|cx| next.poll_recv(cx))
            .for_each_concurrent(WRITERS, |batch| this.handle(batch))
            .await;
        let fetched = fetcher
            .await
            .map_err(|e| anyhow::anyhow!("usage fetcher panicked: {e}"))?;
        tracing::info!("usage consumer stopped");
        fetched
    }

    /// Until shutdown: fetches batches of messages and hands them on parsed. What was fetched
    /// before shutdown is still stored (the channel drains).
    async fn fetch(self: Arc<Self>, batches: mpsc::Sender<Vec<Parsed>>) -> anyhow::Result<()> {
        let fetch_bytes = FETCH_BYTES.max(2 * self.max_payload);
        let mut liveness = Liveness::default();
        while !self.shutdown.is_cancelled() {
            let request = self
                .consumer
                .batch()
                .max_messages(FETCH_MESSAGES)
                .max_bytes(fetch_bytes)
                .expires(Duration::from_millis(500))
                .messages();
            let part = crate::metrics::Part::UsageConsumer;
            let mut stream =
                match pull(request, &self.consumer, part, &mut liveness, &self.shutdown).await? {
                    Pulled::Batch(b) => b,
                    Pulled::Retry => continue,
                    Pulled::Shutdown => break,
                };
            let mut messages = Vec::new();
            while let Some(m) = stream.next().await {
                match m {
                    Ok(m) => messages.push(m),
                    Err(e) => {
                        crate::metrics::part_failed(crate::metrics::Part::UsageConsumer, &e);
                        tracing::warn!(error = %e, "usage message error")
                    }
                }
            }
            if messages.is_empty() {
                liveness.check(&self.consumer).await?;
                continue;
            }
            let parsed = messages.into_iter().map(parse).collect();
            if batches.send(parsed).await.is_err() {
                break;
            }
        }
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(messages = parsed.len()))]
    async fn handle(&self, parsed: Vec<Parsed>) {
        let records: Vec<UsageRecord> = parsed
            .iter()
            .flat_map(|p| p.records.iter().cloned())
            .collect();
        let rejections: Vec<Event> = parsed
            .iter()
            .flat_map(|p| p.rejections.iter().cloned())
            .collect();
        match store::usage::record(&self.pool, &records, &rejections).await {
            Ok(ingested) => {
                self.stored(&records, &rejections, ingested);
                settle_all(&parsed).await;
            }
            // The database is unreachable: every message waits, however it is split.
            Err(e) if e.is_transient() || parsed.len() == 1 => {
                self.retry_later(&parsed, &e).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "usage batch failed; storing its messages one by one");
                for p in &parsed {
                    self.handle_one(p).await;
                }
            }
        }
    }

    /// One message in its own transaction: after a batch failed for a reason that may be
    /// this message's alone.
    async fn handle_one(&self, p: &Parsed) {
        match store::usage::record(&self.pool, &p.records, &p.rejections).await {
            Ok(ingested) => {
                self.stored(&p.records, &p.rejections, ingested);
                settle_all(std::slice::from_ref(p)).await;
            }
            Err(e) => self.retry_later(std::slice::from_ref(p), &e).await,
        }
    }

    fn stored(&self, records: &[UsageRecord], rejections: &[Event], ingested: Ingested) {
        tracing::info!(
            records = records.len(),
            inserted = ingested.inserted,
            late = ingested.late,
            rejected = rejections.len(),
            "usage stored"
        );
        for r in rejections {
            tracing::warn!(msg_id = %r.msg_id, "usage record rejected");
        }
        crate::metrics::usage_stored(ingested.inserted, ingested.late);
        crate::metrics::usage_rejected(rejections.len() as u64);
        if ingested.late > 0 || !rejections.is_empty() {
            self.relay.notify_one();
        }
    }

    /// A database error is never the records' fault: nak with a growing delay, never terminate.
    async fn retry_later(&self, parsed: &[Parsed], error: &Error) {
        let attempt = parsed
            .iter()
            .map(|p| delivered(&p.msg).1)
            .max()
            .unwrap_or(1);
        tracing::warn!(error = %error, messages = parsed.len(), attempt, "usage not stored; retrying");
        futures::future::join_all(parsed.iter().map(|p| {
            let delay = backoff(delivered(&p.msg).1);
            settle(&p.msg, AckKind::Nak(Some(delay)))
        }))
        .await;
    }
}

/// Parses a message and turns what it refuses into `billing.usage.rejected` events, keyed by
/// the message's place in the stream so a redelivery writes each event once.
fn parse(msg: Message) -> Parsed {
    let UsageMessage { records, rejected } = wire::parse_usage(&msg.payload);
    let key = match msg.info() {
        Ok(info) => format!(
            "{}-{}",
            info.stream_sequence,
            info.published.unix_timestamp_nanos()
        ),
        // Every JetStream delivery has an ack subject; without one a redelivery may repeat the
        // event, which is better than losing it.
        Err(_) => uuid::Uuid::new_v4().to_string(),
    };
    let rejections = rejected
        .iter()
        .enumerate()
        .map(|(i, r)| Event::new(USAGE_REJECTED, format!("usage-rejected:{key}:{i}"), r))
        .collect();
    Parsed {
        msg,
        records,
        rejections,
    }
}

/// After commit: a message that carried something to store is acked; one that carried only
/// refusals is terminated (its rejections are stored), so the server's advisories show it.
async fn settle_all(parsed: &[Parsed]) {
    futures::future::join_all(parsed.iter().map(|p| {
        let kind = if p.records.is_empty() && !p.rejections.is_empty() {
            AckKind::Term
        } else {
            AckKind::Ack
        };
        settle(&p.msg, kind)
    }))
    .await;
}
