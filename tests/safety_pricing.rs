//! Issue 15 ("Safe by construction"), pricing and payments, end to end through NATS:
//! a deployment handed to another tenant is charged once for the handover day (CONTRACT.md
//! section 4), `mark_paid` keeps `paid_at` between issue and now (section 5), and every line
//! with a unit price multiplies back to its amount with a quantity of at most 6 decimals
//! (section 3).

mod common;

use common::*;
use invoicer::money::{parse_decimal, to_cents, Exact};
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

const APRIL: &str = "2026-04-01";

async fn tenant(app: &TestApp, id: &str) {
    app.ok("billing.admin.tenants.put", json!({ "tenant_id": id }))
        .await;
}

/// A Studio subscription with the storage add-on over `[from, to)`.
async fn subscription(app: &TestApp, tenant: &str, dep: Uuid, from: &str, to: Option<&str>) {
    app.ok(
        "billing.admin.subscriptions.put",
        json!({"id": Uuid::new_v4(), "tenant_id": tenant, "deployment_id": dep, "plan": "studio",
               "addons": ["storage_50gb"], "started_at": from, "ended_at": to}),
    )
    .await;
}

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

async fn invoice_of(app: &TestApp, tenant: &str) -> Value {
    let list = app
        .ok(
            "billing.admin.invoices.list",
            json!({"tenant_id": tenant, "period_start": APRIL}),
        )
        .await;
    let invoices = list["invoices"].as_array().unwrap();
    assert_eq!(invoices.len(), 1, "{tenant}: {list}");
    app.ok(
        "billing.admin.invoices.get",
        json!({"id": invoices[0]["id"]}),
    )
    .await
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
// Defect 6: the handover day is charged once, to the tenant that receives the deployment.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_handed_to_another_tenant_is_charged_once_for_the_handover_day() {
    let app = TestApp::with_worker().await;
    load_seed_catalog(&app.client).await;
    tenant(&app, "alpha").await;
    tenant(&app, "bravo").await;
    let dep = Uuid::new_v4();
    // Alpha hands the deployment to bravo at noon on April 16th: day 16 is bravo's.
    let handover = "2026-04-16T12:00:00Z";
    subscription(&app, "alpha", dep, "2026-01-01T00:00:00Z", Some(handover)).await;
    subscription(&app, "bravo", dep, handover, None).await;

    let preview = |t: &'static str| {
        let app = &app;
        async move {
            app.ok(
                &format!("billing.tenant.{t}.invoices.preview"),
                json!({ "period_start": APRIL }),
            )
            .await
        }
    };
    let (preview_alpha, preview_bravo) = (preview("alpha").await, preview("bravo").await);

    let done = rollup(&app.js, json!({ "period_start": APRIL })).await;
    assert_eq!(done["invoices_issued"], 2, "{done}");
    let alpha = invoice_of(&app, "alpha").await;
    let bravo = invoice_of(&app, "bravo").await;

    // 15 of 30 days each: 50.00 / 2 = 25.00 and 7.50 / 2 = 3.75; GST 2.875 → 2.88.
    let half = vec![
        line(
            "plan_base",
            "Plan: Studio (15 of 30 days)",
            "1",
            "25.00",
            2500,
        ),
        line(
            "addon",
            "Addon: storage_50gb (15 of 30 days)",
            "1",
            "3.75",
            375,
        ),
        line("tax", "GST 10%", "28.75", "0.10", 288),
    ];
    assert_eq!(lines(&alpha), half, "alpha (hands over on the 16th)");
    assert_eq!(lines(&bravo), half, "bravo (takes over on the 16th)");
    assert_eq!(totals(&alpha), (2875, 288, 3163));
    assert_eq!(totals(&bravo), (2875, 288, 3163));
    // Together: April's base and add-on exactly once, 5000 + 750 cents.
    let charged: i64 = [&alpha, &bravo]
        .iter()
        .flat_map(|i| i["lines"].as_array().unwrap())
        .filter(|l| l["kind"] != "tax")
        .map(|l| l["amount_cents"].as_i64().unwrap())
        .sum();
    assert_eq!(
        charged, 5750,
        "April charged once per day across both tenants"
    );
    // The preview prices exactly what the rollup invoiced.
    assert_eq!(lines(&preview_alpha), lines(&alpha), "alpha's preview");
    assert_eq!(lines(&preview_bravo), lines(&bravo), "bravo's preview");
    assert_eq!(totals(&preview_alpha), totals(&alpha));
}

// ---------------------------------------------------------------------------------------------
// Defect 7: paid_at lies between issue and now.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_paid_refuses_a_paid_at_before_issue_or_in_the_future() {
    let app = TestApp::with_worker().await;
    load_seed_catalog(&app.client).await;
    tenant(&app, "acme").await;
    subscription(&app, "acme", Uuid::new_v4(), "2026-03-15T00:00:00Z", None).await;
    let done = rollup(&app.js, json!({ "period_start": APRIL })).await;
    assert_eq!(done["invoices_issued"], 1, "{done}");
    let issued = invoice_of(&app, "acme").await;
    let id = issued["id"].as_str().unwrap().to_string();
    let issued_at: chrono::DateTime<chrono::Utc> =
        issued["issued_at"].as_str().unwrap().parse().unwrap();

    let before_issue = (issued_at - chrono::Duration::seconds(1)).to_rfc3339();
    let next_year = (chrono::Utc::now() + chrono::Duration::days(365)).to_rfc3339();
    let cases = [
        ("2001-01-01T00:00:00Z", "issued_at"),
        (before_issue.as_str(), "issued_at"),
        (next_year.as_str(), "future"),
    ];
    for (paid_at, bound) in cases {
        let refused = app
            .call(
                "billing.admin.invoices.mark_paid",
                json!({"id": id, "paid_at": paid_at}),
            )
            .await;
        let e = match refused {
            Err(e) => e,
            Ok(v) => panic!("paid_at {paid_at} accepted: paid_at {}", v["paid_at"]),
        };
        assert_eq!(e.code, "bad_request", "{paid_at}: {e:?}");
        assert!(
            e.message.contains("paid_at") && e.message.contains(bound),
            "{paid_at}: the message names the field and the bound: {}",
            e.message
        );
    }
    assert_eq!(
        app.ok("billing.admin.invoices.get", json!({ "id": id }))
            .await,
        issued,
        "a refused paid_at changes nothing"
    );
    let paid_rows = format!("SELECT count(*) FROM outbox WHERE msg_id = '{id}:paid'");
    assert_eq!(
        app.scalar(&paid_rows).await,
        0,
        "no billing.invoice.paid for a refusal"
    );
    app.outbox_drained(Duration::from_secs(30)).await;
    assert!(
        stream_messages(&app.js, "BILLING_EVENTS", "billing.invoice.paid")
            .await
            .is_empty(),
        "no billing.invoice.paid published"
    );

    // The moment of issue itself is a valid payment time.
    let paid = app
        .ok(
            "billing.admin.invoices.mark_paid",
            json!({"id": id, "paid_at": issued["issued_at"]}),
        )
        .await;
    assert_eq!(
        (paid["status"].as_str(), &paid["paid_at"]),
        (Some("paid"), &issued["issued_at"])
    );
    assert_eq!(app.scalar(&paid_rows).await, 1);
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
    // 0.0333… over it (the issue's case: exactly half a cent at 0.15).
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
