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

/// A payment time outside what `mark_paid` accepts (CONTRACT.md section 5, v3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaidAtError {
    #[error("paid_at {paid_at} precedes the invoice's issued_at {issued_at}")]
    BeforeIssue { paid_at: String, issued_at: String },
    #[error("paid_at {paid_at} is in the future (it may be at most now, {now})")]
    Future { paid_at: String, now: String },
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// An invoice is paid after it was issued and no later than now: a payment recorded before
/// its issue or in the future would be printed on the tax invoice as a fact.
pub fn check_paid_at(
    paid_at: DateTime<Utc>,
    issued_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), PaidAtError> {
    if paid_at > now {
        return Err(PaidAtError::Future {
            paid_at: rfc3339(paid_at),
            now: rfc3339(now),
        });
    }
    match issued_at {
        Some(issued_at) if paid_at < issued_at => Err(PaidAtError::BeforeIssue {
            paid_at: rfc3339(paid_at),
            issued_at: rfc3339(issued_at),
        }),
        _ => Ok(()),
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
    #[serde(with = "crate::domain::money::decimal_str")]
    pub quantity: Decimal,
    /// `None` for graduated tiers, where no single unit price produces the amount.
    #[serde(with = "crate::domain::money::opt_decimal_str")]
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
    pub parties: Option<crate::domain::document::Parties>,
    /// Absent in list replies, which carry invoices without lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<Line>>,
}

/// The period's issued and paid amounts (tax excluded) of one deployment (`None`: tenant-level
/// lines) in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeploymentRevenue {
    pub deployment_id: Option<Uuid>,
    pub currency: String,
    pub amount_cents: i64,
}

/// The period's issued and paid amounts of one line kind and resource kind in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KindRevenue {
    pub kind: String,
    pub resource_kind: Option<String>,
    pub currency: String,
    pub amount_cents: i64,
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
    fn paid_at_lies_between_issue_and_now() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let issued = Some(t("2026-05-01T03:00:04Z"));
        let now = t("2026-05-20T10:00:00Z");
        for ok in [
            "2026-05-01T03:00:04Z",
            "2026-05-10T09:30:00Z",
            "2026-05-20T10:00:00Z",
        ] {
            assert_eq!(check_paid_at(t(ok), issued, now), Ok(()), "{ok}");
        }
        assert_eq!(
            check_paid_at(t("2001-01-01T00:00:00Z"), issued, now)
                .unwrap_err()
                .to_string(),
            "paid_at 2001-01-01T00:00:00Z precedes the invoice's issued_at 2026-05-01T03:00:04Z"
        );
        assert_eq!(
            check_paid_at(t("2026-05-20T10:00:01Z"), issued, now)
                .unwrap_err()
                .to_string(),
            "paid_at 2026-05-20T10:00:01Z is in the future (it may be at most now, \
             2026-05-20T10:00:00Z)"
        );
        // A draft has no issue time; whether it may be paid at all is the status machine's.
        assert_eq!(check_paid_at(t("2001-01-01T00:00:00Z"), None, now), Ok(()));
    }

    #[test]
    fn numbers_are_zero_padded() {
        assert_eq!(format_number(123), "INV-000123");
        assert_eq!(format_number(1_234_567), "INV-1234567");
        assert_eq!(parse_number(&format_number(123)), Some(123));
        assert_eq!(parse_number("123"), None);
    }
}
