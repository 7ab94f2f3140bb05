//! `invoicer scheduler`: publishes `billing.rollup.requested` for each month-end firing of its
//! cron, one period at a time, oldest first, and records each in its key-value state.
//!
//! Order of a firing, and why: read the state (with its revision), publish the request with
//! `Nats-Msg-Id` `rollup:YYYY-MM`, then compare-and-set the state to that period.
//! - A crash between publishing and recording re-publishes the same msg id on restart: the
//!   stream drops it within its duplicate window, and past it the worker sees the same
//!   `request_id` and treats it as the same run. Recording first could lose the period.
//! - Replicas that fire together both publish (the stream keeps one) and race on the
//!   compare-and-set: the loser reads the new state and finds nothing due.
//! - The state is read again right before every publish, never reused across a sleep, so a
//!   replica that slept through another's firing does not publish a stale period.
//!
//! The clock is injected ([`Clock`]): the binary uses [`SystemClock`], tests drive a manual
//! one through years of firings in milliseconds.

use crate::bus::client::request_rollup;
use crate::bus::schedule_state::{Cas, StateStore, Versioned};
use crate::domain::calendar::{Firing, Schedule, State};
use crate::domain::period::Period;
use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Wall time, or a test's time.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    /// Resolves once `now() >= at`. It may also resolve early; the scheduler checks again.
    fn sleep_until(&self, at: DateTime<Utc>) -> BoxFuture<'_, ()>;
}

/// The system clock. Long sleeps wake every minute, so a wall-clock step (NTP, a suspended
/// VM) delays a firing by at most a minute.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> BoxFuture<'_, ()> {
        let wait = (at - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(60));
        Box::pin(tokio::time::sleep(wait))
    }
}

/// Retry pacing for NATS failures (wall time, whatever the clock): 1s, 2s, 4s ... 30s.
fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(5)).min(Duration::from_secs(30))
}

pub struct Scheduler {
    pub schedule: Schedule,
    /// The first period to bill when there is no state yet (`--since`).
    pub since: Option<Period>,
    pub client: async_nats::Client,
    pub clock: Arc<dyn Clock>,
    pub shutdown: CancellationToken,
}

impl Scheduler {
    /// Runs until `shutdown`. Only a failure to open the bucket at start is an error; NATS
    /// errors later are logged and retried.
    pub async fn run(self) -> anyhow::Result<()> {
        let js = async_nats::jetstream::new(self.client.clone());
        let store = StateStore::open(&js).await?;
        let initial = State::initial(self.since, self.clock.now());
        let first = store.load_or_create(&initial).await?;
        if self.since.is_some() && first.state != initial {
            tracing::warn!(state = ?first.state, "the scheduler already has state; --since is ignored");
        }
        let next = self.schedule.next(&first.state);
        tracing::info!(
            cron = self.schedule.expr(),
            schedule = %self.schedule.describe(),
            last_period = %first.state.last_period.map_or("none".into(), |p| p.to_string()),
            next_firing = %next.map_or("never".into(), |f| f.at.to_rfc3339()),
            next_period = %next.map_or("none".into(), |f| f.period.to_string()),
            "scheduler started"
        );
        let mut attempt = 0;
        while !self.shutdown.is_cancelled() {
            match self.step(&store).await {
                Ok(()) => attempt = 0,
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "scheduler step failed; retrying");
                    attempt += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(retry_delay(attempt)) => {}
                        _ = self.shutdown.cancelled() => {}
                    }
                }
            }
        }
        tracing::info!("scheduler stopped");
        Ok(())
    }

    /// Requests the oldest due period, or sleeps until the next one is due.
    async fn step(&self, store: &StateStore) -> anyhow::Result<()> {
        let Some(current) = store.load().await? else {
            // An operator deleted the state: start afresh from now.
            let initial = State::initial(None, self.clock.now());
            store.create(&initial).await?;
            tracing::warn!("the scheduler's state was deleted; starting afresh from now");
            return Ok(());
        };
        match self.schedule.due(&current.state, self.clock.now()) {
            Some(firing) => self.request(store, &current, firing).await,
            None => {
                let Some(next) = self.schedule.next(&current.state) else {
                    // The schedule never fires again (a year past chrono's range).
                    self.shutdown.cancelled().await;
                    return Ok(());
                };
                tokio::select! {
                    _ = self.clock.sleep_until(next.at) => {}
                    _ = self.shutdown.cancelled() => {}
                }
                Ok(())
            }
        }
    }

    async fn request(
        &self,
        store: &StateStore,
        current: &Versioned,
        firing: Firing,
    ) -> anyhow::Result<()> {
        let js = async_nats::jetstream::new(self.client.clone());
        let msg_id = firing.msg_id();
        request_rollup(&js, &firing.request(), &msg_id)
            .await
            .with_context(|| {
                format!("requesting {msg_id} (`invoicer run` or `invoicer migrate` creates the streams)")
            })?;
        match store
            .update(&current.state.requested(firing.period), current.revision)
            .await?
        {
            Cas::Written(revision) => tracing::info!(
                period = %firing.period,
                %msg_id,
                fired_at = %firing.at.to_rfc3339(),
                revision,
                "rollup requested"
            ),
            Cas::Conflict => tracing::info!(
                period = %firing.period,
                "another scheduler recorded this firing first; reading its state"
            ),
        }
        Ok(())
    }
}
