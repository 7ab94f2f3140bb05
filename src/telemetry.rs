//! Logging: `RUST_LOG` filters (default `info`), `LOG_FORMAT=json|text` picks the format.

use crate::config::LogFormat;
use tracing_subscriber::{fmt, EnvFilter};

const DEFAULT_FILTER: &str = "info,sqlx=warn,async_nats=warn";

/// Installs the subscriber. A `RUST_LOG` that does not parse is an error, not a silent
/// fallback to the default.
pub fn init(format: LogFormat) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => {
            EnvFilter::try_new(&spec).map_err(|e| format!("RUST_LOG={spec:?}: {e}"))?
        }
        _ => EnvFilter::new(DEFAULT_FILTER),
    };
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
    Ok(())
}
