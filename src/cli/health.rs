//! `invoicer health`: asks a worker on `billing.admin.health` whether it is ready. Exit 0 when
//! it is; 1 when it is not, when no worker answers, or when NATS cannot be reached, so a
//! container orchestrator can use it as a probe.

use super::Exit;
use crate::config::NatsArgs;
use anyhow::Context;
use serde_json::Value;
use std::fmt::Write;
use std::time::Duration;

pub const SUBJECT: &str = "billing.admin.health";

pub async fn run(nats: &NatsArgs, timeout: Duration, json: bool) -> anyhow::Result<()> {
    let client = tokio::time::timeout(timeout, crate::bus::connect(nats, "invoicer-health"))
        .await
        .map_err(|_| Exit::NotReady(format!("NATS did not answer within {timeout:?}")))??;
    let reply = match tokio::time::timeout(timeout, client.request(SUBJECT, "{}".into())).await {
        Err(_) => {
            return Err(Exit::NotReady(format!(
                "no invoicer worker answered {SUBJECT} within {timeout:?}"
            ))
            .into())
        }
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            return Err(Exit::NotReady(format!(
                "no invoicer worker is running (nobody serves {SUBJECT})"
            ))
            .into())
        }
        Ok(r) => r.with_context(|| format!("asking {SUBJECT}"))?,
    };
    let health: Value = serde_json::from_slice(&reply.payload)
        .with_context(|| format!("{SUBJECT}: the reply is not JSON"))?;
    if json {
        println!("{health}");
    } else {
        print!("{}", render(&health));
    }
    if health["ready"] == true {
        return Ok(());
    }
    let failing: Vec<&str> = checks(&health)
        .iter()
        .filter(|c| c["ok"] != true)
        .filter_map(|c| c["name"].as_str())
        .collect();
    Err(Exit::NotReady(format!("the worker is not ready: {}", failing.join(", "))).into())
}

fn checks(health: &Value) -> &[Value] {
    health["checks"].as_array().map_or(&[], Vec::as_slice)
}

/// The reply as a person reads it.
pub fn render(health: &Value) -> String {
    let mut out = String::new();
    let state = if health["ready"] == true {
        "ready"
    } else {
        "NOT READY"
    };
    let version = health["version"].as_str().unwrap_or("?");
    let _ = writeln!(out, "{state} (invoicer {version})");
    for c in checks(health) {
        let _ = writeln!(
            out,
            "  {:<5} {:<16} {}",
            if c["ok"] == true { "ok" } else { "FAIL" },
            c["name"].as_str().unwrap_or("?"),
            c["detail"].as_str().unwrap_or("")
        );
    }
    out
}
