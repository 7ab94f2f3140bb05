//! The `invoicer` binary: CLI parsing and telemetry, then a call into the library.

use clap::CommandFactory;
use invoicer::cli::Cli;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse_checked();
    if let Err(message) = invoicer::telemetry::init(cli.log_format) {
        Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, message)
            .exit();
    }
    cli.run().await
}
