//! Human-readable output for the terminal: tax invoices with lines grouped by deployment,
//! quotes, invoice lists, and a rollup's summary. Each shows only what its value has.

use crate::domain::money::{format_cents, quantity_text};
use serde_json::Value;
use std::fmt::Write;

fn cents(v: &Value) -> String {
    format_cents(v.as_i64().unwrap_or(0))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

const TABLE_HEAD: (&str, &str, &str, &str) = ("Description", "Qty", "Unit price", "Amount");

fn line_row(out: &mut String, indent: &str, line: &Value) {
    // The quantity as stored (never cut short: a cut `566.666667` reads as another number).
    let qty = s(&line["quantity"]);
    let qty =
        crate::domain::money::parse_decimal(qty).map_or_else(|_| qty.to_string(), quantity_text);
    let width = 46 - indent.len();
    let _ = writeln!(
        out,
        "  {indent}{:<width$} {:>10} {:>12} {:>12}",
        s(&line["description"]),
        qty,
        line["unit_price"].as_str().unwrap_or("tiered"),
        cents(&line["amount_cents"])
    );
}

/// The non-tax lines, optionally under a heading per deployment, then subtotal, tax, total.
fn lines_and_totals(out: &mut String, v: &Value, by_deployment: bool, total_label: &str) {
    let (d, q, u, a) = TABLE_HEAD;
    let _ = writeln!(out, "  {d:<46} {q:>10} {u:>12} {a:>12}");
    let lines = v["lines"].as_array().map_or(&[][..], Vec::as_slice);
    let mut deployment: Option<Option<&str>> = None;
    for line in lines.iter().filter(|l| l["kind"] != "tax") {
        let dep = line["deployment_id"].as_str();
        if by_deployment && deployment != Some(dep) {
            deployment = Some(dep);
            match dep {
                Some(dep) => {
                    let _ = writeln!(out, "  Deployment {dep}");
                }
                None => {
                    let _ = writeln!(out, "  Not tied to a deployment");
                }
            }
        }
        line_row(out, if by_deployment { "  " } else { "" }, line);
    }
    let _ = writeln!(
        out,
        "  {:>71} {:>12}",
        "Subtotal",
        cents(&v["subtotal_cents"])
    );
    for t in lines.iter().filter(|l| l["kind"] == "tax") {
        let _ = writeln!(
            out,
            "  {:>71} {:>12}",
            s(&t["description"]),
            cents(&t["amount_cents"])
        );
    }
    let _ = writeln!(
        out,
        "  {:>71} {:>12}",
        total_label,
        cents(&v["total_cents"])
    );
}

/// Renders one invoice (the contract's JSON) as a table.
pub fn invoice(inv: &Value) -> String {
    let mut out = String::new();
    let number = inv["number"].as_str().unwrap_or("(draft)");
    let _ = writeln!(out, "Tax invoice {number}  [{}]", s(&inv["status"]));
    let _ = writeln!(out, "Tenant:   {}", s(&inv["tenant_id"]));
    if let (Some(start), Some(end)) = (inv["period_start"].as_str(), inv["period_end"].as_str()) {
        let _ = writeln!(out, "Period:   {start} to {end} (exclusive)");
    }
    if let Some(at) = inv["issued_at"].as_str() {
        let _ = writeln!(out, "Issued:   {at}");
    }
    if let Some(at) = inv["finalizes_at"].as_str() {
        let _ = writeln!(
            out,
            "Issues:   {at} (grace window open: usage until then is billed here)"
        );
    }
    if let Some(by) = inv["superseded_by"].as_str() {
        let _ = writeln!(out, "Superseded by {by}");
    }
    let _ = writeln!(out);
    let total = match inv["currency"].as_str() {
        Some(c) if !c.is_empty() => format!("Total {c}"),
        _ => "Total".to_string(),
    };
    lines_and_totals(&mut out, inv, true, &total);
    out
}

/// Renders a `billing.quote` reply: its lines and totals under `heading` (what was priced).
pub fn quote(q: &Value, heading: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{heading}");
    let _ = writeln!(out);
    lines_and_totals(&mut out, q, false, "Total");
    out
}

/// The header of [`invoice_rows`].
pub fn invoice_list_header() -> String {
    format!(
        "{:<36}  {:<11} {:<20} {:<10} {:<7} {:>12}\n",
        "ID", "NUMBER", "TENANT", "PERIOD", "STATUS", "TOTAL"
    )
}

/// Invoices (without lines), one per row.
pub fn invoice_rows(invoices: &[Value]) -> String {
    let mut out = String::new();
    for inv in invoices {
        let _ = writeln!(
            out,
            "{:<36}  {:<11} {:<20} {:<10} {:<7} {:>8} {}",
            s(&inv["id"]),
            inv["number"].as_str().unwrap_or("-"),
            s(&inv["tenant_id"]),
            s(&inv["period_start"]),
            s(&inv["status"]),
            cents(&inv["total_cents"]),
            s(&inv["currency"]),
        );
    }
    out
}

/// Renders a list of invoices, one per row, under a header.
pub fn invoice_list(invoices: &[Value]) -> String {
    invoice_list_header() + &invoice_rows(invoices)
}

/// `1.234 s`, `2 min 03 s`: a duration in milliseconds as a person reads it.
pub fn duration_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 60_000 {
        format!("{}.{:03} s", ms / 1000, ms % 1000)
    } else {
        let s = ms / 1000;
        format!("{} min {:02} s", s / 60, s % 60)
    }
}

/// A `billing.rollup.completed` event as a summary table, with the failed tenants' reasons.
pub fn rollup_summary(event: &Value) -> String {
    let mut out = String::new();
    let period = match (event["period_start"].as_str(), event["period_end"].as_str()) {
        (Some(a), Some(b)) => format!("{a} to {b}"),
        _ => "?".into(),
    };
    let failed = event["tenants_failed"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let _ = writeln!(
        out,
        "Rollup {} ({period}) completed",
        s(&event["request_id"])
    );
    let rows = [
        ("Invoices issued", event["invoices_issued"].to_string()),
        ("Invoices drafted", event["invoices_drafted"].to_string()),
        ("Tenants skipped", event["invoices_skipped"].to_string()),
        ("Tenants failed", failed.len().to_string()),
        (
            "Unbilled deployments",
            event["unbilled_deployments"].to_string(),
        ),
        (
            "Duration",
            duration_ms(event["duration_ms"].as_i64().unwrap_or(0)),
        ),
    ];
    for (label, value) in rows {
        let _ = writeln!(out, "  {label:<22} {value:>10}");
    }
    if !failed.is_empty() {
        let _ = writeln!(out, "Failed tenants:");
        for f in failed {
            let _ = writeln!(out, "  {:<20} {}", s(&f["tenant_id"]), s(&f["reason"]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_quote_shows_only_what_it_has() {
        let q = json!({"lines": [
            {"kind": "plan_base", "deployment_id": null, "description": "Plan: Studio",
             "quantity": "1", "unit_price": "50.00", "amount_cents": 5000},
            {"kind": "tax", "deployment_id": null, "description": "GST 10%",
             "quantity": "50.00", "unit_price": "0.10", "amount_cents": 500}],
            "subtotal_cents": 5000, "tax_cents": 500, "total_cents": 5500});
        let text = quote(&q, "Quote for plan studio, 2026-04");
        assert!(
            text.starts_with("Quote for plan studio, 2026-04\n"),
            "{text}"
        );
        for absent in [
            "Period",
            "Deployment",
            "Tenant",
            "Tax invoice",
            "(exclusive)",
        ] {
            assert!(!text.contains(absent), "{absent} in:\n{text}");
        }
        assert!(text.contains("Plan: Studio"), "{text}");
        assert!(text.contains("GST 10%"), "{text}");
        assert!(text.trim_end().ends_with("55.00"), "{text}");
    }

    #[test]
    fn an_invoice_groups_lines_by_deployment() {
        let inv = json!({"number": "INV-000001", "status": "issued", "tenant_id": "pilot",
            "period_start": "2026-04-01", "period_end": "2026-05-01", "currency": "AUD",
            "subtotal_cents": 5750, "tax_cents": 575, "total_cents": 6325, "lines": [
            {"kind": "plan_base", "deployment_id": "d1", "description": "Plan: Studio",
             "quantity": "1", "unit_price": "50.00", "amount_cents": 5000},
            {"kind": "addon", "deployment_id": "d1", "description": "Addon: storage_50gb",
             "quantity": "1", "unit_price": "7.50", "amount_cents": 750},
            {"kind": "tax", "deployment_id": null, "description": "GST 10%",
             "quantity": "57.50", "unit_price": "0.10", "amount_cents": 575}]});
        let text = invoice(&inv);
        assert_eq!(text.matches("Deployment d1").count(), 1, "{text}");
        assert!(
            text.contains("Period:   2026-04-01 to 2026-05-01 (exclusive)"),
            "{text}"
        );
        assert!(text.contains("Total AUD"), "{text}");
        assert!(!text.contains("Deployment -"), "{text}");
    }

    #[test]
    fn quantities_print_as_stored_with_at_most_six_decimals() {
        let q = json!({"lines": [
            {"kind": "overage", "deployment_id": null, "description": "Overage: gb_hours",
             "quantity": "566.666667", "unit_price": "0.15", "amount_cents": 8500},
            {"kind": "overage", "deployment_id": null, "description": "Overage: old",
             "quantity": "0.5666666666666666666666666667", "unit_price": "0.15", "amount_cents": 9}],
            "subtotal_cents": 8509, "tax_cents": 851, "total_cents": 9360});
        let text = quote(&q, "Quote");
        assert!(text.contains(" 566.666667 "), "{text}");
        assert!(text.contains(" 0.566667 "), "{text}");
        assert!(!text.contains("0.56666666"), "{text}");
    }

    #[test]
    fn a_rollup_summary_lists_failures_with_reasons() {
        let e = json!({"request_id": "r1", "period_start": "2026-04-01",
            "period_end": "2026-05-01", "invoices_issued": 2, "invoices_drafted": 0,
            "invoices_skipped": 1, "unbilled_deployments": 3, "duration_ms": 61_500,
            "tenants_failed": [{"tenant_id": "ghost", "reason": "no subscription active in 2026-04"}]});
        let text = rollup_summary(&e);
        for want in [
            "Invoices issued",
            "Tenants failed",
            "Unbilled deployments",
            "1 min 01 s",
            "ghost",
            "no subscription active in 2026-04",
        ] {
            assert!(text.contains(want), "{want} in:\n{text}");
        }
        assert_eq!(duration_ms(1234), "1.234 s");
    }
}
