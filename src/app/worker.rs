//! `invoicer run`: migrations, streams, and the worker's parts (the rollup-request, work-queue
//! and usage consumers, the grace-draft loop, the request-reply service and the outbox relay),
//! supervised.
//!
//! The parts run in one `JoinSet`. The first to end while the worker should be running (an
//! error, a panic, or a loop that simply returned) cancels the others and the process exits
//! non-zero: a worker never runs without one of its parts. On SIGINT/SIGTERM the producers stop
//! taking work and finish what they hold (an item, a usage batch, a request), then the relay
//! publishes what they committed, and only then does the process exit.

use crate::bus::{
    self, ack::RetryWindow, grace::DraftLoop, relay::Relay, rollups::RollupConsumer,
    service::Service, usage::UsageConsumer, work::WorkConsumer,
};
use crate::config::{DbArgs, NatsArgs, StreamArgs, WorkerArgs};
use crate::store;
use anyhow::{anyhow, Context};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Connects, migrates and ensures the streams: what `run` and `migrate` share.
pub async fn prepare(
    db: &DbArgs,
    nats: &NatsArgs,
    streams: &StreamArgs,
    name: &str,
) -> anyhow::Result<(sqlx::PgPool, async_nats::Client)> {
    let pool = store::connect(&db.database_url, db.database_max_connections)
        .await
        .context("connecting to PostgreSQL")?;
    store::migrate(&pool).await.context("applying migrations")?;
    let client = bus::connect(nats, name).await?;
    bus::ensure_streams(
        &async_nats::jetstream::new(client.clone()),
        usize::from(streams.nats_stream_replicas),
    )
    .await?;
    Ok((pool, client))
}

type Part = (&'static str, anyhow::Result<()>);

/// Runs the worker until `shutdown` is cancelled or one of its parts stops.
pub async fn run(
    db: &DbArgs,
    nats: &NatsArgs,
    args: &WorkerArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Before connecting: a seller that cannot make a tax invoice stops the worker at start.
    let seller = args.seller.seller()?.map(Arc::new);
    let (pool, client) = prepare(db, nats, &args.streams, "invoicer-worker").await?;
    if let Some(addr) = args.metrics_addr {
        crate::metrics::serve(addr, pool.clone())?;
    }
    let js = async_nats::jetstream::new(client.clone());
    let consumers = bus::ensure_consumers(&js).await?;
    let notify = Arc::new(Notify::new());
    // Cancelled by a signal or by the first part to fail; the relay has its own token so it
    // can publish the producers' last events after they stop.
    let stop = shutdown.child_token();
    let relay_stop = CancellationToken::new();

    let mut parts: JoinSet<Part> = JoinSet::new();
    let rollups = RollupConsumer {
        pool: pool.clone(),
        client: client.clone(),
        js: js.clone(),
        consumer: consumers.rollups,
        batch_size: args.rollup_batch_size,
        retry: RetryWindow(args.rollup_retry_window),
        relay: notify.clone(),
        shutdown: stop.clone(),
    };
    parts.spawn(async move { ("rollup-request consumer", rollups.run().await) });
    let work = WorkConsumer {
        pool: pool.clone(),
        client: client.clone(),
        consumer: consumers.work,
        concurrency: args.rollup_concurrency,
        retry: RetryWindow(args.rollup_retry_window),
        worker_id: bus::work::worker_id(),
        grace: args.grace_period.clone(),
        seller: seller.clone(),
        relay: notify.clone(),
        shutdown: stop.clone(),
    };
    parts.spawn(async move { ("work-queue consumer", work.run().await) });
    let drafts = DraftLoop {
        pool: pool.clone(),
        batch: args.rollup_batch_size,
        every: bus::grace::EVERY,
        seller: seller.clone(),
        relay: notify.clone(),
        shutdown: stop.clone(),
    };
    parts.spawn(async move { ("grace-draft loop", drafts.run().await) });
    let usage = UsageConsumer {
        pool: pool.clone(),
        consumer: consumers.usage,
        relay: notify.clone(),
        shutdown: stop.clone(),
        max_payload: client.server_info().max_payload,
    };
    parts.spawn(async move { ("usage consumer", usage.run().await) });
    let service = Service {
        pool: pool.clone(),
        client: client.clone(),
        relay: notify.clone(),
        concurrency: args.service_concurrency,
        shutdown: stop.clone(),
        seller,
    };
    parts.spawn(async move { ("service", service.run().await) });
    let relay = Relay {
        pool: pool.clone(),
        js,
        notify: notify.clone(),
        shutdown: relay_stop.clone(),
        policy: bus::relay::RelayPolicy {
            retention: args.outbox_retention,
            ..Default::default()
        },
    };
    let mut relay = tokio::spawn(relay.run());
    tracing::info!("worker running");

    let mut failure: Option<anyhow::Error> = None;
    tokio::select! {
        // A signal stops the parts, and a part that stops quickly (the service does) must not
        // win the race against the signal and be taken for a failure.
        biased;
        _ = stop.cancelled() => tracing::info!("shutting down"),
        Some(joined) = parts.join_next() => {
            failure = if stop.is_cancelled() {
                joined_result(joined).err()
            } else {
                Some(stopped(joined))
            };
            stop.cancel();
        }
        joined = &mut relay => {
            failure = Some(stopped(joined.map(|r| ("outbox relay", r))));
            stop.cancel();
        }
    }
    while let Some(joined) = parts.join_next().await {
        if let Err(e) = joined_result(joined) {
            failure.get_or_insert(e);
        }
    }
    relay_stop.cancel();
    if !relay.is_finished() {
        if let Err(e) = joined_result(relay.await.map(|r| ("outbox relay", r))) {
            failure.get_or_insert(e);
        }
    }
    client.flush().await.ok();
    pool.close().await;
    match failure {
        Some(e) => {
            tracing::error!(error = %format!("{e:#}"), "worker stopped because a part stopped");
            Err(e)
        }
        None => {
            tracing::info!("worker stopped");
            Ok(())
        }
    }
}

/// A part that ended while it should have been running: its error, or that it ended at all.
fn stopped(joined: Result<Part, tokio::task::JoinError>) -> anyhow::Error {
    match joined_result(joined) {
        Err(e) => e,
        Ok(name) => anyhow!("the {name} stopped unexpectedly"),
    }
}

fn joined_result(joined: Result<Part, tokio::task::JoinError>) -> anyhow::Result<&'static str> {
    match joined {
        Ok((name, Ok(()))) => Ok(name),
        Ok((name, Err(e))) => Err(e.context(format!("the {name} failed"))),
        Err(e) => Err(anyhow!("a worker part panicked: {e}")),
    }
}
