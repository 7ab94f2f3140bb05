//! The `invoicer` binary: CLI parsing, telemetry and configuration, then a call into the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use invoicer::client::{call, request_rollup};
use invoicer::config::{DbArgs, NatsArgs, WorkerArgs};
use invoicer::period::Period;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "invoicer",
    version,
    about = "Month-end invoicing engine on NATS JetStream and PostgreSQL"
)]
struct Cli {
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker: migrations, streams, rollups, usage, request-reply, outbox relay.
    Run {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        worker: WorkerArgs,
    },
    /// Apply migrations and ensure the JetStream streams, then exit.
    Migrate {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Publish one billing.rollup.requested.
    Rollup {
        /// Month to bill, YYYY-MM.
        #[arg(long)]
        period: String,
        /// Recompute drafts and supersede issued invoices.
        #[arg(long)]
        force: bool,
        /// Only these tenants (repeatable).
        #[arg(long = "tenant")]
        tenants: Vec<String>,
        /// Write drafts instead of issuing.
        #[arg(long)]
        draft: bool,
        /// Show progress and wait for billing.rollup.completed.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Read and change invoices over NATS (admin).
    Invoices {
        #[command(subcommand)]
        command: InvoicesCommand,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Price a plan, add-ons and projected usage with the quote engine (billing.quote).
    Quote {
        /// Plan code.
        #[arg(long)]
        plan: String,
        /// Add-on code (repeatable).
        #[arg(long = "addon")]
        addons: Vec<String>,
        /// Projected usage as KIND=QUANTITY, e.g. droplet_hours=2160 (repeatable).
        #[arg(long = "usage")]
        usage: Vec<String>,
        /// Month to price, YYYY-MM (default: this month).
        #[arg(long)]
        period: Option<String>,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// The seed scenario end to end on the local services, printing the invoice.
    Demo {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        nats: NatsArgs,
    },
}

#[derive(Subcommand)]
enum InvoicesCommand {
    /// List invoices, newest period first.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        status: Option<String>,
        /// Period start date, YYYY-MM-DD.
        #[arg(long)]
        period_start: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Show one invoice as a tax invoice.
    Show { id: String },
    /// Issue a draft.
    Issue { id: String },
    /// Mark an issued invoice paid.
    MarkPaid {
        id: String,
        /// RFC 3339 time of payment (default now).
        #[arg(long)]
        paid_at: Option<String>,
    },
    /// Void a draft or issued invoice.
    Void {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    invoicer::telemetry::init(&cli.log_format);
    match cli.command {
        Command::Run { db, nats, worker } => {
            let shutdown = CancellationToken::new();
            tokio::spawn(signal(shutdown.clone()));
            invoicer::worker::run(&db, &nats, &worker, shutdown).await
        }
        Command::Migrate { db, nats } => {
            invoicer::worker::prepare(&db, &nats, "invoicer-migrate").await?;
            println!("migrations applied; streams ensured");
            Ok(())
        }
        Command::Rollup {
            period,
            force,
            tenants,
            draft,
            wait,
            nats,
        } => rollup(&nats, &period, force, tenants, draft, wait).await,
        Command::Invoices { command, nats } => invoices(&nats, command).await,
        Command::Demo { db, nats } => invoicer::demo::run(&db, &nats).await,
        Command::Quote {
            plan,
            addons,
            usage,
            period,
            nats,
        } => quote(&nats, plan, addons, usage, period).await,
    }
}

async fn signal(shutdown: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    shutdown.cancel();
}

async fn rollup(
    nats: &NatsArgs,
    period: &str,
    force: bool,
    tenants: Vec<String>,
    draft: bool,
    wait: bool,
) -> anyhow::Result<()> {
    let period = Period::parse_month(period)?;
    let client = invoicer::bus::connect(nats, "invoicer-cli").await?;
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

async fn invoices(nats: &NatsArgs, command: InvoicesCommand) -> anyhow::Result<()> {
    let client = invoicer::bus::connect(nats, "invoicer-cli").await?;
    let show = |v: &Value| println!("{}", invoicer::render::invoice(v));
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
                print!("{}", invoicer::render::invoice_list(&rows));
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

async fn quote(
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
    let client = invoicer::bus::connect(nats, "invoicer-cli").await?;
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
    println!("{}", invoicer::render::invoice(&shown));
    Ok(())
}
