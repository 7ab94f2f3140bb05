//! Two promises of CONTRACT.md v3, end to end on real services:
//!
//! - 5b: an issued invoice's document never changes. The seller and the recipient it shows are
//!   those in force when it was issued, whichever path issued it; a later rename of the tenant,
//!   or a replica configured with another `SELLER_*`, does not rewrite it. A draft is not a tax
//!   invoice and shows the current details.
//! - 8: the events of one invoice are published in the order they happened (issued before paid
//!   or voided), even when the issued event's publish fails and backs off, and whatever number
//!   of relays run.

mod common;

use async_nats::jetstream;
use base64::Engine;
use common::*;
use invoicer::config::{SellerArgs, WorkerArgs};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

const SELLER: &str = "Droplet Cloud Pty Ltd";
const SELLER_ABN: &str = "51 824 753 556";
const OTHER_SELLER: &str = "Other Cloud Holdings Ltd";
const OTHER_SELLER_ABN: &str = "53 004 085 616";
const OLD_ABN: &str = "88 000 014 675";
const NEW_ABN: &str = "83 914 571 673";

// ---------------------------------------------------------------------------------------------
// Documents frozen at issue (CONTRACT.md 5b).
// ---------------------------------------------------------------------------------------------

/// A worker whose supplier is another company than the test seller's.
fn other_seller_worker() -> WorkerArgs {
    WorkerArgs {
        seller: SellerArgs {
            seller_name: Some(OTHER_SELLER.into()),
            seller_abn: Some(OTHER_SELLER_ABN.into()),
            seller_address: Some("77 Elsewhere Avenue\nPerth WA 6000".into()),
        },
        ..WorkerArgs::default()
    }
}

/// Legal details as `tenants.put` takes them: the old ones, in force when invoices are issued.
fn old_details(tenant: &str) -> Value {
    json!({"tenant_id": tenant, "legal_name": format!("{tenant} Old Name Pty Ltd"),
           "abn": OLD_ABN, "address": format!("1 Old Street\nHobart TAS 7000 ({tenant})")})
}

/// The same tenant renamed, with another ABN and address.
fn new_details(tenant: &str) -> Value {
    json!({"tenant_id": tenant, "legal_name": format!("{tenant} New Name Holdings Ltd"),
           "abn": NEW_ABN, "address": format!("2 New Road\nDarwin NT 0800 ({tenant})")})
}

/// Tenants with the old legal details, each on plan Studio with 100,000 droplet-hours in April
/// 2026: $1,146.88, so the recipient's ABN is on the document too.
async fn big_tenants(app: &TestApp, tenants: &[&str]) {
    load_seed_catalog(&app.client).await;
    let mut records = Vec::new();
    for tenant in tenants {
        app.ok("billing.admin.tenants.put", old_details(tenant))
            .await;
        let deployment = Uuid::new_v4();
        subscribe(&app.client, tenant, deployment).await;
        records.push(
            json!({"event_id": Uuid::new_v4(), "deployment_id": deployment,
            "resource_kind": "droplet_hours", "quantity": "100000",
            "occurred_at": "2026-04-10T00:00:00Z"}),
        );
    }
    let stored = count(&app.db, "SELECT count(*) FROM usage_records").await;
    publish_usage(&app.js, &app.db, records, stored + tenants.len() as i64).await;
}

async fn rename(app: &TestApp, tenants: &[&str]) {
    for tenant in tenants {
        app.ok("billing.admin.tenants.put", new_details(tenant))
            .await;
    }
}

/// The tenant's April invoice that is not void.
async fn live(app: &TestApp, tenant: &str) -> Value {
    let list = app
        .ok(
            "billing.admin.invoices.list",
            json!({"tenant_id": tenant, "period_start": "2026-04-01"}),
        )
        .await;
    list["invoices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["status"] != "void")
        .unwrap_or_else(|| panic!("{tenant} has no live April invoice: {list}"))
        .clone()
}

fn id_of(invoice: &Value) -> String {
    invoice["id"].as_str().unwrap().to_string()
}

/// A rendered document, as the tenant (HTML) and as the admin (PDF, as text).
struct Document {
    html: String,
    pdf_text: String,
}

impl Document {
    /// The supplier block and the recipient block of the HTML, exactly as served.
    fn parties(&self) -> String {
        let cut = |from: &str, to: &str| {
            let at = self.html.find(from).unwrap_or_else(|| panic!("no {from}"));
            let len = self.html[at..]
                .find(to)
                .unwrap_or_else(|| panic!("no {to}"));
            self.html[at..at + len].to_string()
        };
        cut("<div class=\"supplier\">", "<section class=\"facts-box\">")
            + &cut("<section class=\"party\">", "</section>")
    }
}

async fn render(app: &TestApp, tenant: &str, id: &str) -> Document {
    let html = app
        .ok(
            &format!("billing.tenant.{tenant}.invoices.render"),
            json!({ "id": id }),
        )
        .await;
    let pdf = app
        .ok(
            "billing.admin.invoices.render",
            json!({"id": id, "format": "pdf"}),
        )
        .await;
    let pdf = base64::engine::general_purpose::STANDARD
        .decode(pdf["body"].as_str().expect("a base64 body"))
        .unwrap();
    let text = pdf_extract::extract_text_from_mem(&pdf).expect("a readable PDF");
    Document {
        html: html["body"].as_str().expect("an HTML body").to_string(),
        pdf_text: text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// Who a document names, in its HTML and in its PDF: the seller's name and ABN, the recipient's
/// name, ABN and first address line.
fn assert_names(doc: &Document, what: &str, seller: (&str, &str), recipient: &Value) {
    let name = recipient["legal_name"].as_str().unwrap();
    let abn = recipient["abn"].as_str().unwrap();
    let street = recipient["address"]
        .as_str()
        .unwrap()
        .lines()
        .next()
        .unwrap();
    for (format, text) in [("HTML", &doc.html), ("PDF", &doc.pdf_text)] {
        for want in [
            seller.0.to_string(),
            format!("ABN {}", seller.1),
            name.to_string(),
            format!("ABN {abn}"),
            street.to_string(),
        ] {
            assert!(
                text.contains(&want),
                "{what}: the {format} document does not say {want:?}:\n{}",
                if format == "HTML" {
                    doc.parties()
                } else {
                    text.clone()
                }
            );
        }
    }
}

/// The main case of CONTRACT.md 5b (v3): an invoice issued by a rollup, rendered; the tenant
/// renamed (legal name, ABN, address) and the worker replaced by one with another `SELLER_*`;
/// rendered again, the issued invoice's document is the same, byte for byte, in HTML and in the
/// PDF's text, while a draft's follows the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issued_invoice_keeps_its_seller_and_recipient_after_a_rename_and_a_new_seller() {
    let mut app = TestApp::with_worker_args(seller_worker()).await;
    big_tenants(&app, &["issued", "drafty"]).await;
    let done = rollup(
        &app.js,
        json!({"period_start": "2026-04-01", "tenant_ids": ["issued"]}),
    )
    .await;
    assert_eq!(done["invoices_issued"], 1, "{done}");
    let done = rollup(
        &app.js,
        json!({"period_start": "2026-04-01", "tenant_ids": ["drafty"], "draft": true}),
    )
    .await;
    assert_eq!(done["invoices_drafted"], 1, "{done}");
    let issued = id_of(&live(&app, "issued").await);
    let draft = id_of(&live(&app, "drafty").await);

    let before = render(&app, "issued", &issued).await;
    assert_names(
        &before,
        "issued, before",
        (SELLER, SELLER_ABN),
        &old_details("issued"),
    );
    let draft_before = render(&app, "drafty", &draft).await;
    assert_names(
        &draft_before,
        "draft, before",
        (SELLER, SELLER_ABN),
        &old_details("drafty"),
    );

    rename(&app, &["issued", "drafty"]).await;
    app.stop_worker(0).await;
    app.run_worker(other_seller_worker()).await;

    let after = render(&app, "issued", &issued).await;
    assert_eq!(
        after.parties(),
        before.parties(),
        "the issued invoice's seller and recipient changed"
    );
    assert_eq!(after.html, before.html, "the issued invoice's HTML changed");
    assert_eq!(
        after.pdf_text, before.pdf_text,
        "the issued invoice's PDF text changed"
    );
    assert!(
        !after.html.contains(OTHER_SELLER) && !after.pdf_text.contains("New Name"),
        "the issued invoice names the new seller or the new name"
    );

    // A draft is not a tax invoice: it shows who is in force now.
    let draft_after = render(&app, "drafty", &draft).await;
    assert_names(
        &draft_after,
        "draft, after",
        (OTHER_SELLER, OTHER_SELLER_ABN),
        &new_details("drafty"),
    );
    assert!(!draft_after.html.contains("Old Name"));
}

/// Every other issuing path keeps the details in force when it issued: the grace-window
/// finalizer, the admin's `issue` of a draft, and a `force` re-run that supersedes (whose
/// replacement is issued with the details in force then, while the voided original keeps its
/// own). Voiding an issued invoice keeps them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_issuing_path_keeps_the_details_in_force_when_it_issued() {
    let mut app = TestApp::with_worker_args(seller_worker()).await;
    let tenants = ["graced", "manual", "forced"];
    big_tenants(&app, &tenants).await;
    // graced: a one-second window, closed by the finalizer; manual: a draft run's draft,
    // issued by the admin; forced: issued now, superseded later.
    let mut graced = old_details("graced");
    graced["grace_period"] = json!("PT1S");
    app.ok("billing.admin.tenants.put", graced).await;
    let done = rollup(
        &app.js,
        json!({"period_start": "2026-04-01", "tenant_ids": ["graced", "forced"]}),
    )
    .await;
    assert_eq!(
        (&done["invoices_issued"], &done["invoices_drafted"]),
        (&json!(1), &json!(1)),
        "{done}"
    );
    rollup(
        &app.js,
        json!({"period_start": "2026-04-01", "tenant_ids": ["manual"], "draft": true}),
    )
    .await;
    let manual = id_of(&live(&app, "manual").await);
    app.ok("billing.admin.invoices.issue", json!({ "id": manual }))
        .await;
    let graced = wait_for(
        "the grace draft is finalized",
        Duration::from_secs(30),
        || async {
            let inv = live(&app, "graced").await;
            (inv["status"] == "issued").then(|| id_of(&inv))
        },
    )
    .await;
    let forced = id_of(&live(&app, "forced").await);
    let mut before = HashMap::new();
    for (tenant, id) in [
        ("graced", &graced),
        ("manual", &manual),
        ("forced", &forced),
    ] {
        let doc = render(&app, tenant, id).await;
        assert_names(&doc, tenant, (SELLER, SELLER_ABN), &old_details(tenant));
        before.insert(tenant, doc);
    }

    rename(&app, &tenants).await;
    app.stop_worker(0).await;
    app.run_worker(other_seller_worker()).await;

    for (tenant, id) in [
        ("graced", &graced),
        ("manual", &manual),
        ("forced", &forced),
    ] {
        let after = render(&app, tenant, id).await;
        assert_eq!(
            after.parties(),
            before[tenant].parties(),
            "{tenant}: the issued invoice's seller and recipient changed"
        );
        assert_eq!(
            after.pdf_text, before[tenant].pdf_text,
            "{tenant}: the PDF's text changed"
        );
    }

    // Superseded now: the replacement is issued under the new details and the new seller; the
    // voided original keeps what it was issued with.
    let done = rollup(
        &app.js,
        json!({"period_start": "2026-04-01", "tenant_ids": ["forced"], "force": true}),
    )
    .await;
    assert_eq!(done["invoices_issued"], 1, "{done}");
    let replacement = id_of(&live(&app, "forced").await);
    assert_ne!(replacement, forced);
    let old = render(&app, "forced", &forced).await;
    assert!(old.html.contains("VOID"), "the original is void");
    assert_eq!(
        old.parties(),
        before["forced"].parties(),
        "the superseded invoice's seller and recipient changed"
    );
    let new = render(&app, "forced", &replacement).await;
    assert_names(
        &new,
        "the replacement",
        (OTHER_SELLER, OTHER_SELLER_ABN),
        &new_details("forced"),
    );
    // Voided by the admin: still what it was issued with.
    app.ok(
        "billing.admin.invoices.void",
        json!({"id": manual, "reason": "ordered in error"}),
    )
    .await;
    let voided = render(&app, "manual", &manual).await;
    assert!(voided.html.contains("VOID"));
    assert_eq!(voided.parties(), before["manual"].parties());
}

/// The details a tenant gets after a second rename.
fn third_details(tenant: &str) -> Value {
    json!({"tenant_id": tenant, "legal_name": format!("{tenant} Third Name Ltd"),
           "abn": "12 004 044 937", "address": format!("3 Third Lane\nCairns QLD 4870 ({tenant})")})
}

/// What an issued invoice did not record is recorded by its first document, which every later
/// render repeats: the supplier of an invoice issued while documents were off (no `SELLER_*`),
/// and both parties of an invoice issued before parties were recorded (migration 0074; its
/// first document shows the details in force then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_issued_invoice_did_not_record_is_recorded_by_its_first_document() {
    let mut app = TestApp::with_worker().await;
    big_tenants(&app, &["unsold", "legacy"]).await;
    let done = rollup(&app.js, json!({"period_start": "2026-04-01"})).await;
    assert_eq!(done["invoices_issued"], 2, "{done}");
    let unsold = id_of(&live(&app, "unsold").await);
    let legacy = id_of(&live(&app, "legacy").await);
    let refused = app
        .call("billing.admin.invoices.render", json!({ "id": unsold }))
        .await
        .unwrap_err();
    assert_eq!(refused.code, "conflict", "documents are off: {refused:?}");
    // As if issued before migration 0074: nothing recorded (set-up, so the guard is bypassed).
    let mut tx = app.db.pool.begin().await.unwrap();
    sqlx::raw_sql("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE invoices SET recipient_name = NULL, recipient_abn = NULL,
           recipient_address = NULL WHERE id = $1",
    )
    .bind(legacy.parse::<Uuid>().unwrap())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    rename(&app, &["unsold", "legacy"]).await;
    app.stop_worker(0).await;
    app.run_worker(seller_worker()).await;
    let first_unsold = render(&app, "unsold", &unsold).await;
    assert_names(
        &first_unsold,
        "issued while documents were off",
        (SELLER, SELLER_ABN),
        &old_details("unsold"),
    );
    let first_legacy = render(&app, "legacy", &legacy).await;
    assert_names(
        &first_legacy,
        "issued before parties were recorded",
        (SELLER, SELLER_ABN),
        &new_details("legacy"),
    );

    for tenant in ["unsold", "legacy"] {
        app.ok("billing.admin.tenants.put", third_details(tenant))
            .await;
    }
    app.stop_worker(0).await;
    app.run_worker(other_seller_worker()).await;
    for (id, first) in [(&unsold, &first_unsold), (&legacy, &first_legacy)] {
        let tenant = if id == &unsold { "unsold" } else { "legacy" };
        let again = render(&app, tenant, id).await;
        assert_eq!(again.html, first.html, "{tenant}: the document changed");
        assert_eq!(again.pdf_text, first.pdf_text, "{tenant}: the PDF changed");
    }
}

/// The database's last line of defence: recorded parties cannot be changed, and an invoice
/// cannot be issued (numbered) without its recipient recorded in the same statement, whoever
/// writes it. A part not recorded yet can be filled in.
#[tokio::test]
async fn the_database_refuses_to_change_recorded_parties_or_to_issue_without_them() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (tenant_id) VALUES ('acme');
         INSERT INTO invoices (id, number, tenant_id, period_start, period_end, currency, status,
             subtotal_cents, tax_cents, total_cents, issued_at, recipient_name, recipient_abn)
         VALUES ('00000000-0000-0000-0000-000000000001', 1, 'acme', '2026-04-01', '2026-05-01',
             'AUD', 'issued', 0, 0, 0, now(), 'Acme Pty Ltd', '88000014675'),
                ('00000000-0000-0000-0000-000000000002', NULL, 'acme', '2026-05-01', '2026-06-01',
             'AUD', 'draft', 0, 0, 0, NULL, NULL, NULL);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let refused =
        |what: &str, result: Result<sqlx::postgres::PgQueryResult, sqlx::Error>| match result {
            Err(sqlx::Error::Database(e)) => {
                assert_eq!(e.code().as_deref(), Some("23514"), "{what}: {e}")
            }
            other => panic!("{what}: expected a refusal, got {other:?}"),
        };
    let run = |sql: &'static str| sqlx::query(sql).execute(&db.pool);
    refused(
        "renaming the recipient",
        run("UPDATE invoices SET recipient_name = 'Other' WHERE number = 1").await,
    );
    refused(
        "clearing the recipient's ABN",
        run("UPDATE invoices SET recipient_abn = NULL WHERE number = 1").await,
    );
    refused(
        "issuing a draft without its recipient",
        run(
            "UPDATE invoices SET status = 'issued', number = 2, issued_at = now()
             WHERE number IS NULL",
        )
        .await,
    );
    refused(
        "inserting an issued invoice without its recipient",
        run(
            "INSERT INTO invoices (id, number, tenant_id, period_start, period_end, currency,
               status, subtotal_cents, tax_cents, total_cents, issued_at)
             VALUES (gen_random_uuid(), 3, 'acme', '2026-06-01', '2026-07-01', 'AUD', 'issued',
               0, 0, 0, now())",
        )
        .await,
    );
    refused(
        "recording parties on a draft",
        run("UPDATE invoices SET recipient_name = 'Acme' WHERE number IS NULL").await,
    );
    // The supplier was not recorded (documents were off): it is filled in once, then final.
    run(
        "UPDATE invoices SET seller_name = 'Droplet Cloud Pty Ltd', seller_abn = '51824753556'
         WHERE number = 1",
    )
    .await
    .unwrap();
    refused(
        "changing the supplier once recorded",
        run("UPDATE invoices SET seller_name = 'Other Cloud' WHERE number = 1").await,
    );
    // What is not a party stays as free as before: paying it.
    run("UPDATE invoices SET status = 'paid', paid_at = now() WHERE number = 1")
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Events of one invoice in order (CONTRACT.md 8).
// ---------------------------------------------------------------------------------------------

/// Narrows `BILLING_EVENTS` so that it refuses `billing.invoice.issued` (JetStream answers "no
/// stream" for it, a failure the relay counts against the row and backs off from) and takes
/// everything else, or restores it.
async fn refuse_issued(js: &jetstream::Context, refuse: bool) {
    let mut stream = js.get_stream("BILLING_EVENTS").await.unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    let invoice_subjects: &[&str] = if refuse {
        &[
            "billing.invoice.paid",
            "billing.invoice.voided",
            "billing.invoice.drafted",
        ]
    } else {
        &["billing.invoice.>"]
    };
    config
        .subjects
        .retain(|s| !s.starts_with("billing.invoice."));
    config
        .subjects
        .extend(invoice_subjects.iter().map(|s| s.to_string()));
    js.update_stream(config).await.unwrap();
}

/// For every invoice, its events as stored in `BILLING_EVENTS`: (stream sequence, subject).
async fn events_by_invoice(app: &TestApp) -> HashMap<String, Vec<(u64, String)>> {
    let mut out: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    for e in app.events().await.events {
        if e.subject.starts_with("billing.invoice.") {
            out.entry(e.payload["id"].as_str().unwrap().to_string())
                .or_default()
                .push((e.seq, e.subject));
        }
    }
    out
}

/// The issued event of every invoice fails to publish (the stream refuses its subject) and backs
/// off; meanwhile each invoice is paid or voided, whose events the stream accepts. With two
/// replicas relaying, every invoice's events must still be in the stream in the order they
/// happened: issued, then paid or voided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_and_voided_events_never_overtake_an_issued_event_that_backs_off() {
    const TENANTS: i64 = 20;
    let mut app = TestApp::with_worker().await;
    app.run_worker(WorkerArgs::default()).await;
    load_seed_catalog(&app.client).await;
    app.bulk_tenants("t", TENANTS, None).await;
    refuse_issued(&app.js, true).await;

    let done = rollup(&app.js, json!({"period_start": "2026-04-01"})).await;
    assert_eq!(done["invoices_issued"], TENANTS, "{done}");
    wait_until(
        "every issued event has failed once and backs off",
        || async {
            count(
            &app.db,
            "SELECT count(*) FROM outbox WHERE subject = 'billing.invoice.issued' AND attempts > 0",
        )
        .await
            == TENANTS
        },
    )
    .await;

    let invoices = app
        .ok("billing.admin.invoices.list", json!({"limit": 500}))
        .await;
    for (i, inv) in invoices["invoices"].as_array().unwrap().iter().enumerate() {
        let id = id_of(inv);
        if i % 2 == 0 {
            app.ok("billing.admin.invoices.mark_paid", json!({ "id": id }))
                .await;
        } else {
            app.ok(
                "billing.admin.invoices.void",
                json!({"id": id, "reason": "test"}),
            )
            .await;
        }
    }
    // A later event with no invoice of its own: once it is in the stream, the relays have gone
    // past every row before it that was theirs to publish.
    let marker = rollup(&app.js, json!({"period_start": "2020-01-01"})).await;
    assert_eq!(marker["invoices_issued"], 0, "{marker}");

    refuse_issued(&app.js, false).await;
    app.outbox_drained(Duration::from_secs(60)).await;
    let events = events_by_invoice(&app).await;
    assert_eq!(events.len() as i64, TENANTS, "{events:?}");
    let mut out_of_order = Vec::new();
    for (id, mut evs) in events {
        evs.sort();
        let subjects: Vec<&str> = evs.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(subjects.len(), 2, "{id}: {evs:?}");
        if subjects[0] != "billing.invoice.issued" {
            out_of_order.push(format!("{id}: {evs:?}"));
        }
    }
    assert!(
        out_of_order.is_empty(),
        "{} of {TENANTS} invoices were announced out of order (stream seq, subject):\n{}",
        out_of_order.len(),
        out_of_order.join("\n")
    );
}

/// Tasks stopped when the test ends, however it ends.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The claim itself, with four relays claiming at once (straight on the outbox, no NATS): 300
/// invoices with three events each and unkeyed events between them; some first events fail
/// and back off, one is parked. No relay ever holds two events of one invoice at once, each
/// invoice's events are "published" in the order they were written, and a parked event holds
/// back the later events of its invoice, which follow it once it is put back in line.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relays_claiming_at_once_keep_each_invoices_events_in_order() {
    use invoicer::store::outbox::{self, Failure};
    const INVOICES: i64 = 300;
    let db = TestDb::new().await;
    // Written step by step, as a month end and its payments would be: every invoice's drafted
    // event, then issued, then paid, with an unkeyed event after each invoice's.
    sqlx::query(
        "INSERT INTO outbox (subject, msg_id, payload, ordering_key)
         SELECT CASE WHEN k THEN 'billing.invoice.e' ELSE 'billing.usage.late' END,
                CASE WHEN k THEN 'inv' || i || ':' || step ELSE 'late:' || i || ':' || step END,
                '{}', CASE WHEN k THEN 'invoice:' || i END
         FROM generate_series(1, 3) step, generate_series(1, $1::int) i, (VALUES (true), (false)) v(k)
         ORDER BY step, i, k DESC",
    )
    .bind(INVOICES)
    .execute(&db.pool)
    .await
    .unwrap();

    let in_flight: Arc<Mutex<HashSet<String>>> = Default::default();
    let published: Arc<Mutex<Vec<String>>> = Default::default();
    let failed_once: Arc<Mutex<HashSet<String>>> = Default::default();
    let park_13 = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let overlaps: Arc<Mutex<Vec<String>>> = Default::default();
    let relay = |n: usize| {
        let (pool, in_flight, published, failed_once, park_13, overlaps) = (
            db.pool.clone(),
            in_flight.clone(),
            published.clone(),
            failed_once.clone(),
            park_13.clone(),
            overlaps.clone(),
        );
        tokio::spawn(async move {
            loop {
                let claimed = outbox::claim(&pool, 40, Duration::from_secs(30))
                    .await
                    .unwrap();
                if claimed.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let mut done = Vec::new();
                let mut failures = Vec::new();
                for p in &claimed {
                    let Some((invoice, step)) = p.msg_id.split_once(':') else {
                        continue;
                    };
                    if p.msg_id.starts_with("late:") {
                        done.push(p.id);
                        continue;
                    }
                    if !in_flight.lock().unwrap().insert(invoice.to_string()) {
                        overlaps.lock().unwrap().push(format!(
                            "relay {n} claimed {} while another event of {invoice} was in flight",
                            p.msg_id
                        ));
                    }
                    // Every 7th invoice's first event fails once and backs off; invoice 13's
                    // is parked the first time.
                    let number: i64 = invoice[3..].parse().unwrap();
                    let first = step == "1";
                    if first && number == 13 && park_13.swap(false, Ordering::SeqCst) {
                        failures.push((p.id, true, invoice.to_string()));
                    } else if first
                        && number % 7 == 0
                        && failed_once.lock().unwrap().insert(invoice.to_string())
                    {
                        failures.push((p.id, false, invoice.to_string()));
                    } else {
                        published.lock().unwrap().push(p.msg_id.clone());
                        done.push(p.id);
                    }
                }
                tokio::task::yield_now().await;
                outbox::mark_published(&pool, &done).await.unwrap();
                let records: Vec<Failure> = failures
                    .iter()
                    .map(|(id, park, _)| Failure {
                        id: *id,
                        error: "refused".into(),
                        park: *park,
                        retry_in: Duration::from_millis(300),
                    })
                    .collect();
                outbox::record_failures(&pool, &records).await.unwrap();
                let mut flying = in_flight.lock().unwrap();
                for p in &claimed {
                    if let Some((invoice, _)) = p.msg_id.split_once(':') {
                        flying.remove(invoice);
                    }
                }
            }
        })
    };
    let _relays = AbortOnDrop((0..4).map(relay).collect());
    let overlapped = || !overlaps.lock().unwrap().is_empty();
    let others_waiting = "SELECT count(*) FROM outbox
                          WHERE published_at IS NULL AND msg_id NOT LIKE 'inv13:%'";
    wait_until("every event but the parked invoice's is out", || async {
        overlapped() || count(&db, others_waiting).await == 0
    })
    .await;
    let overlaps = overlaps.lock().unwrap().clone();
    assert!(overlaps.is_empty(), "{}", overlaps.join("\n"));
    let out_of_order = |published: &[String]| {
        let mut steps: HashMap<&str, Vec<&str>> = HashMap::new();
        for msg_id in published {
            let (invoice, step) = msg_id.split_once(':').unwrap();
            steps.entry(invoice).or_default().push(step);
        }
        let mut bad: Vec<String> = steps
            .into_iter()
            .filter(|(_, s)| !s.is_sorted())
            .map(|(invoice, s)| format!("{invoice}: {s:?}"))
            .collect();
        bad.sort();
        bad
    };
    let bad = out_of_order(&published.lock().unwrap());
    assert!(
        bad.is_empty(),
        "{} invoices' events published out of order (steps in publishing order): {}",
        bad.len(),
        bad.join(", ")
    );
    assert!(
        count(&db, "SELECT count(*) FROM outbox WHERE attempts > 0").await > INVOICES / 7,
        "first events failed and backed off"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM outbox WHERE msg_id LIKE 'inv13:%' AND published_at IS NULL"
        )
        .await,
        3,
        "the parked event holds back the later events of its invoice"
    );
    // Put back in line, it goes out (only its first attempt was refused), then the rest.
    assert_eq!(outbox::unpark(&db.pool, None).await.unwrap(), 1);
    wait_until("the parked invoice's events follow it", || async {
        count(
            &db,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        )
        .await
            == 0
    })
    .await;
    let published = published.lock().unwrap().clone();
    assert_eq!(
        published.len() as i64,
        INVOICES * 3,
        "every keyed event, once"
    );
    assert_eq!(out_of_order(&published), Vec::<String>::new());
}
