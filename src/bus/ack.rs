//! The one place an outcome becomes a JetStream ack kind, and the helpers that settle a message.
//!
//! Malformed input, or a request in conflict with what is stored, is terminated (and a rollup
//! request answered with `billing.rollup.rejected`), transient failures are nak'd with a growing delay, and everything is acked only after its
//! transaction commits.

use crate::error::Error;
use crate::metrics::Part;
use async_nats::jetstream::consumer::pull::Batch;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{message::Message, AckKind};
use std::time::{Duration, Instant};
use tokio_util::sync::{CancellationToken, DropGuard};

/// After this many deliveries an internal (non-transient) error is treated as permanent.
const MAX_INTERNAL_ATTEMPTS: i64 = 5;

/// Nak delay: 1s, 2s, 4s ... capped at one minute.
pub fn backoff(delivered: i64) -> Duration {
    let exp = delivered.clamp(1, 7) as u32 - 1;
    Duration::from_secs((1u64 << exp).min(60))
}

/// How long a message that keeps failing is retried before it is given up on (a rollup request
/// is rejected with its cause; a work item's tenants are worked one by one, every failure final).
/// The delays follow [`backoff`] for as long as they add up to no more than the window, so the
/// default 50 minutes means 54 attempts, the last ones a minute apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryWindow(pub Duration);

impl RetryWindow {
    /// The delay before the next delivery after delivery `attempt` failed, or `None` when the
    /// retries are used up.
    pub fn next_delay(self, attempt: i64) -> Option<Duration> {
        let attempt = attempt.max(1);
        let spent: Duration = (1..=attempt).map(backoff).sum();
        (spent <= self.0).then(|| backoff(attempt))
    }
}

/// The one place an outcome becomes an ack kind.
pub fn ack_for(result: Result<(), &Error>, delivered: i64) -> AckKind {
    match result {
        Ok(()) => AckKind::Ack,
        // Neither the input nor the state it conflicts with (a request_id used by another
        // request) changes by waiting.
        Err(Error::BadRequest(_) | Error::Conflict(_)) => AckKind::Term,
        Err(Error::Internal(_)) if delivered >= MAX_INTERNAL_ATTEMPTS => AckKind::Term,
        Err(_) => AckKind::Nak(Some(backoff(delivered))),
    }
}

pub fn delivered(msg: &Message) -> (u64, i64) {
    msg.info()
        .map(|i| (i.stream_sequence, i.delivered))
        .unwrap_or((0, 1))
}

pub async fn settle(msg: &Message, kind: AckKind) {
    let result = match kind {
        // Wait for the server to confirm, so a lost ack cannot cause a silent redelivery storm.
        AckKind::Ack => msg.double_ack().await,
        other => msg.ack_with(other).await,
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "ack failed; the message will be redelivered");
    }
}

/// How often an idle or failing consumer loop asks whether its consumer still exists.
const LIVENESS_EVERY: Duration = Duration::from_secs(5);

/// A fetch that fails or comes back empty is normally retried (the server restarting, a
/// heartbeat missed): only a deleted consumer or stream is the end of a consumer loop, and
/// the worker must then stop rather than run without the part. A pull from a deleted consumer
/// may look like an empty fetch, so this asks the server, at most every few seconds.
pub struct Liveness {
    checked: Instant,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            checked: Instant::now(),
        }
    }
}

impl Liveness {
    pub async fn check(&mut self, consumer: &PullConsumer) -> anyhow::Result<()> {
        if self.checked.elapsed() < LIVENESS_EVERY {
            return Ok(());
        }
        self.checked = Instant::now();
        match consumer.get_info().await {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
                ) =>
            {
                let name = &consumer.cached_info().name;
                Err(anyhow::anyhow!("consumer {name} no longer exists: {e}"))
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not check the consumer; retrying");
                Ok(())
            }
        }
    }
}

/// What one pull request brought.
pub enum Pulled {
    Batch(Box<Batch>),
    /// The pull failed (logged, reported to health, and paused for): pull again.
    Retry,
    Shutdown,
}

/// One pull request of a consumer loop, raced against shutdown: the loops' shared handling of
/// a failed pull (only a deleted consumer ends the loop, see [`Liveness`]).
pub async fn pull<E: std::fmt::Display>(
    request: impl std::future::Future<Output = Result<Batch, E>>,
    consumer: &PullConsumer,
    part: Part,
    liveness: &mut Liveness,
    shutdown: &CancellationToken,
) -> anyhow::Result<Pulled> {
    tokio::select! {
        pulled = request => match pulled {
            Ok(batch) => {
                crate::metrics::part_ok(part);
                Ok(Pulled::Batch(Box::new(batch)))
            }
            Err(e) => {
                crate::metrics::part_failed(part, &e);
                tracing::warn!(error = %e, part = part.name(), "pull failed");
                liveness.check(consumer).await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok(Pulled::Retry)
            }
        },
        _ = shutdown.cancelled() => Ok(Pulled::Shutdown),
    }
}

/// Tells the server every `every` that `msg` is still being worked, until the guard is
/// dropped, so that only a dead (or wedged) replica's messages are redelivered after the
/// consumer's `ack_wait`.
pub fn in_progress(client: &async_nats::Client, msg: &Message, every: Duration) -> DropGuard {
    let stop = CancellationToken::new();
    let token = stop.clone();
    let client = client.clone();
    if let Some(reply) = msg.reply.clone() {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.tick().await;
            loop {
                tokio::select! {
                    _ = ticks.tick() => {
                        let _ = client
                            .publish(reply.clone(), bytes::Bytes::from(AckKind::Progress))
                            .await;
                    }
                    _ = token.cancelled() => break,
                }
            }
        });
    }
    stop.drop_guard()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_class_has_one_ack_kind() {
        assert!(matches!(ack_for(Ok(()), 1), AckKind::Ack));
        assert!(matches!(ack_for(Err(&Error::bad("x")), 1), AckKind::Term));
        let conflict = Error::Conflict("request_id reused".into());
        assert!(matches!(ack_for(Err(&conflict), 1), AckKind::Term));
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
    fn retries_stop_when_their_delays_fill_the_window() {
        let secs = Duration::from_secs;
        let short = RetryWindow(secs(3));
        assert_eq!(short.next_delay(1), Some(secs(1)));
        assert_eq!(short.next_delay(2), Some(secs(2)));
        assert_eq!(short.next_delay(3), None, "1 + 2 + 4 s is past 3 s");
        assert_eq!(RetryWindow(Duration::ZERO).next_delay(1), None);
        let default = RetryWindow(crate::config::DEFAULT_RETRY_WINDOW);
        let attempts = (1..)
            .take_while(|a| default.next_delay(*a).is_some())
            .count() as i64;
        let waited: Duration = (1..=attempts).filter_map(|a| default.next_delay(a)).sum();
        assert_eq!(attempts, 54);
        assert_eq!(waited, secs(2943));
        // Even if every attempt waited 10 s for a connection, the answer comes within the hour.
        assert!(waited + secs(10) * (attempts as u32 + 1) < secs(3600));
    }
}
