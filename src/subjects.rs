//! The contract's subjects that more than one layer names (CONTRACT.md section 6): the rollup
//! writes its completed event through the outbox, the bus consumes and publishes, the CLI and
//! the benchmark subscribe. A leaf module, so none of them imports another for a string.

pub const ROLLUP_REQUESTED: &str = "billing.rollup.requested";
pub const ROLLUP_COMPLETED: &str = "billing.rollup.completed";
pub const ROLLUP_REJECTED: &str = "billing.rollup.rejected";
/// Core NATS (not stored): one message per committed rollup batch, for `rollup --wait`.
pub const ROLLUP_PROGRESS: &str = "billing.rollup.progress";
pub const USAGE_RECORDED: &str = "metering.usage.recorded";
pub const USAGE_LATE: &str = "billing.usage.late";
/// `{"reason", "record"}`: a usage record refused at the edge (CONTRACT.md section 8).
pub const USAGE_REJECTED: &str = "billing.usage.rejected";
