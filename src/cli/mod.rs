//! The command line: one module per command group. `main.rs` parses, sets up telemetry and
//! calls [`Cli::run`].

mod auth;
pub mod bench;
pub mod demo;
mod exit;
mod health;
mod invoices;
mod outbox;
pub mod print;
mod quote;
mod rollup;
mod scheduler;

pub use exit::{exit_code, Exit};

use crate::config::{DbArgs, LogFormat, NatsArgs, StreamArgs, WorkerArgs};
use crate::domain::calendar::{Schedule, DEFAULT_CRON};
use crate::domain::period::Period;
use clap::{CommandFactory, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "invoicer",
    version,
    about = "Month-end invoicing engine on NATS JetStream and PostgreSQL",
    after_help = "Exit codes: 0 done (health: ready); 1 error (health: not ready); 2 bad command \
                  line; 3 rollup --wait: some tenants failed; 4 rollup --wait: request rejected."
)]
pub struct Cli {
    /// Log format.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value_t,
        ignore_case = true,
        global = true
    )]
    pub log_format: LogFormat,
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
    /// Publish the month-end rollup request on a cron.
    ///
    /// By default at 03:00 UTC on the 1st, for the month just ended. Months whose firing was
    /// missed while it was down are requested on start, oldest first; several replicas never
    /// request a month twice. Its state is in the JetStream key-value bucket
    /// invoicer-scheduler.
    Scheduler {
        /// Five cron fields (minute hour day-of-month month day-of-week), in UTC.
        #[arg(long, env = "SCHEDULER_CRON", default_value = DEFAULT_CRON, value_parser = parse_cron)]
        cron: Box<Schedule>,
        /// On a first start (no state yet), the first month to bill, YYYY-MM; months whose
        /// firing has passed are requested at once. Default: the first firing from now on.
        #[arg(long, env = "SCHEDULER_SINCE", value_parser = parse_month)]
        since: Option<Period>,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Ask a running worker whether it is ready (exit 0) or not (exit 1).
    Health {
        /// Seconds to wait for an answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
        /// Print the worker's JSON reply instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Publish one billing.rollup.requested.
    Rollup {
        /// Month to bill, YYYY-MM.
        #[arg(long, value_parser = parse_month)]
        period: Period,
        /// Recompute drafts and supersede issued invoices.
        #[arg(long)]
        force: bool,
        /// Only these tenants (repeatable).
        #[arg(long = "tenant")]
        tenants: Vec<String>,
        /// Write drafts instead of issuing.
        #[arg(long)]
        draft: bool,
        /// Show progress and wait for billing.rollup.completed, then print a summary; the
        /// exit code is 3 if a tenant failed, 4 if the request was rejected.
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
    Bench(crate::cli::bench::BenchArgs),
    /// NATS operator mode (JWT): set up, issue per-user credentials, revoke a tenant.
    Auth {
        #[command(subcommand)]
        command: auth::AuthCommand,
    },
    /// The seed scenario end to end on the local services, printing the invoice.
    Demo {
        #[command(flatten)]
        db: crate::config::DemoDbArgs,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Events the relay has not published: the backlog, parked events, retrying them.
    Outbox {
        #[command(subcommand)]
        command: outbox::OutboxCommand,
        #[command(flatten)]
        db: DbArgs,
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
        /// Show at most this many invoices (newest period first).
        #[arg(long, default_value_t = 50, conflicts_with = "all",
              value_parser = clap::value_parser!(u64).range(1..))]
        limit: u64,
        /// Page through every matching invoice.
        #[arg(long)]
        all: bool,
    },
    /// Show one invoice as a tax invoice.
    Show { id: String },
    /// Issue a draft.
    Issue { id: String },
    /// Mark an issued invoice paid.
    MarkPaid {
        id: String,
        /// RFC 3339 time of payment, between the invoice's issue and now (default now).
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

fn parse_cron(s: &str) -> Result<Box<Schedule>, String> {
    Schedule::parse(s).map(Box::new).map_err(|e| e.to_string())
}

fn parse_month(s: &str) -> Result<Period, String> {
    Period::parse_month(s).map_err(|e| e.to_string())
}

impl Cli {
    /// The log filter when `RUST_LOG` is unset: info for the long-running processes, only
    /// warnings for the commands people read.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Run { .. } | Command::Migrate { .. } | Command::Scheduler { .. } => {
                crate::telemetry::SERVICE_FILTER
            }
            // Its statements are slow on purpose (generating millions of rows).
            Command::Bench(_) => "warn,sqlx=error",
            _ => crate::telemetry::QUIET_FILTER,
        }
    }

    /// Parses the command line and checks what no single setting can; exits with clap's
    /// message and code 2 on a bad value.
    pub fn parse_checked() -> Cli {
        let cli = Cli::parse();
        if let Command::Run { db, worker, .. } = &cli.command {
            if let Err(message) = worker.check(db) {
                Cli::command()
                    .error(clap::error::ErrorKind::ArgumentConflict, message)
                    .exit();
            }
        }
        cli
    }

    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Run { db, nats, worker } => {
                let shutdown = CancellationToken::new();
                tokio::spawn(signal(shutdown.clone()));
                crate::app::worker::run(&db, &nats, &worker, shutdown).await
            }
            Command::Migrate { db, nats, streams } => {
                crate::app::worker::prepare(&db, &nats, &streams, "invoicer-migrate").await?;
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
            } => rollup::run(&nats, period, force, tenants, draft, wait).await,
            Command::Scheduler { cron, since, nats } => {
                let shutdown = CancellationToken::new();
                tokio::spawn(signal(shutdown.clone()));
                scheduler::run(&nats, *cron, since, shutdown).await
            }
            Command::Health {
                timeout,
                json,
                nats,
            } => health::run(&nats, std::time::Duration::from_secs(timeout), json).await,
            Command::Invoices { command, nats } => invoices::run(&nats, command).await,
            Command::Demo { db, nats } => crate::cli::demo::run(&db.db_args(), &nats).await,
            Command::Bench(args) => crate::cli::bench::run(&args).await,
            Command::Auth { command } => auth::run(command).await,
            Command::Outbox { command, db } => outbox::run(&db, command).await,
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
