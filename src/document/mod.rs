//! Tax invoice documents (CONTRACT.md 5b): what a tenant files and its accountant reads.
//!
//! One pure view model ([`TaxInvoiceView`]) decides everything the document says, from an
//! [`Invoice`](crate::invoice::Invoice), the seller, the tenant's legal details and the numbers
//! of related invoices. Two renderers lay it out: [`html`] (self-contained, prints on A4) and
//! [`pdf`] (the same content, fonts embedded). Neither decides content, so they cannot
//! disagree about it, and neither does I/O: the caller loads, they render.

pub mod html;
pub mod pdf;
pub(crate) mod view;

pub use view::{
    LineGroup, LineView, Notice, NoticeKind, PartyView, Related, TaxInvoiceView,
    ABN_THRESHOLD_CENTS, DRAFT_MARK,
};

use crate::abn::{Abn, AbnError};
use crate::catalog::{check_address, check_legal_name, CatalogError};

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
