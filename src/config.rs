//! Configuration: every setting is an environment variable with a matching flag.

use clap::Args;
use std::path::PathBuf;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/invoicer";
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL URL; the database is created if missing.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Connection pool size.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,
}

#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = DEFAULT_NATS_URL)]
    pub nats_url: String,
    /// NATS user (with --nats-password).
    #[arg(long, env = "NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// NATS password.
    #[arg(
        long,
        env = "NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    pub nats_password: Option<String>,
    /// NATS credentials file (JWT + nkey seed), e.g. from `invoicer auth creds`.
    #[arg(long, env = "NATS_CREDS", conflicts_with = "nats_user")]
    pub nats_creds: Option<PathBuf>,
    /// Inbox prefix for replies. Default: the one the credentials may subscribe to
    /// (`_INBOX_<role>`, `_INBOX_tenant_<tenant>`), or for NATS_USER `_INBOX_<user>` if it is a
    /// role's name and `_INBOX_tenant_<user>` otherwise; `_INBOX` without credentials.
    #[arg(long, env = "NATS_INBOX_PREFIX")]
    pub nats_inbox_prefix: Option<String>,
}

impl NatsArgs {
    pub fn local(url: &str) -> Self {
        NatsArgs {
            nats_url: url.to_string(),
            nats_user: None,
            nats_password: None,
            nats_creds: None,
            nats_inbox_prefix: None,
        }
    }
}

/// How the JetStream streams are created (by `run` and `migrate`).
#[derive(Debug, Clone, Args)]
pub struct StreamArgs {
    /// Copies of each stream on a JetStream cluster (1 on a single server; 3 on a 3-node cluster).
    #[arg(long, env = "NATS_STREAM_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_stream_replicas: u8,
}

impl Default for StreamArgs {
    fn default() -> Self {
        StreamArgs {
            nats_stream_replicas: 1,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Tenants per rollup work item, priced and written in one database transaction.
    #[arg(long, env = "ROLLUP_BATCH_SIZE", default_value_t = crate::rollup::DEFAULT_BATCH_SIZE)]
    pub rollup_batch_size: i64,
    /// Rollup work items this replica works at once.
    #[arg(long, env = "ROLLUP_CONCURRENCY", default_value_t = DEFAULT_ROLLUP_CONCURRENCY)]
    pub rollup_concurrency: usize,
    /// Request-reply requests handled at once (bounded below the pool size).
    #[arg(long, env = "SERVICE_CONCURRENCY", default_value_t = 8)]
    pub service_concurrency: usize,
    #[command(flatten)]
    pub streams: StreamArgs,
    /// Serve Prometheus metrics on this address, e.g. 0.0.0.0:9464 (off when unset).
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The platform's grace window, an ISO 8601 duration up to P31D (PT1H, P3D): a rollup's
    /// invoices stay drafts that absorb late usage for this long, then are issued. PT0S issues at
    /// once. A tenant's own `grace_period` overrides it.
    #[arg(long, env = "GRACE_PERIOD", default_value = "PT0S",
          value_parser = crate::grace::GracePeriod::parse)]
    pub grace_period: crate::grace::GracePeriod,
}

pub const DEFAULT_ROLLUP_CONCURRENCY: usize = 2;

impl Default for WorkerArgs {
    fn default() -> Self {
        WorkerArgs {
            rollup_batch_size: crate::rollup::DEFAULT_BATCH_SIZE,
            rollup_concurrency: DEFAULT_ROLLUP_CONCURRENCY,
            service_concurrency: 8,
            streams: StreamArgs::default(),
            metrics_addr: None,
            grace_period: crate::grace::GracePeriod::zero(),
        }
    }
}
