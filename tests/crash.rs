//! Fault tolerance with real crashes: a worker process is SIGKILLed in the middle of a rollup,
//! and a fresh one finishes it. Every tenant ends with exactly one invoice, numbers stay
//! gapless, every issued event is published once, and the completed event's counts are exact.

mod common;

use common::*;
use serde_json::json;
use std::collections::HashSet;

const TENANTS: i64 = 1500;

#[tokio::test]
async fn sigkill_mid_rollup_loses_nothing_and_bills_nobody_twice() {
    let mut app = TestApp::start().await;
    // Small batches so the kill lands between commits.
    app.set_env("ROLLUP_BATCH_SIZE", 10);
    let first = app.spawn_worker().await;
    let (db, client, js) = (app.db.clone(), app.client.clone(), app.js.clone());
    load_seed_catalog(&client).await;
    app.bulk_tenants("t", TENANTS, None).await;

    invoicer::client::request_rollup(
        &js,
        &json!({"period_start": "2026-04-01", "request_id": "crash"}),
        "crash",
    )
    .await
    .unwrap();
    wait_until("some batches have committed", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        n >= 50
    })
    .await;
    app.workers[first].kill();
    let at_kill: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        at_kill < TENANTS,
        "the kill must land mid-rollup (had {at_kill} of {TENANTS})"
    );

    let second = app.spawn_worker().await;
    let done = completed(&js, "crash").await;
    assert_eq!(done["invoices_issued"], TENANTS, "{done}");
    assert_eq!(done["invoices_skipped"], 0, "{done}");
    assert_eq!(done["tenants_failed"], json!([]));

    // One invoice per tenant, numbers 1..=N without gaps.
    let (count, tenants, min, max): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT tenant_id), min(number), max(number) FROM invoices",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((count, tenants, min, max), (TENANTS, TENANTS, 1, TENANTS));

    // Every issued event reaches the stream exactly once.
    wait_until("the outbox drains", || async {
        invoicer::store::outbox::backlog(&db.pool).await.unwrap() == 0
    })
    .await;
    let issued = stream_messages(&js, "BILLING_EVENTS", "billing.invoice.issued").await;
    let ids: HashSet<String> = issued
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(issued.len() as i64, TENANTS);
    assert_eq!(ids.len() as i64, TENANTS);
    let completed_events = stream_messages(&js, "BILLING_EVENTS", "billing.rollup.completed").await;
    assert_eq!(completed_events.len(), 1);

    app.workers[second].kill();
}
