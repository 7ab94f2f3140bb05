//! `invoicer quote`: a provisioning-time quote through `billing.quote`.

use crate::client::call;
use crate::config::NatsArgs;
use crate::period::Period;
use anyhow::Context;
use serde_json::{json, Value};

pub async fn run(
    nats: &NatsArgs,
    plan: String,
    addons: Vec<String>,
    usage: Vec<String>,
    period: Option<String>,
) -> anyhow::Result<()> {
    let mut projected = serde_json::Map::new();
    for u in &usage {
        let (kind, qty) = u
            .split_once('=')
            .with_context(|| format!("--usage {u:?} must be KIND=QUANTITY"))?;
        projected.insert(kind.to_string(), Value::String(qty.to_string()));
    }
    let period_start = period
        .as_deref()
        .map(Period::parse_month)
        .transpose()?
        .map(|p| p.start);
    let client = crate::bus::connect(nats, "invoicer-cli").await?;
    let q = call(
        &client,
        "billing.quote",
        &json!({"plan": plan, "addons": addons, "usage": projected, "period_start": period_start}),
    )
    .await?;
    let mut shown = q.clone();
    shown["tenant_id"] = json!("(quote)");
    shown["status"] = json!("quote");
    shown["currency"] = json!("");
    println!("{}", crate::render::invoice(&shown));
    Ok(())
}
