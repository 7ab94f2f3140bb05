//! Usage ingestion through NATS into PostgreSQL, with one worker process: records per second in
//! batched messages (`{"records": [...]}`), and messages per second with one record each. A
//! phase ends when the usage consumer has nothing pending or unacknowledged (records are acked
//! after their transaction commits); the stored count is then checked.

use super::env::WorkerProcess;
use super::Ctx;
use anyhow::bail;
use async_nats::jetstream::context::PublishAckFuture;
use serde_json::json;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

const RECORDS_PER_MESSAGE: usize = 500;
/// Publish acks in flight before the publisher waits for the oldest.
const WINDOW: usize = 4096;

pub struct Figures {
    /// (records, elapsed) with batched messages.
    pub batched: (i64, Duration),
    /// (messages, elapsed) with one record per message.
    pub single: (i64, Duration),
}

pub async fn run(ctx: &Ctx<'_>, messages: i64, records: i64) -> anyhow::Result<Figures> {
    let worker = WorkerProcess::start(
        &ctx.db.url,
        &ctx.nats.url,
        &ctx.worker_env(crate::config::DEFAULT_ROLLUP_CONCURRENCY),
    )?;
    super::wait_for_services(ctx.client, 1).await?;
    let deployments: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT deployment_id FROM subscriptions ORDER BY id LIMIT 10000")
            .fetch_all(&ctx.db.pool)
            .await?;
    // May 2026: outside the benchmark's April period, so nothing else changes.
    let make = |i: i64| {
        json!({
            "event_id": uuid::Uuid::new_v4(),
            "deployment_id": deployments[i as usize % deployments.len()],
            "resource_kind": "droplet_hours",
            "quantity": "1",
            "occurred_at": format!("2026-05-{:02}T{:02}:00:00Z", 1 + (i / 24) % 28, i % 24),
        })
    };

    let before = stored(ctx).await?;
    let started = Instant::now();
    let mut bodies = Vec::new();
    let mut i = 0;
    while i < records {
        let n = (records - i).min(RECORDS_PER_MESSAGE as i64);
        bodies.push(json!({"records": (i..i + n).map(make).collect::<Vec<_>>()}).to_string());
        i += n;
    }
    publish_all(ctx, bodies).await?;
    drain(ctx).await?;
    let batched = (records, started.elapsed());
    expect_stored(ctx, before + records).await?;
    eprintln!(
        "bench: ingestion, batched: {records} records in {:.2}s",
        batched.1.as_secs_f64()
    );

    let before = stored(ctx).await?;
    let bodies: Vec<String> = (records..records + messages)
        .map(|i| make(i).to_string())
        .collect();
    let started = Instant::now();
    publish_all(ctx, bodies).await?;
    drain(ctx).await?;
    let single = (messages, started.elapsed());
    expect_stored(ctx, before + messages).await?;
    eprintln!(
        "bench: ingestion, single: {messages} messages in {:.2}s",
        single.1.as_secs_f64()
    );
    worker.stop()?;
    Ok(Figures { batched, single })
}

async fn publish_all(ctx: &Ctx<'_>, bodies: Vec<String>) -> anyhow::Result<()> {
    let mut acks: VecDeque<PublishAckFuture> = VecDeque::with_capacity(WINDOW);
    for body in bodies {
        if acks.len() >= WINDOW {
            if let Some(ack) = acks.pop_front() {
                ack.await?;
            }
        }
        acks.push_back(
            ctx.js
                .publish(crate::subjects::USAGE_RECORDED, body.into())
                .await?,
        );
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// Waits until the usage consumer has delivered and settled everything in the stream.
async fn drain(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = ctx
        .js
        .get_stream(crate::bus::USAGE_STREAM)
        .await?
        .get_consumer(crate::bus::USAGE_CONSUMER)
        .await
        .map_err(|e| anyhow::anyhow!("usage consumer: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let info = consumer.info().await?;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("usage not drained within 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stored(ctx: &Ctx<'_>) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM usage_records WHERE occurred_at >= '2026-05-01'")
            .fetch_one(&ctx.db.pool)
            .await?,
    )
}

async fn expect_stored(ctx: &Ctx<'_>, want: i64) -> anyhow::Result<()> {
    let got = stored(ctx).await?;
    if got != want {
        bail!("ingestion stored {got} records, expected {want}");
    }
    Ok(())
}
