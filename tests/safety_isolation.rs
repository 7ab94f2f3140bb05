//! One tenant's bad data, or one failing draft, harms no one else (CONTRACT.md section 8, v3):
//! a tenant whose data cannot be priced fails alone and at once, with its cause; every other
//! tenant of its item, whatever the database's collation, and every other due draft, is
//! invoiced on time.

mod common;

use chrono::{DateTime, Utc};
use common::*;
use invoicer::config::WorkerArgs;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

const APRIL: &str = "2026-04-01";
/// The largest quantity rust_decimal holds: a valid usage record on its own.
const MAX_QUANTITY: &str = "79228162514264337593543950335";

fn record(deployment: Uuid, qty: &str, at: &str) -> Value {
    json!({"event_id": Uuid::new_v4(), "deployment_id": deployment, "resource_kind": "droplet_hours",
           "quantity": qty, "occurred_at": at})
}

/// `tenants_failed` of a completed event, by tenant.
fn failures(done: &Value) -> BTreeMap<String, String> {
    done["tenants_failed"]
        .as_array()
        .unwrap_or_else(|| panic!("no tenants_failed: {done}"))
        .iter()
        .map(|f| {
            (
                f["tenant_id"].as_str().unwrap().to_string(),
                f["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn put_tenant(client: &async_nats::Client, body: Value) {
    admin(client, "billing.admin.tenants.put", body).await;
}

/// `(status, finalizes_at, issued_at)` of the tenant's April invoice.
async fn april_invoice(
    db: &TestDb,
    tenant: &str,
) -> (String, Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    sqlx::query_as(
        "SELECT status, finalizes_at, issued_at FROM invoices
         WHERE tenant_id = $1 AND period_start = $2::date AND status <> 'void'",
    )
    .bind(tenant)
    .bind(APRIL)
    .fetch_one(&db.pool)
    .await
    .unwrap_or_else(|e| panic!("{tenant}'s April invoice: {e}"))
}

/// Waits until `tenant`'s draft is issued, at most `bound` after its `finalizes_at`; returns
/// how long after its window it was issued.
async fn issued_on_time(db: &TestDb, tenant: &str, bound: Duration) -> chrono::TimeDelta {
    let (status, closes, _) = april_invoice(db, tenant).await;
    assert_eq!(status, "draft", "{tenant} starts as a grace draft");
    let closes = closes.expect("a grace draft has a window");
    let wait = (closes - Utc::now()).to_std().unwrap_or_default() + bound;
    let issued_at = wait_for(
        &format!("{tenant}'s draft is issued within {bound:?} of its window ({closes})"),
        wait,
        || async {
            let (status, _, issued_at) = april_invoice(db, tenant).await;
            (status == "issued").then_some(issued_at).flatten()
        },
    )
    .await;
    issued_at - closes
}

// ---------------------------------------------------------------------------------------------
// Issue 15, 2: the one-tenant-per-transaction fallback under a linguistic collation.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_linguistic_collation_a_failing_tenant_leaves_no_tenant_of_its_item_unbilled() {
    let mut app = TestApp::start_on(TestDb::with_icu_collation("en-US").await).await;
    app.run_worker(WorkerArgs::default()).await;
    let (db, client, js) = (app.db.clone(), app.client.clone(), app.js.clone());
    load_seed_catalog(&client).await;
    for tenant in ["a1", "B2", "c3"] {
        subscribe(&client, tenant, Uuid::new_v4()).await;
    }
    // a1's invoice can never be written: the item's batch fails as a whole, and its tenants
    // are worked again one per transaction.
    for sql in [
        "CREATE FUNCTION test_refuse_a1() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'test: a1 cannot be invoiced'; END $$",
        "CREATE TRIGGER test_refuse_a1 BEFORE INSERT ON invoices FOR EACH ROW
         WHEN (NEW.tenant_id = 'a1') EXECUTE FUNCTION test_refuse_a1()",
    ] {
        sqlx::query(sql).execute(&db.pool).await.unwrap();
    }

    let id = Uuid::new_v4().to_string();
    invoicer::client::request_rollup(&js, &json!({"period_start": APRIL, "request_id": id}), &id)
        .await
        .unwrap();
    let done = completed(&js, &id).await;

    // The database's order, which is not byte order: the item really is in ICU's order.
    let item: Vec<String> = sqlx::query_scalar(
        "SELECT tenant_ids FROM rollup_items WHERE request_id = $1 AND item_no = 0",
    )
    .bind(&id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        item,
        ["a1", "B2", "c3"],
        "the item's tenants in en-US order"
    );

    let failed = failures(&done);
    assert_eq!(
        failed.keys().collect::<Vec<_>>(),
        ["a1"],
        "only a1 fails: {done}"
    );
    assert!(failed["a1"].contains("a1 cannot be invoiced"), "{done}");
    let unbilled: Vec<String> = sqlx::query_scalar(
        "SELECT t FROM unnest(ARRAY['B2', 'c3']) t WHERE NOT EXISTS (
           SELECT 1 FROM invoices i WHERE i.tenant_id = t AND i.status = 'issued')",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        unbilled.is_empty(),
        "tenants neither invoiced nor reported: {unbilled:?} ({done})"
    );
    assert_eq!(done["invoices_issued"], 2, "{done}");
}

// ---------------------------------------------------------------------------------------------
// Issue 15, 3: data that cannot be priced fails its tenant alone, in the first attempt.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_whose_data_cannot_be_priced_fail_alone_and_the_rest_are_invoiced_at_once() {
    const GOOD: i64 = 4;
    let app = TestApp::with_worker().await;
    let (db, client, js) = (app.db.clone(), app.client.clone(), app.js.clone());
    app.seed(GOOD).await;
    // Two valid records whose sum no exact decimal of invoicer's holds.
    let oversum = Uuid::new_v4();
    subscribe(&client, "oversum", oversum).await;
    // One valid record whose overage (quantity x price) overflows the amount in cents.
    let overprice = Uuid::new_v4();
    subscribe(&client, "overprice", overprice).await;
    // A tenant invoiced in USD on an AUD plan.
    put_tenant(&client, json!({"tenant_id": "usd", "currency": "USD"})).await;
    subscribe(&client, "usd", Uuid::new_v4()).await;
    publish_usage(
        &js,
        &db,
        vec![
            record(oversum, MAX_QUANTITY, "2026-04-10T00:00:00Z"),
            record(oversum, "1", "2026-04-11T00:00:00Z"),
            record(overprice, MAX_QUANTITY, "2026-04-10T00:00:00Z"),
        ],
        GOOD * 3 + 3,
    )
    .await;

    let id = Uuid::new_v4().to_string();
    invoicer::client::request_rollup(&js, &json!({"period_start": APRIL, "request_id": id}), &id)
        .await
        .unwrap();
    let done = completed(&js, &id).await;

    // In the first attempt: the item's batch committed whole, it never fell back to one
    // tenant per transaction (which records a cursor) nor waited for a retry.
    let fell_back: Vec<(i32, Option<String>)> = sqlx::query_as(
        "SELECT item_no, cursor_tenant FROM rollup_items
         WHERE request_id = $1 AND cursor_tenant IS NOT NULL",
    )
    .bind(&id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        fell_back.is_empty(),
        "items fell back to one tenant per transaction: {fell_back:?}"
    );
    let failed = failures(&done);
    assert_eq!(
        failed.keys().collect::<Vec<_>>(),
        ["overprice", "oversum", "usd"],
        "{done}"
    );
    let reason = &failed["oversum"];
    assert!(
        reason.contains("overflow") && reason.contains("droplet_hours"),
        "the reason names the overflowing sum: {reason}"
    );
    assert!(
        failed["overprice"].contains("out of range"),
        "{}",
        failed["overprice"]
    );
    assert!(failed["usd"].contains("USD"), "{}", failed["usd"]);
    assert_eq!(done["invoices_issued"], GOOD, "{done}");
    app.assert_billed_once(GOOD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_whose_usage_cannot_be_priced_holds_up_no_other_draft() {
    let app = TestApp::with_worker().await;
    let (db, client, js) = (app.db.clone(), app.client.clone(), app.js.clone());
    load_seed_catalog(&client).await;
    let bad = Uuid::new_v4();
    for (tenant, deployment) in [("good", Uuid::new_v4()), ("bad", bad)] {
        put_tenant(
            &client,
            json!({"tenant_id": tenant, "grace_period": "PT8S"}),
        )
        .await;
        subscribe(&client, tenant, deployment).await;
    }
    let done = rollup(&js, json!({"period_start": APRIL})).await;
    assert_eq!(done["invoices_drafted"], 2, "{done}");

    // Late usage that cannot be priced marks bad's draft for a refresh, which fails; at its
    // window, its final recompute fails too.
    publish_usage(
        &js,
        &db,
        vec![
            record(bad, MAX_QUANTITY, "2026-04-10T00:00:00Z"),
            record(bad, "1", "2026-04-11T00:00:00Z"),
        ],
        2,
    )
    .await;
    let late = issued_on_time(&db, "good", Duration::from_secs(5)).await;
    println!(
        "good's draft issued {} ms after its window",
        late.num_milliseconds()
    );

    let reason: String = wait_for(
        "bad's failed finalization is recorded",
        Duration::from_secs(15),
        || async {
            sqlx::query_scalar(
                "SELECT f.reason FROM draft_finalize_failures f JOIN invoices i ON i.id = f.invoice_id
                 WHERE i.tenant_id = 'bad'",
            )
            .fetch_optional(&db.pool)
            .await
            .unwrap()
        },
    )
    .await;
    assert!(reason.contains("overflow"), "{reason}");
    let (status, _, _) = april_invoice(&db, "bad").await;
    assert_eq!(status, "draft", "bad's draft stays a draft");
}

// ---------------------------------------------------------------------------------------------
// Issue 15, 4: drafts that keep failing back off instead of filling every finalizer batch.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_failing_due_drafts_do_not_delay_a_good_one() {
    const BATCH: i64 = 10;
    const FAILING: i64 = 35;
    let app = TestApp::with_worker_args(WorkerArgs {
        rollup_batch_size: BATCH,
        ..Default::default()
    })
    .await;
    let (db, client, js) = (app.db.clone(), app.client.clone(), app.js.clone());
    load_seed_catalog(&client).await;
    app.bulk_tenants("bad", FAILING, Some("PT1H")).await;
    app.bulk_tenants("good", 1, Some("PT1H")).await;
    let done = rollup(&js, json!({"period_start": APRIL})).await;
    assert_eq!(done["invoices_drafted"], FAILING + 1, "{done}");

    // The failing drafts can no longer be priced (their tenants now bill in USD, their plan is
    // in AUD) and have been due for a minute; the good one falls due in two seconds, behind
    // more than three finalizer batches of them.
    for sql in [
        "UPDATE tenants SET currency = 'USD' WHERE tenant_id LIKE 'bad%'",
        "UPDATE invoices SET finalizes_at = now() - interval '1 minute' WHERE tenant_id LIKE 'bad%'",
        "UPDATE invoices SET finalizes_at = date_trunc('second', now()) + interval '2 seconds'
         WHERE tenant_id LIKE 'good%'",
    ] {
        sqlx::query(sql).execute(&db.pool).await.unwrap();
    }
    let late = issued_on_time(&db, "good00001", Duration::from_secs(5)).await;
    println!(
        "good's draft issued {} ms after its window",
        late.num_milliseconds()
    );

    // Each failing draft is still a draft, its failure recorded with the cause, and it was
    // tried a few times, not in a tight loop.
    let (drafts, recorded, max_attempts): (i64, i64, Option<i32>) = sqlx::query_as(
        "SELECT count(*), count(f.invoice_id), max(f.attempts)
         FROM invoices i LEFT JOIN draft_finalize_failures f ON f.invoice_id = i.id
         WHERE i.tenant_id LIKE 'bad%' AND i.status = 'draft'
           AND (f.reason IS NULL OR f.reason LIKE '%USD%')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((drafts, recorded), (FAILING, FAILING));
    assert!(
        max_attempts.unwrap_or(0) <= 3,
        "failing drafts retried {max_attempts:?} times in a few seconds"
    );
}
