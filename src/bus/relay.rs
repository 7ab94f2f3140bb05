//! The outbox relay: publishes committed events to JetStream with their `Nats-Msg-Id`, keeping
//! a window of publish acks in flight, then marks them published. No database transaction is
//! held across a NATS round trip.
//!
//! One bad row never stalls the relay. A failure counts against a row (an attempt, its error,
//! its own growing retry delay, parking after [`RelayPolicy::max_attempts`]) only when JetStream
//! is answering: when another row of the same round got through, or the events stream answers a
//! probe. Otherwise NATS is away, which is nobody's row's fault: the rows are released uncounted
//! and the relay as a whole backs off until NATS is back. A row too big for the server's
//! `max_payload` can never succeed and is parked at once. Published rows are pruned after
//! [`RelayPolicy::retention`].

use super::EVENTS_STREAM;
use crate::store::outbox::{self, Failure, Pending};
use async_nats::jetstream::{
    self,
    context::{PublishAckFuture, PublishErrorKind},
    message::PublishMessage,
};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const BATCH: i64 = 500;
/// How long a claimed row is another relay's to publish. A round takes milliseconds, so this is
/// how soon a dead replica's claimed rows go to the others; a slow round that outlives it only
/// publishes a repeat, which the stream drops by its msg id.
const LEASE: Duration = Duration::from_secs(10);
const IDLE_POLL: Duration = Duration::from_millis(500);
/// The relay's own pause while NATS is unreachable: from the first up to the last.
const OUTAGE_BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How hard the relay tries one row, and how long published rows are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayPolicy {
    /// Failed attempts (while JetStream answers) after which a row is parked.
    pub max_attempts: i32,
    /// A row's retry delay after its first failure; it doubles with each attempt...
    pub first_retry: Duration,
    /// ...up to this.
    pub max_retry: Duration,
    /// Published rows older than this are deleted.
    pub retention: Duration,
}

pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 86_400);

impl Default for RelayPolicy {
    /// Ten attempts over about 13 minutes (1 s, 2 s, 4 s ... capped at 5 minutes), then parked;
    /// published rows kept a week.
    fn default() -> Self {
        RelayPolicy {
            max_attempts: 10,
            first_retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(300),
            retention: DEFAULT_RETENTION,
        }
    }
}

impl RelayPolicy {
    /// The delay before a row's next attempt, after `attempts` failures (the one just counted
    /// included).
    pub fn retry_in(&self, attempts: i32) -> Duration {
        let doublings = attempts.clamp(1, 32) as u32 - 1;
        self.first_retry
            .saturating_mul(1u32 << doublings.min(20))
            .min(self.max_retry)
    }
}

pub struct Relay {
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub notify: Arc<Notify>,
    pub shutdown: CancellationToken,
    pub policy: RelayPolicy,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub published: usize,
    /// Rows whose failure was counted against them.
    pub failed: usize,
    pub parked: u64,
    /// NATS did not answer: rows were released uncounted.
    pub outage: bool,
}

/// Why one row was not published.
struct Failed {
    row: usize,
    error: String,
    /// It can never succeed (too big for the server).
    hopeless: bool,
}

impl Relay {
    pub async fn run(self) -> anyhow::Result<()> {
        let mut outage_pause = OUTAGE_BACKOFF.0;
        let mut pruned_at: Option<Instant> = None;
        loop {
            if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                self.prune().await;
                pruned_at = Some(Instant::now());
            }
            let round = match self.round().await {
                Ok(r) => {
                    if r.outage {
                        crate::metrics::part_failed(
                            crate::metrics::Part::Relay,
                            &"NATS is not answering",
                        );
                    } else {
                        crate::metrics::part_ok(crate::metrics::Part::Relay);
                    }
                    crate::metrics::relay_failures(r.failed);
                    r
                }
                Err(e) => {
                    crate::metrics::part_failed(crate::metrics::Part::Relay, &e);
                    crate::metrics::relay_failures(1);
                    // The database: the rows stay claimed until their lease runs out.
                    tracing::warn!(error = %e, "outbox relay round failed");
                    Round {
                        outage: true,
                        ..Round::default()
                    }
                }
            };
            if self.shutdown.is_cancelled() && round.published == 0 {
                break;
            }
            if round.outage {
                tokio::select! {
                    _ = tokio::time::sleep(outage_pause) => {}
                    _ = self.shutdown.cancelled() => {}
                }
                outage_pause = (outage_pause * 2).min(OUTAGE_BACKOFF.1);
                continue;
            }
            outage_pause = OUTAGE_BACKOFF.0;
            // Rows published or settled (retry scheduled, parked): claim the next ones at once.
            if round.published == 0 && round.failed == 0 {
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

    async fn prune(&self) {
        match outbox::prune(&self.pool, self.policy.retention).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(deleted = n, retention = ?self.policy.retention, "outbox pruned")
            }
            Err(e) => tracing::warn!(error = %e, "outbox prune failed; retried later"),
        }
    }

    /// Publishes one claimed batch.
    pub async fn round(&self) -> anyhow::Result<Round> {
        let pending = outbox::claim(&self.pool, BATCH, LEASE).await?;
        if pending.is_empty() {
            return Ok(Round::default());
        }
        let (done, failed) = self.publish(&pending).await;
        if !done.is_empty() {
            outbox::mark_published(&self.pool, &done).await?;
            crate::metrics::published(pending.iter().map(|p| (p.id, p.subject.as_str())), &done);
        }
        let mut round = Round {
            published: done.len(),
            ..Round::default()
        };
        if failed.is_empty() {
            return Ok(round);
        }
        // A failure is a row's own only if JetStream is answering.
        let answering = !done.is_empty() || self.js.get_stream(EVENTS_STREAM).await.is_ok();
        let (counted, released): (Vec<Failed>, Vec<Failed>) =
            failed.into_iter().partition(|f| f.hopeless || answering);
        if !released.is_empty() {
            let ids: Vec<i64> = released.iter().map(|f| pending[f.row].id).collect();
            tracing::warn!(
                events = ids.len(),
                error = %released[0].error,
                "NATS is not answering; the outbox holds its events"
            );
            outbox::release(&self.pool, &ids, &released[0].error).await?;
            round.outage = true;
        }
        let failures: Vec<Failure> = counted
            .iter()
            .map(|f| self.failure(&pending[f.row], f))
            .collect();
        round.failed = failures.len();
        round.parked = outbox::record_failures(&self.pool, &failures).await?;
        Ok(round)
    }

    /// Sends every row, then waits for the acks together. Returns the ids published and the
    /// failures, by row index.
    async fn publish(&self, pending: &[Pending]) -> (Vec<i64>, Vec<Failed>) {
        let mut acks: Vec<(usize, PublishAckFuture)> = Vec::with_capacity(pending.len());
        let mut failed = Vec::new();
        for (row, p) in pending.iter().enumerate() {
            let body = match p.body() {
                Ok(body) => body,
                Err(error) => {
                    failed.push(Failed {
                        row,
                        hopeless: false,
                        error,
                    });
                    continue;
                }
            };
            let msg = PublishMessage::build()
                .payload(body.into())
                .message_id(&p.msg_id);
            match self.js.send_publish(p.subject.clone(), msg).await {
                Ok(ack) => acks.push((row, ack)),
                Err(e) => failed.push(Failed {
                    row,
                    hopeless: e.kind() == PublishErrorKind::MaxPayloadExceeded,
                    error: e.to_string(),
                }),
            }
        }
        let results = futures::future::join_all(
            acks.into_iter()
                .map(|(row, ack)| async move { (row, ack.await) }),
        )
        .await;
        let mut done = Vec::with_capacity(results.len());
        for (row, result) in results {
            match result {
                Ok(_) => done.push(pending[row].id),
                Err(e) => failed.push(Failed {
                    row,
                    hopeless: false,
                    error: e.to_string(),
                }),
            }
        }
        (done, failed)
    }

    fn failure(&self, p: &Pending, f: &Failed) -> Failure {
        let attempts = p.attempts + 1;
        let park = f.hopeless || attempts >= self.policy.max_attempts;
        if park {
            // Logged once, where the row's fate is decided.
            tracing::error!(
                outbox_id = p.id, subject = %p.subject, msg_id = %p.msg_id, attempts,
                error = %f.error, "outbox event parked: it will not be published until retried"
            );
        } else {
            tracing::warn!(
                outbox_id = p.id, subject = %p.subject, msg_id = %p.msg_id, attempts,
                error = %f.error, "outbox event not published; retrying later"
            );
        }
        Failure {
            id: p.id,
            error: f.error.clone(),
            park,
            retry_in: self.policy.retry_in(attempts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_backs_off_on_its_own_up_to_the_cap() {
        let p = RelayPolicy::default();
        let delays: Vec<u64> = (1..=10).map(|a| p.retry_in(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(p.retry_in(1000), Duration::from_secs(300));
    }
}
