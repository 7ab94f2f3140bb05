//! What a rollup is asked to bill: a validated `billing.rollup.requested`.

use super::catalog::TenantId;
use super::period::Period;

/// A validated rollup request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupRequest {
    pub period: Period,
    pub force: bool,
    pub tenant_ids: Option<Vec<TenantId>>,
    pub draft: bool,
    pub request_id: Option<String>,
}
