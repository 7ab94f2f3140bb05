//! The HTML document: one askama template (`templates/tax_invoice.html`), compiled into the
//! binary and auto-escaped, so a tenant's legal name containing `<script>` is shown as text.

use super::{DocumentError, Notice, NoticeKind, TaxInvoiceView};
use askama::Template;

#[derive(Template)]
#[template(path = "tax_invoice.html")]
struct Page<'a> {
    v: &'a TaxInvoiceView,
}

impl Page<'_> {
    fn title_class(&self) -> &'static str {
        if self.v.title == super::DRAFT_MARK {
            "draft"
        } else {
            "final"
        }
    }

    fn notice_class(&self, n: &Notice) -> &'static str {
        match n.kind {
            NoticeKind::Draft => "draft",
            NoticeKind::Void => "void",
            NoticeKind::Info => "info",
        }
    }

    /// Drafts and void invoices are alerts to assistive technology, as they are to the eye.
    fn notice_role(&self, n: &Notice) -> &'static str {
        match n.kind {
            NoticeKind::Draft | NoticeKind::Void => "alert",
            NoticeKind::Info => "note",
        }
    }

    /// "GST", or the tenant's own tax label.
    fn tax_name(&self) -> &str {
        self.v.tax_label.split_whitespace().next().unwrap_or("GST")
    }
}

/// The whole document as one self-contained HTML page.
pub fn render(view: &TaxInvoiceView) -> Result<String, DocumentError> {
    Ok(Page { v: view }.render()?)
}
