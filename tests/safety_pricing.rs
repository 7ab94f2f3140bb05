//! Issue 15 ("Safe by construction"), pricing and payments, end to end through NATS:
//! a deployment handed to another tenant is charged once for the handover day (CONTRACT.md
//! section 4), `mark_paid` keeps `paid_at` between issue and now (section 5), and every line
//! with a unit price multiplies back to its amount with a quantity of at most 6 decimals
//! (section 3).

mod common;

use common::*;
use invoicer::money::{parse_decimal, to_cents, Exact};
use serde_json::{json, Value};

const APRIL: &str = "2026-04-01";

/// (kind, description, quantity, unit price, cents) of each line.
fn lines(v: &Value) -> Vec<(String, String, String, Value, i64)> {
    v["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("no lines: {v}"))
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap().to_string(),
                l["description"].as_str().unwrap().to_string(),
                l["quantity"].as_str().unwrap().to_string(),
                l["unit_price"].clone(),
                l["amount_cents"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn line(
    kind: &str,
    desc: &str,
    qty: &str,
    price: &str,
    cents: i64,
) -> (String, String, String, Value, i64) {
    (kind.into(), desc.into(), qty.into(), json!(price), cents)
}

fn totals(v: &Value) -> (i64, i64, i64) {
    (
        v["subtotal_cents"].as_i64().unwrap(),
        v["tax_cents"].as_i64().unwrap(),
        v["total_cents"].as_i64().unwrap(),
    )
}

/// Every line with a unit price satisfies `round(quantity × unit_price) = amount_cents`, and
/// every quantity has at most 6 decimals (CONTRACT.md section 3, v3).
fn assert_lines_multiply_back(v: &Value) {
    for l in v["lines"].as_array().unwrap() {
        let qty = parse_decimal(l["quantity"].as_str().unwrap()).unwrap();
        assert!(qty.scale() <= 6, "quantity with more than 6 decimals: {l}");
        let Some(price) = l["unit_price"].as_str() else {
            continue;
        };
        let price = parse_decimal(price).unwrap();
        let product = qty.checked_mul(price).unwrap();
        assert_eq!(
            product.scale(),
            qty.scale() + price.scale(),
            "inexact product: {l}"
        );
        assert_eq!(
            to_cents(Exact::whole(product)).unwrap(),
            l["amount_cents"].as_i64().unwrap(),
            "quantity × unit_price does not round to amount_cents: {l}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Defect 8: prorated lines multiply back.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prorated_quote_multiplies_back_line_by_line() {
    let app = TestApp::with_worker().await;
    app.ok(
        "billing.admin.plans.put",
        json!({"code": "edge", "name": "Edge", "currency": "AUD", "base_price": "10.00",
               "included": {"gb_hours": "1700"},
               "overage": {"gb_hours": {"unit_price": "0.15"}}}),
    )
    .await;
    app.ok(
        "billing.admin.addons.put",
        json!({"code": "backup", "name": "Backup", "currency": "AUD", "price": "0.10"}),
    )
    .await;
    // 7 of April's 30 days: the allowance is 1700 × 7/30 = 396.666…, so 396.7 gb-hours are
    // 0.0333… over it (the case: exactly half a cent at 0.15).
    let quote = app
        .ok(
            "billing.quote",
            json!({"plan": "edge", "addons": ["backup"], "usage": {"gb_hours": "396.7"},
                   "period_start": APRIL, "active_from": "2026-04-24T00:00:00Z"}),
        )
        .await;
    assert_lines_multiply_back(&quote);
    assert_eq!(
        lines(&quote),
        vec![
            // 10.00 × 7/30 = 2.333… → 2.33; 0.10 × 7/30 = 0.0233… → 0.02.
            line("plan_base", "Plan: Edge (7 of 30 days)", "1", "2.33", 233),
            line("addon", "Addon: Backup (7 of 30 days)", "1", "0.02", 2),
            // The quantity is fixed to 6 decimals first, then priced: 0.0049999… → 0.
            line(
                "overage",
                "Overage: gb_hours (0.033333 × $0.15)",
                "0.033333",
                "0.15",
                0
            ),
            line("tax", "GST 10%", "2.35", "0.10", 24),
        ]
    );
    assert_eq!(totals(&quote), (235, 24, 259));

    // 400 gb-hours: 3.333333 over, priced at 0.15 = 0.49999995 → 0.50.
    let quote = app
        .ok(
            "billing.quote",
            json!({"plan": "edge", "usage": {"gb_hours": "400"},
                   "period_start": APRIL, "active_from": "2026-04-24T00:00:00Z"}),
        )
        .await;
    assert_lines_multiply_back(&quote);
    assert_eq!(
        lines(&quote)[1],
        line(
            "overage",
            "Overage: gb_hours (3.333333 × $0.15)",
            "3.333333",
            "0.15",
            50
        )
    );
}
