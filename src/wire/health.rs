//! `billing.admin.health` (a project extension): a replica's readiness and its reasons.

use serde::{Deserialize, Serialize};

/// It takes no fields: `{}` asks.
#[derive(Deserialize)]
pub struct HealthRequest {}

#[derive(Serialize)]
pub struct Health {
    pub ready: bool,
    pub version: &'static str,
    pub checks: Vec<HealthCheck>,
    pub outbox_backlog: Option<i64>,
    pub outbox_oldest_pending_seconds: Option<i64>,
    /// Requests this replica refused to act on: their reply subject was not the asker's inbox.
    pub requests_refused: u64,
    /// Which database this worker bills into (`invoicer demo` checks it is its own).
    pub database: Option<String>,
}

/// One readiness check.
#[derive(Serialize)]
pub struct HealthCheck {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}
