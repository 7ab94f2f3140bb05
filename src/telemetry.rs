//! Logging: `RUST_LOG` filters, `LOG_FORMAT=json|text` picks the format.
//!
//! Without `RUST_LOG` the filter depends on the command: the long-running processes (`run`,
//! `scheduler`, `migrate`) log at info, the commands people type log only warnings, so their
//! output is not interleaved with connection chatter or an in-process worker's progress.

use crate::config::LogFormat;
use tracing_subscriber::{fmt, EnvFilter};

/// The filter for long-running processes.
pub const SERVICE_FILTER: &str = "info,sqlx=warn,async_nats=warn";
/// The filter for commands whose output is for a person.
pub const QUIET_FILTER: &str = "warn";

/// Installs the subscriber. A `RUST_LOG` that does not parse is an error, not a silent
/// fallback to the default.
pub fn init(format: LogFormat, default_filter: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => {
            EnvFilter::try_new(&spec).map_err(|e| format!("RUST_LOG={spec:?}: {e}"))?
        }
        _ => EnvFilter::new(default_filter),
    };
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
    Ok(())
}
