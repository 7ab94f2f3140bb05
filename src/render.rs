//! Human-readable invoices for the terminal: a tax invoice with lines grouped by deployment.

use crate::money::format_cents;
use serde_json::Value;
use std::fmt::Write;

fn cents(v: &Value) -> String {
    format_cents(v.as_i64().unwrap_or(0))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// Renders one invoice (the contract's JSON) as a table.
pub fn invoice(inv: &Value) -> String {
    let mut out = String::new();
    let number = inv["number"].as_str().unwrap_or("(draft)");
    let _ = writeln!(out, "Tax invoice {number}  [{}]", s(&inv["status"]));
    let _ = writeln!(out, "Tenant:   {}", s(&inv["tenant_id"]));
    let _ = writeln!(
        out,
        "Period:   {} to {} (exclusive)",
        s(&inv["period_start"]),
        s(&inv["period_end"])
    );
    if let Some(at) = inv["issued_at"].as_str() {
        let _ = writeln!(out, "Issued:   {at}");
    }
    if let Some(by) = inv["superseded_by"].as_str() {
        let _ = writeln!(out, "Superseded by {by}");
    }
    let currency = s(&inv["currency"]);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  {:<46} {:>10} {:>12} {:>12}",
        "Description", "Qty", "Unit price", "Amount"
    );
    let lines = inv["lines"].as_array().cloned().unwrap_or_default();
    let mut deployment: Option<&str> = Some("\u{0}");
    let mut tax = Vec::new();
    for line in &lines {
        if line["kind"] == "tax" {
            tax.push(line);
            continue;
        }
        let dep = line["deployment_id"].as_str();
        if dep != deployment {
            deployment = dep;
            let _ = writeln!(out, "  Deployment {}", dep.unwrap_or("-"));
        }
        let qty = s(&line["quantity"]);
        let qty = if qty.len() > 10 { &qty[..10] } else { qty };
        let _ = writeln!(
            out,
            "    {:<44} {:>10} {:>12} {:>12}",
            s(&line["description"]),
            qty,
            line["unit_price"].as_str().unwrap_or("tiered"),
            cents(&line["amount_cents"])
        );
    }
    let _ = writeln!(
        out,
        "  {:>71} {:>12}",
        "Subtotal",
        cents(&inv["subtotal_cents"])
    );
    for t in tax {
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
        format!("Total {currency}"),
        cents(&inv["total_cents"])
    );
    out
}

/// Renders a list of invoices, one per row.
pub fn invoice_list(invoices: &[Value]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<36}  {:<11} {:<20} {:<10} {:<7} {:>12}",
        "ID", "NUMBER", "TENANT", "PERIOD", "STATUS", "TOTAL"
    );
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
