//! Configuration: every setting is an environment variable with a matching flag, checked when
//! the command line is parsed. A bad value stops the process at once with clap's message and
//! exit code 2, naming the variable, rather than surfacing later as a strange failure (a batch
//! size of 0 that completes rollups with no invoices, a log format silently ignored).

use crate::domain::document::{Seller, SellerError};
use clap::builder::RangedI64ValueParser;
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/invoicer";
/// The demo's own database: never the worker's default, so a demo on a machine that also runs
/// invoicer for real cannot bill into it.
pub const DEFAULT_DEMO_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/invoicer_demo";
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// Published outbox rows are kept at least this long: beyond the events stream's duplicate
/// window, so a pruned event can never be published twice unnoticed.
pub const MIN_OUTBOX_RETENTION: Duration = Duration::from_secs(3600);

/// `LOG_FORMAT`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL URL; the database is created if missing.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL,
          value_parser = database_url)]
    pub database_url: String,
    /// Connection pool size (1-1000).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,
}

/// `invoicer demo`'s database: as [`DbArgs`], with its own default.
#[derive(Debug, Clone, Args)]
pub struct DemoDbArgs {
    /// PostgreSQL URL of the demo's own database (created if missing). Not the worker's
    /// default database: the demo never writes into a real installation unless told to.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DEMO_DATABASE_URL,
          value_parser = database_url)]
    pub database_url: String,
}

impl DemoDbArgs {
    pub fn db_args(&self) -> DbArgs {
        DbArgs {
            database_url: self.database_url.clone(),
            database_max_connections: 10,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = DEFAULT_NATS_URL, value_parser = nats_url)]
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
    #[arg(long, env = "NATS_INBOX_PREFIX", value_parser = inbox_prefix)]
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
    /// Tenants per rollup work item, priced and written in one database transaction (1-100000).
    #[arg(long, env = "ROLLUP_BATCH_SIZE", default_value_t = crate::rollup::DEFAULT_BATCH_SIZE,
          value_parser = RangedI64ValueParser::<i64>::new().range(1..=100_000))]
    pub rollup_batch_size: i64,
    /// How long a rollup request or work item that keeps failing (the database unreachable) is
    /// retried: the sum of the delays between attempts (1 s, 2 s, 4 s ... up to a minute), e.g.
    /// 50m, 10s (at most 24h). Then a request is rejected with its cause
    /// (`billing.rollup.rejected`), and an item's tenants are worked one at a time, those still
    /// failing reported in `tenants_failed`. The default leaves room for the attempts' own
    /// time (a connection attempt may wait 10 s), so a request is answered within the hour.
    #[arg(long, env = "ROLLUP_RETRY_WINDOW", default_value = "50m", value_parser = retry_window)]
    pub rollup_retry_window: Duration,
    /// Rollup work items this replica works at once (1-64).
    #[arg(long, env = "ROLLUP_CONCURRENCY", default_value_t = DEFAULT_ROLLUP_CONCURRENCY,
          value_parser = RangedI64ValueParser::<usize>::new().range(1..=64))]
    pub rollup_concurrency: usize,
    /// Request-reply requests handled at once (1-1024, below DATABASE_MAX_CONNECTIONS).
    #[arg(long, env = "SERVICE_CONCURRENCY", default_value_t = 8,
          value_parser = RangedI64ValueParser::<usize>::new().range(1..=1024))]
    pub service_concurrency: usize,
    /// How long published events stay in the outbox before they are pruned, e.g. 7d, 36h
    /// (at least 1h).
    #[arg(long, env = "OUTBOX_RETENTION", default_value = "7d", value_parser = retention)]
    pub outbox_retention: Duration,
    #[command(flatten)]
    pub streams: StreamArgs,
    /// Serve Prometheus metrics on this address, e.g. 0.0.0.0:9464 (off when unset).
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub seller: SellerArgs,
    /// The platform's grace window, an ISO 8601 duration up to P31D (PT1H, P3D): a rollup's
    /// invoices stay drafts that absorb late usage for this long, then are issued. PT0S issues at
    /// once. A tenant's own `grace_period` overrides it.
    #[arg(long, env = "GRACE_PERIOD", default_value = "PT0S",
          value_parser = crate::domain::grace::GracePeriod::parse)]
    pub grace_period: crate::domain::grace::GracePeriod,
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
            outbox_retention: crate::bus::relay::DEFAULT_RETENTION,
            seller: SellerArgs::default(),
            grace_period: crate::domain::grace::GracePeriod::zero(),
        }
    }
}

impl WorkerArgs {
    /// What no single setting can check: request handlers must leave the consumers and the
    /// relay a database connection, or a burst of requests starves them.
    pub fn check(&self, db: &DbArgs) -> Result<(), String> {
        if self.service_concurrency >= db.database_max_connections as usize {
            return Err(format!(
                "SERVICE_CONCURRENCY ({}) must be below DATABASE_MAX_CONNECTIONS ({}): the \
                 consumers and the outbox relay need connections too",
                self.service_concurrency, db.database_max_connections
            ));
        }
        Ok(())
    }
}

fn database_url(s: &str) -> Result<String, String> {
    if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
        return Err("a PostgreSQL URL starts with postgres:// or postgresql://".into());
    }
    sqlx::postgres::PgConnectOptions::from_str(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("not a PostgreSQL URL: {e}"))
}

fn nats_url(s: &str) -> Result<String, String> {
    async_nats::ServerAddr::from_str(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

/// A subject prefix the client appends tokens to: plain tokens, no wildcards or spaces.
fn inbox_prefix(s: &str) -> Result<String, String> {
    let token_ok = |t: &str| {
        !t.is_empty()
            && !t.contains(['*', '>'])
            && !t.chars().any(|c| c.is_whitespace() || c.is_control())
    };
    if s.split('.').all(token_ok) {
        Ok(s.to_string())
    } else {
        Err("an inbox prefix is dot-separated subject tokens without spaces or wildcards, e.g. _INBOX_acme".into())
    }
}

fn retention(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 7d or 36h)"))?;
    if d < MIN_OUTBOX_RETENTION {
        return Err("must be at least 1h, beyond the events stream's duplicate window".into());
    }
    Ok(d)
}

/// The supplier on tax invoice documents. Documents are enabled by setting any of these; then
/// the name and a valid ABN are required, and the worker refuses to start without them.
#[derive(Debug, Clone, Default, Args)]
pub struct SellerArgs {
    /// Supplier's legal name on tax invoices (enables documents, with --seller-abn).
    #[arg(long, env = "SELLER_NAME")]
    pub seller_name: Option<String>,
    /// Supplier's ABN, 11 digits; spaces allowed (`51 824 753 556`).
    #[arg(long, env = "SELLER_ABN")]
    pub seller_abn: Option<String>,
    /// Supplier's address on tax invoices (optional; newlines separate lines).
    #[arg(long, env = "SELLER_ADDRESS")]
    pub seller_address: Option<String>,
}

impl SellerArgs {
    /// A configured seller, `None` when no SELLER_* is set (documents disabled), or why the
    /// settings given cannot make a tax invoice. A blank value counts as not set.
    pub fn seller(&self) -> Result<Option<Seller>, SellerError> {
        let given = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        let (name, abn, address) = (
            given(&self.seller_name),
            given(&self.seller_abn),
            given(&self.seller_address),
        );
        if name.is_none() && abn.is_none() && address.is_none() {
            return Ok(None);
        }
        let name = name.ok_or(SellerError::Missing("SELLER_NAME"))?;
        let abn = abn.ok_or(SellerError::Missing("SELLER_ABN"))?;
        Seller::new(&name, &abn, address.as_deref()).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_when_parsed() {
        assert!(database_url("postgres://u@h:5432/db").is_ok());
        assert!(database_url("mysql://nope").is_err());
        assert!(nats_url("nats://127.0.0.1:4222").is_ok());
        assert!(nats_url("127.0.0.1").is_ok());
        assert!(nats_url("nats://host:port").is_err());
        assert!(inbox_prefix("_INBOX_acme").is_ok());
        assert!(inbox_prefix("_INBOX.acme").is_ok());
        for bad in ["", "_INBOX acme", "_INBOX.*", "a..b", "a.>"] {
            assert!(inbox_prefix(bad).is_err(), "{bad:?}");
        }
        assert_eq!(retention("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(retention("30m").is_err());
        assert!(retention("soon").is_err());
    }

    fn args(name: Option<&str>, abn: Option<&str>, address: Option<&str>) -> SellerArgs {
        SellerArgs {
            seller_name: name.map(str::to_string),
            seller_abn: abn.map(str::to_string),
            seller_address: address.map(str::to_string),
        }
    }

    #[test]
    fn documents_are_enabled_by_any_seller_setting() {
        assert_eq!(args(None, None, None).seller().unwrap(), None);
        assert_eq!(args(Some(" "), Some(""), None).seller().unwrap(), None);
        let s = args(Some("Droplet Cloud Pty Ltd"), Some("51 824 753 556"), None)
            .seller()
            .unwrap()
            .unwrap();
        assert_eq!(
            (s.name.as_str(), s.abn.digits(), s.address),
            ("Droplet Cloud Pty Ltd", "51824753556", None)
        );
        let err = |a: SellerArgs| a.seller().unwrap_err().to_string();
        assert!(err(args(None, None, Some("1 Example St"))).starts_with("SELLER_NAME is required"));
        assert!(err(args(Some("Droplet"), None, None)).starts_with("SELLER_ABN is required"));
        assert!(err(args(None, Some("51824753556"), None)).starts_with("SELLER_NAME is required"));
        assert!(err(args(Some("Droplet"), Some("51 824 753 557"), None))
            .contains("fails the ABN checksum"));
        assert!(err(args(
            Some("Droplet"),
            Some("51824753556"),
            Some("bell\u{7}")
        ))
        .contains("SELLER_ADDRESS"));
    }

    #[test]
    fn the_retry_window_is_a_bounded_duration() {
        assert_eq!(retry_window("50m"), Ok(DEFAULT_RETRY_WINDOW));
        assert_eq!(retry_window("10s"), Ok(Duration::from_secs(10)));
        assert!(retry_window("2d").is_err());
        assert!(retry_window("soon").is_err());
    }
}
