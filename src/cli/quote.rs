//! `invoicer quote`: a provisioning-time quote through `billing.quote`.

use crate::bus::client::call;
use crate::config::NatsArgs;
use crate::domain::period::Period;
use anyhow::Context;
use chrono::{Months, Utc};
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
    // The period is always sent, so the one shown is the one priced.
    let period = match period.as_deref() {
        Some(p) => Period::parse_month(p)?,
        None => Period::month_before(Utc::now() + Months::new(1)),
    };
    let client = crate::bus::connect(nats, "invoicer-cli").await?;
    let q = call(
        &client,
        "billing.quote",
        &json!({"plan": plan, "addons": addons, "usage": projected, "period_start": period.start}),
    )
    .await?;
    let mut heading = format!("Quote for plan {plan}");
    if !addons.is_empty() {
        heading += &format!(" with {}", addons.join(", "));
    }
    heading += &format!(", {period} ({} days)", period.days());
    if !usage.is_empty() {
        heading += &format!("\nProjected usage: {}", usage.join(", "));
    }
    print!("{}", crate::cli::print::quote(&q, &heading));
    Ok(())
}
