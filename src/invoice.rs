//! Invoices, their lines and the status machine.
//!
//! The serialised form of [`Invoice`] is the contract's invoice payload (CONTRACT.md section 5),
//! used both for replies and for `billing.invoice.*` events.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Draft,
    Issued,
    Paid,
    Void,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Issued => "issued",
            Status::Paid => "paid",
            Status::Void => "void",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "draft" => Status::Draft,
            "issued" => Status::Issued,
            "paid" => Status::Paid,
            "void" => Status::Void,
            _ => return None,
        })
    }

    /// `draft → issued → paid`, `draft|issued → void`; `paid` and `void` are final.
    pub fn can_become(self, next: Status) -> bool {
        matches!(
            (self, next),
            (Status::Draft, Status::Issued)
                | (Status::Issued, Status::Paid)
                | (Status::Draft, Status::Void)
                | (Status::Issued, Status::Void)
        )
    }

    /// The event subject announcing that an invoice reached this status, if any.
    pub fn event_subject(self) -> Option<&'static str> {
        match self {
            Status::Draft => None,
            Status::Issued => Some("billing.invoice.issued"),
            Status::Paid => Some("billing.invoice.paid"),
            Status::Void => Some("billing.invoice.voided"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    PlanBase,
    Addon,
    Overage,
    Tax,
}

impl LineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::PlanBase => "plan_base",
            LineKind::Addon => "addon",
            LineKind::Overage => "overage",
            LineKind::Tax => "tax",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "plan_base" => LineKind::PlanBase,
            "addon" => LineKind::Addon,
            "overage" => LineKind::Overage,
            "tax" => LineKind::Tax,
            _ => return None,
        })
    }
}

/// A priced line as the quote engine produces it (no identity yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuoteLine {
    pub kind: LineKind,
    pub deployment_id: Option<Uuid>,
    pub resource_kind: Option<String>,
    pub description: String,
    #[serde(with = "crate::money::decimal_str")]
    pub quantity: Decimal,
    /// `None` for graduated tiers, where no single unit price produces the amount.
    #[serde(with = "crate::money::opt_decimal_str")]
    pub unit_price: Option<Decimal>,
    pub amount_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    pub id: Uuid,
    #[serde(flatten)]
    pub line: QuoteLine,
}

/// Formats an invoice number: `INV-000123`.
pub fn format_number(n: i64) -> String {
    format!("INV-{n:06}")
}

/// Puts `number` into an invoice serialised without one. `"number":null` first occurs as the
/// invoice's own field (it follows `id`); strings inside cannot contain it unescaped.
pub fn with_number(payload: &str, number: &str) -> String {
    payload.replacen("\"number\":null", &format!("\"number\":\"{number}\""), 1)
}

/// The sequence number inside `INV-000123`.
pub fn parse_number(number: &str) -> Option<i64> {
    number.strip_prefix("INV-")?.parse().ok()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invoice {
    pub id: Uuid,
    pub number: Option<String>,
    pub tenant_id: String,
    pub period_start: NaiveDate,
    pub period_end: NaiveDate,
    pub currency: String,
    pub status: Status,
    pub subtotal_cents: i64,
    pub tax_cents: i64,
    pub total_cents: i64,
    pub issued_at: Option<DateTime<Utc>>,
    /// When an open grace-window draft is issued (CONTRACT.md section 5a); `None` otherwise.
    pub finalizes_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub voided_at: Option<DateTime<Utc>>,
    pub void_reason: Option<String>,
    pub supersedes: Option<Uuid>,
    pub superseded_by: Option<Uuid>,
    /// Who its document is from and to, recorded when it was issued (CONTRACT.md 5b); `None`
    /// for a draft, and for an invoice issued before parties were recorded. Not in the
    /// contract's invoice JSON.
    #[serde(skip)]
    pub parties: Option<crate::document::Parties>,
    /// Absent in list replies, which carry invoices without lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<Line>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_machine() {
        use Status::*;
        let all = [Draft, Issued, Paid, Void];
        let allowed = [
            (Draft, Issued),
            (Issued, Paid),
            (Draft, Void),
            (Issued, Void),
        ];
        for from in all {
            for to in all {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
        for s in all {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn numbers_are_zero_padded() {
        assert_eq!(format_number(123), "INV-000123");
        assert_eq!(format_number(1_234_567), "INV-1234567");
        assert_eq!(parse_number(&format_number(123)), Some(123));
        assert_eq!(parse_number("123"), None);
    }
}
