//! `invoicer invoices`: admin reads and transitions over NATS.

use super::InvoicesCommand;
use crate::api::MAX_LIST_LIMIT;
use crate::bus::client::call;
use crate::config::NatsArgs;
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::path::Path;

/// `--format` of `invoices render`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RenderFormat {
    Html,
    Pdf,
}

impl RenderFormat {
    fn as_str(self) -> &'static str {
        match self {
            RenderFormat::Html => "html",
            RenderFormat::Pdf => "pdf",
        }
    }
}

pub async fn run(nats: &NatsArgs, command: InvoicesCommand) -> anyhow::Result<()> {
    let client = crate::bus::connect(nats, "invoicer-cli").await?;
    let show = |v: &Value| println!("{}", crate::cli::print::invoice(v));
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
            print!("{}", crate::cli::print::invoice_list_header());
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
                print!("{}", crate::cli::print::invoice_rows(&rows));
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
        InvoicesCommand::Render { id, format, output } => {
            render(&client, &id, format, output.as_deref()).await?
        }
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

/// Fetches a document through `billing.admin.invoices.render` and writes its bytes.
async fn render(
    client: &async_nats::Client,
    id: &str,
    format: RenderFormat,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    use base64::Engine;
    // Checked before the request, so nothing is fetched only to be refused.
    if output.is_none() && format == RenderFormat::Pdf && std::io::stdout().is_terminal() {
        bail!("refusing to write a PDF to the terminal: use -o FILE or redirect standard output");
    }
    let reply = call(
        client,
        "billing.admin.invoices.render",
        &json!({"id": id, "format": format.as_str()}),
    )
    .await?;
    let body = reply["body"]
        .as_str()
        .with_context(|| format!("render reply has no body: {reply}"))?;
    let bytes = match format {
        RenderFormat::Html => body.as_bytes().to_vec(),
        RenderFormat::Pdf => base64::engine::general_purpose::STANDARD
            .decode(body)
            .context("the PDF in the reply is not valid base64")?,
    };
    match output {
        Some(path) => {
            std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "Wrote {} ({} bytes, {})",
                path.display(),
                bytes.len(),
                reply["content_type"].as_str().unwrap_or("unknown type")
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)
                .context("writing to standard output")?;
            out.flush().context("writing to standard output")?;
        }
    }
    Ok(())
}
