//! `billing.quote`.

use crate::domain::money::Dec;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use std::collections::BTreeMap;

/// A provisioning-time quote request.
#[derive(Deserialize)]
pub struct QuoteRequest {
    pub plan: String,
    #[serde(default)]
    pub addons: Vec<String>,
    #[serde(default)]
    pub usage: BTreeMap<String, Dec>,
    #[serde(default)]
    pub period_start: Option<NaiveDate>,
    #[serde(default)]
    pub active_from: Option<DateTime<Utc>>,
    #[serde(default)]
    pub active_to: Option<DateTime<Utc>>,
    #[serde(default)]
    pub tax_rate: Option<Dec>,
}
