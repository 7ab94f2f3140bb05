//! The month-end rollup end to end through NATS JetStream and PostgreSQL: the seed scenario to
//! the cent, re-runs, force semantics, rejected requests, late usage, failing tenants.

mod common;

use common::*;
use serde_json::{json, Value};
use uuid::Uuid;

const APRIL: &str = "2026-04-01";

fn record(deployment: Uuid, kind: &str, qty: &str, at: &str) -> Value {
    json!({"event_id": Uuid::new_v4(), "deployment_id": deployment, "resource_kind": kind,
           "quantity": qty, "occurred_at": at})
}

#[tokio::test]
async fn seed_scenario_to_the_cent_and_rerun_skips() {
    let app = TestApp::with_worker().await;
    let (db, client, js) = (app.db.clone(), app.client.clone(), app.js.clone());
    load_seed_catalog(&client).await;
    let dep = invoicer::demo::DEPLOYMENT;
    admin(
        &client,
        "billing.admin.tenants.put",
        json!({"tenant_id": "pilot"}),
    )
    .await;
    admin(
        &client,
        "billing.admin.subscriptions.put",
        json!({"id": invoicer::demo::SUBSCRIPTION, "tenant_id": "pilot", "deployment_id": dep,
               "plan": "studio", "addons": ["storage_50gb"], "started_at": "2026-03-15T00:00:00Z"}),
    )
    .await;

    let mut records = invoicer::demo::seed_usage();
    // A duplicate event and records just outside April must not count.
    records.push(records[0].clone());
    records.push(record(dep, "droplet_hours", "500", "2026-03-31T23:59:59Z"));
    records.push(record(dep, "droplet_hours", "500", "2026-05-01T00:00:00Z"));
    // Usage the plan does not price is not billed.
    records.push(record(dep, "gpu_hours", "3", "2026-04-10T00:00:00Z"));
    publish_usage(&js, &db, records, 93).await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_records")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 93, "the duplicate event is stored once");

    let done = rollup(&js, json!({"period_start": APRIL})).await;
    assert_eq!(done["invoices_issued"], 1);
    assert_eq!(done["invoices_skipped"], 0);
    assert_eq!(done["tenants_failed"], json!([]));
    assert_eq!(done["unbilled_deployments"], 0);
    assert_eq!(done["period_end"], "2026-05-01");

    let inv = live_invoice(&client, "pilot").await;
    assert_eq!(inv["number"], "INV-000001");
    assert_eq!(inv["status"], "issued");
    assert_eq!(inv["currency"], "AUD");
    assert_eq!(
        (
            &inv["subtotal_cents"],
            &inv["tax_cents"],
            &inv["total_cents"]
        ),
        (&json!(6422), &json!(642), &json!(7064))
    );
    let lines: Vec<(String, Value, Value, String, String, Value, Value)> = inv["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap().to_string(),
                l["deployment_id"].clone(),
                l["resource_kind"].clone(),
                l["description"].as_str().unwrap().to_string(),
                l["quantity"].as_str().unwrap().to_string(),
                l["unit_price"].clone(),
                l["amount_cents"].clone(),
            )
        })
        .collect();
    let d = json!(dep);
    assert_eq!(
        lines,
        vec![
            (
                "plan_base".into(),
                d.clone(),
                Value::Null,
                "Plan: Studio".into(),
                "1".into(),
                json!("50.00"),
                json!(5000)
            ),
            (
                "addon".into(),
                d.clone(),
                Value::Null,
                "Addon: storage_50gb".into(),
                "1".into(),
                json!("7.50"),
                json!(750)
            ),
            (
                "overage".into(),
                d.clone(),
                json!("droplet_hours"),
                "Overage: droplet_hours (672 × $0.01)".into(),
                "672".into(),
                json!("0.01"),
                json!(672)
            ),
            (
                "tax".into(),
                Value::Null,
                Value::Null,
                "GST 10%".into(),
                "64.22".into(),
                json!("0.10"),
                json!(642)
            ),
        ]
    );

    // The issued event carries the whole invoice.
    wait_until("the issued event is published", || async {
        stream_messages(&js, "BILLING_EVENTS", "billing.invoice.issued")
            .await
            .len()
            == 1
    })
    .await;
    let issued = stream_messages(&js, "BILLING_EVENTS", "billing.invoice.issued").await;
    assert_eq!(issued[0]["id"], inv["id"]);
    assert_eq!(issued[0]["total_cents"], 7064);
    assert_eq!(issued[0]["lines"].as_array().unwrap().len(), 4);

    // Re-run without force: skipped, nothing published.
    let again = rollup(&js, json!({"period_start": APRIL})).await;
    assert_eq!(
        (
            again["invoices_issued"].clone(),
            again["invoices_skipped"].clone()
        ),
        (json!(0), json!(1))
    );
    assert_eq!(
        stream_messages(&js, "BILLING_EVENTS", "billing.invoice.issued")
            .await
            .len(),
        1
    );
    assert_eq!(invoices_of(&client, "pilot").await.len(), 1);

    // The same request delivered twice (same msg id after the dedup window, or a redelivery)
    // is one run: its completed event is not repeated.
    let request = json!({"period_start": APRIL, "request_id": "repeat-me"});
    invoicer::client::request_rollup(&js, &request, "a")
        .await
        .unwrap();
    let first = completed(&js, "repeat-me").await;
    invoicer::client::request_rollup(&js, &request, "b")
        .await
        .unwrap();
    invoicer::client::request_rollup(
        &js,
        &json!({"period_start": APRIL, "request_id": "after"}),
        "c",
    )
    .await
    .unwrap();
    completed(&js, "after").await;
    let runs: Vec<Value> = stream_messages(&js, "BILLING_EVENTS", "billing.rollup.completed")
        .await
        .into_iter()
        .filter(|e| e["request_id"] == "repeat-me")
        .collect();
    assert_eq!(runs, vec![first]);
}

#[tokio::test]
async fn force_supersedes_issued_recomputes_draft_and_leaves_paid_alone() {
    let app = TestApp::with_worker().await;
    let (db, client, js) = (app.db.clone(), app.client.clone(), app.js.clone());
    load_seed_catalog(&client).await;
    let deps: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    for (t, dep) in ["issued", "drafted", "paid", "voided"].iter().zip(&deps) {
        subscribe(&client, t, *dep).await;
    }
    // "drafted" gets a draft first; the others are issued.
    let drafts = rollup(
        &js,
        json!({"period_start": APRIL, "tenant_ids": ["drafted"], "draft": true}),
    )
    .await;
    assert_eq!(drafts["invoices_drafted"], 1);
    let draft = live_invoice(&client, "drafted").await;
    assert_eq!(
        (draft["status"].clone(), draft["number"].clone()),
        (json!("draft"), Value::Null)
    );
    let first = rollup(&js, json!({"period_start": APRIL})).await;
    assert_eq!(
        (
            first["invoices_issued"].clone(),
            first["invoices_skipped"].clone()
        ),
        (json!(3), json!(1))
    );
    let paid = live_invoice(&client, "paid").await;
    admin(
        &client,
        "billing.admin.invoices.mark_paid",
        json!({"id": paid["id"]}),
    )
    .await;
    let voided = live_invoice(&client, "voided").await;
    admin(
        &client,
        "billing.admin.invoices.void",
        json!({"id": voided["id"], "reason": "test"}),
    )
    .await;
    let old_issued = live_invoice(&client, "issued").await;

    // New usage makes the recomputed invoices differ from the old ones.
    let records = deps
        .iter()
        .map(|d| record(*d, "droplet_hours", "1500", "2026-04-20T00:00:00Z"))
        .collect();
    publish_usage(&js, &db, records, 4).await;

    let forced = rollup(&js, json!({"period_start": APRIL, "force": true})).await;
    assert_eq!(forced["invoices_issued"], 3, "{forced}");
    assert_eq!(
        forced["invoices_skipped"], 1,
        "the paid invoice is skipped: {forced}"
    );

    // Issued → superseded: old void with a link, new issued with a new number, same transaction.
    let old = admin(
        &client,
        "billing.admin.invoices.get",
        json!({"id": old_issued["id"]}),
    )
    .await;
    let new = live_invoice(&client, "issued").await;
    assert_eq!(old["status"], "void");
    assert_eq!(old["void_reason"], "superseded");
    assert_eq!(old["superseded_by"], new["id"]);
    assert_eq!(
        old["total_cents"], old_issued["total_cents"],
        "an issued invoice is never rewritten"
    );
    assert_eq!(new["supersedes"], old["id"]);
    assert_ne!(new["number"], old["number"]);
    assert_eq!(new["subtotal_cents"], 5750 + 12);

    // Draft → recomputed in place (same id), issued by this non-draft run.
    let recomputed = live_invoice(&client, "drafted").await;
    assert_eq!(recomputed["id"], draft["id"]);
    assert_eq!(recomputed["status"], "issued");
    assert_eq!(recomputed["subtotal_cents"], 5750 + 12);
    assert!(recomputed["number"].is_string());

    // Paid → untouched.
    let still_paid = live_invoice(&client, "paid").await;
    assert_eq!(still_paid["id"], paid["id"]);
    assert_eq!(still_paid["status"], "paid");
    assert_eq!(still_paid["total_cents"], paid["total_cents"]);

    // Voided → a new invoice.
    let replaced = live_invoice(&client, "voided").await;
    assert_ne!(replaced["id"], voided["id"]);
    assert_eq!(replaced["status"], "issued");

    // Numbers are gapless and unique across everything issued.
    let mut numbers: Vec<i64> =
        sqlx::query_scalar("SELECT number FROM invoices WHERE number IS NOT NULL ORDER BY number")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    numbers.dedup();
    assert_eq!(numbers, (1..=numbers.len() as i64).collect::<Vec<_>>());
    assert_eq!(numbers.len(), 6);

    // The supersede published the old invoice's voided event and the new issued one.
    wait_until("events are relayed", || async {
        invoicer::store::outbox::backlog(&db.pool).await.unwrap() == 0
    })
    .await;
    let voided_events = stream_messages(&js, "BILLING_EVENTS", "billing.invoice.voided").await;
    assert!(voided_events
        .iter()
        .any(|e| e["id"] == old["id"] && e["superseded_by"] == new["id"]));
}

#[tokio::test]
async fn malformed_requests_are_rejected_and_the_stream_keeps_flowing() {
    let app = TestApp::with_worker().await;
    let (client, js) = (app.client.clone(), app.js.clone());
    load_seed_catalog(&client).await;
    subscribe(&client, "acme", Uuid::new_v4()).await;

    for bad in [
        "not json",
        r#"{"period_start": "2026-13-01"}"#,
        r#"{"period_start": "2026-04-01", "tenant_ids": ["no.dots"]}"#,
    ]
    .iter()
    {
        js.publish("billing.rollup.requested", bad.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let done = rollup(&js, json!({"period_start": APRIL})).await;
    assert_eq!(done["invoices_issued"], 1);
    wait_until("three rejections are published", || async {
        stream_messages(&js, "BILLING_EVENTS", "billing.rollup.rejected")
            .await
            .len()
            == 3
    })
    .await;
    let rejected = stream_messages(&js, "BILLING_EVENTS", "billing.rollup.rejected").await;
    assert_eq!(rejected[0]["request"], "not json");
    assert!(
        rejected[1]["reason"]
            .as_str()
            .unwrap()
            .contains("period_start"),
        "{}",
        rejected[1]
    );
    assert_eq!(rejected[2]["request"]["tenant_ids"], json!(["no.dots"]));
    // Terminated, not retried: nothing is pending on the consumer.
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream("BILLING_ROLLUPS")
        .await
        .unwrap()
        .get_consumer("invoicer-rollups")
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
}

#[tokio::test]
async fn late_usage_is_kept_and_reported_and_changes_nothing_without_force() {
    let app = TestApp::with_worker().await;
    let (db, client, js) = (app.db.clone(), app.client.clone(), app.js.clone());
    load_seed_catalog(&client).await;
    let dep = Uuid::new_v4();
    subscribe(&client, "acme", dep).await;
    rollup(&js, json!({"period_start": APRIL})).await;
    let before = live_invoice(&client, "acme").await;

    let late = record(dep, "droplet_hours", "2000", "2026-04-30T23:00:00Z");
    let next_month = record(dep, "droplet_hours", "5", "2026-05-02T00:00:00Z");
    publish_usage(&js, &db, vec![late.clone(), next_month], 2).await;
    wait_until("the late usage is reported", || async {
        !stream_messages(&js, "BILLING_EVENTS", "billing.usage.late")
            .await
            .is_empty()
    })
    .await;
    let reports = stream_messages(&js, "BILLING_EVENTS", "billing.usage.late").await;
    assert_eq!(reports.len(), 1, "only April's record is late: {reports:?}");
    assert_eq!(reports[0]["tenant_id"], "acme");
    assert_eq!(reports[0]["deployment_id"], json!(dep));
    assert_eq!(reports[0]["period_start"], APRIL);
    assert_eq!(reports[0]["resource_kind"], "droplet_hours");
    assert_eq!(reports[0]["quantity"], "2000");

    // Kept, but the issued invoice is unchanged; a force re-run bills it.
    assert_eq!(live_invoice(&client, "acme").await, before);
    rollup(&js, json!({"period_start": APRIL, "force": true})).await;
    let after = live_invoice(&client, "acme").await;
    assert_eq!(after["subtotal_cents"], 5750 + (2000 - 1488));
}

/// Usage arriving while an invoice is a draft (of a `draft` run, with no grace window) is billed
/// when the draft is issued: an admin `issue` recomputes the draft from all usage stored by then,
/// as a grace window's close does (CONTRACT.md 5a). Before, such usage was neither billed nor
/// reported late: the draft was issued with the amounts it had when it was written.
#[tokio::test]
async fn usage_arriving_while_the_invoice_is_a_draft_is_billed_when_it_is_issued() {
    let app = TestApp::with_worker().await;
    let (db, client, js) = (app.db.clone(), app.client.clone(), app.js.clone());
    load_seed_catalog(&client).await;
    let dep = Uuid::new_v4();
    subscribe(&client, "acme", dep).await;
    rollup(&js, json!({"period_start": APRIL, "draft": true})).await;
    let draft = live_invoice(&client, "acme").await;
    assert_eq!(
        (draft["status"].clone(), draft["subtotal_cents"].clone()),
        (json!("draft"), json!(5750))
    );

    let during = record(dep, "droplet_hours", "2000", "2026-04-30T23:00:00Z");
    publish_usage(&js, &db, vec![during], 1).await;
    let issued = admin(
        &client,
        "billing.admin.invoices.issue",
        json!({"id": draft["id"]}),
    )
    .await;
    assert_eq!(issued["status"], "issued");
    assert_eq!(issued["id"], draft["id"], "the draft itself is issued");
    assert_eq!(issued["subtotal_cents"], 5750 + (2000 - 1488), "{issued}");
    assert!(
        stream_messages(&js, "BILLING_EVENTS", "billing.usage.late")
            .await
            .is_empty(),
        "usage billed on the invoice is not also reported late"
    );
}

/// A force rollup and an admin `issue` of the same draft at the same moment. The rollup is
/// held after it has read the tenant's invoices and before it writes (its usage read waits on a
/// table lock held here) while the admin issues the draft; then both go on. Before the fix the
/// rollup rewrote the lines of the invoice the admin had just issued (lines no longer summing to
/// its subtotal) and left its own reserved number unused (a gap). Now the two exclude each other
/// (tenant, then invoice locks, in that order, on both paths) and every invariant holds.
#[tokio::test]
async fn a_force_rollup_racing_an_admin_issue_never_rewrites_an_issued_invoice() {
    let app = TestApp::with_worker().await;
    let (db, client, js) = (app.db.clone(), app.client.clone(), app.js.clone());
    load_seed_catalog(&client).await;
    let dep = Uuid::new_v4();
    subscribe(&client, "acme", dep).await;
    rollup(&js, json!({"period_start": APRIL, "draft": true})).await;
    let draft = live_invoice(&client, "acme").await;
    // Usage the draft does not have yet, so a recomputation changes its amounts.
    let more = record(dep, "droplet_hours", "2000", "2026-04-20T00:00:00Z");
    publish_usage(&js, &db, vec![more], 1).await;

    let mut hold = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE usage_records IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *hold)
        .await
        .unwrap();
    let waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted";
    invoicer::client::request_rollup(
        &js,
        &json!({"period_start": APRIL, "force": true, "request_id": "race"}),
        "race",
    )
    .await
    .unwrap();
    wait_until("the rollup waits, its tenant's invoices read", || async {
        count(&db, waiting).await >= 1
    })
    .await;
    let issuing = tokio::spawn({
        let client = client.clone();
        let id = draft["id"].clone();
        async move {
            invoicer::client::call(&client, "billing.admin.invoices.issue", &json!({"id": id}))
                .await
        }
    });
    wait_until("the admin issue has run or waits too", || async {
        issuing.is_finished() || count(&db, waiting).await >= 2
    })
    .await;
    hold.commit().await.unwrap();
    let issued = issuing.await.unwrap();
    completed(&js, "race").await;
    if let Err(e) = &issued {
        assert!(e.to_string().contains("conflict"), "{e}");
    }

    // One live invoice, issued, whose lines add up to its amounts, and no number gap.
    let live = live_invoice(&client, "acme").await;
    assert_eq!(live["status"], "issued", "{live}");
    let lines = live["lines"].as_array().unwrap();
    let sum = |tax: bool| -> i64 {
        lines
            .iter()
            .filter(|l| (l["kind"] == "tax") == tax)
            .map(|l| l["amount_cents"].as_i64().unwrap())
            .sum()
    };
    assert_eq!(json!(sum(false)), live["subtotal_cents"], "{live}");
    assert_eq!(json!(sum(false) + sum(true)), live["total_cents"], "{live}");
    assert_eq!(live["subtotal_cents"], 5750 + (2000 - 1488), "{live}");
    let (numbered, max): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(number), max(number) FROM invoices")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(Some(numbered), max, "invoice numbers have a gap");
}

#[tokio::test]
async fn a_failing_tenant_is_reported_and_does_not_stop_the_others() {
    let app = TestApp::with_worker().await;
    let (db, client, js) = (app.db.clone(), app.client.clone(), app.js.clone());
    load_seed_catalog(&client).await;
    admin(
        &client,
        "billing.admin.tenants.put",
        json!({"tenant_id": "yankee", "currency": "USD"}),
    )
    .await;
    admin(
        &client,
        "billing.admin.tenants.put",
        json!({"tenant_id": "kiwi", "tax_rate": "0.15", "tax_label": "GST"}),
    )
    .await;
    admin(
        &client,
        "billing.admin.tenants.put",
        json!({"tenant_id": "exempt", "tax_exempt": true}),
    )
    .await;
    for t in ["acme", "yankee", "kiwi", "exempt"] {
        subscribe(&client, t, Uuid::new_v4()).await;
    }
    // Usage of a deployment nobody subscribes.
    publish_usage(
        &js,
        &db,
        vec![record(
            Uuid::new_v4(),
            "droplet_hours",
            "5",
            "2026-04-03T00:00:00Z",
        )],
        1,
    )
    .await;

    let done = rollup(
        &js,
        json!({"period_start": APRIL, "tenant_ids": ["acme", "yankee", "kiwi", "exempt", "ghost"]}),
    )
    .await;
    assert_eq!(done["invoices_issued"], 3, "{done}");
    let failed = done["tenants_failed"].as_array().unwrap();
    assert_eq!(failed.len(), 2, "{done}");
    assert_eq!(failed[0]["tenant_id"], "yankee");
    assert!(
        failed[0]["reason"].as_str().unwrap().contains("AUD"),
        "{done}"
    );
    assert_eq!(failed[1]["tenant_id"], "ghost");
    assert_eq!(done["unbilled_deployments"], 1);

    let kiwi = live_invoice(&client, "kiwi").await;
    assert_eq!(
        (kiwi["tax_cents"].clone(), kiwi["total_cents"].clone()),
        (json!(863), json!(6613))
    );
    let exempt = live_invoice(&client, "exempt").await;
    assert_eq!(exempt["tax_cents"], 0);
    assert!(exempt["lines"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["kind"] != "tax"));
    assert!(invoices_of(&client, "yankee").await.is_empty());
}

#[tokio::test]
async fn catalog_admin_rejects_bad_input() {
    let app = TestApp::with_worker().await;
    let client = app.client.clone();
    load_seed_catalog(&client).await;
    // An existing tenant, so that each subscription below is refused for its own fault.
    admin(
        &client,
        "billing.admin.tenants.put",
        json!({"tenant_id": "acme"}),
    )
    .await;
    let bad = [
        (
            "billing.admin.plans.put",
            json!({"code": "x", "name": "X", "currency": "AUD", "base_price": 50.0}),
        ),
        (
            "billing.admin.addons.put",
            json!({"code": "x", "name": "X", "currency": "AUD", "price": "-1"}),
        ),
        (
            "billing.admin.tenants.put",
            json!({"tenant_id": "acme.corp"}),
        ),
        (
            "billing.admin.subscriptions.put",
            json!({"id": Uuid::new_v4(), "tenant_id": "acme", "deployment_id": Uuid::new_v4(), "plan": "nope",
                   "started_at": "2026-01-01T00:00:00Z"}),
        ),
        (
            "billing.admin.subscriptions.put",
            json!({"id": "not-a-uuid", "tenant_id": "acme", "deployment_id": Uuid::new_v4(), "plan": "studio",
                   "started_at": "2026-01-01T00:00:00Z"}),
        ),
    ];
    for (subject, body) in bad {
        let reply = invoicer::client::call_raw(&client, subject, body.to_string().into_bytes())
            .await
            .unwrap();
        let err = reply.expect_err(subject);
        assert_eq!(err.code, "bad_request", "{subject} {body}");
        assert_eq!(err.status.as_deref(), Some("400"));
    }
    // Two subscriptions of one deployment may not overlap.
    let dep = Uuid::new_v4();
    subscribe(&client, "acme", dep).await;
    let overlap = json!({"id": Uuid::new_v4(), "tenant_id": "acme", "deployment_id": dep, "plan": "studio",
                         "started_at": "2026-02-01T00:00:00Z"});
    let reply = invoicer::client::call_raw(
        &client,
        "billing.admin.subscriptions.put",
        overlap.to_string().into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(reply.unwrap_err().code, "bad_request");
}
