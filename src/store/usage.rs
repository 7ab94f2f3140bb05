//! Metered usage: deduplicated inserts, late-usage reports, and rejections, in one transaction.

use super::outbox::{self, Event};
use crate::domain::usage::UsageRecord;
use crate::error::Result;
use sqlx::{PgPool, Row};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Records new to the database (a repeated `event_id` is not counted again).
    pub inserted: i64,
    /// New records that fell in an already-issued period: reported as `billing.usage.late`.
    pub late: i64,
}

/// Stores a batch of records, and the `billing.usage.rejected` events of the records refused
/// beside them, in one transaction: a message is acknowledged only once both are durable.
pub async fn record(
    pool: &PgPool,
    records: &[UsageRecord],
    rejections: &[Event],
) -> Result<Ingested> {
    if records.is_empty() && rejections.is_empty() {
        return Ok(Ingested::default());
    }
    let mut tx = pool.begin().await?;
    outbox::insert(&mut tx, rejections).await?;
    if records.is_empty() {
        tx.commit().await?;
        return Ok(Ingested::default());
    }
    // Rows in event-id order, each id once: two workers inserting overlapping batches then
    // take the unique-index locks in the same order and cannot deadlock.
    let mut sorted: Vec<&UsageRecord> = records.iter().collect();
    sorted.sort_by_key(|r| r.event_id);
    sorted.dedup_by_key(|r| r.event_id);
    let records = sorted;
    let event_ids: Vec<_> = records.iter().map(|r| r.event_id).collect();
    let deployments: Vec<_> = records.iter().map(|r| r.deployment_id).collect();
    let kinds: Vec<&str> = records.iter().map(|r| r.resource_kind.as_str()).collect();
    let quantities: Vec<_> = records.iter().map(|r| r.quantity).collect();
    let occurred: Vec<_> = records.iter().map(|r| r.occurred_at).collect();
    // A rollup holds its tenants FOR UPDATE from before it reads usage until its invoices
    // commit. Waiting on that lock here means the insert below either lands before the
    // rollup reads usage (and is billed) or sees the committed invoice (and is reported late):
    // never neither.
    let mut distinct = deployments.clone();
    distinct.sort_unstable();
    distinct.dedup();
    sqlx::query(
        "SELECT 1 FROM tenants WHERE tenant_id IN (
            SELECT tenant_id FROM subscriptions WHERE deployment_id = ANY($1))
         ORDER BY tenant_id FOR SHARE",
    )
    .bind(&distinct)
    .execute(&mut *tx)
    .await?;
    let row = sqlx::query(
        "WITH ins AS (
            INSERT INTO usage_records (event_id, deployment_id, resource_kind, quantity, occurred_at)
            SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::numeric[], $5::timestamptz[])
            ON CONFLICT (event_id) DO NOTHING
            RETURNING *
         ), late AS (
            INSERT INTO outbox (subject, msg_id, payload)
            SELECT 'billing.usage.late', 'usage-late:' || ins.event_id,
                   jsonb_build_object(
                     'tenant_id', s.tenant_id, 'deployment_id', ins.deployment_id,
                     'period_start', i.period_start, 'resource_kind', ins.resource_kind,
                     'quantity', ins.quantity::text, 'event_id', ins.event_id,
                     'occurred_at', to_char(ins.occurred_at, 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                     'invoice_id', i.id)
            FROM ins
            JOIN subscriptions s ON s.deployment_id = ins.deployment_id
              AND ins.occurred_at >= s.started_at
              AND (s.ended_at IS NULL OR ins.occurred_at < s.ended_at)
            JOIN invoices i ON i.tenant_id = s.tenant_id AND i.status IN ('issued', 'paid')
              AND ins.occurred_at >= i.period_start AND ins.occurred_at < i.period_end
            ON CONFLICT (msg_id) DO NOTHING
            RETURNING 1
         ), marked AS (
            -- Grace window: the open draft of this usage's period is recomputed by the
            -- refresher (rollup::drafts). In key order, so concurrent batches cannot deadlock.
            INSERT INTO draft_refresh (tenant_id, period_start)
            SELECT DISTINCT i.tenant_id, i.period_start
            FROM ins
            JOIN subscriptions s ON s.deployment_id = ins.deployment_id
              AND ins.occurred_at >= s.started_at
              AND (s.ended_at IS NULL OR ins.occurred_at < s.ended_at)
            JOIN invoices i ON i.tenant_id = s.tenant_id AND i.status = 'draft'
              AND i.finalizes_at IS NOT NULL
              AND ins.occurred_at >= i.period_start AND ins.occurred_at < i.period_end
            ORDER BY 1, 2
            ON CONFLICT DO NOTHING
         )
         SELECT (SELECT count(*) FROM ins) AS inserted, (SELECT count(*) FROM late) AS late",
    )
    .bind(&event_ids)
    .bind(&deployments)
    .bind(&kinds)
    .bind(&quantities)
    .bind(&occurred)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Ingested {
        inserted: row.try_get("inserted")?,
        late: row.try_get("late")?,
    })
}
