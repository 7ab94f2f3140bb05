//! `invoicer invoices`: admin reads and transitions over NATS.

use super::InvoicesCommand;
use crate::client::call;
use crate::config::NatsArgs;
use anyhow::Context;
use serde_json::{json, Value};

pub async fn run(nats: &NatsArgs, command: InvoicesCommand) -> anyhow::Result<()> {
    let client = crate::bus::connect(nats, "invoicer-cli").await?;
    let show = |v: &Value| println!("{}", crate::render::invoice(v));
    match command {
        InvoicesCommand::List {
            tenant,
            status,
            period_start,
            limit,
        } => {
            let mut cursor: Option<String> = None;
            let mut remaining = limit;
            loop {
                let page = call(
                    &client,
                    "billing.admin.invoices.list",
                    &json!({"tenant_id": tenant, "status": status, "period_start": period_start,
                            "limit": remaining.min(500), "cursor": cursor}),
                )
                .await?;
                let rows = page["invoices"].as_array().cloned().unwrap_or_default();
                remaining -= rows.len() as i64;
                print!("{}", crate::render::invoice_list(&rows));
                cursor = page["next_cursor"].as_str().map(str::to_string);
                if cursor.is_none() || remaining <= 0 {
                    break;
                }
            }
        }
        InvoicesCommand::Show { id } => {
            show(&call(&client, "billing.admin.invoices.get", &json!({"id": id})).await?)
        }
        InvoicesCommand::Issue { id } => {
            show(&call(&client, "billing.admin.invoices.issue", &json!({"id": id})).await?)
        }
        InvoicesCommand::MarkPaid { id, paid_at } => show(
            &call(
                &client,
                "billing.admin.invoices.mark_paid",
                &json!({"id": id, "paid_at": paid_at}),
            )
            .await
            .context("mark_paid")?,
        ),
        InvoicesCommand::Void { id, reason } => show(
            &call(
                &client,
                "billing.admin.invoices.void",
                &json!({"id": id, "reason": reason}),
            )
            .await?,
        ),
    }
    Ok(())
}
