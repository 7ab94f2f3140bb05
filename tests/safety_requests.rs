//! Safe by construction: an operator's slip never bills the wrong thing (CONTRACT.md sections 3
//! and 5, v3). Overlapping periods, a reused `request_id`, a period that has not ended and a
//! tenant id with a typo, each through NATS and the database as a caller meets them.

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Duration;
use uuid::Uuid;

const APRIL: &str = "2026-04-01";

/// A tenant created through `tenants.put`, on Studio with the seed add-on, with April's usage of
/// the seed scenario (2,160 droplet-hours: 672 over the allowance).
async fn billed_tenant(app: &TestApp, tenant: &str) {
    app.ok("billing.admin.tenants.put", json!({ "tenant_id": tenant }))
        .await;
    let dep = Uuid::new_v4();
    subscribe(&app.client, tenant, dep).await;
    let before = app.scalar("SELECT count(*) FROM usage_records").await;
    let records: Vec<Value> = (0..3)
        .map(|k| {
            json!({"event_id": Uuid::new_v4(), "deployment_id": dep, "resource_kind": "droplet_hours",
                   "quantity": "720", "occurred_at": format!("2026-04-{:02}T12:00:00Z", 2 + 10 * k)})
        })
        .collect();
    publish_usage(&app.js, &app.db, records, before + 3).await;
}

/// How a rollup request ended: `("completed" | "rejected", event)`, whichever the stream holds
/// for it first.
async fn outcome(app: &TestApp, request_id: &str) -> (&'static str, Value) {
    wait_for(
        &format!("rollup request {request_id} completes or is rejected"),
        Duration::from_secs(60),
        || async {
            for (kind, subject) in [
                ("completed", "billing.rollup.completed"),
                ("rejected", "billing.rollup.rejected"),
            ] {
                let found = stream_messages(&app.js, "BILLING_EVENTS", subject)
                    .await
                    .into_iter()
                    .find(|e| {
                        e["request_id"] == request_id || e["request"]["request_id"] == request_id
                    });
                if let Some(e) = found {
                    return Some((kind, e));
                }
            }
            None
        },
    )
    .await
}

/// A request's `billing.rollup.completed`, failing with the rejection if it was rejected.
async fn completed_ok(app: &TestApp, request_id: &str) -> Value {
    match outcome(app, request_id).await {
        ("completed", e) => e,
        (_, e) => panic!("request {request_id} was rejected: {e}"),
    }
}

/// A request's `billing.rollup.rejected`, failing with the completed event if it ran.
async fn rejected(app: &TestApp, request_id: &str) -> Value {
    match outcome(app, request_id).await {
        ("rejected", e) => e,
        (_, e) => panic!("request {request_id} was expected to be rejected, but it ran: {e}"),
    }
}

/// The failure reported for `tenant` in a completed event.
fn failure_of(done: &Value, tenant: &str) -> String {
    done["tenants_failed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["tenant_id"] == tenant)
        .unwrap_or_else(|| panic!("{tenant} is not in tenants_failed: {done}"))["reason"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Live (not void) invoices of a tenant in the database, as `(period_start, period_end, status)`.
async fn live_periods(app: &TestApp, tenant: &str) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT period_start::text, period_end::text, status FROM invoices
         WHERE tenant_id = $1 AND status <> 'void' ORDER BY period_start",
    )
    .bind(tenant)
    .fetch_all(&app.db.pool)
    .await
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// 5. Overlapping periods
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_period_overlapping_a_live_invoice_fails_that_tenant_and_bills_the_others() {
    let app = TestApp::with_worker().await;
    load_seed_catalog(&app.client).await;
    for t in ["acme", "drafty", "fresh"] {
        billed_tenant(&app, t).await;
    }
    let april = app.request(json!({"tenant_ids": ["acme"]})).await;
    assert_eq!(completed_ok(&app, &april).await["invoices_issued"], 1);
    let draft = app
        .request(json!({"tenant_ids": ["drafty"], "draft": true}))
        .await;
    assert_eq!(completed_ok(&app, &draft).await["invoices_drafted"], 1);
    let acme_april = live_invoice(&app.client, "acme").await;
    let drafty_april = live_invoice(&app.client, "drafty").await;

    // The slip: a period from the 15th, overlapping April's invoice (and draft) by 16 days.
    let slip = app.request(json!({"period_start": "2026-04-15"})).await;
    let done = completed_ok(&app, &slip).await;
    assert_eq!(done["invoices_issued"], 1, "only `fresh` is billed: {done}");
    let acme = failure_of(&done, "acme");
    assert!(
        acme.contains("INV-000001") && acme.contains("2026-04"),
        "names the invoice it overlaps: {acme}"
    );
    let drafty = failure_of(&done, "drafty");
    assert!(
        drafty.contains(drafty_april["id"].as_str().unwrap()),
        "names the draft by its id: {drafty}"
    );
    assert_eq!(
        live_periods(&app, "acme").await,
        vec![("2026-04-01".into(), "2026-05-01".into(), "issued".into())],
        "acme keeps its one April invoice"
    );
    assert_eq!(
        live_periods(&app, "fresh").await,
        vec![("2026-04-15".into(), "2026-05-15".into(), "issued".into())]
    );

    // Forced, the slip still fails: force replaces the period's own invoice, not another's.
    let forced_slip = app
        .request(json!({"period_start": "2026-04-15", "force": true, "tenant_ids": ["acme"]}))
        .await;
    let done = completed_ok(&app, &forced_slip).await;
    assert!(failure_of(&done, "acme").contains("INV-000001"), "{done}");
    assert_eq!(done["invoices_issued"], 0, "{done}");
    // So does a period that starts with April's but ends elsewhere: it is another period.
    let half = app
        .request(json!({"period_end": "2026-04-16", "force": true, "tenant_ids": ["acme"]}))
        .await;
    let done = completed_ok(&app, &half).await;
    assert!(failure_of(&done, "acme").contains("INV-000001"), "{done}");

    // A forced re-run of April itself supersedes as before.
    let rerun = app
        .request(json!({"force": true, "tenant_ids": ["acme"]}))
        .await;
    let done = completed_ok(&app, &rerun).await;
    assert_eq!(
        (&done["invoices_issued"], &done["tenants_failed"]),
        (&json!(1), &json!([])),
        "{done}"
    );
    let old = app
        .ok(
            "billing.admin.invoices.get",
            json!({"id": acme_april["id"]}),
        )
        .await;
    assert_eq!(
        (old["status"].as_str(), old["void_reason"].as_str()),
        (Some("void"), Some("superseded"))
    );
    let replacement = live_invoice(&app.client, "acme").await;
    assert_eq!(replacement["supersedes"], acme_april["id"]);

    // Voided, an invoice no longer blocks a period that overlaps it.
    app.ok(
        "billing.admin.invoices.void",
        json!({"id": drafty_april["id"], "reason": "wrong period"}),
    )
    .await;
    let after_void = app
        .request(json!({"period_start": "2026-04-15", "tenant_ids": ["drafty"]}))
        .await;
    let done = completed_ok(&app, &after_void).await;
    assert_eq!(done["invoices_issued"], 1, "{done}");
}

#[tokio::test]
async fn the_database_refuses_two_live_invoices_of_a_tenant_sharing_a_day() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (tenant_id) VALUES ('acme'), ('globex');
         INSERT INTO invoices (id, number, tenant_id, period_start, period_end, currency, status,
                               subtotal_cents, tax_cents, total_cents, issued_at, recipient_name)
         VALUES (gen_random_uuid(), 1, 'acme', '2026-04-01', '2026-05-01', 'AUD', 'issued',
                 100, 10, 110, now(), 'acme')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let insert =
        |tenant: &'static str, start: &'static str, end: &'static str, status: &'static str| {
            let pool = db.pool.clone();
            async move {
                sqlx::query(
                "INSERT INTO invoices (id, tenant_id, period_start, period_end, currency, status,
                                       subtotal_cents, tax_cents, total_cents, voided_at)
                 VALUES (gen_random_uuid(), $1, $2::date, $3::date, 'AUD', $4, 0, 0, 0,
                         CASE WHEN $4 = 'void' THEN now() END)",
            )
            .bind(tenant)
            .bind(start)
            .bind(end)
            .bind(status)
            .execute(&pool)
            .await
            }
        };
    let err = insert("acme", "2026-04-15", "2026-05-15", "draft")
        .await
        .expect_err("an overlapping live draft is refused");
    let code = err
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.to_string());
    assert_eq!(
        code.as_deref(),
        Some("23P01"),
        "an exclusion violation: {err}"
    );
    // Days that are not shared, a void invoice, and another tenant are all fine.
    insert("acme", "2026-05-01", "2026-06-01", "draft")
        .await
        .unwrap();
    insert("acme", "2026-04-15", "2026-05-15", "void")
        .await
        .unwrap();
    insert("globex", "2026-04-15", "2026-05-15", "draft")
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// 10. A reused request_id
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_request_id_reused_with_other_parameters_is_rejected_naming_the_first_request() {
    let app = TestApp::with_worker().await;
    load_seed_catalog(&app.client).await;
    billed_tenant(&app, "acme").await;
    let first = json!({"period_start": APRIL, "request_id": "month-end"});
    invoicer::client::request_rollup(&app.js, &first, "msg-1")
        .await
        .unwrap();
    assert_eq!(completed_ok(&app, "month-end").await["invoices_issued"], 1);

    // The same id for March (another msg id, so the stream keeps it): rejected, not run.
    let march = json!({"period_start": "2026-03-01", "request_id": "month-end"});
    invoicer::client::request_rollup(&app.js, &march, "msg-2")
        .await
        .unwrap();
    let refused = wait_for(
        "the reused request_id is rejected",
        Duration::from_secs(30),
        || async {
            stream_messages(&app.js, "BILLING_EVENTS", "billing.rollup.rejected")
                .await
                .into_iter()
                .next()
        },
    )
    .await;
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains("\"month-end\"") && reason.contains("2026-04"),
        "names the request it collides with: {reason}"
    );
    assert_eq!(refused["request"], march);

    // The same id with the same parameters is the same run, repeated: nothing new happens.
    invoicer::client::request_rollup(&app.js, &first, "msg-3")
        .await
        .unwrap();
    let after = app.request(json!({"period_start": "2026-03-01"})).await;
    completed_ok(&app, &after).await;
    let completions = stream_messages(&app.js, "BILLING_EVENTS", "billing.rollup.completed").await;
    assert_eq!(
        completions
            .iter()
            .filter(|e| e["request_id"] == "month-end")
            .count(),
        1,
        "one run, one completed event"
    );
    assert_eq!(
        stream_messages(&app.js, "BILLING_EVENTS", "billing.rollup.rejected")
            .await
            .len(),
        1,
        "the idempotent repeat is not rejected"
    );
    assert_eq!(
        live_periods(&app, "acme").await.len(),
        2,
        "April, then March"
    );
}

// ---------------------------------------------------------------------------------------------
// 11. A period that has not ended
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_period_that_has_not_ended_is_rejected_unless_it_is_a_draft_run() {
    let app = TestApp::with_worker().await;
    load_seed_catalog(&app.client).await;
    billed_tenant(&app, "acme").await;
    let now = chrono::Utc::now();
    let this_month = invoicer::period::Period::month_before(now + chrono::Months::new(1));
    let last_month = invoicer::period::Period::month_before(now);

    for start in [this_month.start.to_string(), "2030-01-01".to_string()] {
        let id = app
            .request(json!({"period_start": start, "tenant_ids": ["acme"]}))
            .await;
        let refused = rejected(&app, &id).await;
        assert!(
            refused["reason"]
                .as_str()
                .unwrap()
                .starts_with("period has not ended"),
            "{refused}"
        );
    }
    assert!(
        live_periods(&app, "acme").await.is_empty(),
        "nothing billed"
    );

    // A draft run may look at the month so far.
    let draft = app
        .request(json!({"period_start": this_month.start, "draft": true, "tenant_ids": ["acme"]}))
        .await;
    assert_eq!(completed_ok(&app, &draft).await["invoices_drafted"], 1);
    // The month that ended at midnight is what the scheduler asks for on the 1st: it runs.
    let ended = app
        .request(json!({"period_start": last_month.start, "tenant_ids": ["acme"]}))
        .await;
    assert_eq!(completed_ok(&app, &ended).await["invoices_issued"], 1);

    // The operator's command says so and exits 4.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_invoicer"))
        .args([
            "rollup", "--period", "2030-01", "--tenant", "acme", "--wait",
        ])
        .env("NATS_URL", &app.nodes[0].url)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("invoicer rollup --wait finishes")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("period has not ended"), "{stderr}");
    assert_eq!(
        live_periods(&app, "acme").await.len(),
        2,
        "the draft and last month"
    );
}

// ---------------------------------------------------------------------------------------------
// 12. A tenant id with a typo
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_typo_in_a_tenant_id_never_creates_a_tenant_that_is_billed() {
    let app = TestApp::with_worker().await;
    load_seed_catalog(&app.client).await;
    billed_tenant(&app, "acme").await;

    let typo = app
        .call(
            "billing.admin.subscriptions.put",
            json!({"id": Uuid::new_v4(), "tenant_id": "acmee", "deployment_id": Uuid::new_v4(),
                   "plan": "studio", "addons": ["storage_50gb"],
                   "started_at": "2026-01-01T00:00:00Z"}),
        )
        .await;
    let err = typo.expect_err("a subscription of an unknown tenant is refused");
    assert_eq!(
        (err.code.as_str(), err.status.as_deref()),
        ("not_found", Some("404")),
        "{err:?}"
    );
    assert!(err.message.contains("acmee"), "names the tenant: {err:?}");
    assert_eq!(
        app.scalar("SELECT count(*) FROM tenants WHERE tenant_id = 'acmee'")
            .await,
        0,
        "no tenant was created"
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM subscriptions WHERE tenant_id = 'acmee'")
            .await,
        0,
        "nothing was stored"
    );

    // A rollup naming it reports it and bills the others; forced as a draft, too. A tenant that
    // exists but has no subscription is told apart.
    app.ok("billing.admin.tenants.put", json!({"tenant_id": "idle"}))
        .await;
    for extra in [json!({}), json!({"force": true, "draft": true})] {
        let mut body = json!({"tenant_ids": ["acme", "acmee", "idle"]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let id = app.request(body).await;
        let done = completed_ok(&app, &id).await;
        assert_eq!(failure_of(&done, "acmee"), "unknown tenant", "{done}");
        assert_eq!(
            failure_of(&done, "idle"),
            "no subscription active in 2026-04",
            "{done}"
        );
        assert_eq!(
            done["tenants_failed"].as_array().unwrap().len(),
            2,
            "{done}"
        );
    }
    assert_eq!(
        app.scalar("SELECT count(*) FROM invoices WHERE tenant_id = 'acmee'")
            .await,
        0
    );
    assert_eq!(live_periods(&app, "acme").await.len(), 1);

    // Its preview is not found either (a tenant's own subject, so a tenant user could ask).
    let preview = app
        .call(
            "billing.tenant.acmee.invoices.preview",
            json!({"period_start": APRIL}),
        )
        .await;
    let err = preview.expect_err("no preview for an unknown tenant");
    assert_eq!(err.code, "not_found", "{err:?}");
    assert!(err.message.contains("acmee"), "{err:?}");
}
