//! Tax invoice documents (CONTRACT.md 5b): what a tenant files and its accountant reads.
//!
//! One pure view model ([`TaxInvoiceView`]) decides everything the document says, from an
//! [`Invoice`](crate::domain::invoice::Invoice), its [`Parties`] (the seller and the recipient, as
//! recorded when it was issued) and the numbers of related invoices. Two renderers lay it out: [`html`] (self-contained, prints on A4) and
//! [`pdf`] (the same content, fonts embedded). Neither decides content, so they cannot
//! disagree about it, and neither does I/O: the caller loads, they render.

pub mod html;
pub mod pdf;
pub(crate) mod view;

pub use view::{
    LineGroup, LineView, Notice, NoticeKind, PartyView, Related, TaxInvoiceView,
    ABN_THRESHOLD_CENTS, DRAFT_MARK,
};

use crate::domain::abn::{Abn, AbnError};
use crate::domain::catalog::{check_address, check_legal_name, CatalogError, LegalDetails};

/// Why a document could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("invoice {0} was loaded without its lines")]
    NoLines(uuid::Uuid),
    #[error("rendering HTML: {0}")]
    Html(#[from] askama::Error),
    #[error("rendering PDF: {0}")]
    Pdf(String),
}

/// Why the seller configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SellerError {
    #[error("SELLER_ABN: {0}")]
    Abn(#[from] AbnError),
    #[error("{0}")]
    Invalid(#[from] CatalogError),
    #[error("{0} is required once any SELLER_* setting is given (tax invoices need the supplier's name and ABN)")]
    Missing(&'static str),
}

/// The supplier on every tax invoice: the platform operator, from the worker's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seller {
    pub name: String,
    pub abn: Abn,
    pub address: Option<String>,
}

impl Seller {
    pub fn new(name: &str, abn: &str, address: Option<&str>) -> Result<Self, SellerError> {
        Ok(Seller {
            name: check_legal_name("SELLER_NAME", name)?,
            abn: Abn::parse(abn)?,
            address: address
                .map(|a| check_address("SELLER_ADDRESS", a))
                .transpose()?,
        })
    }
}

/// The recipient as a document names it: the tenant's legal name (its tenant id when it has
/// none), ABN and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub name: String,
    pub abn: Option<Abn>,
    pub address: Option<String>,
}

impl Recipient {
    pub fn of(tenant_id: &str, legal: &LegalDetails) -> Self {
        Recipient {
            name: legal
                .legal_name
                .clone()
                .unwrap_or_else(|| tenant_id.to_string()),
            abn: legal.abn.clone(),
            address: legal.address.clone(),
        }
    }
}

/// Who a document is from and to. Recorded with an invoice when it is issued (CONTRACT.md 5b):
/// its document shows them for good, whatever the tenant's details or a worker's `SELLER_*`
/// say later. `seller` is `None` when the issuing worker had no supplier configured (documents
/// off). Any document that is issued (an adjustment note too) records the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parties {
    pub seller: Option<Seller>,
    pub recipient: Recipient,
}

impl Parties {
    /// The parties of an issued document that did not record all of them (issued before parties
    /// were recorded, or by a worker without a supplier): what it `recorded`, the rest from who
    /// is in force now. The caller records the result, so that the first document produced is
    /// the one every later render shows.
    pub fn completed(
        recorded: Option<&Parties>,
        seller_now: &Seller,
        recipient_now: Recipient,
    ) -> Self {
        Parties {
            seller: Some(
                recorded
                    .and_then(|r| r.seller.clone())
                    .unwrap_or_else(|| seller_now.clone()),
            ),
            recipient: recorded.map_or(recipient_now, |r| r.recipient.clone()),
        }
    }
}

/// The two document formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Html,
    Pdf,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "html" => Some(Format::Html),
            "pdf" => Some(Format::Pdf),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Html => "html",
            Format::Pdf => "pdf",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Html => "text/html; charset=utf-8",
            Format::Pdf => "application/pdf",
        }
    }
}

/// Renders a document in `format`: UTF-8 HTML or PDF bytes.
pub fn render(view: &TaxInvoiceView, format: Format) -> Result<Vec<u8>, DocumentError> {
    match format {
        Format::Html => html::render(view).map(String::into_bytes),
        Format::Pdf => pdf::render(view),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::document::view::tests::{pilot, seller};

    #[test]
    fn a_recipient_without_a_legal_name_is_named_by_its_tenant_id() {
        let none = Recipient::of("acme", &LegalDetails::default());
        assert_eq!(
            (none.name.as_str(), none.abn, none.address),
            ("acme", None, None)
        );
        let legal = LegalDetails {
            legal_name: Some("Acme Pty Ltd".into()),
            abn: Some(Abn::parse("33 051 775 556").unwrap()),
            address: Some("1 Main St".into()),
        };
        let named = Recipient::of("acme", &legal);
        assert_eq!(named.name, "Acme Pty Ltd");
        assert_eq!(named.abn, legal.abn);
    }

    #[test]
    fn completing_keeps_what_was_recorded_and_takes_only_the_rest_from_now() {
        let now_seller = Seller::new("Other Cloud Holdings Ltd", "53 004 085 616", None).unwrap();
        let now_recipient = Recipient {
            name: "Renamed Ltd".into(),
            abn: None,
            address: None,
        };
        // Issued before parties were recorded: everything from now.
        assert_eq!(
            Parties::completed(None, &now_seller, now_recipient.clone()),
            Parties {
                seller: Some(now_seller.clone()),
                recipient: now_recipient.clone(),
            }
        );
        // Issued while documents were off: the recorded recipient, the seller from now.
        let unsold = Parties {
            seller: None,
            recipient: pilot(),
        };
        assert_eq!(
            Parties::completed(Some(&unsold), &now_seller, now_recipient.clone()),
            Parties {
                seller: Some(now_seller.clone()),
                recipient: pilot(),
            }
        );
        // Everything recorded: nothing from now.
        let recorded = Parties {
            seller: Some(seller()),
            recipient: pilot(),
        };
        assert_eq!(
            Parties::completed(Some(&recorded), &now_seller, now_recipient),
            recorded
        );
    }
}
