//! Metered usage: one validated record of a deployment's consumption.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

/// A validated metering record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    pub event_id: Uuid,
    pub deployment_id: Uuid,
    pub resource_kind: String,
    pub quantity: Decimal,
    pub occurred_at: DateTime<Utc>,
}
