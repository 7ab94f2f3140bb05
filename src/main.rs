//! The `invoicer` binary: CLI parsing and telemetry, then a call into the library. The exit
//! code says how it went (README, "Exit codes").

use clap::CommandFactory;
use invoicer::cli::Cli;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse_checked();
    if let Err(message) = invoicer::telemetry::init(cli.log_format, cli.default_log_filter()) {
        Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, message)
            .exit();
    }
    match cli.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(invoicer::cli::exit_code(&e))
        }
    }
}
