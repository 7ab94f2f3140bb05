//! What an operator watches: counters to graph (Prometheus text format on `METRICS_ADDR`) and
//! the worker's readiness as its parts report it (answered on `billing.admin.health`).
//!
//! Counters go through the `metrics` facade: without `METRICS_ADDR` no recorder is installed
//! and each hook is close to free. The hooks in the consumers and the relay are one-liners
//! into this module, so the names and labels live here.
//!
//! Readiness is process-wide state, as a worker runs one per process: each part records its
//! last success and its last failure, and is ready once it has succeeded and has not failed in
//! the last [`FAILURE_MEMORY`]. A part that stops for good takes the worker down (the
//! supervisor's job), so "stopped" needs no state here.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

/// Rollup requests handled, by `outcome`: `completed` or `rejected`.
pub const ROLLUPS: &str = "invoicer_rollups_total";
/// Invoices issued (their `billing.invoice.issued` events published).
pub const INVOICES_ISSUED: &str = "invoicer_invoices_issued_total";
/// Events published by the outbox relay, by `subject`.
pub const EVENTS_PUBLISHED: &str = "invoicer_events_published_total";
/// Usage records stored (a repeated `event_id` is not counted again).
pub const USAGE_STORED: &str = "invoicer_usage_records_stored_total";
/// Of those, records for an already-invoiced period (`billing.usage.late`).
pub const USAGE_LATE: &str = "invoicer_usage_records_late_total";
/// Usage messages rejected as malformed.
pub const USAGE_REJECTED: &str = "invoicer_usage_rejected_total";
/// Relay publishes that failed or were not acknowledged, and failed relay rounds.
pub const RELAY_FAILURES: &str = "invoicer_relay_failures_total";
/// Outbox events not yet published.
pub const OUTBOX_BACKLOG: &str = "invoicer_outbox_backlog";
/// Age of the oldest unpublished outbox event (0 when there is none).
pub const OUTBOX_OLDEST: &str = "invoicer_outbox_oldest_pending_seconds";
/// Requests the service refused to act on or answer, by `reason`: `reply_subject` (not an inbox
/// of the scope that asked) or `no_reply`.
pub const REQUESTS_REFUSED: &str = "invoicer_requests_refused_total";
/// 1 when the worker would answer `billing.admin.health` with `ready: true`.
pub const READY: &str = "invoicer_ready";

/// How long a part's failure keeps it not ready.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(10);
/// An outbox event older than this means the relay is stuck: not ready.
pub const MAX_RELAY_LAG: Duration = Duration::from_secs(300);
/// How often the backlog gauges are refreshed when `METRICS_ADDR` is set.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

pub fn rollup(outcome: &'static str) {
    metrics::counter!(ROLLUPS, "outcome" => outcome).increment(1);
}

pub fn usage_stored(inserted: i64, late: i64) {
    metrics::counter!(USAGE_STORED).increment(inserted.max(0) as u64);
    metrics::counter!(USAGE_LATE).increment(late.max(0) as u64);
}

pub fn usage_rejected(messages: u64) {
    metrics::counter!(USAGE_REJECTED).increment(messages);
}

pub fn request_refused(reason: &'static str) {
    metrics::counter!(REQUESTS_REFUSED, "reason" => reason).increment(1);
}

pub fn relay_failures(n: usize) {
    if n > 0 {
        metrics::counter!(RELAY_FAILURES).increment(n as u64);
    }
}

/// Counts the published events among `subjects` (the relay's claimed rows, `done` their ids).
pub fn published<'a>(rows: impl IntoIterator<Item = (i64, &'a str)>, done: &[i64]) {
    let done: std::collections::HashSet<i64> = done.iter().copied().collect();
    for (_, subject) in rows.into_iter().filter(|(id, _)| done.contains(id)) {
        if subject == "billing.invoice.issued" {
            metrics::counter!(INVOICES_ISSUED).increment(1);
        }
        metrics::counter!(EVENTS_PUBLISHED, "subject" => subject.to_string()).increment(1);
    }
}

/// The worker's parts whose health is not proven by the reply itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    RollupConsumer,
    UsageConsumer,
    Relay,
    WorkConsumer,
    /// The grace-window loop: refreshes open drafts and finalizes due ones.
    GraceDrafts,
}

impl Part {
    pub const ALL: [Part; 5] = [
        Part::RollupConsumer,
        Part::UsageConsumer,
        Part::Relay,
        Part::WorkConsumer,
        Part::GraceDrafts,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Part::RollupConsumer => "rollup_consumer",
            Part::UsageConsumer => "usage_consumer",
            Part::Relay => "outbox_relay",
            Part::WorkConsumer => "work_consumer",
            Part::GraceDrafts => "grace_drafts",
        }
    }
}

#[derive(Debug, Clone, Default)]
struct PartState {
    last_ok: Option<DateTime<Utc>>,
    last_error: Option<(DateTime<Utc>, String)>,
}

static PARTS: Mutex<[Option<PartState>; 5]> = Mutex::new([None, None, None, None, None]);

fn with_part(part: Part, f: impl FnOnce(&mut PartState)) {
    let mut parts = PARTS.lock().unwrap_or_else(|p| p.into_inner());
    f(parts[part as usize].get_or_insert_with(PartState::default));
}

/// The part did its job (a consumer fetched, the relay finished a round).
pub fn part_ok(part: Part) {
    with_part(part, |s| s.last_ok = Some(Utc::now()));
}

/// The part failed (a fetch or a relay round); it is not ready for [`FAILURE_MEMORY`].
pub fn part_failed(part: Part, error: &dyn std::fmt::Display) {
    let error = error.to_string();
    with_part(part, |s| s.last_error = Some((Utc::now(), error)));
}

/// One readiness check, as `billing.admin.health` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// The parts' checks at `now`.
pub fn part_checks(now: DateTime<Utc>) -> Vec<Check> {
    let parts = PARTS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let memory = TimeDelta::from_std(FAILURE_MEMORY).expect("small duration");
    Part::ALL
        .iter()
        .map(|&part| {
            let state = parts[part as usize].clone().unwrap_or_default();
            let recent_error = state
                .last_error
                .as_ref()
                .filter(|(at, _)| now - *at < memory);
            let (ok, detail) = match (state.last_ok, recent_error) {
                (_, Some((at, e))) => (
                    false,
                    format!("failed {}s ago: {e}", (now - *at).num_seconds()),
                ),
                (None, None) => (false, "not started".to_string()),
                (Some(_), None) => (true, "running".to_string()),
            };
            Check {
                name: part.name(),
                ok,
                detail,
            }
        })
        .collect()
}

/// Installs the Prometheus recorder and serves `GET /metrics` (any path) on `addr`, and keeps
/// the outbox gauges fresh. Fails if the address cannot be bound.
pub fn serve(addr: SocketAddr, pool: sqlx::PgPool) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| anyhow::anyhow!("serving metrics on {addr}: {e}"))?;
    describe();
    tokio::spawn(async move {
        loop {
            match crate::store::outbox::pending(&pool).await {
                Ok(p) => {
                    metrics::gauge!(OUTBOX_BACKLOG).set(p.count as f64);
                    metrics::gauge!(OUTBOX_OLDEST).set(p.oldest_age_seconds(Utc::now()) as f64);
                    let ready = part_checks(Utc::now()).iter().all(|c| c.ok)
                        && p.oldest_age_seconds(Utc::now()) < MAX_RELAY_LAG.as_secs() as i64;
                    metrics::gauge!(READY).set(if ready { 1.0 } else { 0.0 });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "sampling the outbox backlog failed");
                    metrics::gauge!(READY).set(0.0);
                }
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    });
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(ROLLUPS, "Rollup requests handled, by outcome");
    describe_counter!(INVOICES_ISSUED, "Invoices issued");
    describe_counter!(
        EVENTS_PUBLISHED,
        "Events published by the outbox relay, by subject"
    );
    describe_counter!(USAGE_STORED, "Usage records stored");
    describe_counter!(
        USAGE_LATE,
        "Usage records stored for an already-invoiced period"
    );
    describe_counter!(USAGE_REJECTED, "Usage messages rejected as malformed");
    describe_counter!(
        REQUESTS_REFUSED,
        "Requests refused because their reply subject was not the asker's inbox, by reason"
    );
    describe_counter!(RELAY_FAILURES, "Outbox relay publish failures");
    describe_gauge!(OUTBOX_BACKLOG, "Outbox events not yet published");
    describe_gauge!(
        OUTBOX_OLDEST,
        "Age of the oldest unpublished outbox event, seconds"
    );
    describe_gauge!(READY, "1 when the worker is ready");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_is_ready_once_it_succeeded_and_has_not_failed_lately() {
        // Process-wide state: this is the only unit test that touches it.
        let part = |checks: &[Check], p: Part| {
            checks.iter().find(|c| c.name == p.name()).cloned().unwrap()
        };
        let now = Utc::now();
        assert!(!part(&part_checks(now), Part::Relay).ok, "not started");
        part_ok(Part::Relay);
        assert!(part(&part_checks(Utc::now()), Part::Relay).ok);
        part_failed(Part::Relay, &"publish refused");
        let failed = part(&part_checks(Utc::now()), Part::Relay);
        assert!(!failed.ok);
        assert!(
            failed.detail.contains("publish refused"),
            "{}",
            failed.detail
        );
        let later = Utc::now() + TimeDelta::seconds(11);
        assert!(
            part(&part_checks(later), Part::Relay).ok,
            "failures are forgotten"
        );
    }
}
