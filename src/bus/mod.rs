//! NATS adapter: connection, streams and consumers, the outbox relay, and the request-reply
//! service. Messages become domain values here and results become acks and replies.

pub mod ack;
pub mod client;
pub mod grace;
pub mod micro;
pub mod relay;
pub mod rollups;
pub mod schedule_state;
pub mod service;
pub mod usage;
pub mod work;

// Old paths, kept while the tree is reorganised (issue 16).
pub use grace as drafts;
pub use schedule_state as scheduler;

use crate::config::NatsArgs;
use crate::subjects::{
    ROLLUP_COMPLETED, ROLLUP_REJECTED, ROLLUP_REQUESTED, USAGE_LATE, USAGE_RECORDED, USAGE_REJECTED,
};
use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull, consumer::PullConsumer, stream};
use std::time::Duration;

pub const ROLLUPS_STREAM: &str = "BILLING_ROLLUPS";
pub const EVENTS_STREAM: &str = "BILLING_EVENTS";
pub const USAGE_STREAM: &str = "METERING_USAGE";
pub const ROLLUPS_CONSUMER: &str = "invoicer-rollups";
pub const USAGE_CONSUMER: &str = "invoicer-usage";
/// The work queue that splits a rollup across replicas (internal, worker only).
pub const WORK_STREAM: &str = "BILLING_WORK";
pub const WORK_SUBJECTS: &str = "billing.internal.>";
/// One message per rollup work item: `{"request_id", "item"}`.
pub const WORK_ITEM: &str = "billing.internal.rollup.work";
pub const WORK_CONSUMER: &str = "invoicer-work";
/// How long a work item or a rollup request may go without an ack or an in-progress signal
/// before another replica gets it. Workers signal progress every [`WORK_PROGRESS_EVERY`], so only
/// a dead (or wedged) replica's messages move, within this bound.
pub const WORK_ACK_WAIT: Duration = Duration::from_secs(10);
pub const WORK_PROGRESS_EVERY: Duration = Duration::from_secs(3);
/// How long a stopping worker waits for the items in hand before it releases them: within
/// the usual grace of process managers (Kubernetes sends SIGKILL 30 s after SIGTERM), with room
/// left for the relay to publish what was committed.
pub const WORK_DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Connects with the configured credentials and inbox prefix.
pub async fn connect(args: &NatsArgs, name: &str) -> anyhow::Result<async_nats::Client> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(|event| async move {
            match event {
                // A permissions violation otherwise looks like a timeout to the caller.
                async_nats::Event::ServerError(_) | async_nats::Event::ClientError(_) => {
                    tracing::warn!(%event, "nats error")
                }
                _ => tracing::info!(%event, "nats connection event"),
            }
        });
    let mut default_inbox = None;
    if let Some(path) = &args.nats_creds {
        let creds = tokio::fs::read_to_string(path)
            .await
            .with_context(|| format!("reading NATS credentials {}", path.display()))?;
        opts = opts
            .credentials(&creds)
            .with_context(|| format!("reading NATS credentials {}", path.display()))?;
        // A file whose JWT we cannot read keeps the library's `_INBOX`; the server decides.
        default_inbox = crate::auth::claims::creds_subscribe_allow(&creds)
            .ok()
            .and_then(|allow| crate::auth::roles::inbox_prefix_allowed(&allow));
    }
    if let (Some(user), Some(pass)) = (&args.nats_user, &args.nats_password) {
        opts = opts.user_and_password(user.clone(), pass.clone());
        default_inbox = crate::auth::roles::inbox_prefix_for_user(user);
    }
    // Restricted users may subscribe only to their own prefix (CONTRACT.md section 7).
    if let Some(prefix) = args.nats_inbox_prefix.as_ref().or(default_inbox.as_ref()) {
        opts = opts.custom_inbox_prefix(prefix);
    }
    opts.connect(&args.nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {}", args.nats_url))
}

fn stream_configs(replicas: usize) -> [stream::Config; 4] {
    let day = Duration::from_secs(86_400);
    [
        stream::Config {
            name: ROLLUPS_STREAM.into(),
            subjects: vec![ROLLUP_REQUESTED.into()],
            max_age: 90 * day,
            // Covers scheduler replicas that fire together and operators who retry.
            duplicate_window: Duration::from_secs(3600),
            storage: stream::StorageType::File,
            ..Default::default()
        },
        stream::Config {
            name: EVENTS_STREAM.into(),
            subjects: vec![
                "billing.invoice.>".into(),
                ROLLUP_COMPLETED.into(),
                ROLLUP_REJECTED.into(),
                USAGE_LATE.into(),
                USAGE_REJECTED.into(),
            ],
            max_age: 365 * day,
            // A relay that died between publish and mark re-publishes within its lease.
            duplicate_window: Duration::from_secs(3600),
            storage: stream::StorageType::File,
            ..Default::default()
        },
        stream::Config {
            name: USAGE_STREAM.into(),
            subjects: vec![USAGE_RECORDED.into()],
            max_age: 35 * day,
            duplicate_window: Duration::from_secs(600),
            storage: stream::StorageType::File,
            ..Default::default()
        },
        stream::Config {
            name: WORK_STREAM.into(),
            subjects: vec![WORK_SUBJECTS.into()],
            // Each item is delivered to one replica and removed once acked.
            retention: stream::RetentionPolicy::WorkQueue,
            max_age: 7 * day,
            // A redelivered request republishes its items; the window drops the repeats.
            duplicate_window: Duration::from_secs(3600),
            storage: stream::StorageType::File,
            ..Default::default()
        },
    ]
    .map(|c| stream::Config {
        num_replicas: replicas,
        ..c
    })
}

/// Creates the streams if missing, with `replicas` copies each on a cluster (idempotent). An
/// existing stream keeps its settings, but gains any subject a newer version publishes (such as
/// `billing.usage.rejected`): an event on a subject no stream holds could never be published.
pub async fn ensure_streams(js: &jetstream::Context, replicas: usize) -> anyhow::Result<()> {
    for config in stream_configs(replicas) {
        let name = config.name.clone();
        let wanted = config.subjects.clone();
        let stream = js
            .get_or_create_stream(config)
            .await
            .with_context(|| format!("ensuring stream {name}"))?;
        let mut current = stream.cached_info().config.clone();
        let missing: Vec<String> = wanted
            .into_iter()
            .filter(|s| !current.subjects.iter().any(|have| covers(have, s)))
            .collect();
        if !missing.is_empty() {
            tracing::info!(stream = %name, subjects = ?missing, "adding subjects to the stream");
            current.subjects.extend(missing);
            js.update_stream(current)
                .await
                .with_context(|| format!("adding subjects to stream {name}"))?;
        }
    }
    Ok(())
}

/// Whether the subject filter `pattern` (with `*` and `>` wildcards) matches every subject of
/// `subject` (itself possibly a filter).
fn covers(pattern: &str, subject: &str) -> bool {
    let mut have = pattern.split('.');
    let mut want = subject.split('.');
    loop {
        match (have.next(), want.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(w)) if w != ">" => {}
            (Some(h), Some(w)) if h == w => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The durable pull consumers the worker reads. Retries are paced by explicit `Nak` delays
/// rather than a consumer `backoff`, which on 2.9 would also shorten `ack_wait` for long work.
pub async fn ensure_consumers(js: &jetstream::Context) -> anyhow::Result<Consumers> {
    let rollups = js.get_stream(ROLLUPS_STREAM).await?;
    let usage = js.get_stream(USAGE_STREAM).await?;
    let work = js.get_stream(WORK_STREAM).await?;
    // Created or updated: a request consumer made by an older version (ack_wait 30 s, with no
    // in-progress signals) would leave a dead replica's request stuck past the 15 s takeover.
    let rollup_consumer = rollups
        .create_consumer(pull::Config {
            durable_name: Some(ROLLUPS_CONSUMER.into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: WORK_ACK_WAIT,
            max_deliver: -1,
            ..Default::default()
        })
        .await
        .context("ensuring the rollup-request consumer")?;
    let usage_consumer = usage
        .get_or_create_consumer(
            USAGE_CONSUMER,
            pull::Config {
                durable_name: Some(USAGE_CONSUMER.into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_deliver: -1,
                max_ack_pending: 20_000,
                ..Default::default()
            },
        )
        .await?;
    let work_consumer = work
        .get_or_create_consumer(
            WORK_CONSUMER,
            pull::Config {
                durable_name: Some(WORK_CONSUMER.into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: WORK_ACK_WAIT,
                max_deliver: -1,
                ..Default::default()
            },
        )
        .await?;
    Ok(Consumers {
        rollups: rollup_consumer,
        usage: usage_consumer,
        work: work_consumer,
    })
}

pub struct Consumers {
    pub rollups: PullConsumer,
    pub usage: PullConsumer,
    pub work: PullConsumer,
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn subject_filters_cover_what_they_match() {
        assert!(covers("billing.usage.rejected", "billing.usage.rejected"));
        assert!(covers("billing.>", "billing.usage.rejected"));
        assert!(covers("billing.*.rejected", "billing.usage.rejected"));
        assert!(covers("billing.invoice.>", "billing.invoice.>"));
        assert!(!covers("billing.usage.late", "billing.usage.rejected"));
        assert!(!covers("billing.usage", "billing.usage.rejected"));
        assert!(!covers(
            "billing.usage.rejected.x",
            "billing.usage.rejected"
        ));
        assert!(!covers("billing.*", "billing.>"));
    }
}
