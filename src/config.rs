//! Configuration: every setting is an environment variable with a matching flag.

use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

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
    /// How long a rollup request or work item that keeps failing (the database unreachable) is
    /// retried: the sum of the delays between attempts (1 s, 2 s, 4 s ... up to a minute), e.g.
    /// 50m, 10s (at most 24h). Then a request is rejected with its cause
    /// (`billing.rollup.rejected`), and an item's tenants are worked one at a time, those still
    /// failing reported in `tenants_failed`. The default leaves room for the attempts' own
    /// time (a connection attempt may wait 10 s), so a request is answered within the hour.
    #[arg(long, env = "ROLLUP_RETRY_WINDOW", default_value = "50m", value_parser = retry_window)]
    pub rollup_retry_window: Duration,
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
}

pub const DEFAULT_ROLLUP_CONCURRENCY: usize = 2;
pub const DEFAULT_RETRY_WINDOW: Duration = Duration::from_secs(50 * 60);

fn retry_window(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 1h, 30m or 10s)"))?;
    if d > Duration::from_secs(86_400) {
        return Err("at most 24h: a rollup request should not wait longer to be answered".into());
    }
    Ok(d)
}

impl Default for WorkerArgs {
    fn default() -> Self {
        WorkerArgs {
            rollup_batch_size: crate::rollup::DEFAULT_BATCH_SIZE,
            rollup_concurrency: DEFAULT_ROLLUP_CONCURRENCY,
            rollup_retry_window: DEFAULT_RETRY_WINDOW,
            service_concurrency: 8,
            streams: StreamArgs::default(),
            metrics_addr: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_window_is_a_bounded_duration() {
        assert_eq!(retry_window("50m"), Ok(DEFAULT_RETRY_WINDOW));
        assert_eq!(retry_window("10s"), Ok(Duration::from_secs(10)));
        assert!(retry_window("2d").is_err());
        assert!(retry_window("soon").is_err());
    }
}
