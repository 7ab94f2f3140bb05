//! `invoicer rollup`: publish one rollup request, optionally following it to completion.

use crate::client::request_rollup;
use crate::config::NatsArgs;
use crate::period::Period;
use futures::StreamExt;
use serde_json::{json, Value};

pub async fn run(
    nats: &NatsArgs,
    period: &str,
    force: bool,
    tenants: Vec<String>,
    draft: bool,
    wait: bool,
) -> anyhow::Result<()> {
    let period = Period::parse_month(period)?;
    let client = crate::bus::connect(nats, "invoicer-cli").await?;
    let js = async_nats::jetstream::new(client.clone());
    let request_id = uuid::Uuid::new_v4().to_string();
    let request = json!({
        "period_start": period.start, "period_end": period.end, "force": force, "draft": draft,
        "tenant_ids": (!tenants.is_empty()).then_some(tenants), "request_id": request_id,
    });
    if !wait {
        request_rollup(&js, &request, &request_id).await?;
        println!("requested rollup {request_id} for {period}");
        return Ok(());
    }
    // Subscribe before publishing so the completed event cannot be missed.
    let mut events = client.subscribe("billing.rollup.>").await?;
    request_rollup(&js, &request, &request_id).await?;
    println!("requested rollup {request_id} for {period}");
    while let Some(msg) = events.next().await {
        let event: Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
        let ours = event["request_id"] == request_id.as_str()
            || event["request"]["request_id"] == request_id.as_str();
        if !ours {
            continue;
        }
        match msg.subject.as_str() {
            "billing.rollup.progress" => println!(
                "  {}/{} tenants",
                event["tenants_done"], event["tenants_total"]
            ),
            "billing.rollup.completed" => {
                println!("{}", serde_json::to_string_pretty(&event)?);
                return Ok(());
            }
            "billing.rollup.rejected" => anyhow::bail!("rollup rejected: {}", event["reason"]),
            _ => {}
        }
    }
    anyhow::bail!("connection closed before the rollup completed")
}
