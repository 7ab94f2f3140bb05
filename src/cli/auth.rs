//! `invoicer auth`: operator-mode setup, per-user credentials and tenant revocation. The work is
//! in [`crate::auth`]; this module parses flags and prints.

use crate::auth::{push, AuthDir, Role};
use crate::domain::catalog::TenantId;
use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand)]
pub enum AuthCommand {
    /// Create (or complete) the operator, the billing account and its signing key, the system
    /// account, and DIR/nats-operator.conf. Keeps existing keys; prints no seed.
    Init {
        /// The auth directory: keys (0600), JWTs, issued users, server configuration.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print a .creds file for one new user with exactly its role's permissions.
    Creds {
        /// The auth directory made by `invoicer auth init`.
        #[arg(long)]
        dir: PathBuf,
        /// The user's role: its permissions are the same as its nats.conf user's.
        #[arg(long, value_enum)]
        role: RoleName,
        /// The tenant id (with --role tenant): 1-64 characters of [A-Za-z0-9_-].
        #[arg(long)]
        tenant: Option<String>,
        /// Lifetime, e.g. 90d, 12h, 1y, "2weeks 3days" (default: no expiry).
        #[arg(long, value_parser = parse_lifetime)]
        expires: Option<Duration>,
    },
    /// Revoke every credential issued to a tenant and push the account to the running server,
    /// which closes and refuses them at once (no restart).
    Revoke {
        /// The auth directory made by `invoicer auth init`.
        #[arg(long)]
        dir: PathBuf,
        /// The tenant whose credentials (all issued so far from DIR) are revoked.
        #[arg(long)]
        tenant: String,
        /// The server to update (as the system account, with DIR/system-user.creds).
        #[arg(long, env = "NATS_URL", default_value = crate::config::DEFAULT_NATS_URL)]
        nats_url: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleName {
    Worker,
    Admin,
    Scheduler,
    Metering,
    Tenant,
}

fn parse_lifetime(s: &str) -> Result<Duration, String> {
    let lifetime = humantime::parse_duration(s)
        .map_err(|e| format!("{e}: give a lifetime such as 90d, 12h, 30m or 1y"))?;
    if lifetime < Duration::from_secs(1) {
        return Err("the lifetime must be at least 1s".into());
    }
    Ok(lifetime)
}

fn role(name: RoleName, tenant: Option<String>) -> anyhow::Result<Role> {
    let fixed = match name {
        RoleName::Worker => Role::Worker,
        RoleName::Admin => Role::Admin,
        RoleName::Scheduler => Role::Scheduler,
        RoleName::Metering => Role::Metering,
        RoleName::Tenant => {
            let Some(id) = tenant else {
                bail!("--role tenant needs --tenant <TENANT_ID>");
            };
            return Ok(Role::Tenant(TenantId::parse(&id)?));
        }
    };
    if tenant.is_some() {
        bail!("--tenant applies to --role tenant only");
    }
    Ok(fixed)
}

pub async fn run(command: AuthCommand) -> anyhow::Result<()> {
    match command {
        AuthCommand::Init { dir } => {
            let (dir, report) = AuthDir::init(&dir)?;
            if report.created.is_empty() {
                println!("kept the existing keys in {}", dir.root().display());
            } else {
                println!(
                    "created {} in {}/keys (0600)",
                    report.created.join(", "),
                    dir.root().display()
                );
            }
            println!("operator        {}", report.operator);
            println!("billing account {}", report.account);
            println!("system account  {}", report.system_account);
            println!("start the server: nats-server -c {}", report.conf.display());
            println!(
                "issue a user:     invoicer auth creds --dir {} --role worker > worker.creds",
                dir.root().display()
            );
            Ok(())
        }
        AuthCommand::Creds {
            dir,
            role: name,
            tenant,
            expires,
        } => {
            let role = role(name, tenant)?;
            let dir = AuthDir::open(&dir)?;
            let expires_at = expires
                .map(|lifetime| {
                    let secs = i64::try_from(lifetime.as_secs()).context("lifetime too long")?;
                    chrono::Utc::now()
                        .timestamp()
                        .checked_add(secs)
                        .context("lifetime too long")
                })
                .transpose()?;
            let issued = dir.issue(&role, expires_at)?;
            print!("{}", issued.creds);
            Ok(())
        }
        AuthCommand::Revoke {
            dir,
            tenant,
            nats_url,
        } => {
            let tenant = TenantId::parse(&tenant)?;
            let dir = AuthDir::open(&dir)?;
            let revoked = dir.revoke_tenant(&tenant, chrono::Utc::now().timestamp())?;
            println!(
                "revoked {} of tenant {tenant}'s {} user(s) in {}",
                revoked.newly_revoked,
                revoked.users,
                dir.root().display()
            );
            push::push_account(
                &nats_url,
                &dir.system_creds_path(),
                &dir.account_public_key(),
                &revoked.account_jwt,
            )
            .await
            .context(
                "the revocation is saved in the auth directory but the server was not updated; \
                 run the same command again once the server is reachable",
            )?;
            println!("pushed the billing account to {nats_url}: the server now refuses them");
            Ok(())
        }
    }
}
