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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::document::view::tests::{invoice_with_total, pilot, seed_invoice, seller};
    use crate::domain::document::Related;
    use crate::domain::invoice::Status;

    fn html(
        inv: &crate::domain::invoice::Invoice,
        legal: &crate::domain::document::Recipient,
    ) -> String {
        let v = TaxInvoiceView::build(inv, &seller(), legal, &Related::default()).unwrap();
        render(&v).unwrap()
    }

    #[test]
    fn seed_invoice_shows_every_required_field() {
        let page = html(&seed_invoice(), &pilot());
        for want in [
            "<title>Tax invoice INV-000001 — Pilot Pty Ltd</title>",
            ">Tax invoice</h1>",
            "Droplet Cloud Pty Ltd",
            r#"data-abn="51824753556">ABN 51 824 753 556<"#,
            "1 Example Street",
            "<dt>Invoice number</dt><dd>INV-000001</dd>",
            "<dt>Issue date</dt><dd>1 May 2026</dd>",
            "<dt>Billing period</dt><dd>1 April 2026 to 30 April 2026</dd>",
            "<dt>Currency</dt><dd>AUD</dd>",
            "Pilot Pty Ltd",
            "Deployment 5eed0000-0000-4000-8000-000000000001",
            "<td>Plan: Studio</td>",
            "<td>Overage: droplet_hours (672 × $0.01)</td>",
            "Taxable",
            "$50.00",
            "$7.50",
            "$6.72",
            "<td>GST 10%</td><td class=\"num\">$6.42</td>",
            "$64.22",
            "$70.64",
        ] {
            assert!(page.contains(want), "missing {want:?}");
        }
        assert!(
            !page.contains("33 051 775 556"),
            "recipient ABN below $1,000"
        );
    }

    #[test]
    fn self_contained_no_scripts_or_external_assets() {
        let page = html(&seed_invoice(), &pilot()).to_lowercase();
        for banned in [
            "<script", "src=", "href=", "url(", "@import", "http://", "https://",
        ] {
            assert!(!page.contains(banned), "{banned}");
        }
        assert!(page.contains("<style>") && page.contains("@page { size: a4"));
    }

    #[test]
    fn hostile_tenant_fields_are_text_not_markup() {
        let mut legal = pilot();
        legal.name = "<script>alert('pwned')</script> & Sons".into();
        legal.address = Some("1 \"Quoted\" St\n<img src=x onerror=alert(1)>".into());
        let mut inv = invoice_with_total(150_000);
        inv.lines.as_mut().unwrap()[0].line.description = "Plan: <b>Studio</b>".into();
        let page = html(&inv, &legal);
        for raw in ["<script>", "<img", "<b>Studio"] {
            assert!(!page.contains(raw), "unescaped {raw}");
        }
        for escaped in [
            "&#60;script&#62;alert(&#39;pwned&#39;)&#60;/script&#62; &#38; Sons",
            "1 &#34;Quoted&#34; St",
            "&#60;img src=x onerror=alert(1)&#62;",
            "Plan: &#60;b&#62;Studio&#60;/b&#62;",
        ] {
            assert!(page.contains(escaped), "missing {escaped}");
        }
    }

    #[test]
    fn recipient_abn_appears_from_one_thousand_dollars() {
        let below = html(&invoice_with_total(99_999), &pilot());
        assert!(below.contains("$999.99") && !below.contains("33 051 775 556"));
        let at = html(&invoice_with_total(100_000), &pilot());
        assert!(at.contains("$1000.00"));
        assert!(at.contains(r#"data-abn="33051775556">ABN 33 051 775 556<"#));
        let mut no_abn = pilot();
        no_abn.abn = None;
        assert!(html(&invoice_with_total(100_000), &no_abn).contains("ABN not provided"));
    }

    #[test]
    fn draft_and_void_are_marked() {
        let mut inv = seed_invoice();
        inv.status = Status::Draft;
        inv.number = None;
        inv.issued_at = None;
        let page = html(&inv, &pilot());
        assert!(page.contains(
            r#"<div class="watermark" aria-hidden="true">Draft — not a tax invoice</div>"#
        ));
        assert!(page.contains(r#"<h1 class="draft">Draft — not a tax invoice</h1>"#));
        assert!(!page.contains(">Tax invoice<"));

        let mut inv = seed_invoice();
        inv.status = Status::Void;
        inv.voided_at = inv.issued_at;
        inv.void_reason = Some("billing error".into());
        let page = html(&inv, &pilot());
        assert!(page.contains(r#"<div class="watermark" aria-hidden="true">VOID</div>"#));
        assert!(page.contains("VOID — this tax invoice has been cancelled"));
        assert!(page.contains("Voided on 1 May 2026: billing error."));
    }
}
