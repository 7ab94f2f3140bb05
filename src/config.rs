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
    /// NATS credentials file (JWT + nkey seed).
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// Inbox prefix for replies, e.g. `_INBOX_acme`; `nats.conf` lets each user read only its own.
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

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Tenants priced and written per database transaction.
    #[arg(long, env = "ROLLUP_BATCH_SIZE", default_value_t = crate::rollup::DEFAULT_BATCH_SIZE)]
    pub rollup_batch_size: i64,
    /// Request-reply requests handled at once (bounded below the pool size).
    #[arg(long, env = "SERVICE_CONCURRENCY", default_value_t = 8)]
    pub service_concurrency: usize,
    /// Serve Prometheus metrics on this address, e.g. 0.0.0.0:9464 (off when unset).
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl Default for WorkerArgs {
    fn default() -> Self {
        WorkerArgs {
            rollup_batch_size: crate::rollup::DEFAULT_BATCH_SIZE,
            service_concurrency: 8,
            metrics_addr: None,
        }
    }
}
