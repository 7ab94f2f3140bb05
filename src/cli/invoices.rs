//! `invoicer invoices`: admin reads and transitions over NATS.

use super::InvoicesCommand;
use crate::api::MAX_LIST_LIMIT;
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
            all,
        } => {
            // `None`: no cap (--all).
            let mut remaining = (!all).then_some(limit);
            let mut cursor: Option<String> = None;
            let mut shown = 0u64;
            print!("{}", crate::render::invoice_list_header());
            loop {
                let page_size =
                    remaining.map_or(MAX_LIST_LIMIT as u64, |r| r.min(MAX_LIST_LIMIT as u64));
                if page_size == 0 {
                    break;
                }
                let page = call(
                    &client,
                    "billing.admin.invoices.list",
                    &json!({"tenant_id": tenant, "status": status, "period_start": period_start,
                            "limit": page_size, "cursor": cursor}),
                )
                .await?;
                let rows = page["invoices"].as_array().cloned().unwrap_or_default();
                shown += rows.len() as u64;
                remaining = remaining.map(|r| r.saturating_sub(rows.len() as u64));
                print!("{}", crate::render::invoice_rows(&rows));
                cursor = page["next_cursor"].as_str().map(str::to_string);
                if cursor.is_none() {
                    break;
                }
            }
            if cursor.is_some() {
                eprintln!("{shown} shown; there are more: use --all, or a larger --limit");
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
