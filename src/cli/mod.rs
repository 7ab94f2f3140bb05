//! The command line: one module per command group. `main.rs` parses, sets up telemetry and
//! calls [`Cli::run`].

mod auth;
mod invoices;
mod quote;
mod rollup;

use crate::config::{DbArgs, NatsArgs, StreamArgs, WorkerArgs};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "invoicer",
    version,
    about = "Month-end invoicing engine on NATS JetStream and PostgreSQL"
)]
pub struct Cli {
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: String,
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
        #[command(flatten)]
        streams: StreamArgs,
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
    /// Measure CONTRACT.md section 10 on a private database and nats-server; print a table.
    Bench(crate::bench::BenchArgs),
    /// NATS operator mode (JWT): set up, issue per-user credentials, revoke a tenant.
    Auth {
        #[command(subcommand)]
        command: auth::AuthCommand,
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
pub enum InvoicesCommand {
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
    /// Write an invoice's tax invoice document (CONTRACT.md 5b) as HTML or PDF.
    Render {
        /// Invoice id (UUID).
        id: String,
        /// Document format.
        #[arg(long, value_enum, default_value_t = invoices::RenderFormat::Html)]
        format: invoices::RenderFormat,
        /// Write the document to FILE (default: standard output).
        #[arg(short, long, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
    },
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Run { db, nats, worker } => {
                let shutdown = CancellationToken::new();
                tokio::spawn(signal(shutdown.clone()));
                crate::worker::run(&db, &nats, &worker, shutdown).await
            }
            Command::Migrate { db, nats, streams } => {
                crate::worker::prepare(&db, &nats, &streams, "invoicer-migrate").await?;
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
            } => rollup::run(&nats, &period, force, tenants, draft, wait).await,
            Command::Invoices { command, nats } => invoices::run(&nats, command).await,
            Command::Demo { db, nats } => crate::demo::run(&db, &nats).await,
            Command::Bench(args) => crate::bench::run(&args).await,
            Command::Auth { command } => auth::run(command).await,
            Command::Quote {
                plan,
                addons,
                usage,
                period,
                nats,
            } => quote::run(&nats, plan, addons, usage, period).await,
        }
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
