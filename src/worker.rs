//! `invoicer run`: migrations, streams, the two consumers, the outbox relay and the service,
//! all stopped by one cancellation token (SIGINT/SIGTERM in the binary).

use crate::bus::{
    self, relay::Relay, rollups::RollupConsumer, service::Service, usage::UsageConsumer,
};
use crate::config::{DbArgs, NatsArgs, WorkerArgs};
use crate::store;
use anyhow::Context;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Connects, migrates and ensures the streams: what `run` and `migrate` share.
pub async fn prepare(
    db: &DbArgs,
    nats: &NatsArgs,
    name: &str,
) -> anyhow::Result<(sqlx::PgPool, async_nats::Client)> {
    let pool = store::connect(&db.database_url, db.database_max_connections)
        .await
        .context("connecting to PostgreSQL")?;
    store::migrate(&pool).await.context("applying migrations")?;
    let client = bus::connect(nats, name).await?;
    bus::ensure_streams(&async_nats::jetstream::new(client.clone())).await?;
    Ok((pool, client))
}

/// Runs the worker until `shutdown` is cancelled, then drains: the current rollup batch
/// commits (and its message is released), in-flight requests are answered, and the relay
/// publishes what is committed.
pub async fn run(
    db: &DbArgs,
    nats: &NatsArgs,
    args: &WorkerArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let seller = args.seller.seller()?.map(Arc::new);
    let (pool, client) = prepare(db, nats, "invoicer-worker").await?;
    let js = async_nats::jetstream::new(client.clone());
    let (rollup_consumer, usage_consumer) = bus::ensure_consumers(&js).await?;
    let notify = Arc::new(Notify::new());
    // The relay outlives the producers so their last events still go out.
    let relay_stop = CancellationToken::new();

    let rollups = tokio::spawn(
        RollupConsumer {
            pool: pool.clone(),
            client: client.clone(),
            consumer: rollup_consumer,
            batch_size: args.rollup_batch_size,
            relay: notify.clone(),
            shutdown: shutdown.clone(),
        }
        .run(),
    );
    let usage = tokio::spawn(
        UsageConsumer {
            pool: pool.clone(),
            consumer: usage_consumer,
            relay: notify.clone(),
            shutdown: shutdown.clone(),
        }
        .run(),
    );
    let relay = tokio::spawn(
        Relay {
            pool: pool.clone(),
            js,
            notify: notify.clone(),
            shutdown: relay_stop.clone(),
        }
        .run(),
    );
    let service = tokio::spawn(
        Service {
            pool: pool.clone(),
            client: client.clone(),
            relay: notify.clone(),
            concurrency: args.service_concurrency,
            shutdown: shutdown.clone(),
            seller,
        }
        .run(),
    );
    tracing::info!("worker running");
    shutdown.cancelled().await;
    tracing::info!("shutting down");
    let _ = rollups.await;
    let _ = usage.await;
    let service_result = service.await;
    relay_stop.cancel();
    let _ = relay.await;
    client.flush().await.ok();
    pool.close().await;
    tracing::info!("worker stopped");
    match service_result {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("service task panicked: {e}")),
    }
}
