//! The contract's JSON, and the only place it is spelled: request and reply payloads and event
//! bodies (CONTRACT.md sections 5 and 6), parsed into domain values with `TryFrom` at the edge
//! ("parse, don't validate"). Nothing below the adapters sees these types.
//!
//! | module | payloads |
//! |---|---|
//! | [`catalog`] | plans, add-ons, tenants, subscriptions |
//! | [`invoices`] | invoice reads, transitions, previews, documents, the revenue summary |
//! | [`quote`] | `billing.quote` |
//! | [`health`] | `billing.admin.health` |
//! | [`rollup`] | `billing.rollup.requested` |
//! | [`usage`] | `metering.usage.recorded`, `billing.usage.rejected` |

use crate::error::Error;

pub mod catalog;
pub mod health;
pub mod invoices;
pub mod quote;
pub mod rollup;
pub mod usage;

pub use catalog::*;
pub use health::*;
pub use invoices::*;
pub use quote::QuoteRequest;
pub use rollup::RollupRequestDto;
pub use usage::{parse_usage, RejectedUsage, UsageMessage};

/// Parses a JSON payload into a DTO, mapping every failure to `bad_request`.
pub fn parse<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, Error> {
    // Requests are JSON objects; serde would otherwise accept an array in field order.
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Error::bad("invalid payload: expected a JSON object"));
    }
    // The path names the offending field: "period_start: input is out of range".
    let mut de = serde_json::Deserializer::from_slice(payload);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            Error::bad(format!("invalid payload: {inner}"))
        } else {
            Error::bad(format!("invalid payload: {path}: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| Error::bad(format!("invalid payload: {e}")))?;
    Ok(value)
}
