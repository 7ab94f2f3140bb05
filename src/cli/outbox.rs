//! `invoicer outbox`: the operator's view of events that are not going out. The relay parks an
//! event it can never publish (too big for the server) or that keeps failing while NATS answers;
//! these commands show the backlog, list parked events with their last error, and put them back
//! in line once the cause is fixed. They read the database directly (`DATABASE_URL`), so they
//! work while NATS is down.

use crate::config::DbArgs;
use crate::store::{self, outbox};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum OutboxCommand {
    /// Events waiting, failing and parked; exits 1 if any event is parked.
    Status,
    /// Parked events, oldest first, with their attempts and last error.
    Parked {
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
    },
    /// Put parked events back in line with a fresh attempt count.
    Retry {
        /// Outbox ids (from `outbox parked`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<i64>,
        /// Every parked event.
        #[arg(long)]
        all: bool,
    },
}

pub async fn run(db: &DbArgs, command: OutboxCommand) -> anyhow::Result<()> {
    let pool = store::connect(&db.database_url, 2).await?;
    match command {
        OutboxCommand::Status => {
            let s = outbox::stats(&pool).await?;
            println!(
                "waiting:  {} ({} failed at least once)",
                s.pending, s.retrying
            );
            if let Some(age) = s.oldest_pending_secs {
                println!("oldest:   {age:.0}s");
            }
            println!("parked:   {}", s.parked);
            if s.parked > 0 {
                println!(
                    "See them with `invoicer outbox parked`; retry with `invoicer outbox retry`."
                );
                std::process::exit(1);
            }
        }
        OutboxCommand::Parked { limit } => {
            let parked = outbox::parked(&pool, limit).await?;
            if parked.is_empty() {
                println!("No parked events.");
            }
            for p in parked {
                println!(
                    "{:>8}  {}  {}  {} bytes  {} attempts  parked {}\n          {}",
                    p.id,
                    p.subject,
                    p.msg_id,
                    p.payload_bytes,
                    p.attempts,
                    p.parked_at.format("%Y-%m-%d %H:%M:%SZ"),
                    p.last_error.as_deref().unwrap_or("-"),
                );
            }
        }
        OutboxCommand::Retry { ids, all } => {
            let n = outbox::unpark(&pool, if all { None } else { Some(&ids) }).await?;
            println!("{n} parked event(s) back in line.");
        }
    }
    Ok(())
}
