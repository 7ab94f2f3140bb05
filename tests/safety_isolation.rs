//! One tenant's bad data, or one failing draft, harms no one else (CONTRACT.md section 8, v3):
//! a tenant whose data cannot be priced fails alone and at once, with its cause; every other
//! tenant of its item, whatever the database's collation, and every other due draft, is
//! invoiced on time.

mod common;

use common::*;
use invoicer::config::WorkerArgs;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use uuid::Uuid;

const APRIL: &str = "2026-04-01";

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
