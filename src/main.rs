//! The `invoicer` binary: CLI parsing and telemetry, then a call into the library.

use clap::Parser;
use invoicer::cli::Cli;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    invoicer::telemetry::init(&cli.log_format);
    cli.run().await
}
