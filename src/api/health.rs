//! `billing.admin.health`: is this replica ready, and why not.

use super::{to_value, Ctx};
use crate::error::Result;
use crate::store;
use crate::wire::{self, Health, HealthCheck, HealthRequest};
use chrono::Utc;
use serde_json::Value;

/// Readiness, always answered (a probe wants the reasons, not an error): the database answers,
/// the consumers and the relay run, and the outbox drains. The reply itself proves that NATS
/// and the service work.
pub(super) async fn health(ctx: &Ctx<'_>, payload: &[u8]) -> Result<Value> {
    let _: HealthRequest = wire::parse(payload)?;
    let (pool, requests_refused) = (ctx.pool, ctx.requests_refused);
    use crate::metrics::{self, Check, MAX_RELAY_LAG};
    let now = Utc::now();
    let started = std::time::Instant::now();
    let mut checks = Vec::new();
    let pending = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        store::outbox::pending(pool),
    )
    .await;
    let (backlog, lag) = match pending {
        Ok(Ok(p)) => {
            checks.push(Check {
                name: "database",
                ok: true,
                detail: format!("answered in {} ms", started.elapsed().as_millis()),
            });
            let lag = p.oldest_age_seconds(now);
            checks.push(Check {
                name: "outbox_backlog",
                ok: lag < MAX_RELAY_LAG.as_secs() as i64,
                detail: format!("{} events pending, oldest {lag}s", p.count),
            });
            (Some(p.count), Some(lag))
        }
        Ok(Err(e)) => {
            checks.push(Check {
                name: "database",
                ok: false,
                detail: e.to_string(),
            });
            (None, None)
        }
        Err(_) => {
            checks.push(Check {
                name: "database",
                ok: false,
                detail: "no answer within 2s".into(),
            });
            (None, None)
        }
    };
    checks.extend(metrics::part_checks(now));
    to_value(Health {
        ready: checks.iter().all(|c| c.ok),
        version: env!("CARGO_PKG_VERSION"),
        checks: checks
            .into_iter()
            .map(|c| HealthCheck {
                name: c.name,
                ok: c.ok,
                detail: c.detail,
            })
            .collect(),
        outbox_backlog: backlog,
        outbox_oldest_pending_seconds: lag,
        requests_refused,
        database: pool.connect_options().get_database().map(str::to_string),
    })
}
