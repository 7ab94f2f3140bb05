//! Logging: `RUST_LOG` filters, `LOG_FORMAT=json|text` picks the format.
//!
//! Without `RUST_LOG` the filter depends on the command: the long-running processes (`run`,
//! `scheduler`, `migrate`) log at info, the commands people type log only warnings, so their
//! output is not interleaved with connection chatter or an in-process worker's progress.

use tracing_subscriber::{fmt, EnvFilter};

/// The filter for long-running processes.
pub const SERVICE_FILTER: &str = "info,sqlx=warn,async_nats=warn";
/// The filter for commands whose output is for a person.
pub const QUIET_FILTER: &str = "warn";

pub fn init(format: &str, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if format.eq_ignore_ascii_case("json") {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.compact().try_init()
    };
}
