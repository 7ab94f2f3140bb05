//! The PDF document: the view model laid out on A4 pages with krilla, no external program.
//!
//! Layout is two passes: [`Layout`] turns the view into drawing operations page by page (so
//! the footer can say "page 1 of 2"), then [`draw`] hands them to krilla. DejaVu Sans is
//! embedded and subset to the glyphs used, so any Latin, Greek or Cyrillic name prints and
//! the file stays small (tens of kilobytes), far below NATS's 1 MB message limit even after
//! base64. Coordinates are points from the top-left corner; they are geometry, not money,
//! so they are floats.

use super::{DocumentError, LineGroup, Notice, NoticeKind, PartyView, TaxInvoiceView};
use krilla::color::rgb;
use krilla::geom::{PathBuilder, Point, Rect, Transform};
use krilla::metadata::Metadata;
use krilla::num::NormalizedF32;
use krilla::page::PageSettings;
use krilla::paint::{Fill, Stroke};
use krilla::surface::Surface;
use krilla::text::{Font, TextDirection};
use krilla::Document;
use std::sync::LazyLock;

static REGULAR_TTF: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");
static BOLD_TTF: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans-Bold.ttf");

/// A4 in points.
const PAGE_W: f32 = 595.28;
const PAGE_H: f32 = 841.89;
const LEFT: f32 = 42.0;
const RIGHT: f32 = PAGE_W - 42.0;
const TOP: f32 = 48.0;
/// Content stops here; the footer sits below.
const BOTTOM: f32 = PAGE_H - 60.0;

// Table columns: description from LEFT, then right-aligned numbers and the tax status.
const DESC_W: f32 = 236.0;
const QTY_RIGHT: f32 = LEFT + 312.0;
const PRICE_RIGHT: f32 = LEFT + 384.0;
const TAX_X: f32 = LEFT + 396.0;

type Rgb = (u8, u8, u8);
const INK: Rgb = (29, 34, 40);
const MUTED: Rgb = (91, 101, 112);
const RULE: Rgb = (197, 204, 211);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Weight {
    Regular,
    Bold,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Style {
    size: f32,
    weight: Weight,
    color: Rgb,
}

const fn style(size: f32, weight: Weight, color: Rgb) -> Style {
    Style {
        size,
        weight,
        color,
    }
}

const BODY: Style = style(9.0, Weight::Regular, INK);
const BODY_BOLD: Style = style(9.0, Weight::Bold, INK);
const SMALL_MUTED: Style = style(7.5, Weight::Regular, MUTED);
const LABEL: Style = style(7.0, Weight::Bold, MUTED);

/// One font, as krilla embeds it and as ttf-parser measures it.
struct Typeface {
    pdf: Font,
    face: ttf_parser::Face<'static>,
}

impl Typeface {
    fn load(data: &'static [u8], name: &str) -> Result<Self, String> {
        Ok(Typeface {
            pdf: Font::new(data.into(), 0).ok_or_else(|| format!("{name} is not a usable font"))?,
            face: ttf_parser::Face::parse(data, 0).map_err(|e| format!("{name}: {e}"))?,
        })
    }

    /// Advance width of `text` at `size`; unknown characters measure as the missing glyph.
    fn width(&self, text: &str, size: f32) -> f32 {
        let units: u32 = text
            .chars()
            .map(|c| {
                let glyph = self.face.glyph_index(c).unwrap_or(ttf_parser::GlyphId(0));
                u32::from(self.face.glyph_hor_advance(glyph).unwrap_or(0))
            })
            .sum();
        units as f32 * size / f32::from(self.face.units_per_em())
    }
}

struct Fonts {
    regular: Typeface,
    bold: Typeface,
}

impl Fonts {
    fn get(&self, w: Weight) -> &Typeface {
        match w {
            Weight::Regular => &self.regular,
            Weight::Bold => &self.bold,
        }
    }
}

/// Parsed once per process; the font files are part of the binary.
static FONTS: LazyLock<Result<Fonts, String>> = LazyLock::new(|| {
    Ok(Fonts {
        regular: Typeface::load(REGULAR_TTF, "DejaVuSans.ttf")?,
        bold: Typeface::load(BOLD_TTF, "DejaVuSans-Bold.ttf")?,
    })
});

/// A drawing operation on one page.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    Text {
        x: f32,
        baseline: f32,
        style: Style,
        text: String,
    },
    Rect {
        x: f32,
        y: f32,
        w: f32,
        h: f32,
        fill: Rgb,
        border: Rgb,
    },
    Rule {
        x1: f32,
        x2: f32,
        y: f32,
        width: f32,
        color: Rgb,
    },
}

/// Pages of operations, with a cursor `y` moving down the current page.
struct Layout<'f> {
    fonts: &'f Fonts,
    pages: Vec<Vec<Op>>,
    y: f32,
}

impl<'f> Layout<'f> {
    fn new(fonts: &'f Fonts) -> Self {
        Layout {
            fonts,
            pages: vec![Vec::new()],
            y: TOP,
        }
    }

    fn push(&mut self, op: Op) {
        self.pages.last_mut().expect("a page").push(op);
    }

    fn width(&self, text: &str, s: Style) -> f32 {
        self.fonts.get(s.weight).width(text, s.size)
    }

    fn text_at(&mut self, x: f32, baseline: f32, s: Style, text: &str) {
        if !text.is_empty() {
            self.push(Op::Text {
                x,
                baseline,
                style: s,
                text: text.to_string(),
            });
        }
    }

    fn text_right(&mut self, right: f32, baseline: f32, s: Style, text: &str) {
        let w = self.width(text, s);
        self.text_at(right - w, baseline, s, text);
    }

    /// Greedy word wrap to `max` points; a word longer than a line is broken by characters.
    fn wrap(&self, text: &str, s: Style, max: f32) -> Vec<String> {
        let mut lines = Vec::new();
        let mut line = String::new();
        for word in text.split_whitespace() {
            let candidate = if line.is_empty() {
                word.to_string()
            } else {
                format!("{line} {word}")
            };
            if self.width(&candidate, s) <= max {
                line = candidate;
                continue;
            }
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            for c in word.chars() {
                line.push(c);
                if self.width(&line, s) > max && line.chars().count() > 1 {
                    line.pop();
                    lines.push(std::mem::replace(&mut line, c.to_string()));
                }
            }
        }
        if !line.is_empty() || lines.is_empty() {
            lines.push(line);
        }
        lines
    }

    /// Wrapped text from the cursor down, one line every `lh` points.
    fn paragraph(&mut self, x: f32, max: f32, s: Style, lh: f32, text: &str) {
        for line in self.wrap(text, s, max) {
            self.y += lh;
            self.text_at(x, self.y, s, &line);
        }
    }

    fn new_page(&mut self) {
        self.pages.push(Vec::new());
        self.y = TOP;
    }

    /// Starts a new page unless `h` more points fit on this one; true if it did.
    fn ensure(&mut self, h: f32) -> bool {
        if self.y + h > BOTTOM {
            self.new_page();
            true
        } else {
            false
        }
    }

    fn rule(&mut self, y: f32, width: f32, color: Rgb) {
        self.push(Op::Rule {
            x1: LEFT,
            x2: RIGHT,
            y,
            width,
            color,
        });
    }
}

/// Renders the document as PDF bytes.
pub fn render(view: &TaxInvoiceView) -> Result<Vec<u8>, DocumentError> {
    let fonts = FONTS.as_ref().map_err(|e| DocumentError::Pdf(e.clone()))?;
    let pages = lay_out(view, fonts);
    draw(view, fonts, &pages)
}

fn lay_out(v: &TaxInvoiceView, fonts: &Fonts) -> Vec<Vec<Op>> {
    let mut l = Layout::new(fonts);
    header(&mut l, v);
    party(&mut l, &v.recipient, LEFT, 300.0);
    l.y += 12.0;
    for n in &v.notices {
        notice(&mut l, n);
    }
    table(&mut l, v);
    totals(&mut l, v);
    l.ensure(30.0);
    l.y += 8.0;
    let note = format!(
        "{} All amounts are in {}. Dates are UTC.",
        v.tax_note, v.currency
    );
    l.paragraph(LEFT, RIGHT - LEFT, SMALL_MUTED, 10.0, &note);
    l.pages
}

fn header(l: &mut Layout, v: &TaxInvoiceView) {
    let title_color = if v.title == super::DRAFT_MARK {
        (155, 28, 28)
    } else {
        INK
    };
    let title = style(20.0, Weight::Bold, title_color);
    let top = l.y;
    l.y += 20.0;
    l.text_at(LEFT, l.y, title, v.title);
    l.y += 6.0;
    let supplier_w = 270.0;
    l.paragraph(
        LEFT,
        supplier_w,
        style(11.5, Weight::Bold, INK),
        15.0,
        &v.seller.name,
    );
    party_lines(l, &v.seller, LEFT, supplier_w);
    let left_bottom = l.y;

    // The facts, right-aligned in a column of their own.
    let label_x = RIGHT - 225.0;
    l.y = top + 4.0;
    for (label, value) in &v.facts {
        let lines = l.wrap(value, BODY_BOLD, 150.0);
        l.y += 12.5;
        l.text_at(label_x, l.y, style(9.0, Weight::Regular, MUTED), label);
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                l.y += 12.0;
            }
            l.text_right(RIGHT, l.y, BODY_BOLD, line);
        }
    }
    l.y = l.y.max(left_bottom) + 22.0;
}

/// ABN (or why there is none) and the address lines of a party, below its name.
fn party_lines(l: &mut Layout, p: &PartyView, x: f32, w: f32) {
    if let Some(abn) = &p.abn {
        l.y += 12.0;
        l.text_at(x, l.y, BODY, &format!("ABN {abn}"));
    }
    if let Some(note) = p.abn_note {
        l.y += 12.0;
        l.text_at(x, l.y, style(9.0, Weight::Regular, MUTED), note);
    }
    for line in &p.address_lines {
        l.paragraph(x, w, style(9.0, Weight::Regular, MUTED), 12.0, line);
    }
}

fn party(l: &mut Layout, p: &PartyView, x: f32, w: f32) {
    l.y += 8.0;
    l.text_at(x, l.y, LABEL, &p.heading.to_uppercase());
    l.y += 2.0;
    l.paragraph(x, w, style(10.0, Weight::Bold, INK), 13.0, &p.name);
    party_lines(l, p, x, w);
}

fn notice(l: &mut Layout, n: &Notice) {
    let (fill, border, ink) = match n.kind {
        NoticeKind::Void => ((253, 236, 236), (185, 28, 28), (127, 29, 29)),
        NoticeKind::Draft => ((255, 246, 230), (180, 83, 9), (124, 61, 6)),
        NoticeKind::Info => ((245, 247, 249), (154, 165, 177), INK),
    };
    let head = style(
        if n.kind == NoticeKind::Info {
            10.0
        } else {
            12.5
        },
        Weight::Bold,
        ink,
    );
    let inner = RIGHT - LEFT - 20.0;
    let head_lines = l.wrap(&n.headline, head, inner);
    let detail_lines = n
        .detail
        .as_deref()
        .map(|d| l.wrap(d, style(9.0, Weight::Regular, ink), inner))
        .unwrap_or_default();
    let h = 14.0 + head_lines.len() as f32 * (head.size + 4.0) + detail_lines.len() as f32 * 12.0;
    l.ensure(h + 8.0);
    let top = l.y;
    l.push(Op::Rect {
        x: LEFT,
        y: top,
        w: RIGHT - LEFT,
        h,
        fill,
        border,
    });
    l.y += 6.0;
    for line in &head_lines {
        l.y += head.size + 4.0;
        l.text_at(LEFT + 10.0, l.y - 2.0, head, line);
    }
    for line in &detail_lines {
        l.y += 12.0;
        l.text_at(
            LEFT + 10.0,
            l.y - 1.0,
            style(9.0, Weight::Regular, ink),
            line,
        );
    }
    l.y = top + h + 8.0;
}

fn table_header(l: &mut Layout, v: &TaxInvoiceView) {
    l.y += 12.0;
    l.text_at(LEFT, l.y, LABEL, "DESCRIPTION");
    l.text_right(QTY_RIGHT, l.y, LABEL, "QUANTITY");
    l.text_right(PRICE_RIGHT, l.y, LABEL, "UNIT PRICE");
    let tax_name = v.tax_label.split_whitespace().next().unwrap_or("GST");
    l.text_at(TAX_X, l.y, LABEL, &tax_name.to_uppercase());
    l.text_right(RIGHT, l.y, LABEL, &format!("AMOUNT ({})", v.currency));
    l.y += 5.0;
    l.rule(l.y, 1.2, INK);
}

fn table(l: &mut Layout, v: &TaxInvoiceView) {
    l.ensure(60.0);
    table_header(l, v);
    for g in &v.groups {
        group(l, v, g);
    }
}

fn group(l: &mut Layout, v: &TaxInvoiceView, g: &LineGroup) {
    // A heading never ends a page on its own.
    if l.ensure(44.0) {
        table_header(l, v);
    }
    l.y += 16.0;
    l.text_at(LEFT, l.y, BODY_BOLD, &g.heading);
    l.y += 5.0;
    l.rule(l.y, 0.6, RULE);
    for line in &g.lines {
        let desc = l.wrap(&line.description, BODY, DESC_W);
        let h = 6.0 + desc.len() as f32 * 12.0;
        if l.ensure(h) {
            table_header(l, v);
        }
        let first = l.y + 12.0;
        for (i, d) in desc.iter().enumerate() {
            l.text_at(LEFT, first + i as f32 * 12.0, BODY, d);
        }
        l.text_right(QTY_RIGHT, first, BODY, &line.quantity);
        l.text_right(PRICE_RIGHT, first, BODY, &line.unit_price);
        l.text_at(
            TAX_X,
            first,
            style(8.0, Weight::Regular, INK),
            &line.tax_status,
        );
        l.text_right(RIGHT, first, BODY, &line.amount);
        l.y += h;
        l.rule(l.y - 1.0, 0.4, (226, 230, 234));
    }
    if g.lines.len() > 1 {
        if l.ensure(16.0) {
            table_header(l, v);
        }
        l.y += 12.0;
        l.text_at(
            LEFT,
            l.y,
            style(9.0, Weight::Regular, MUTED),
            "Deployment subtotal",
        );
        l.text_right(RIGHT, l.y, style(9.0, Weight::Regular, MUTED), &g.subtotal);
        l.y += 3.0;
    }
}

fn totals(l: &mut Layout, v: &TaxInvoiceView) {
    l.ensure(70.0);
    let tax_name = v.tax_label.split_whitespace().next().unwrap_or("GST");
    let x = RIGHT - 240.0;
    l.y += 18.0;
    l.text_at(x, l.y, BODY, &format!("Subtotal (excluding {tax_name})"));
    l.text_right(RIGHT, l.y, BODY, &v.subtotal);
    l.y += 16.0;
    l.text_at(x, l.y, BODY, &v.tax_label);
    l.text_right(RIGHT, l.y, BODY, &v.tax);
    l.y += 7.0;
    l.push(Op::Rule {
        x1: x,
        x2: RIGHT,
        y: l.y,
        width: 1.2,
        color: INK,
    });
    let big = style(11.5, Weight::Bold, INK);
    l.y += 16.0;
    l.text_at(x, l.y, big, &format!("{} ({})", v.total_label, v.currency));
    l.text_right(RIGHT, l.y, big, &v.total);
    l.y += 6.0;
}

fn fill(color: Rgb, opacity: f32) -> Fill {
    Fill {
        paint: rgb::Color::new(color.0, color.1, color.2).into(),
        opacity: NormalizedF32::new(opacity).unwrap_or(NormalizedF32::ONE),
        ..Fill::default()
    }
}

fn stroke(color: Rgb, width: f32) -> Stroke {
    Stroke {
        paint: rgb::Color::new(color.0, color.1, color.2).into(),
        width,
        ..Stroke::default()
    }
}

fn draw_text(s: &mut Surface, fonts: &Fonts, x: f32, baseline: f32, st: Style, text: &str) {
    s.set_stroke(None);
    s.set_fill(Some(fill(st.color, 1.0)));
    s.draw_text(
        Point::from_xy(x, baseline),
        fonts.get(st.weight).pdf.clone(),
        st.size,
        text,
        false,
        TextDirection::Auto,
    );
}

/// The mark across a draft or void page, sized to fit the page's diagonal band.
fn watermark(s: &mut Surface, fonts: &Fonts, mark: &str) {
    let bold = fonts.get(Weight::Bold);
    let size = (520.0 / bold.width(mark, 1.0)).min(72.0);
    let w = bold.width(mark, size);
    let (cx, cy) = (PAGE_W / 2.0, PAGE_H / 2.0);
    s.push_transform(&Transform::from_rotate_at(-35.0, cx, cy));
    s.set_stroke(None);
    s.set_fill(Some(fill((190, 30, 30), 0.14)));
    s.draw_text(
        Point::from_xy(cx - w / 2.0, cy + size / 3.0),
        bold.pdf.clone(),
        size,
        mark,
        false,
        TextDirection::Auto,
    );
    s.pop();
}

fn draw(v: &TaxInvoiceView, fonts: &Fonts, pages: &[Vec<Op>]) -> Result<Vec<u8>, DocumentError> {
    let mut doc = Document::new();
    doc.set_metadata(
        Metadata::new()
            .title(v.document_title.clone())
            .creator("invoicer".to_string())
            .language("en-AU".to_string()),
    );
    let total = pages.len();
    let settings = PageSettings::from_wh(PAGE_W, PAGE_H)
        .ok_or_else(|| DocumentError::Pdf("invalid page size".into()))?;
    for (i, ops) in pages.iter().enumerate() {
        let mut page = doc.start_page_with(settings.clone());
        let mut s = page.surface();
        if let Some(mark) = v.watermark {
            watermark(&mut s, fonts, mark);
        }
        for op in ops {
            match op {
                Op::Text {
                    x,
                    baseline,
                    style,
                    text,
                } => draw_text(&mut s, fonts, *x, *baseline, *style, text),
                Op::Rect {
                    x,
                    y,
                    w,
                    h,
                    fill: f,
                    border,
                } => {
                    let Some(rect) = Rect::from_xywh(*x, *y, *w, *h) else {
                        continue;
                    };
                    let mut pb = PathBuilder::new();
                    pb.push_rect(rect);
                    if let Some(path) = pb.finish() {
                        s.set_fill(Some(fill(*f, 1.0)));
                        s.set_stroke(Some(stroke(*border, 1.5)));
                        s.draw_path(&path);
                    }
                }
                Op::Rule {
                    x1,
                    x2,
                    y,
                    width,
                    color,
                } => {
                    let mut pb = PathBuilder::new();
                    pb.move_to(*x1, *y);
                    pb.line_to(*x2, *y);
                    if let Some(path) = pb.finish() {
                        s.set_fill(None);
                        s.set_stroke(Some(stroke(*color, *width)));
                        s.draw_path(&path);
                    }
                }
            }
        }
        let footer_y = PAGE_H - 32.0;
        draw_text(
            &mut s,
            fonts,
            LEFT,
            footer_y,
            SMALL_MUTED,
            &v.document_title,
        );
        let page_no = format!("Page {} of {total}", i + 1);
        let w = fonts.regular.width(&page_no, SMALL_MUTED.size);
        draw_text(&mut s, fonts, RIGHT - w, footer_y, SMALL_MUTED, &page_no);
        s.finish();
        page.finish();
    }
    doc.finish()
        .map_err(|e| DocumentError::Pdf(format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::document::view::tests::{pilot, seed_invoice, seller};
    use crate::domain::document::{Related, TaxInvoiceView};

    fn fonts() -> &'static Fonts {
        FONTS.as_ref().unwrap()
    }

    #[test]
    fn wrap_keeps_every_word_within_the_width() {
        let l = Layout::new(fonts());
        let text =
            "Overage: gb_hours (1000 × $0.01 + 4000 × $0.008 + 10000 × $0.005 + 50000 × $0.002)";
        let lines = l.wrap(text, BODY, 120.0);
        assert!(lines.len() > 1, "{lines:?}");
        for line in &lines {
            assert!(l.width(line, BODY) <= 120.0, "{line:?}");
        }
        assert_eq!(lines.join(" "), text);
        let long = "x".repeat(200);
        let lines = l.wrap(&long, BODY, 50.0);
        assert_eq!(lines.concat(), long);
        assert_eq!(l.wrap("", BODY, 50.0), [""]);
    }

    #[test]
    fn many_lines_flow_onto_more_pages_with_headers_repeated() {
        let mut inv = seed_invoice();
        let lines = inv.lines.as_mut().unwrap();
        let template = lines[2].clone();
        for i in 0..150 {
            let mut l = template.clone();
            l.line.deployment_id = Some(uuid::Uuid::from_u128(1000 + i / 3));
            lines.insert(3, l);
        }
        let v = TaxInvoiceView::build(&inv, &seller(), &pilot(), &Related::default()).unwrap();
        let pages = lay_out(&v, fonts());
        assert!(pages.len() >= 3, "{} pages", pages.len());
        for (i, ops) in pages.iter().enumerate() {
            let headers = ops
                .iter()
                .filter(|op| matches!(op, Op::Text { text, .. } if text == "DESCRIPTION"))
                .count();
            assert_eq!(headers, 1, "page {i} repeats the table header once");
            for op in ops {
                if let Op::Text { baseline, .. } = op {
                    assert!(*baseline <= BOTTOM && *baseline >= TOP, "page {i}: {op:?}");
                }
            }
        }
    }

    /// The PDF's text, read back by a PDF reader, with whitespace runs collapsed.
    fn text_of(view: &TaxInvoiceView) -> String {
        let bytes = render(view).unwrap();
        assert!(bytes.starts_with(b"%PDF-"));
        let text = pdf_extract::extract_text_from_mem(&bytes).unwrap();
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn seed_invoice_reads_back_with_every_required_field() {
        let v = TaxInvoiceView::build(&seed_invoice(), &seller(), &pilot(), &Related::default())
            .unwrap();
        let bytes = render(&v).unwrap();
        // Fonts are subset: the file stays far below NATS's 1 MB limit, even as base64.
        assert!(bytes.len() < 100_000, "{} bytes", bytes.len());
        let text = text_of(&v);
        for want in [
            "Tax invoice",
            "Droplet Cloud Pty Ltd",
            "ABN 51 824 753 556",
            "1 Example Street",
            "Invoice number INV-000001",
            "Issue date 1 May 2026",
            "Billing period 1 April 2026 to 30 April 2026",
            "Pilot Pty Ltd",
            "Deployment 5eed0000-0000-4000-8000-000000000001",
            "Plan: Studio 1 $50.00 Taxable $50.00",
            "Addon: storage_50gb 1 $7.50 Taxable $7.50",
            "Overage: droplet_hours (672 × $0.01) 672 $0.01 Taxable $6.72",
            "Subtotal (excluding GST) $64.22",
            "GST 10% $6.42",
            "Total including GST (AUD) $70.64",
        ] {
            assert!(text.contains(want), "missing {want:?} in {text}");
        }
        // Below $1,000 the recipient's ABN is not shown.
        assert!(!text.contains("33 051 775 556"), "{text}");
    }

    #[test]
    fn draft_void_and_any_script_read_back() {
        use crate::domain::invoice::Status;
        let mut draft = seed_invoice();
        draft.status = Status::Draft;
        draft.number = None;
        draft.issued_at = None;
        let v = TaxInvoiceView::build(&draft, &seller(), &pilot(), &Related::default()).unwrap();
        let text = text_of(&v);
        assert!(text.contains("Draft — not a tax invoice"), "{text}");
        assert!(!text.contains("INV-"), "{text}");

        let mut void = seed_invoice();
        void.status = Status::Void;
        void.voided_at = void.issued_at;
        void.void_reason = Some("superseded".into());
        let related = Related {
            replaced_by: Some(crate::domain::document::view::RelatedInvoice {
                id: uuid::Uuid::from_u128(43),
                number: Some("INV-000002".into()),
            }),
            replaces: None,
        };
        let v = TaxInvoiceView::build(&void, &seller(), &pilot(), &related).unwrap();
        let text = text_of(&v);
        assert!(
            text.contains("VOID — superseded by tax invoice INV-000002"),
            "{text}"
        );

        // Names outside Latin-1 print: the embedded font covers them.
        let mut legal = pilot();
        legal.name = "Ωμέγα Τεχνολογίες ΑΕ <script>".into();
        let v =
            TaxInvoiceView::build(&seed_invoice(), &seller(), &legal, &Related::default()).unwrap();
        let text = text_of(&v);
        assert!(text.contains("Ωμέγα Τεχνολογίες ΑΕ <script>"), "{text}");
    }
}
