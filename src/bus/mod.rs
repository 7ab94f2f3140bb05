//! NATS adapter: connection, streams and consumers, the outbox relay, and the request-reply
//! service. Messages become domain values here and results become acks and replies.

pub mod ack;
pub mod relay;
pub mod rollups;
pub mod service;
pub mod usage;

use crate::config::NatsArgs;
use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull, consumer::PullConsumer, stream};
use std::time::Duration;

pub const ROLLUPS_STREAM: &str = "BILLING_ROLLUPS";
pub const EVENTS_STREAM: &str = "BILLING_EVENTS";
pub const USAGE_STREAM: &str = "METERING_USAGE";
pub const ROLLUP_REQUESTED: &str = "billing.rollup.requested";
pub const ROLLUP_COMPLETED: &str = "billing.rollup.completed";
pub const ROLLUP_REJECTED: &str = "billing.rollup.rejected";
/// Core NATS (not stored): one message per committed rollup batch, for `rollup --wait`.
pub const ROLLUP_PROGRESS: &str = "billing.rollup.progress";
pub const USAGE_RECORDED: &str = "metering.usage.recorded";
pub const USAGE_LATE: &str = "billing.usage.late";
/// `{"reason", "record"}`: a usage record refused at the edge (CONTRACT.md section 8).
pub const USAGE_REJECTED: &str = "billing.usage.rejected";
pub const ROLLUPS_CONSUMER: &str = "invoicer-rollups";
pub const USAGE_CONSUMER: &str = "invoicer-usage";

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
    if let Some(path) = &args.nats_creds {
        opts = opts
            .credentials_file(path)
            .await
            .with_context(|| format!("reading NATS credentials {}", path.display()))?;
    }
    if let (Some(user), Some(pass)) = (&args.nats_user, &args.nats_password) {
        opts = opts.user_and_password(user.clone(), pass.clone());
    }
    if let Some(prefix) = &args.nats_inbox_prefix {
        opts = opts.custom_inbox_prefix(prefix);
    }
    opts.connect(&args.nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {}", args.nats_url))
}

fn stream_configs() -> [stream::Config; 3] {
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
    ]
}

/// Creates the three streams if missing (idempotent). An existing stream keeps its settings,
/// but gains any subject a newer version publishes (such as `billing.usage.rejected`): an event
/// on a subject no stream holds could never be published.
pub async fn ensure_streams(js: &jetstream::Context) -> anyhow::Result<()> {
    for config in stream_configs() {
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
pub async fn ensure_consumers(
    js: &jetstream::Context,
) -> anyhow::Result<(PullConsumer, PullConsumer)> {
    let rollups = js.get_stream(ROLLUPS_STREAM).await?;
    let usage = js.get_stream(USAGE_STREAM).await?;
    let rollup_consumer = rollups
        .get_or_create_consumer(
            ROLLUPS_CONSUMER,
            pull::Config {
                durable_name: Some(ROLLUPS_CONSUMER.into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_deliver: -1,
                ..Default::default()
            },
        )
        .await?;
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
    Ok((rollup_consumer, usage_consumer))
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
