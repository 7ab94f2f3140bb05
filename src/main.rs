//! The `invoicer` binary: CLI parsing and telemetry, then a call into the library. The exit
//! code says how it went (README, "Exit codes").

use clap::Parser;
use invoicer::cli::Cli;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    invoicer::telemetry::init(&cli.log_format, cli.default_log_filter());
    match cli.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(invoicer::cli::exit_code(&e))
        }
    }
}
