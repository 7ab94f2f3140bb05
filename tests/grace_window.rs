//! The grace window (CONTRACT.md section 5a) end to end on the real services: drafts that
//! absorb late usage and are issued when their window closes, by any replica and only once,
//! across a SIGKILL; force re-runs and an admin's early `issue` while a draft is open; and the
//! v2 plan-change day rule through the rollup. Windows are short (seconds) where the worker's
//! own clock closes them, and long where the test issues the draft itself.

mod common;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use common::*;
use invoicer::config::WorkerArgs;
use invoicer::grace::GracePeriod;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use uuid::Uuid;

const APRIL: &str = "2026-04-01";

fn record(deployment: Uuid, qty: &str, at: &str) -> Value {
    json!({"event_id": Uuid::new_v4(), "deployment_id": deployment, "resource_kind": "droplet_hours",
           "quantity": qty, "occurred_at": at})
}

fn at(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}")))
        .unwrap()
        .to_utc()
}

fn grace(s: &str) -> WorkerArgs {
    WorkerArgs {
        grace_period: GracePeriod::parse(s).unwrap(),
        ..Default::default()
    }
}

async fn get(client: &async_nats::Client, id: &Value) -> Value {
    admin(client, "billing.admin.invoices.get", json!({ "id": id })).await
}

fn totals(v: &Value) -> (i64, i64, i64) {
    (
        v["subtotal_cents"].as_i64().unwrap(),
        v["tax_cents"].as_i64().unwrap(),
        v["total_cents"].as_i64().unwrap(),
    )
}

/// Lines as priced, without their ids (and without deployments, to compare with a quote).
fn priced(v: &Value, keep_deployment: bool) -> Vec<Value> {
    v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let mut l = l.clone();
            l.as_object_mut().unwrap().remove("id");
            if !keep_deployment {
                l["deployment_id"] = Value::Null;
            }
            l
        })
        .collect()
}

async fn outbox_rows(db: &TestDb, msg_id_like: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE msg_id LIKE $1")
        .bind(msg_id_like)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Reads an invoice until `wanted` holds of it, failing after `limit`.
async fn poll(
    client: &async_nats::Client,
    id: &Value,
    limit: Duration,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = get(client, id).await;
        if wanted(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {limit:?}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_drafts_absorbs_usage_issues_when_it_closes_and_later_usage_is_late() {
    // The platform default is a short window; one tenant opts out with its own zero window.
    let app = TestApp::with_worker_args(grace("PT12S")).await;
    let (db, client, js) = (app.db.clone(), app.client.clone(), app.js.clone());
    load_seed_catalog(&client).await;
    let stored = admin(
        &client,
        "billing.admin.tenants.put",
        json!({"tenant_id": "acme"}),
    )
    .await;
    assert_eq!(stored["grace_period"], Value::Null, "{stored}");
    let stored = admin(
        &client,
        "billing.admin.tenants.put",
        json!({"tenant_id": "plain", "grace_period": "PT0S"}),
    )
    .await;
    assert_eq!(stored["grace_period"], "PT0S", "{stored}");
    let dep = invoicer::demo::DEPLOYMENT;
    subscribe(&client, "acme", dep).await;
    subscribe(&client, "plain", Uuid::new_v4()).await;
    publish_usage(&js, &db, invoicer::demo::seed_usage(), 90).await;

    let before = Utc::now();
    let done = rollup(&js, json!({"period_start": APRIL})).await;
    assert_eq!(
        (&done["invoices_issued"], &done["invoices_drafted"]),
        (&json!(1), &json!(1)),
        "{done}"
    );
    let plain = live_invoice(&client, "plain").await;
    assert_eq!(
        (&plain["status"], &plain["number"], &plain["finalizes_at"]),
        (&json!("issued"), &json!("INV-000001"), &Value::Null)
    );

    // The seed invoice, as a draft whose window closes 12 s after the rollup.
    let draft = live_invoice(&client, "acme").await;
    assert_eq!(draft["status"], "draft", "{draft}");
    assert_eq!(draft["number"], Value::Null);
    assert_eq!(draft["issued_at"], Value::Null);
    assert_eq!(totals(&draft), (6422, 642, 7064));
    let closes = at(&draft["finalizes_at"]);
    assert!(
        closes >= before.trunc_subsecs(0) + TimeDelta::seconds(12)
            && closes <= Utc::now() + TimeDelta::seconds(12),
        "finalizes_at {closes} is not rollup time + PT12S (rollup requested at {before})"
    );
    wait_until("billing.invoice.drafted is published", || async {
        !stream_messages(&js, "BILLING_EVENTS", "billing.invoice.drafted")
            .await
            .is_empty()
    })
    .await;
    let drafted = stream_messages(&js, "BILLING_EVENTS", "billing.invoice.drafted").await;
    assert_eq!(drafted.len(), 1);
    assert_eq!(drafted[0], draft, "the event is the whole draft");

    // Usage metered at the end of April arrives after the rollup: the draft reflects it.
    publish_usage(
        &js,
        &db,
        vec![record(dep, "100", "2026-04-30T23:59:00Z")],
        91,
    )
    .await;
    let absorbed = (6522, 652, 7174);
    let seen = poll(&client, &draft["id"], Duration::from_secs(10), |v| {
        totals(v) == absorbed
    })
    .await;
    assert_eq!(
        seen["status"], "draft",
        "absorbed while still a draft: {seen}"
    );
    assert_eq!(seen["id"], draft["id"], "a draft keeps its id");
    assert_eq!(at(&seen["finalizes_at"]), closes, "the window is not moved");
    let preview = admin(
        &client,
        "billing.tenant.acme.invoices.preview",
        json!({"period_start": APRIL}),
    )
    .await;
    assert_eq!(priced(&preview, true), priced(&seen, true));
    assert_eq!(at(&preview["finalizes_at"]), closes);

    // When the window closes the worker issues it, recomputed, numbered, announced.
    let issued = poll(&client, &draft["id"], Duration::from_secs(30), |v| {
        v["status"] == "issued"
    })
    .await;
    assert_eq!(issued["number"], "INV-000002");
    assert_eq!(issued["finalizes_at"], Value::Null);
    assert!(at(&issued["issued_at"]) >= closes, "{issued}");
    assert_eq!(totals(&issued), absorbed);
    wait_until("billing.invoice.issued is published for it", || async {
        stream_messages(&js, "BILLING_EVENTS", "billing.invoice.issued")
            .await
            .iter()
            .any(|e| e["id"] == draft["id"])
    })
    .await;
    let events = stream_messages(&js, "BILLING_EVENTS", "billing.invoice.issued").await;
    let event = events.iter().find(|e| e["id"] == draft["id"]).unwrap();
    assert_eq!(event, &issued, "the event is the whole issued invoice");

    // The quote engine, given the same plan, add-on and final usage, prices it identically.
    let quote = admin(
        &client,
        "billing.quote",
        json!({"plan": "studio", "addons": ["storage_50gb"], "usage": {"droplet_hours": "2260"},
               "period_start": APRIL}),
    )
    .await;
    assert_eq!(priced(&quote, false), priced(&issued, false));
    assert_eq!(totals(&quote), absorbed);

    // Usage after the issue is late: kept, reported, and the tax invoice does not change.
    publish_usage(&js, &db, vec![record(dep, "5", "2026-04-29T10:00:00Z")], 92).await;
    wait_until("the late usage is reported", || async {
        !stream_messages(&js, "BILLING_EVENTS", "billing.usage.late")
            .await
            .is_empty()
    })
    .await;
    let late = stream_messages(&js, "BILLING_EVENTS", "billing.usage.late").await;
    assert_eq!(
        late.len(),
        1,
        "usage inside the window was not late: {late:?}"
    );
    assert_eq!(
        (&late[0]["tenant_id"], &late[0]["quantity"]),
        (&json!("acme"), &json!("5"))
    );
    assert_eq!(get(&client, &draft["id"]).await, issued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_put_validates_grace_period() {
    let app = TestApp::with_worker().await;
    let client = app.client.clone();
    for bad in [
        json!("P32D"),
        json!("PT744H1S"),
        json!("P1M"),
        json!("1h"),
        json!("-PT1H"),
        json!("PT0.5S"),
        json!(""),
        json!(3600),
        json!(true),
    ] {
        let reply = invoicer::client::call_raw(
            &client,
            "billing.admin.tenants.put",
            json!({"tenant_id": "acme", "grace_period": bad})
                .to_string()
                .into_bytes(),
        )
        .await
        .unwrap();
        let err = reply.expect_err("a bad grace_period");
        assert_eq!(err.code, "bad_request", "{bad}");
    }
    let put = |body: Value| admin(&client, "billing.admin.tenants.put", body);
    assert_eq!(
        put(json!({"tenant_id": "acme", "grace_period": "P31D"})).await["grace_period"],
        "P31D"
    );
    // Omitted keeps it; other fields change alone.
    let kept = put(json!({"tenant_id": "acme", "tax_rate": "0.15"})).await;
    assert_eq!(
        (&kept["grace_period"], &kept["tax_rate"]),
        (&json!("P31D"), &json!("0.15"))
    );
    assert_eq!(
        put(json!({"tenant_id": "acme", "grace_period": "p1dt12h"})).await["grace_period"],
        "P1DT12H"
    );
    // null returns the tenant to the platform default.
    assert_eq!(
        put(json!({"tenant_id": "acme", "grace_period": null})).await["grace_period"],
        Value::Null
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_reruns_keep_an_open_window_and_an_admin_issue_finalizes_early() {
    let mut app = TestApp::with_worker().await;
    let (db, client, js) = (app.db.clone(), app.client.clone(), app.js.clone());
    load_seed_catalog(&client).await;
    admin(
        &client,
        "billing.admin.tenants.put",
        json!({"tenant_id": "acme", "grace_period": "P1D"}),
    )
    .await;
    let dep = Uuid::new_v4();
    subscribe(&client, "acme", dep).await;

    let first = rollup(&js, json!({"period_start": APRIL})).await;
    assert_eq!(first["invoices_drafted"], 1, "{first}");
    let draft = live_invoice(&client, "acme").await;
    let closes = at(&draft["finalizes_at"]);
    assert_eq!(totals(&draft), (5750, 575, 6325));

    // A re-run without force skips the open draft.
    let skip = rollup(&js, json!({"period_start": APRIL})).await;
    assert_eq!(skip["invoices_skipped"], 1, "{skip}");

    // Usage, then a force re-run: recomputed in place, still a draft, the same window.
    publish_usage(
        &js,
        &db,
        vec![record(dep, "1500", "2026-04-20T00:00:00Z")],
        1,
    )
    .await;
    let forced = rollup(&js, json!({"period_start": APRIL, "force": true})).await;
    assert_eq!(
        (&forced["invoices_drafted"], &forced["invoices_issued"]),
        (&json!(1), &json!(0)),
        "{forced}"
    );
    let recomputed = live_invoice(&client, "acme").await;
    assert_eq!(recomputed["id"], draft["id"]);
    assert_eq!(recomputed["status"], "draft");
    assert_eq!(at(&recomputed["finalizes_at"]), closes);
    assert_eq!(recomputed["subtotal_cents"], 5750 + 12);
    // A forced draft run leaves it a draft with its window too.
    let draft_run = rollup(
        &js,
        json!({"period_start": APRIL, "force": true, "draft": true}),
    )
    .await;
    assert_eq!(draft_run["invoices_drafted"], 1, "{draft_run}");
    assert_eq!(
        at(&live_invoice(&client, "acme").await["finalizes_at"]),
        closes
    );
    // The window opened once, so it was announced once.
    assert_eq!(outbox_rows(&db, "%:draft").await, 1);

    // More usage, stored; the admin issues at once, without waiting for the refresher: the
    // invoice is recomputed from everything stored, numbered, and its window is closed.
    publish_usage(&js, &db, vec![record(dep, "20", "2026-04-21T00:00:00Z")], 2).await;
    let issued = admin(
        &client,
        "billing.admin.invoices.issue",
        json!({"id": draft["id"]}),
    )
    .await;
    assert_eq!(issued["id"], draft["id"]);
    assert_eq!(issued["status"], "issued");
    assert_eq!(issued["number"], "INV-000001");
    assert_eq!(issued["finalizes_at"], Value::Null);
    assert_eq!(issued["subtotal_cents"], 5750 + 32, "{issued}");
    assert_eq!(issued, get(&client, &draft["id"]).await);
    let quote = admin(
        &client,
        "billing.quote",
        json!({"plan": "studio", "addons": ["storage_50gb"], "usage": {"droplet_hours": "1520"},
               "period_start": APRIL}),
    )
    .await;
    assert_eq!(priced(&quote, false), priced(&issued, false));
    wait_until("the issued event is relayed", || async {
        invoicer::store::outbox::backlog(&db.pool).await.unwrap() == 0
    })
    .await;
    let events = stream_messages(&js, "BILLING_EVENTS", "billing.invoice.issued").await;
    assert_eq!(events, vec![issued.clone()]);
    // Issuing again is a conflict, like any illegal transition.
    let again = invoicer::client::call_raw(
        &client,
        "billing.admin.invoices.issue",
        json!({"id": draft["id"]}).to_string().into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(again.expect_err("issued twice").code, "conflict");

    // Now usage is late, and a force re-run supersedes at once, window or not: the voided tax
    // invoice's replacement is issued in the same transaction.
    publish_usage(&js, &db, vec![record(dep, "8", "2026-04-22T00:00:00Z")], 3).await;
    let superseded = rollup(&js, json!({"period_start": APRIL, "force": true})).await;
    assert_eq!(
        (
            &superseded["invoices_issued"],
            &superseded["invoices_drafted"]
        ),
        (&json!(1), &json!(0)),
        "{superseded}"
    );
    let new = live_invoice(&client, "acme").await;
    assert_eq!(new["supersedes"], draft["id"]);
    assert_eq!(
        (&new["status"], &new["number"], &new["finalizes_at"]),
        (&json!("issued"), &json!("INV-000002"), &Value::Null)
    );
    assert_eq!(new["subtotal_cents"], 5750 + 40);
    assert_eq!(outbox_rows(&db, "usage-late:%").await, 1);
    // The grace-draft loop stops with the rest of the worker, cleanly.
    app.stop_worker(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_draft_voided_by_an_admin_is_announced_and_never_issued() {
    let app = TestApp::with_worker_args(grace("P1D")).await;
    let (db, client, js) = (app.db.clone(), app.client.clone(), app.js.clone());
    load_seed_catalog(&client).await;
    subscribe(&client, "acme", Uuid::new_v4()).await;
    rollup(&js, json!({"period_start": APRIL})).await;
    let draft = live_invoice(&client, "acme").await;
    let voided = admin(
        &client,
        "billing.admin.invoices.void",
        json!({"id": draft["id"], "reason": "customer left"}),
    )
    .await;
    assert_eq!(
        (&voided["status"], &voided["finalizes_at"]),
        (&json!("void"), &Value::Null)
    );
    wait_until("the voiding is announced", || async {
        stream_messages(&js, "BILLING_EVENTS", "billing.invoice.voided")
            .await
            .iter()
            .any(|e| e["id"] == draft["id"])
    })
    .await;
    // A finalizer whose clock is past the old window finds nothing to issue.
    let later = at(&draft["finalizes_at"]) + TimeDelta::seconds(1);
    let round = invoicer::rollup::finalize::round(&db.pool, 100, later, None)
        .await
        .unwrap();
    assert_eq!(round.issued, 0);
    assert_eq!(get(&client, &draft["id"]).await["status"], "void");
}

/// Every invoice issued exactly once: one live invoice per tenant, numbers 1..=n without gaps,
/// one `billing.invoice.issued` per invoice in the stream.
async fn issued_exactly_once(db: &TestDb, js: &async_nats::jetstream::Context, n: i64) {
    let (count, tenants, min, max, drafts): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT tenant_id), min(number), max(number),
                count(*) FILTER (WHERE status = 'draft')
         FROM invoices",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((count, tenants, min, max, drafts), (n, n, 1, n, 0));
    wait_until("the outbox drains", || async {
        invoicer::store::outbox::backlog(&db.pool).await.unwrap() == 0
    })
    .await;
    let issued = stream_messages(js, "BILLING_EVENTS", "billing.invoice.issued").await;
    let ids: HashSet<&str> = issued.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!((issued.len() as i64, ids.len() as i64), (n, n));
    let numbers: HashSet<&str> = issued
        .iter()
        .map(|e| e["number"].as_str().unwrap())
        .collect();
    assert_eq!(numbers.len() as i64, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_finalize_many_drafts_due_together_each_once_numbers_gapless() {
    const WINDOWED: i64 = 300;
    const PLAIN: i64 = 60;
    let args = WorkerArgs {
        rollup_batch_size: 20,
        ..grace("PT4S")
    };
    let mut app = TestApp::with_worker_args(args.clone()).await;
    app.run_worker(args).await;
    let (db, client, js) = (app.db.clone(), app.client.clone(), app.js.clone());
    load_seed_catalog(&client).await;
    app.bulk_tenants("w", WINDOWED, None).await;
    // Tenants issued at once take numbers in the same stretch as the finalizers.
    app.bulk_tenants("p", PLAIN, Some("PT0S")).await;

    let done = rollup(&js, json!({"period_start": APRIL})).await;
    assert_eq!(
        (&done["invoices_drafted"], &done["invoices_issued"]),
        (&json!(WINDOWED), &json!(PLAIN)),
        "{done}"
    );
    let spread: (DateTime<Utc>, DateTime<Utc>) =
        sqlx::query_as("SELECT min(finalizes_at), max(finalizes_at) FROM invoices")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    println!("{WINDOWED} drafts due from {} to {}", spread.0, spread.1);
    wait_until("every draft is issued", || async {
        let drafts: i64 =
            sqlx::query_scalar("SELECT count(*) FROM invoices WHERE status = 'draft'")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        drafts == 0
    })
    .await;
    issued_exactly_once(&db, &js, WINDOWED + PLAIN).await;
    let drafted = stream_messages(&js, "BILLING_EVENTS", "billing.invoice.drafted").await;
    assert_eq!(drafted.len() as i64, WINDOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_drafts_finalize_then_each_is_issued_exactly_once() {
    const TENANTS: i64 = 1500;
    let mut app = TestApp::start().await;
    app.set_env("GRACE_PERIOD", "PT5S");
    // Small batches so the kill lands between finalizer commits.
    app.set_env("ROLLUP_BATCH_SIZE", 10);
    let first = app.spawn_worker().await;
    let (db, client, js) = (app.db.clone(), app.client.clone(), app.js.clone());
    load_seed_catalog(&client).await;
    app.bulk_tenants("t", TENANTS, None).await;
    invoicer::client::request_rollup(
        &js,
        &json!({"period_start": APRIL, "request_id": "grace-crash"}),
        "grace-crash",
    )
    .await
    .unwrap();
    let issued = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM invoices WHERE status = 'issued'")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    wait_until("drafts are being finalized", || async {
        issued().await >= 50
    })
    .await;
    app.workers[first].kill();
    let at_kill = issued().await;
    println!("{at_kill} of {TENANTS} issued when the worker was killed");
    assert!(
        at_kill < TENANTS,
        "the kill must land while drafts finalize (had {at_kill} of {TENANTS} issued)"
    );

    let second = app.spawn_worker().await;
    let done = completed(&js, "grace-crash").await;
    assert_eq!(done["invoices_drafted"], TENANTS, "{done}");
    assert_eq!(done["invoices_issued"], 0, "{done}");
    wait_until("every draft is issued", || async {
        issued().await == TENANTS
    })
    .await;
    issued_exactly_once(&db, &js, TENANTS).await;
    app.workers[second].kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_change_at_noon_on_the_16th_bills_15_days_on_each_plan() {
    let app = TestApp::with_worker().await;
    let (db, client, js) = (app.db.clone(), app.client.clone(), app.js.clone());
    load_seed_catalog(&client).await;
    admin(
        &client,
        "billing.admin.tenants.put",
        json!({"tenant_id": "acme"}),
    )
    .await;
    admin(
        &client,
        "billing.admin.plans.put",
        json!({"code": "pro", "name": "Pro", "currency": "AUD", "base_price": "90.00",
               "included": {"droplet_hours": "1488"}, "overage": {"droplet_hours": {"unit_price": "0.01"}}}),
    )
    .await;
    let dep = Uuid::new_v4();
    let change = "2026-04-16T12:00:00Z";
    for (plan, from, to) in [
        ("studio", "2026-01-01T00:00:00Z", Some(change)),
        ("pro", change, None),
    ] {
        admin(
            &client,
            "billing.admin.subscriptions.put",
            json!({"id": Uuid::new_v4(), "tenant_id": "acme", "deployment_id": dep, "plan": plan,
                   "addons": [], "started_at": from, "ended_at": to}),
        )
        .await;
    }
    // 800 droplet-hours on each side of the change, each over half an allowance.
    publish_usage(
        &js,
        &db,
        vec![
            record(dep, "800", "2026-04-10T00:00:00Z"),
            record(dep, "800", "2026-04-20T00:00:00Z"),
        ],
        2,
    )
    .await;
    let preview = admin(
        &client,
        "billing.tenant.acme.invoices.preview",
        json!({"period_start": APRIL}),
    )
    .await;
    rollup(&js, json!({"period_start": APRIL})).await;
    let inv = live_invoice(&client, "acme").await;
    let lines: Vec<(String, String, i64)> = inv["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["description"].as_str().unwrap().to_string(),
                l["quantity"].as_str().unwrap().to_string(),
                l["amount_cents"].as_i64().unwrap(),
            )
        })
        .collect();
    let line = |d: &str, q: &str, c: i64| (d.to_string(), q.to_string(), c);
    assert_eq!(
        lines,
        vec![
            line("Plan: Studio (15 of 30 days)", "1", 2500),
            line("Overage: droplet_hours (56 × $0.01)", "56", 56),
            line("Plan: Pro (15 of 30 days)", "1", 4500),
            line("Overage: droplet_hours (56 × $0.01)", "56", 56),
            line("GST 10%", "71.12", 711),
        ]
    );
    assert_eq!(priced(&preview, true), priced(&inv, true));
    // Each plan quoted for its own 15 days gives the same lines.
    let old = admin(
        &client,
        "billing.quote",
        json!({"plan": "studio", "usage": {"droplet_hours": "800"}, "period_start": APRIL,
               "active_from": "2026-04-01T00:00:00Z", "active_to": "2026-04-16T00:00:00Z"}),
    )
    .await;
    assert_eq!(priced(&old, false)[..2], priced(&inv, false)[..2]);
    let new = admin(
        &client,
        "billing.quote",
        json!({"plan": "pro", "usage": {"droplet_hours": "800"}, "period_start": APRIL,
               "active_from": change}),
    )
    .await;
    assert_eq!(priced(&new, false)[..2], priced(&inv, false)[2..4]);
}
