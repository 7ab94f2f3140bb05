//! Pushing an account JWT to a running nats-server (full resolver), as the system account.

use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// Sends `account_jwt` to `$SYS.REQ.ACCOUNT.<account>.CLAIMS.UPDATE` with the system user's
/// credentials and waits for the server to accept it. The server then applies it at once:
/// revoked users' connections are closed and their new connections refused.
pub async fn push_account(
    nats_url: &str,
    system_creds: &Path,
    account: &str,
    account_jwt: &str,
) -> anyhow::Result<()> {
    let client = async_nats::ConnectOptions::new()
        .name("invoicer-auth")
        .connection_timeout(Duration::from_secs(5))
        .credentials_file(system_creds)
        .await
        .with_context(|| format!("reading {}", system_creds.display()))?
        .connect(nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {nats_url} as the system account"))?;
    let subject = format!("$SYS.REQ.ACCOUNT.{account}.CLAIMS.UPDATE");
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(subject.clone(), account_jwt.to_string().into()),
    )
    .await
    .map_err(|_| anyhow!("{subject}: no reply within 10s"))?
    .with_context(|| {
        format!("{subject}: is the server at {nats_url} in operator mode with a full resolver?")
    })?;
    let body: Value = serde_json::from_slice(&reply.payload)
        .with_context(|| format!("{subject}: the reply is not JSON"))?;
    if let Some(error) = body.get("error") {
        bail!(
            "the server refused the account update: {}",
            error["description"].as_str().unwrap_or("no description")
        );
    }
    match body["data"]["code"].as_i64() {
        Some(200) => Ok(()),
        _ => bail!("unexpected reply to the account update: {body}"),
    }
}
