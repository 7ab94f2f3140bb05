//! The naive design, for comparison: one transaction per tenant, in tenant order, on one
//! connection, with the same queries and pricing as a batch. It is timed to its last commit and
//! does not publish its events, which flatters it: the rollup is timed until every event is
//! stored in the stream.

use crate::domain::period::Period;
use crate::domain::rollup::RollupRequest;
use chrono::{SubsecRound, Utc};
use sqlx::PgPool;
use std::time::{Duration, Instant};

pub async fn run(pool: &PgPool, period: Period) -> anyhow::Result<(i64, Duration)> {
    let tenants: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT tenant_id FROM subscriptions
         WHERE started_at < $1 AND (ended_at IS NULL OR ended_at > $2) ORDER BY tenant_id",
    )
    .bind(period.end_at())
    .bind(period.start_at())
    .fetch_all(pool)
    .await?;
    let key = "bench-naive";
    let req = RollupRequest {
        period,
        force: false,
        tenant_ids: None,
        draft: false,
        request_id: Some(key.into()),
    };
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let mut issued = 0i64;
    for tenant in &tenants {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let now = Utc::now().trunc_subsecs(0);
        let counts = crate::rollup::batch::run(
            &mut tx,
            key,
            &req,
            std::slice::from_ref(tenant),
            now,
            &crate::rollup::window::Grace::rollup(crate::domain::grace::GracePeriod::zero()),
            None,
        )
        .await?;
        tx.commit().await?;
        issued += i64::from(counts.issued);
    }
    Ok((issued, started.elapsed()))
}
