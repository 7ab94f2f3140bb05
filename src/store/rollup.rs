//! A rollup's bookkeeping (its run row and work items) and the reads a batch prices from.
//!
//! Every per-item query here is bounded by the item's tenants, not by the tenant count: each
//! one filters on `tenant_id = ANY($tenants)` over an index (plans checked with
//! `EXPLAIN (ANALYZE, BUFFERS)` on 100,000 tenants, noted at each query). The only scans of a
//! whole table happen once per rollup: listing its tenants when the request is first seen, and
//! counting unbilled deployments (one pass over the period's usage: about 8 s at 100,000
//! tenants and 18 million records), which is a work item of its own, [`UNBILLED_ITEM`], so it
//! runs beside the tenants' items instead of after them.

use crate::domain::catalog::{Subscription, TenantId};
use crate::domain::period::Period;
use crate::domain::rollup::RollupRequest;
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Row};
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// The work item that counts the period's unbilled deployments; published first.
pub const UNBILLED_ITEM: i32 = -1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantFailure {
    pub tenant_id: String,
    pub reason: String,
}

/// A rollup as first requested: its parameters are fixed by the first delivery, so a repeat
/// (a redelivery, or its `request_id` again) is the same run; the same `request_id` with other
/// parameters is refused (`rollup::plan`).
#[derive(Debug, Clone)]
pub struct Run {
    pub key: String,
    pub request: RollupRequest,
    pub started_at: DateTime<Utc>,
    pub completed: bool,
    pub tenants_total: i64,
    pub items_total: i64,
    /// Requested tenants with nothing to bill: unknown, or no subscription in the period.
    pub failed: Vec<TenantFailure>,
    /// Set by the [`UNBILLED_ITEM`] once done.
    pub unbilled_deployments: Option<i64>,
}

fn run_from_row(row: &sqlx::postgres::PgRow) -> Result<Run> {
    let failed: sqlx::types::Json<Vec<TenantFailure>> = row.try_get("tenants_failed")?;
    let tenant_ids: Option<Vec<String>> = row.try_get("tenant_ids")?;
    let period = Period::new(row.try_get("period_start")?, row.try_get("period_end")?)
        .map_err(|e| Error::internal(format!("stored rollup period: {e}")))?;
    Ok(Run {
        key: row.try_get("request_id")?,
        request: RollupRequest {
            period,
            force: row.try_get("force")?,
            draft: row.try_get("draft")?,
            tenant_ids: tenant_ids
                .map(|ids| ids.iter().map(|t| TenantId::parse(t)).collect())
                .transpose()?,
            request_id: Some(row.try_get("request_id")?),
        },
        started_at: row.try_get("started_at")?,
        completed: row
            .try_get::<Option<DateTime<Utc>>, _>("completed_at")?
            .is_some(),
        tenants_total: i64::from(row.try_get::<i32, _>("tenants_total")?),
        items_total: i64::from(row.try_get::<i32, _>("items_total")?),
        failed: failed.0,
        unbilled_deployments: row.try_get("unbilled_deployments")?,
    })
}

/// Records a run and splits its tenants into items of `batch_size`, on the request's first
/// delivery only; a redelivery finds the run as it was planned. Returns the run and whether this
/// call created it.
///
/// The tenant list is computed once here, one pass over the period's subscriptions, in tenant
/// order (the order of invoice numbers within an item).
pub async fn plan(
    db: &mut PgConnection,
    key: &str,
    req: &RollupRequest,
    batch_size: i64,
) -> Result<(Run, bool)> {
    let tenants: Option<Vec<&str>> = req
        .tenant_ids
        .as_ref()
        .map(|ids| ids.iter().map(TenantId::as_str).collect());
    let created = sqlx::query(
        "INSERT INTO rollup_runs (request_id, period_start, period_end, force, draft, tenant_ids)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(key)
    .bind(req.period.start)
    .bind(req.period.end)
    .bind(req.force)
    .bind(req.draft)
    .bind(&tenants)
    .execute(&mut *db)
    .await?
    .rows_affected()
        == 1;
    if created {
        // A subset is looked up by the subscriptions' tenant index; a whole month is one
        // sequential pass (about 300,000 rows at 100,000 tenants), once per rollup.
        let active = "started_at < $3 AND (ended_at IS NULL OR ended_at > $4)";
        let source = match &tenants {
            Some(_) => format!(
                "SELECT DISTINCT tenant_id FROM subscriptions WHERE tenant_id = ANY($5) AND {active}"
            ),
            None => format!("SELECT DISTINCT tenant_id FROM subscriptions WHERE {active}"),
        };
        sqlx::query(&format!(
            "INSERT INTO rollup_items (request_id, item_no, tenant_ids, tenant_count)
             SELECT $1, (n - 1) / $2, array_agg(tenant_id ORDER BY tenant_id), count(*)
             FROM (SELECT tenant_id, row_number() OVER (ORDER BY tenant_id) AS n FROM ({source}) s) t
             GROUP BY (n - 1) / $2"
        ))
        .bind(key)
        .bind(batch_size)
        .bind(req.period.end_at())
        .bind(req.period.start_at())
        .bind(&tenants)
        .execute(&mut *db)
        .await?;
        sqlx::query(
            "INSERT INTO rollup_items (request_id, item_no, tenant_ids, tenant_count)
             VALUES ($1, $2, '{}', 0)",
        )
        .bind(key)
        .bind(UNBILLED_ITEM)
        .execute(&mut *db)
        .await?;
        let missing = requested_but_not_billable(db, req).await?;
        sqlx::query(
            "UPDATE rollup_runs SET tenants_failed = $2,
               items_total = (SELECT count(*) FROM rollup_items WHERE request_id = $1),
               tenants_total = (SELECT coalesce(sum(tenant_count), 0) FROM rollup_items WHERE request_id = $1)
             WHERE request_id = $1",
        )
        .bind(key)
        .bind(sqlx::types::Json(&missing))
        .execute(&mut *db)
        .await?;
    }
    let run = load(db, key)
        .await?
        .ok_or_else(|| Error::internal(format!("rollup run {key} vanished")))?;
    Ok((run, created))
}

pub async fn load(db: &mut PgConnection, key: &str) -> Result<Option<Run>> {
    sqlx::query("SELECT * FROM rollup_runs WHERE request_id = $1")
        .bind(key)
        .fetch_optional(db)
        .await?
        .map(|r| run_from_row(&r))
        .transpose()
}

/// Locks the run row: completion is decided under it, so exactly one item's worker completes.
pub async fn lock(db: &mut PgConnection, key: &str) -> Result<Run> {
    let row = sqlx::query("SELECT * FROM rollup_runs WHERE request_id = $1 FOR UPDATE")
        .bind(key)
        .fetch_one(db)
        .await?;
    run_from_row(&row)
}

/// Items not yet done, to (re)publish on the work queue.
pub async fn pending_items(pool: &PgPool, key: &str) -> Result<Vec<i32>> {
    Ok(sqlx::query_scalar(
        "SELECT item_no FROM rollup_items WHERE request_id = $1 AND done_at IS NULL ORDER BY item_no",
    )
    .bind(key)
    .fetch_all(pool)
    .await?)
}

/// Counts of one batch of tenants (or of a whole item).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchCounts {
    pub issued: i32,
    pub drafted: i32,
    pub skipped: i32,
    pub failed: Vec<TenantFailure>,
}

/// A work item as stored, locked by [`lock_item`] for the transaction that works it.
#[derive(Debug, Clone)]
pub struct Item {
    pub tenant_ids: Vec<String>,
    /// In one-tenant-per-transaction mode, the last tenant done.
    pub cursor: Option<String>,
    pub done: bool,
}

/// Locks an item, so two deliveries of it never work it at once (the second finds it done).
pub async fn lock_item(db: &mut PgConnection, key: &str, item: i32) -> Result<Option<Item>> {
    sqlx::query(
        "SELECT tenant_ids, cursor_tenant, done_at IS NOT NULL AS done FROM rollup_items
         WHERE request_id = $1 AND item_no = $2 FOR UPDATE",
    )
    .bind(key)
    .bind(item)
    .fetch_optional(db)
    .await?
    .map(|r| {
        Ok(Item {
            tenant_ids: r.try_get("tenant_ids")?,
            cursor: r.try_get("cursor_tenant")?,
            done: r.try_get("done")?,
        })
    })
    .transpose()
}

/// Adds a batch's counts to its item; `cursor` records progress in one-tenant mode, `done`
/// closes the item. Runs in the batch's own transaction, so counts are exact across crashes.
pub async fn record_item(
    db: &mut PgConnection,
    key: &str,
    item: i32,
    counts: &BatchCounts,
    cursor: Option<&str>,
    done_by: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE rollup_items SET
           invoices_issued = invoices_issued + $3, invoices_drafted = invoices_drafted + $4,
           invoices_skipped = invoices_skipped + $5, tenants_failed = tenants_failed || $6,
           cursor_tenant = coalesce($7, cursor_tenant),
           processed_by = coalesce($8, processed_by),
           done_at = CASE WHEN $8 IS NULL THEN NULL ELSE clock_timestamp() END
         WHERE request_id = $1 AND item_no = $2",
    )
    .bind(key)
    .bind(item)
    .bind(counts.issued)
    .bind(counts.drafted)
    .bind(counts.skipped)
    .bind(sqlx::types::Json(&counts.failed))
    .bind(cursor)
    .bind(done_by)
    .execute(db)
    .await?;
    Ok(())
}

/// Closes an item: done by `worker`, with whatever counts it already recorded.
pub async fn finish_item(db: &mut PgConnection, key: &str, item: i32, worker: &str) -> Result<()> {
    record_item(db, key, item, &BatchCounts::default(), None, Some(worker)).await
}

/// The items' progress and totals, read under the run's lock.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub items_remaining: i64,
    pub tenants_done: i64,
    pub counts: BatchCounts,
}

pub async fn totals(db: &mut PgConnection, key: &str) -> Result<Totals> {
    // The failures are gathered apart: joined to the items, an item's counts would be summed
    // once per failure it lists.
    let row = sqlx::query(
        "SELECT count(*) FILTER (WHERE done_at IS NULL) AS remaining,
                coalesce(sum(tenant_count) FILTER (WHERE done_at IS NOT NULL), 0)::bigint AS done,
                coalesce(sum(invoices_issued), 0)::int AS issued,
                coalesce(sum(invoices_drafted), 0)::int AS drafted,
                coalesce(sum(invoices_skipped), 0)::int AS skipped,
                -- Apart from the sums: joined to them, an item with n failures counted n times.
                coalesce((SELECT jsonb_agg(f.value ORDER BY i.item_no, f.n)
                          FROM rollup_items i,
                               jsonb_array_elements(i.tenants_failed) WITH ORDINALITY f(value, n)
                          WHERE i.request_id = $1), '[]') AS failed
         FROM rollup_items WHERE request_id = $1",
    )
    .bind(key)
    .fetch_one(db)
    .await?;
    let failed: sqlx::types::Json<Vec<TenantFailure>> = row.try_get("failed")?;
    Ok(Totals {
        items_remaining: row.try_get("remaining")?,
        tenants_done: row.try_get("done")?,
        counts: BatchCounts {
            issued: row.try_get("issued")?,
            drafted: row.try_get("drafted")?,
            skipped: row.try_get("skipped")?,
            failed: failed.0,
        },
    })
}

/// Records the run's unbilled deployments (the [`UNBILLED_ITEM`]'s work).
pub async fn record_unbilled(db: &mut PgConnection, key: &str, unbilled: i64) -> Result<()> {
    sqlx::query("UPDATE rollup_runs SET unbilled_deployments = $2 WHERE request_id = $1")
        .bind(key)
        .bind(unbilled)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn mark_completed(db: &mut PgConnection, key: &str, unbilled: i64) -> Result<()> {
    sqlx::query(
        "UPDATE rollup_runs SET completed_at = now(), unbilled_deployments = $2 WHERE request_id = $1",
    )
    .bind(key)
    .bind(unbilled)
    .execute(db)
    .await?;
    Ok(())
}

/// The tenants' subscriptions active in the period, with their add-ons, in a stable order.
/// Plan at 100,000 tenants, 500 per batch: index scan on `subscriptions_tenant`
/// (`tenant_id = ANY`), 1,500 rows, then a nested loop on the add-ons' primary key.
pub async fn subscriptions(
    db: &mut PgConnection,
    tenants: &[String],
    period: Period,
) -> Result<Vec<Subscription>> {
    let rows = sqlx::query(
        "SELECT s.id, s.tenant_id, s.deployment_id, s.plan_code, s.started_at, s.ended_at,
                coalesce(array_agg(a.addon_code ORDER BY a.position)
                         FILTER (WHERE a.addon_code IS NOT NULL), '{}') AS addons
         FROM subscriptions s LEFT JOIN subscription_addons a ON a.subscription_id = s.id
         WHERE s.tenant_id = ANY($1) AND s.started_at < $2 AND (s.ended_at IS NULL OR s.ended_at > $3)
         GROUP BY s.id
         ORDER BY s.tenant_id, s.deployment_id, s.started_at",
    )
    .bind(tenants)
    .bind(period.end_at())
    .bind(period.start_at())
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Subscription {
                id: r.try_get("id")?,
                tenant_id: TenantId::parse(r.try_get("tenant_id")?)?,
                deployment_id: r.try_get("deployment_id")?,
                plan: r.try_get("plan_code")?,
                addons: r.try_get("addons")?,
                started_at: r.try_get("started_at")?,
                ended_at: r.try_get("ended_at")?,
            })
        })
        .collect()
}

/// A subscription's usage of one kind sums to more than an exact decimal holds (28 significant
/// digits): each record is valid, their sum cannot be priced. The tenant fails alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "usage sum overflows: {resource_kind} on deployment {deployment_id} adds up to {total}, \
     more than the 28 significant digits an exact decimal holds"
)]
pub struct UsageOverflow {
    pub deployment_id: Uuid,
    pub resource_kind: String,
    /// The sum as PostgreSQL computed it.
    pub total: String,
}

/// The usage of a batch's subscriptions, summed by resource kind.
#[derive(Debug, Default)]
pub struct UsageSums {
    sums: HashMap<Uuid, BTreeMap<String, Decimal>>,
    overflows: HashMap<Uuid, UsageOverflow>,
}

impl UsageSums {
    /// A subscription's usage by kind, or why it cannot be priced.
    pub fn take(&mut self, subscription: Uuid) -> Result<BTreeMap<String, Decimal>, UsageOverflow> {
        if let Some(overflow) = self.overflows.remove(&subscription) {
            return Err(overflow);
        }
        Ok(self.sums.remove(&subscription).unwrap_or_default())
    }
}

/// A NUMERIC sum as an exact decimal, or `None` if it has more significant digits than one
/// holds. Read from text: the binary decoding fails on a sum past the largest decimal, and
/// rounds away the tail of one with too many digits, which would bill a different quantity.
fn exact_sum(text: &str) -> Option<Decimal> {
    Decimal::from_str_exact(text).ok().or_else(|| {
        // Trailing zeros of the scale (a record of `1.000`) are not digits anyone is billed for.
        let trimmed = match text.contains('.') {
            true => text.trim_end_matches('0').trim_end_matches('.'),
            false => text,
        };
        Decimal::from_str_exact(trimmed).ok()
    })
}

/// For each of the tenants' subscriptions that ends inside the period, when its deployment's
/// next subscription begins, whichever tenant holds it: on a handover the day belongs to the
/// next holder (CONTRACT.md section 4, v3), and that subscription is not among these tenants'.
/// Plan at 100,000 tenants (3 deployments each, 1 in 50 handed over in the period), 500 per
/// batch: index scan on `subscriptions_tenant` (`tenant_id = ANY`, 1,530 rows, 30 ending in
/// the period), then an index-only probe of `subscriptions_deployment` for each of those 30
/// (`deployment_id = s.deployment_id AND started_at >= s.ended_at`): about 3 ms.
pub async fn successors(
    db: &mut PgConnection,
    tenants: &[String],
    period: Period,
) -> Result<HashMap<Uuid, DateTime<Utc>>> {
    let rows = sqlx::query(
        "SELECT s.id, min(n.started_at) AS next_from
         FROM subscriptions s
         JOIN subscriptions n ON n.deployment_id = s.deployment_id AND n.started_at >= s.ended_at
         WHERE s.tenant_id = ANY($1) AND s.started_at < $3 AND s.ended_at > $2 AND s.ended_at < $3
         GROUP BY s.id",
    )
    .bind(tenants)
    .bind(period.start_at())
    .bind(period.end_at())
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("next_from")?)))
        .collect()
}

/// Usage summed per subscription and resource kind, counting only records inside both the
/// period and the subscription's own window (so a plan change splits usage by `occurred_at`).
/// A sum that no exact decimal holds is reported as that subscription's [`UsageOverflow`],
/// never as the batch's error: two valid records can add up past the range, and only their
/// tenant's invoice cannot be priced.
/// Plan at 100,000 tenants: the batch's subscriptions by `subscriptions_tenant`, then an
/// index-only range scan of `usage_records_deployment_time` per deployment (the index
/// includes kind and quantity), hash-aggregated: 1,500 probes of 60 rows for 500 tenants.
pub async fn usage(db: &mut PgConnection, tenants: &[String], period: Period) -> Result<UsageSums> {
    let rows = sqlx::query(
        "SELECT s.id, s.deployment_id, u.resource_kind, sum(u.quantity)::text AS quantity
         FROM subscriptions s
         JOIN usage_records u ON u.deployment_id = s.deployment_id
          AND u.occurred_at >= greatest(s.started_at, $2)
          AND u.occurred_at < least(coalesce(s.ended_at, 'infinity'), $3)
         WHERE s.tenant_id = ANY($1) AND s.started_at < $3 AND (s.ended_at IS NULL OR s.ended_at > $2)
         GROUP BY s.id, u.resource_kind",
    )
    .bind(tenants)
    .bind(period.start_at())
    .bind(period.end_at())
    .fetch_all(db)
    .await?;
    let mut out = UsageSums::default();
    for r in rows {
        let id: Uuid = r.try_get("id")?;
        let kind: String = r.try_get("resource_kind")?;
        let total: String = r.try_get("quantity")?;
        match exact_sum(&total) {
            Some(q) => {
                out.sums.entry(id).or_default().insert(kind, q);
            }
            None => {
                out.overflows.insert(
                    id,
                    UsageOverflow {
                        deployment_id: r.try_get("deployment_id")?,
                        resource_kind: kind,
                        total,
                    },
                );
            }
        }
    }
    Ok(out)
}

/// Deployments with usage in the period that no subscription window covers: once per rollup.
pub async fn unbilled_deployments(db: &mut PgConnection, period: Period) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(DISTINCT u.deployment_id) FROM usage_records u
         WHERE u.occurred_at >= $1 AND u.occurred_at < $2
           AND NOT EXISTS (SELECT 1 FROM subscriptions s WHERE s.deployment_id = u.deployment_id
                 AND u.occurred_at >= s.started_at AND (s.ended_at IS NULL OR u.occurred_at < s.ended_at))",
    )
    .bind(period.start_at())
    .bind(period.end_at())
    .fetch_one(db)
    .await?)
}

/// Of the requested tenants, those the rollup has nothing to bill for, and why: a tenant that
/// `tenants.put` never created (a typo: CONTRACT.md section 5, v3), or one with no subscription
/// active in the period.
async fn requested_but_not_billable(
    db: &mut PgConnection,
    req: &RollupRequest,
) -> Result<Vec<TenantFailure>> {
    let Some(ids) = &req.tenant_ids else {
        return Ok(vec![]);
    };
    let ids: Vec<&str> = ids.iter().map(TenantId::as_str).collect();
    let rows: Vec<(String, bool)> = sqlx::query_as(
        "SELECT t, EXISTS (SELECT 1 FROM tenants WHERE tenant_id = t)
         FROM unnest($1::text[]) AS t WHERE NOT EXISTS (
           SELECT 1 FROM subscriptions s WHERE s.tenant_id = t
             AND s.started_at < $2 AND (s.ended_at IS NULL OR s.ended_at > $3))
         ORDER BY t",
    )
    .bind(ids)
    .bind(req.period.end_at())
    .bind(req.period.start_at())
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(tenant_id, known)| TenantFailure {
            tenant_id,
            reason: if known {
                format!("no subscription active in {}", req.period)
            } else {
                "unknown tenant".to_string()
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sum_is_exact_or_refused() {
        let d = |s: &str| Decimal::from_str_exact(s).unwrap();
        let cases = [
            ("2160", Some(d("2160"))),
            ("2160.50", Some(d("2160.50"))),
            (
                "79228162514264337593543950335",
                Some(d("79228162514264337593543950335")),
            ),
            // One past the largest decimal: two valid records add up to it.
            ("79228162514264337593543950336", None),
            // Exact only with a 49-digit mantissa: binary decoding would drop the tail.
            ("100000000000000000000.0000000000000000000000000001", None),
            // Trailing zeros of the scale cost no precision.
            (
                "100000000000000000001.0000000000000000000000000000",
                Some(d("100000000000000000001")),
            ),
            ("0.0000000000000000000000000000", Some(Decimal::ZERO)),
        ];
        for (text, want) in cases {
            assert_eq!(exact_sum(text), want, "{text}");
        }
    }
}
