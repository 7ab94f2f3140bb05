//! Configuration: every setting is an environment variable with a matching flag.

use crate::document::{Seller, SellerError};
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
    #[command(flatten)]
    pub seller: SellerArgs,
}

pub const DEFAULT_ROLLUP_CONCURRENCY: usize = 2;

impl Default for WorkerArgs {
    fn default() -> Self {
        WorkerArgs {
            rollup_batch_size: crate::rollup::DEFAULT_BATCH_SIZE,
            rollup_concurrency: DEFAULT_ROLLUP_CONCURRENCY,
            service_concurrency: 8,
            streams: StreamArgs::default(),
            seller: SellerArgs::default(),
        }
    }
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
}
