//! The view model: every word and figure a tax invoice shows, decided once, as text.
//!
//! Money is formatted from integer cents by [`format_cents`]; prices and quantities from their
//! exact decimals. Nothing here rounds, and nothing here touches a float.

use super::{Recipient, Seller};
use crate::domain::invoice::{Invoice, Line, LineKind, Status};
use crate::domain::money::format_cents;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

/// From this total (including GST) up, the ATO requires the recipient's ABN on the invoice.
pub const ABN_THRESHOLD_CENTS: i64 = 100_000;
/// What a draft says about itself, as title and watermark.
pub const DRAFT_MARK: &str = "Draft \u{2014} not a tax invoice";
const TAX_INVOICE: &str = "Tax invoice";

/// Another invoice this one points at (`superseded_by`, `supersedes`), with its number if issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelatedInvoice {
    pub id: Uuid,
    pub number: Option<String>,
}

/// The invoices this one replaces or was replaced by, as loaded by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Related {
    pub replaced_by: Option<RelatedInvoice>,
    pub replaces: Option<RelatedInvoice>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// Not a tax invoice (yet).
    Draft,
    /// No longer a valid tax invoice.
    Void,
    /// For the reader's records: payment, replacement of an earlier invoice.
    Info,
}

/// A prominent statement above the invoice body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub kind: NoticeKind,
    pub headline: String,
    pub detail: Option<String>,
}

/// The supplier or the recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartyView {
    pub heading: &'static str,
    pub name: String,
    /// Grouped as the ATO prints it (`51 824 753 556`).
    pub abn: Option<String>,
    /// The same ABN as 11 bare digits, for machine readers.
    pub abn_digits: Option<String>,
    /// Said instead of an ABN that the invoice should show but the tenant has not given.
    pub abn_note: Option<&'static str>,
    pub address_lines: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineView {
    pub description: String,
    pub quantity: String,
    pub unit_price: String,
    pub taxable: bool,
    /// `Taxable` or `GST-free` (with the tenant's tax label).
    pub tax_status: String,
    pub amount: String,
}

/// The lines of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineGroup {
    pub heading: String,
    pub lines: Vec<LineView>,
    pub subtotal: String,
}

/// Everything a tax invoice document shows, in reading order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaxInvoiceView {
    /// `Tax invoice`, or for a draft [`DRAFT_MARK`].
    pub title: &'static str,
    /// For the HTML `<title>` and the PDF's metadata.
    pub document_title: String,
    /// Set diagonally across every page: drafts and void invoices.
    pub watermark: Option<&'static str>,
    pub notices: Vec<Notice>,
    pub seller: PartyView,
    pub recipient: PartyView,
    /// Invoice number, issue date, period and the like, as (label, value).
    pub facts: Vec<(&'static str, String)>,
    pub currency: String,
    pub groups: Vec<LineGroup>,
    pub subtotal: String,
    /// The tax line's description, e.g. `GST 10%`.
    pub tax_label: String,
    pub tax: String,
    pub total_label: String,
    pub total: String,
    /// Which lines bear the tax, in words.
    pub tax_note: String,
    pub total_cents: i64,
}

impl TaxInvoiceView {
    /// The document for `invoice` (loaded with its lines) issued by `seller` to `recipient`.
    pub fn build(
        invoice: &Invoice,
        seller: &Seller,
        recipient: &Recipient,
        related: &Related,
    ) -> Result<Self, super::DocumentError> {
        let lines = invoice
            .lines
            .as_deref()
            .ok_or(super::DocumentError::NoLines(invoice.id))?;
        let currency = invoice.currency.as_str();
        let tax_line = lines.iter().find(|l| l.line.kind == LineKind::Tax);
        let tax_label = tax_line.map_or_else(|| "GST".to_string(), |l| l.line.description.clone());
        // "GST 10%" names the tax "GST"; a tenant taxed as "VAT" reads VAT throughout.
        let tax_name = tax_label
            .split_whitespace()
            .next()
            .unwrap_or("GST")
            .to_string();
        let taxed = tax_line
            .and_then(|l| l.line.unit_price)
            .is_some_and(|rate| rate > Decimal::ZERO);
        let groups = group_lines(lines, currency, taxed, &tax_name);
        let tax_note = if taxed {
            format!("{tax_label} is charged on the lines marked Taxable.")
        } else {
            format!("No {tax_name} is charged: every line on this invoice is {tax_name}-free.")
        };

        let draft = invoice.status == Status::Draft;
        let title = if draft { DRAFT_MARK } else { TAX_INVOICE };
        let recipient_name = recipient.name.clone();
        let document_title = match &invoice.number {
            Some(n) => format!("{title} {n} \u{2014} {recipient_name}"),
            None => format!("{title} \u{2014} {recipient_name}"),
        };

        let needs_abn = invoice.total_cents >= ABN_THRESHOLD_CENTS;
        let recipient_abn = recipient.abn.as_ref().filter(|_| needs_abn);
        let recipient = PartyView {
            heading: "Recipient",
            name: recipient_name,
            abn: recipient_abn.map(|a| a.grouped()),
            abn_digits: recipient_abn.map(|a| a.digits().to_string()),
            abn_note: (needs_abn && recipient.abn.is_none()).then_some("ABN not provided"),
            address_lines: address_lines(recipient.address.as_deref()),
        };
        let seller = PartyView {
            heading: "Supplier",
            name: seller.name.clone(),
            abn: Some(seller.abn.grouped()),
            abn_digits: Some(seller.abn.digits().to_string()),
            abn_note: None,
            address_lines: address_lines(seller.address.as_deref()),
        };

        let not_issued = "Not issued (draft)".to_string();
        let facts = vec![
            (
                "Invoice number",
                invoice.number.clone().unwrap_or_else(|| not_issued.clone()),
            ),
            (
                "Issue date",
                invoice.issued_at.map(date_text).unwrap_or(not_issued),
            ),
            (
                "Billing period",
                period_text(invoice.period_start, invoice.period_end),
            ),
            ("Account", invoice.tenant_id.clone()),
            ("Currency", currency.to_string()),
            ("Status", status_text(invoice.status).to_string()),
        ];

        Ok(TaxInvoiceView {
            title,
            document_title,
            watermark: match invoice.status {
                Status::Draft => Some(DRAFT_MARK),
                Status::Void => Some("VOID"),
                Status::Issued | Status::Paid => None,
            },
            notices: notices(invoice, related),
            seller,
            recipient,
            facts,
            currency: currency.to_string(),
            groups,
            subtotal: money(invoice.subtotal_cents, currency),
            tax_label,
            tax: money(invoice.tax_cents, currency),
            total_label: format!("Total including {tax_name}"),
            total: money(invoice.total_cents, currency),
            tax_note,
            total_cents: invoice.total_cents,
        })
    }
}

/// Non-tax lines grouped by deployment, each group in the order its first line appears.
fn group_lines(lines: &[Line], currency: &str, taxed: bool, tax_name: &str) -> Vec<LineGroup> {
    let mut groups: Vec<(Option<Uuid>, Vec<&Line>)> = Vec::new();
    for l in lines.iter().filter(|l| l.line.kind != LineKind::Tax) {
        let dep = l.line.deployment_id;
        match groups.iter_mut().find(|(d, _)| *d == dep) {
            Some((_, ls)) => ls.push(l),
            None => groups.push((dep, vec![l])),
        }
    }
    groups
        .into_iter()
        .map(|(dep, ls)| LineGroup {
            heading: dep.map_or_else(
                || "Other charges".to_string(),
                |d| format!("Deployment {d}"),
            ),
            subtotal: money(ls.iter().map(|l| l.line.amount_cents).sum(), currency),
            lines: ls
                .into_iter()
                .map(|l| LineView {
                    description: l.line.description.clone(),
                    quantity: crate::domain::money::quantity_text(l.line.quantity),
                    unit_price: l
                        .line
                        .unit_price
                        .map_or_else(|| "tiered".to_string(), |p| price(p, currency)),
                    taxable: taxed,
                    tax_status: if taxed {
                        "Taxable".to_string()
                    } else {
                        format!("{tax_name}-free")
                    },
                    amount: money(l.line.amount_cents, currency),
                })
                .collect(),
        })
        .collect()
}

fn notices(invoice: &Invoice, related: &Related) -> Vec<Notice> {
    let mut out = Vec::new();
    let number_of = |r: &RelatedInvoice| {
        r.number.as_ref().map_or_else(
            || format!("draft invoice {}", r.id),
            |n| format!("tax invoice {n}"),
        )
    };
    match invoice.status {
        Status::Draft => out.push(Notice {
            kind: NoticeKind::Draft,
            headline: DRAFT_MARK.to_string(),
            detail: Some(
                "These are the charges so far. A draft has no invoice number and cannot be \
                 used to claim GST credits; the tax invoice follows when it is issued."
                    .to_string(),
            ),
        }),
        Status::Void => {
            let when = invoice
                .voided_at
                .map(|at| format!("Voided on {}", date_text(at)))
                .unwrap_or_else(|| "Voided".to_string());
            let reason = invoice
                .void_reason
                .as_deref()
                .filter(|r| *r != "superseded")
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            let notice = match &related.replaced_by {
                Some(r) => Notice {
                    kind: NoticeKind::Void,
                    headline: format!("VOID \u{2014} superseded by {}", number_of(r)),
                    detail: Some(format!(
                        "{when}{reason}. This invoice is no longer valid; {} replaces it. \
                         Keep this copy for your records only.",
                        number_of(r)
                    )),
                },
                None if invoice.number.is_some() => Notice {
                    kind: NoticeKind::Void,
                    headline: "VOID \u{2014} this tax invoice has been cancelled".to_string(),
                    detail: Some(format!("{when}{reason}. It is no longer valid.")),
                },
                None => Notice {
                    kind: NoticeKind::Void,
                    headline: "VOID \u{2014} this draft was cancelled".to_string(),
                    detail: Some(format!("{when}{reason}. It was never issued.")),
                },
            };
            out.push(notice);
        }
        Status::Issued | Status::Paid => {}
    }
    if let Some(r) = &related.replaces {
        out.push(Notice {
            kind: NoticeKind::Info,
            headline: format!("Replaces {}, which is void", number_of(r)),
            detail: None,
        });
    }
    if let (Status::Paid, Some(at)) = (invoice.status, invoice.paid_at) {
        out.push(Notice {
            kind: NoticeKind::Info,
            headline: format!("Paid on {}", date_text(at)),
            detail: None,
        });
    }
    out
}

fn status_text(s: Status) -> &'static str {
    match s {
        Status::Draft => "Draft",
        Status::Issued => "Issued",
        Status::Paid => "Paid",
        Status::Void => "Void",
    }
}

fn address_lines(address: Option<&str>) -> Vec<String> {
    address
        .map(|a| a.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// `1 May 2026` (UTC, like every timestamp of the contract).
fn date_text(at: DateTime<Utc>) -> String {
    day_text(at.date_naive())
}

fn day_text(d: NaiveDate) -> String {
    d.format("%-d %B %Y").to_string()
}

/// The half-open period as the inclusive days a reader expects: `1 April 2026 to 30 April 2026`.
fn period_text(start: NaiveDate, end: NaiveDate) -> String {
    match end.pred_opt().filter(|last| *last > start) {
        Some(last) => format!("{} to {}", day_text(start), day_text(last)),
        None => day_text(start),
    }
}

/// The sign of the currency, where it has a well-known one; else its code.
fn symbol(currency: &str) -> String {
    match currency {
        "AUD" | "NZD" | "USD" | "CAD" | "SGD" | "HKD" | "FJD" => "$".to_string(),
        "EUR" => "\u{20ac}".to_string(),
        "GBP" => "\u{a3}".to_string(),
        other => format!("{other} "),
    }
}

/// `$64.22`, `-$0.05`: from integer cents through [`format_cents`], never a float.
pub(crate) fn money(cents: i64, currency: &str) -> String {
    let text = format_cents(cents);
    match text.strip_prefix('-') {
        Some(abs) => format!("-{}{abs}", symbol(currency)),
        None => format!("{}{text}", symbol(currency)),
    }
}

/// A unit price, exact: at least two decimals, and as many more as a sub-cent price has
/// (`$50.00`, `$0.01`, `$0.0035`).
fn price(p: Decimal, currency: &str) -> String {
    let mut p = p.normalize();
    if p.scale() < 2 {
        // Raising the scale only appends zeros: exact.
        p.rescale(2);
    }
    match p.to_string().strip_prefix('-') {
        Some(abs) => format!("-{}{abs}", symbol(currency)),
        None => format!("{}{p}", symbol(currency)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::abn::Abn;
    use crate::domain::invoice::QuoteLine;

    pub(crate) const DEPLOYMENT: Uuid = Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0001);

    pub(crate) fn seller() -> Seller {
        Seller::new(
            "Droplet Cloud Pty Ltd",
            "51 824 753 556",
            Some("1 Example Street\nSydney NSW 2000"),
        )
        .unwrap()
    }

    pub(crate) fn pilot() -> Recipient {
        Recipient {
            name: "Pilot Pty Ltd".into(),
            abn: Some(Abn::parse("33 051 775 556").unwrap()),
            address: Some("9 Test Road\nMelbourne VIC 3000".into()),
        }
    }

    fn line(
        kind: LineKind,
        dep: Option<Uuid>,
        desc: &str,
        qty: &str,
        price: Option<&str>,
        cents: i64,
    ) -> Line {
        Line {
            id: Uuid::new_v4(),
            line: QuoteLine {
                kind,
                deployment_id: dep,
                resource_kind: None,
                description: desc.into(),
                quantity: qty.parse().unwrap(),
                unit_price: price.map(|p| p.parse().unwrap()),
                amount_cents: cents,
            },
        }
    }

    /// The seed scenario's invoice (CONTRACT.md 9), issued.
    pub(crate) fn seed_invoice() -> Invoice {
        let d = Some(DEPLOYMENT);
        Invoice {
            id: Uuid::from_u128(42),
            number: Some("INV-000001".into()),
            tenant_id: "pilot".into(),
            period_start: "2026-04-01".parse().unwrap(),
            period_end: "2026-05-01".parse().unwrap(),
            currency: "AUD".into(),
            status: Status::Issued,
            subtotal_cents: 6422,
            tax_cents: 642,
            total_cents: 7064,
            issued_at: Some("2026-05-01T03:00:04Z".parse().unwrap()),
            paid_at: None,
            voided_at: None,
            void_reason: None,
            supersedes: None,
            superseded_by: None,
            parties: None,
            finalizes_at: None,
            lines: Some(vec![
                line(
                    LineKind::PlanBase,
                    d,
                    "Plan: Studio",
                    "1",
                    Some("50.00"),
                    5000,
                ),
                line(
                    LineKind::Addon,
                    d,
                    "Addon: storage_50gb",
                    "1",
                    Some("7.50"),
                    750,
                ),
                line(
                    LineKind::Overage,
                    d,
                    "Overage: droplet_hours (672 × $0.01)",
                    "672",
                    Some("0.01"),
                    672,
                ),
                line(LineKind::Tax, None, "GST 10%", "64.22", Some("0.10"), 642),
            ]),
        }
    }

    /// The seed invoice scaled so its total is `total_cents` (plan base absorbs the change).
    pub(crate) fn invoice_with_total(total_cents: i64) -> Invoice {
        let mut inv = seed_invoice();
        // subtotal + round(10% of subtotal) = total; search the subtotal that gives it.
        let subtotal = (0..=total_cents)
            .rev()
            .find(|s| s + (s + 5) / 10 == total_cents)
            .expect("a subtotal for the total");
        let tax = total_cents - subtotal;
        let lines = inv.lines.as_mut().unwrap();
        lines[0].line.amount_cents = subtotal - 750 - 672;
        lines[3].line.amount_cents = tax;
        inv.subtotal_cents = subtotal;
        inv.tax_cents = tax;
        inv.total_cents = total_cents;
        inv
    }

    fn view(inv: &Invoice, related: &Related) -> TaxInvoiceView {
        TaxInvoiceView::build(inv, &seller(), &pilot(), related).unwrap()
    }

    #[test]
    fn seed_invoice_has_every_ato_field() {
        let v = view(&seed_invoice(), &Related::default());
        assert_eq!(v.title, "Tax invoice");
        assert_eq!(v.watermark, None);
        assert!(v.notices.is_empty(), "{:?}", v.notices);
        assert_eq!(v.seller.name, "Droplet Cloud Pty Ltd");
        assert_eq!(v.seller.abn.as_deref(), Some("51 824 753 556"));
        assert_eq!(
            v.seller.address_lines,
            ["1 Example Street", "Sydney NSW 2000"]
        );
        assert_eq!(v.recipient.name, "Pilot Pty Ltd");
        let fact = |label: &str| v.facts.iter().find(|(l, _)| *l == label).unwrap().1.clone();
        assert_eq!(fact("Invoice number"), "INV-000001");
        assert_eq!(fact("Issue date"), "1 May 2026");
        assert_eq!(fact("Billing period"), "1 April 2026 to 30 April 2026");
        assert_eq!(fact("Currency"), "AUD");
        assert_eq!(v.groups.len(), 1);
        let g = &v.groups[0];
        assert_eq!(g.heading, format!("Deployment {DEPLOYMENT}"));
        let rows: Vec<_> = g
            .lines
            .iter()
            .map(|l| {
                (
                    l.description.as_str(),
                    l.quantity.as_str(),
                    l.unit_price.as_str(),
                    l.tax_status.as_str(),
                    l.amount.as_str(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("Plan: Studio", "1", "$50.00", "Taxable", "$50.00"),
                ("Addon: storage_50gb", "1", "$7.50", "Taxable", "$7.50"),
                (
                    "Overage: droplet_hours (672 × $0.01)",
                    "672",
                    "$0.01",
                    "Taxable",
                    "$6.72"
                ),
            ]
        );
        assert_eq!(g.subtotal, "$64.22");
        assert_eq!(
            (
                v.subtotal.as_str(),
                v.tax_label.as_str(),
                v.tax.as_str(),
                v.total.as_str()
            ),
            ("$64.22", "GST 10%", "$6.42", "$70.64")
        );
        assert_eq!(v.total_label, "Total including GST");
    }

    #[test]
    fn recipient_abn_from_one_thousand_dollars() {
        let below = view(&invoice_with_total(99_999), &Related::default());
        assert_eq!(below.total, "$999.99");
        assert_eq!(
            (below.recipient.abn.clone(), below.recipient.abn_note),
            (None, None)
        );
        let at = view(&invoice_with_total(100_000), &Related::default());
        assert_eq!(at.total, "$1000.00");
        assert_eq!(at.recipient.abn.as_deref(), Some("33 051 775 556"));
        assert_eq!(at.recipient.abn_digits.as_deref(), Some("33051775556"));
        // Required but unknown: said so, rather than silently left out.
        let no_abn = Recipient {
            abn: None,
            ..pilot()
        };
        let v = TaxInvoiceView::build(
            &invoice_with_total(250_000),
            &seller(),
            &no_abn,
            &Related::default(),
        )
        .unwrap();
        assert_eq!(
            (v.recipient.abn, v.recipient.abn_note),
            (None, Some("ABN not provided"))
        );
    }

    #[test]
    fn recipient_without_legal_name_is_its_account() {
        let v = TaxInvoiceView::build(
            &seed_invoice(),
            &seller(),
            &Recipient::of("pilot", &crate::domain::catalog::LegalDetails::default()),
            &Related::default(),
        )
        .unwrap();
        assert_eq!(v.recipient.name, "pilot");
        assert!(v.recipient.address_lines.is_empty());
    }

    #[test]
    fn draft_is_marked_and_has_no_number() {
        let mut inv = seed_invoice();
        inv.status = Status::Draft;
        inv.number = None;
        inv.issued_at = None;
        let v = view(&inv, &Related::default());
        assert_eq!(v.title, "Draft — not a tax invoice");
        assert_eq!(v.watermark, Some("Draft — not a tax invoice"));
        assert_eq!(v.notices[0].kind, NoticeKind::Draft);
        assert_eq!(
            v.facts[0],
            ("Invoice number", "Not issued (draft)".to_string())
        );
    }

    #[test]
    fn superseded_invoice_names_its_replacement() {
        let mut inv = seed_invoice();
        inv.status = Status::Void;
        inv.voided_at = Some("2026-05-03T10:00:00Z".parse().unwrap());
        inv.void_reason = Some("superseded".into());
        let replacement = Uuid::from_u128(43);
        inv.superseded_by = Some(replacement);
        let related = Related {
            replaced_by: Some(RelatedInvoice {
                id: replacement,
                number: Some("INV-000002".into()),
            }),
            replaces: None,
        };
        let v = view(&inv, &related);
        assert_eq!(v.title, "Tax invoice");
        assert_eq!(v.watermark, Some("VOID"));
        assert_eq!(v.notices[0].kind, NoticeKind::Void);
        assert_eq!(
            v.notices[0].headline,
            "VOID — superseded by tax invoice INV-000002"
        );
        assert!(v.notices[0]
            .detail
            .as_deref()
            .unwrap()
            .starts_with("Voided on 3 May 2026."));

        // And the replacement says what it replaces.
        let mut new = seed_invoice();
        new.number = Some("INV-000002".into());
        new.supersedes = Some(inv.id);
        let related = Related {
            replaced_by: None,
            replaces: Some(RelatedInvoice {
                id: inv.id,
                number: Some("INV-000001".into()),
            }),
        };
        let v = view(&new, &related);
        assert_eq!(
            v.notices[0].headline,
            "Replaces tax invoice INV-000001, which is void"
        );
    }

    #[test]
    fn voided_by_admin_gives_date_and_reason() {
        let mut inv = seed_invoice();
        inv.status = Status::Void;
        inv.voided_at = Some("2026-05-03T10:00:00Z".parse().unwrap());
        inv.void_reason = Some("duplicate account".into());
        let v = view(&inv, &Related::default());
        assert_eq!(
            v.notices[0].headline,
            "VOID — this tax invoice has been cancelled"
        );
        assert_eq!(
            v.notices[0].detail.as_deref(),
            Some("Voided on 3 May 2026: duplicate account. It is no longer valid.")
        );
    }

    #[test]
    fn paid_invoice_says_when() {
        let mut inv = seed_invoice();
        inv.status = Status::Paid;
        inv.paid_at = Some("2026-05-10T08:00:00Z".parse().unwrap());
        let v = view(&inv, &Related::default());
        assert_eq!((v.title, v.watermark), ("Tax invoice", None));
        assert_eq!(v.notices.len(), 1);
        assert_eq!(
            (v.notices[0].kind, v.notices[0].headline.as_str()),
            (NoticeKind::Info, "Paid on 10 May 2026")
        );
    }

    #[test]
    fn tax_exempt_lines_are_gst_free() {
        let mut inv = seed_invoice();
        inv.lines.as_mut().unwrap().pop();
        inv.tax_cents = 0;
        inv.total_cents = inv.subtotal_cents;
        let v = view(&inv, &Related::default());
        assert!(v.groups[0]
            .lines
            .iter()
            .all(|l| !l.taxable && l.tax_status == "GST-free"));
        assert_eq!((v.tax_label.as_str(), v.tax.as_str()), ("GST", "$0.00"));
        assert!(v.tax_note.contains("GST-free"), "{}", v.tax_note);
    }

    #[test]
    fn lines_group_by_deployment_in_order() {
        let mut inv = seed_invoice();
        let other = Uuid::from_u128(7);
        let lines = inv.lines.as_mut().unwrap();
        lines.insert(
            1,
            line(
                LineKind::PlanBase,
                Some(other),
                "Plan: Basic",
                "1",
                Some("20"),
                2000,
            ),
        );
        lines.insert(
            2,
            line(
                LineKind::Overage,
                Some(other),
                "Overage: gb_hours (1000 × $0.01 + 500 × $0.008)",
                "1500",
                None,
                1400,
            ),
        );
        let v = view(&inv, &Related::default());
        let headings: Vec<_> = v.groups.iter().map(|g| g.heading.clone()).collect();
        assert_eq!(
            headings,
            [
                format!("Deployment {DEPLOYMENT}"),
                format!("Deployment {other}")
            ]
        );
        assert_eq!(v.groups[1].subtotal, "$34.00");
        assert_eq!(v.groups[1].lines[0].unit_price, "$20.00");
        assert_eq!(v.groups[1].lines[1].unit_price, "tiered");
    }

    #[test]
    fn quantities_are_printed_as_stored_with_at_most_six_decimals() {
        let mut inv = seed_invoice();
        let lines = inv.lines.as_mut().unwrap();
        lines[2].line.quantity = "566.666667".parse().unwrap();
        // A line stored before quantities were fixed to 6 decimals.
        lines[1].line.quantity = "0.5666666666666666666666666667".parse().unwrap();
        let v = view(&inv, &Related::default());
        let qty: Vec<_> = v.groups[0]
            .lines
            .iter()
            .map(|l| l.quantity.as_str())
            .collect();
        assert_eq!(qty, ["1", "0.566667", "566.666667"]);
    }

    #[test]
    fn money_and_prices_are_exact_text() {
        assert_eq!(money(7064, "AUD"), "$70.64");
        assert_eq!(money(-5, "AUD"), "-$0.05");
        assert_eq!(money(123_456_789, "EUR"), "€1234567.89");
        assert_eq!(money(100, "JPY"), "JPY 1.00");
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(price(d("0.0035"), "AUD"), "$0.0035");
        assert_eq!(price(d("0.0100"), "AUD"), "$0.01");
        assert_eq!(price(d("50"), "AUD"), "$50.00");
        assert_eq!(
            period_text("2026-04-01".parse().unwrap(), "2026-04-02".parse().unwrap()),
            "1 April 2026"
        );
    }
}
