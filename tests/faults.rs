//! The fault suite (issue 7, part 2): real processes, each test with its own nats-server and
//! database ([`TestApp`]), faults injected from outside — SIGKILL and SIGTERM to workers, the
//! NATS server restarted on its store, database backends terminated, the database cut off
//! behind a proxy — and races run for real. After each, CONTRACT.md section 8 is checked end to
//! end: one live invoice per tenant, gapless numbers, exactly one `billing.invoice.issued` per
//! invoice in the stream, one `billing.rollup.completed` per request.
//!
//! Poison and duplicate usage, NATS down while events commit, and the million-record ingestion
//! test live with the usage and relay tests, not here.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const ITEMS_DONE: &str = "SELECT count(*) FROM rollup_items WHERE done_at IS NOT NULL";

/// Makes planning a rollup (writing its work items) take 2 s, so a test can kill the worker
/// that holds the request while it plans.
async fn slow_planning(app: &TestApp) {
    for sql in [
        "CREATE FUNCTION test_slow_plan() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$",
        "CREATE TRIGGER test_slow_plan AFTER INSERT ON rollup_items
         FOR EACH STATEMENT EXECUTE FUNCTION test_slow_plan()",
    ] {
        sqlx::query(sql).execute(&app.db.pool).await.unwrap();
    }
}

async fn fast_planning(app: &TestApp) {
    sqlx::query("DROP TRIGGER test_slow_plan ON rollup_items")
        .execute(&app.db.pool)
        .await
        .unwrap();
}

/// The worker whose session is asleep in the planning trigger.
async fn planner(app: &TestApp) -> usize {
    let name: String = wait_for(
        "a worker is planning the rollup",
        Duration::from_secs(60),
        || async {
            sqlx::query_scalar(
                "SELECT application_name FROM pg_stat_activity
                 WHERE datname = $1 AND wait_event = 'PgSleep' AND query LIKE '%rollup_items%'",
            )
            .bind(&app.db.name)
            .fetch_optional(&app.db.pool)
            .await
            .unwrap()
        },
    )
    .await;
    app.workers.iter().position(|w| w.name == name).unwrap()
}

/// Waits until at least `items` items are done and one of `candidates` is inside an item
/// transaction (it holds the lock of an item not yet done), and returns that worker.
async fn mid_item(app: &TestApp, items: i64, candidates: &[usize]) -> usize {
    let names: Vec<String> = candidates
        .iter()
        .map(|i| app.workers[*i].name.clone())
        .collect();
    let name: String = wait_for(
        &format!("{items} items are done and a worker is mid-item"),
        Duration::from_secs(60),
        || async {
            if app.scalar(ITEMS_DONE).await < items {
                return None;
            }
            // A row locked FOR UPDATE carries its locker's transaction id in xmax.
            sqlx::query_scalar(
                "SELECT a.application_name FROM rollup_items r
                 JOIN pg_stat_activity a ON a.backend_xid = r.xmax
                 WHERE a.datname = $1 AND a.application_name = ANY($2) AND r.done_at IS NULL
                 LIMIT 1",
            )
            .bind(&app.db.name)
            .bind(&names)
            .fetch_optional(&app.db.pool)
            .await
            .unwrap()
        },
    )
    .await;
    app.workers.iter().position(|w| w.name == name).unwrap()
}

/// Events in the stream that the outbox does not yet know are published: a relay is between
/// its publish and its bookkeeping. The stream is read first, so a positive answer means the
/// relay was mid-round when the outbox was read.
async fn relay_mid_round(app: &TestApp) -> bool {
    let mut s = app.js.get_stream("BILLING_EVENTS").await.unwrap();
    let in_stream = s.info().await.unwrap().state.messages as i64;
    let marked = app
        .scalar("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")
        .await;
    in_stream > marked
}

/// Kills `victims` (connected to NATS through `proxy`) while their relay waits for the acks of
/// events the stream has already stored: the proxy holds the server's replies, the relay
/// publishes the outbox's pending events, and the kill lands before it can mark them published.
async fn kill_while_relaying(app: &mut TestApp, proxy: &TcpProxy, victims: &[usize]) {
    proxy.hold_replies();
    wait_for(
        "a relay published events it has not heard back about",
        Duration::from_secs(60),
        || async { relay_mid_round(app).await.then_some(()) },
    )
    .await;
    for v in victims {
        app.workers[*v].kill();
    }
    proxy.release();
    assert!(
        relay_mid_round(app).await,
        "the kill left stored events unmarked in the outbox"
    );
}

/// Worker options connecting through `proxy`.
fn via(proxy: &TcpProxy) -> WorkerOpts {
    WorkerOpts {
        nats_url: Some(proxy.nats_url()),
        ..Default::default()
    }
}

fn report(name: &str, started: Instant, detail: String) {
    println!(
        "[fault] {name}: {detail}; {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// 1. SIGKILL at several points, with one worker and with two.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_one_worker_while_planning_mid_item_and_while_relaying() {
    const TENANTS: i64 = 2000;
    let started = Instant::now();
    let mut app = TestApp::start().await;
    app.set_env("ROLLUP_BATCH_SIZE", 20);
    app.seed(TENANTS).await;
    slow_planning(&app).await;
    let proxy = TcpProxy::to(app.nodes[0].port).await;
    app.spawn_worker_with(via(&proxy)).await;
    let id = app.request(json!({})).await;

    // Early: while it plans the request (before any item exists).
    let w = planner(&app).await;
    app.workers[w].kill();
    fast_planning(&app).await;
    let restarted = Instant::now();
    app.spawn_worker_with(via(&proxy)).await;
    // The request is back within 15 s of the kill (its delivery is released like an item's).
    wait_for(
        "the request is planned again",
        Duration::from_secs(60),
        || async { (app.scalar("SELECT count(*) FROM rollup_items").await > 0).then_some(()) },
    )
    .await;
    let replanned = restarted.elapsed().as_secs_f64();

    // Mid-batch: inside an item transaction, a third of the way through.
    let w = mid_item(&app, 30, &[1]).await;
    app.workers[w].kill();
    app.spawn_worker_with(via(&proxy)).await;

    // While the relay publishes: events stored in the stream, not yet marked in the outbox.
    wait_for("half the items", Duration::from_secs(60), || async {
        (app.scalar(ITEMS_DONE).await >= 50).then_some(())
    })
    .await;
    kill_while_relaying(&mut app, &proxy, &[2]).await;
    app.spawn_worker().await;

    let done = app.completed(&id, Duration::from_secs(120)).await;
    assert_eq!(done["invoices_issued"], TENANTS, "{done}");
    assert_eq!(done["invoices_skipped"], 0, "{done}");
    assert_eq!(done["tenants_failed"], json!([]), "{done}");
    let billing = app.assert_billed_once(TENANTS).await;
    assert_eq!(app.events().await.completed(&id).len(), 1);
    assert!(
        replanned <= 15.0,
        "the request was planned again {replanned:.1}s after the restart"
    );
    report(
        "SIGKILL, one worker",
        started,
        format!(
            "{TENANTS} tenants, 100 items; killed while planning (re-planned {replanned:.1}s \
             after the restart), mid-item, and while relaying; {} workers started; {} issued \
             events for {} invoices, 1 completed",
            app.workers.len(),
            billing.issued_events,
            billing.numbered_invoices
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_two_workers_the_survivor_takes_over() {
    const TENANTS: i64 = 2000;
    let started = Instant::now();
    let mut app = TestApp::start().await;
    app.set_env("ROLLUP_BATCH_SIZE", 20);
    app.seed(TENANTS).await;
    slow_planning(&app).await;
    let proxy = TcpProxy::to(app.nodes[0].port).await;
    app.spawn_worker_with(via(&proxy)).await;
    app.spawn_worker_with(via(&proxy)).await;
    let id = app.request(json!({})).await;

    // The worker planning the request dies; the other takes the request over within 15 s.
    let w = planner(&app).await;
    app.workers[w].kill();
    let killed = Instant::now();
    fast_planning(&app).await;
    wait_for(
        "the survivor plans the request",
        Duration::from_secs(60),
        || async { (app.scalar("SELECT count(*) FROM rollup_items").await > 0).then_some(()) },
    )
    .await;
    let takeover = killed.elapsed().as_secs_f64();
    assert!(
        takeover <= 15.0,
        "the request was taken over {takeover:.1}s after its planner died"
    );
    app.spawn_worker_with(via(&proxy)).await;

    // One of the two dies mid-item and is replaced.
    let running: Vec<usize> = (0..app.workers.len()).filter(|i| *i != w).collect();
    let w2 = mid_item(&app, 30, &running).await;
    app.workers[w2].kill();
    app.spawn_worker_with(via(&proxy)).await;

    // Both die while their relays publish; two fresh ones finish.
    wait_for("half the items", Duration::from_secs(60), || async {
        (app.scalar(ITEMS_DONE).await >= 50).then_some(())
    })
    .await;
    let running: Vec<usize> = (0..app.workers.len())
        .filter(|i| *i != w && *i != w2)
        .collect();
    kill_while_relaying(&mut app, &proxy, &running).await;
    app.spawn_worker().await;
    app.spawn_worker().await;

    let done = app.completed(&id, Duration::from_secs(120)).await;
    assert_eq!(done["invoices_issued"], TENANTS, "{done}");
    assert_eq!(done["tenants_failed"], json!([]), "{done}");
    let billing = app.assert_billed_once(TENANTS).await;
    assert_eq!(app.events().await.completed(&id).len(), 1);
    report(
        "SIGKILL, two workers",
        started,
        format!(
            "{TENANTS} tenants, 100 items; planner killed (request taken over in \
             {takeover:.1}s), one killed mid-item, both killed while relaying; {} workers \
             started; {} issued events, 1 completed",
            app.workers.len(),
            billing.issued_events
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_consumer_made_by_an_older_version_gets_the_takeover_bound() {
    let mut app = TestApp::start().await;
    app.migrate().await;
    // As versions before the fan-out created it: 30 s, no in-progress signals.
    app.js
        .get_stream("BILLING_ROLLUPS")
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("invoicer-rollups".into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_deliver: -1,
            ..Default::default()
        })
        .await
        .unwrap();
    app.spawn_worker().await;
    let info = app
        .js
        .get_stream("BILLING_ROLLUPS")
        .await
        .unwrap()
        .consumer_info("invoicer-rollups")
        .await
        .unwrap();
    assert_eq!(info.config.ack_wait, Duration::from_secs(10));
}

// ---------------------------------------------------------------------------------------------
// 2. NATS restarted mid-rollup.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_mid_rollup_the_workers_reconnect_and_finish() {
    const TENANTS: i64 = 2000;
    let started = Instant::now();
    let mut app = TestApp::start().await;
    app.set_env("ROLLUP_BATCH_SIZE", 20);
    app.seed(TENANTS).await;
    app.spawn_worker().await;
    app.spawn_worker().await;
    let id = app.request(json!({})).await;
    wait_for(
        "a quarter of the items",
        Duration::from_secs(60),
        || async { (app.scalar(ITEMS_DONE).await >= 25).then_some(()) },
    )
    .await;
    let at_restart = app.scalar(ITEMS_DONE).await;
    app.nodes[0].restart();
    let done = app.completed(&id, Duration::from_secs(120)).await;
    assert!(at_restart < 100, "the restart must land mid-rollup");
    assert_eq!(done["invoices_issued"], TENANTS, "{done}");
    let billing = app.assert_billed_once(TENANTS).await;
    assert_eq!(app.events().await.completed(&id).len(), 1);
    for w in &mut app.workers {
        assert!(w.is_running(), "{} exited:\n{}", w.name, w.log());
    }
    report(
        "NATS restart",
        started,
        format!(
            "{TENANTS} tenants, 2 workers, server restarted on its store at {at_restart}/100 \
             items; {} issued events, 1 completed",
            billing.issued_events
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Database connections terminated mid-rollup.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_connections_terminated_mid_rollup() {
    const TENANTS: i64 = 2000;
    let started = Instant::now();
    let mut app = TestApp::start().await;
    app.set_env("ROLLUP_BATCH_SIZE", 20);
    app.seed(TENANTS).await;
    app.spawn_worker().await;
    app.spawn_worker().await;
    let id = app.request(json!({})).await;
    let mut terminated = 0;
    for round in 1..=4 {
        wait_for(
            &format!("{} items are done", round * 15),
            Duration::from_secs(120),
            || async { (app.scalar(ITEMS_DONE).await >= round * 15).then_some(()) },
        )
        .await;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND application_name IN ('w1', 'w2')) t",
        )
        .bind(&app.db.name)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        assert!(n > 0, "round {round}: no worker session to terminate");
        terminated += n;
    }
    let done = app.completed(&id, Duration::from_secs(120)).await;
    assert_eq!(done["invoices_issued"], TENANTS, "{done}");
    assert_eq!(done["tenants_failed"], json!([]), "{done}");
    let billing = app.assert_billed_once(TENANTS).await;
    assert_eq!(app.events().await.completed(&id).len(), 1);
    for w in &mut app.workers {
        assert!(w.is_running(), "{} exited:\n{}", w.name, w.log());
    }
    report(
        "pg_terminate_backend",
        started,
        format!(
            "{TENANTS} tenants, 2 workers, 4 rounds, {terminated} sessions terminated; {} \
             issued events, 1 completed",
            billing.issued_events
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Races.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_rollup_requested_twice_at_once() {
    const TENANTS: i64 = 1000;
    let started = Instant::now();
    let mut app = TestApp::start().await;
    // Ten items a run, and room to work them all at once: the two runs' items for the same
    // tenants are in flight together, and planning takes 2 s so both workers plan at once.
    app.set_env("ROLLUP_BATCH_SIZE", 100);
    app.set_env("ROLLUP_CONCURRENCY", 12);
    app.set_env("DATABASE_MAX_CONNECTIONS", 20);
    app.seed(TENANTS).await;
    slow_planning(&app).await;
    ItemClock::install(&app).await;
    app.spawn_worker().await;
    app.spawn_worker().await;

    // Twice under two request ids: two runs racing over the same tenants.
    let (x, y) = tokio::join!(
        app.request(json!({"request_id": "again-1"})),
        app.request(json!({"request_id": "again-2"})),
    );
    // And twice with one request_id (two msg ids: the stream keeps both): one run.
    let body = json!({"period_start": PERIOD_START, "request_id": "month-end"});
    let (a, b) = tokio::join!(
        invoicer::client::request_rollup(&app.js, &body, "publish-1"),
        invoicer::client::request_rollup(&app.js, &body, "publish-2"),
    );
    a.unwrap();
    b.unwrap();

    let one = app.completed("month-end", Duration::from_secs(120)).await;
    let r1 = app.completed(&x, Duration::from_secs(120)).await;
    let r2 = app.completed(&y, Duration::from_secs(120)).await;
    let billing = app.assert_billed_once(TENANTS).await;
    let log = app.events().await;
    for id in ["month-end", "again-1", "again-2"] {
        assert_eq!(log.completed(id).len(), 1, "{id}");
    }
    let issued: i64 = [&one, &r1, &r2]
        .iter()
        .map(|c| c["invoices_issued"].as_i64().unwrap())
        .sum();
    assert_eq!(issued, TENANTS, "{one} {r1} {r2}");
    for c in [&one, &r1, &r2] {
        assert_eq!(
            c["invoices_issued"].as_i64().unwrap() + c["invoices_skipped"].as_i64().unwrap(),
            TENANTS,
            "{c}"
        );
        assert_eq!(c["tenants_failed"], json!([]));
    }
    assert_eq!(
        app.scalar("SELECT count(*) FROM rollup_runs").await,
        3,
        "one run per request_id"
    );
    // The two runs really raced: an item of one started before the other's item for the same
    // tenants had committed (and waited for its tenant locks).
    let first = ItemClock::read(&app, &x).await;
    let second = ItemClock::read(&app, &y).await;
    let raced = first
        .iter()
        .filter(|a| {
            second
                .iter()
                .any(|b| b.item == a.item && b.started < a.done && a.started < b.done)
        })
        .count();
    assert!(raced > 0, "no item of the two runs overlapped");
    report(
        "duplicate requests",
        started,
        format!(
            "{TENANTS} tenants, 2 workers, 4 requests (2 with one request_id, 2 more) at once; \
             issued {}/{}/{}, {raced} of 10 items of the two racing runs overlapped; {} issued \
             events, 3 completed",
            one["invoices_issued"],
            r1["invoices_issued"],
            r2["invoices_issued"],
            billing.issued_events
        ),
    );
}

/// An admin transition's outcome.
#[derive(Debug)]
enum Outcome {
    Done(Value),
    Conflict,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_transitions_during_a_force_rollup_of_the_same_tenants() {
    const TENANTS: i64 = 300;
    let started = Instant::now();
    let mut app = TestApp::start().await;
    app.set_env("ROLLUP_BATCH_SIZE", 5);
    app.seed(TENANTS).await;
    app.spawn_worker().await;
    app.spawn_worker().await;
    let tenants =
        |from: i64, to: i64| -> Vec<String> { (from..=to).map(|i| format!("t{i:05}")).collect() };
    // t00001-t00100 have drafts (to issue), t00101-t00300 issued invoices (to void, to pay).
    let drafts = app
        .request(json!({"draft": true, "tenant_ids": tenants(1, 100)}))
        .await;
    let issued = app.request(json!({"tenant_ids": tenants(101, 300)})).await;
    app.completed(&drafts, Duration::from_secs(60)).await;
    app.completed(&issued, Duration::from_secs(60)).await;
    let before: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT id, tenant_id FROM invoices ORDER BY tenant_id")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(before.len(), 300);

    // Every item of the force run holds its tenants for at least 150 ms.
    for sql in [
        "CREATE FUNCTION test_slow_item() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_sleep(0.15); RETURN NULL; END $$",
        "CREATE TRIGGER test_slow_item AFTER INSERT ON invoice_lines
         FOR EACH STATEMENT EXECUTE FUNCTION test_slow_item()",
    ] {
        sqlx::query(sql).execute(&app.db.pool).await.unwrap();
    }
    // A force rollup of all 300 (60 items), and at the same time, sweeping the tenants in
    // their order at about the rollup's pace: issue every draft, void t00101-t00200, mark
    // t00201-t00300 paid.
    let force = app.request(json!({"force": true})).await;
    let calls: Vec<(&'static str, uuid::Uuid)> = before
        .iter()
        .map(|(id, tenant)| {
            let n: i64 = tenant[1..].parse().unwrap();
            let action = match n {
                1..=100 => "issue",
                101..=200 => "void",
                _ => "mark_paid",
            };
            (action, *id)
        })
        .collect();
    wait_for("the force run starts", Duration::from_secs(30), || async {
        (app.scalar(&format!(
            "SELECT count(*) FROM rollup_items WHERE request_id = '{force}'"
        ))
        .await
            > 0)
        .then_some(())
    })
    .await;
    let admin_started = chrono::Utc::now();
    let mut pace = tokio::time::interval(Duration::from_millis(8));
    let mut calls_in_flight = Vec::new();
    for (action, id) in calls {
        pace.tick().await;
        let client = app.client.clone();
        calls_in_flight.push(tokio::spawn(async move {
            let body = json!({"id": id, "reason": "race test"});
            let reply = invoicer::client::call_raw(
                &client,
                &format!("billing.admin.invoices.{action}"),
                body.to_string().into_bytes(),
            )
            .await
            .unwrap();
            let outcome = match reply {
                Ok(v) => Outcome::Done(v),
                Err(e) if e.code == "conflict" => Outcome::Conflict,
                Err(e) => panic!("{action} {id}: {e}"),
            };
            (action, id, outcome)
        }));
    }
    let outcomes: Vec<(&str, uuid::Uuid, Outcome)> = futures::future::join_all(calls_in_flight)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let done = app.completed(&force, Duration::from_secs(120)).await;
    let completed_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT completed_at FROM rollup_runs WHERE request_id = $1")
            .bind(&force)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert!(
        admin_started < completed_at,
        "the admin calls must overlap the rollup"
    );
    assert_eq!(done["tenants_failed"], json!([]), "{done}");
    assert_eq!(
        done["invoices_issued"].as_i64().unwrap() + done["invoices_skipped"].as_i64().unwrap(),
        TENANTS,
        "{done}"
    );

    // One live invoice per tenant, no number gap, one issued event per numbered invoice.
    let billing = app.assert_billed_once(TENANTS).await;
    // No issued invoice was rewritten: each still has the number, amounts and lines that its
    // issued event announced.
    let log = app.events().await;
    let mut conn = app.db.pool.acquire().await.unwrap();
    for e in log.on("billing.invoice.issued") {
        let id: uuid::Uuid = e.payload["id"].as_str().unwrap().parse().unwrap();
        let now = invoicer::store::invoices::get(&mut conn, id, None)
            .await
            .unwrap();
        let now = serde_json::to_value(&now).unwrap();
        for field in [
            "number",
            "subtotal_cents",
            "tax_cents",
            "total_cents",
            "lines",
            "issued_at",
        ] {
            assert_eq!(
                now[field], e.payload[field],
                "{field} of {id} changed after issue"
            );
        }
    }
    // What the admin was told is what was announced and what is stored.
    let announced: HashMap<String, &Value> = log
        .on("billing.invoice.issued")
        .map(|e| (e.payload["id"].as_str().unwrap().to_string(), &e.payload))
        .collect();
    let mut tally: HashMap<(&str, &str), usize> = HashMap::new();
    for (action, id, outcome) in &outcomes {
        let kind = match outcome {
            Outcome::Done(reply) => {
                let event = announced[&id.to_string()];
                for field in [
                    "number",
                    "subtotal_cents",
                    "tax_cents",
                    "total_cents",
                    "lines",
                ] {
                    assert_eq!(reply[field], event[field], "{action} {id}: {field}");
                }
                "ok"
            }
            Outcome::Conflict => "conflict",
        };
        *tally.entry((action, kind)).or_default() += 1;
    }
    // Paid invoices stay paid and live; voided ones stay void.
    for (action, id, outcome) in &outcomes {
        if let Outcome::Done(_) = outcome {
            let status: String = sqlx::query_scalar("SELECT status FROM invoices WHERE id = $1")
                .bind(id)
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
            match *action {
                "mark_paid" => assert_eq!(status, "paid", "{id}"),
                "void" => assert_eq!(status, "void", "{id}"),
                _ => {}
            }
        }
    }
    let mut tally: Vec<_> = tally.into_iter().collect();
    tally.sort();
    let (ok, conflict) = tally
        .iter()
        .fold((0, 0), |(o, c), ((_, kind), n)| match *kind {
            "ok" => (o + n, c),
            _ => (o, c + n),
        });
    assert!(
        ok > 0 && conflict > 0,
        "the calls must race the rollup both ways: {tally:?}"
    );
    report(
        "admin during force",
        started,
        format!(
            "{TENANTS} tenants, 2 workers, 60 items, 300 admin calls at once ({tally:?}); force \
             run issued {} skipped {}; {} issued events checked unchanged",
            done["invoices_issued"], done["invoices_skipped"], billing.issued_events
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_arriving_while_its_period_is_rolled_up_is_billed_or_reported_late() {
    const TENANTS: i64 = 400;
    let started = Instant::now();
    let mut app = TestApp::start().await;
    // 100 small items, so the rollup takes a while with usage arriving throughout.
    app.set_env("ROLLUP_BATCH_SIZE", 4);
    app.seed(TENANTS).await;
    // Plan "meter": no allowance, so an invoice's gb_hours line bills exactly what it counted.
    for sql in [
        r#"INSERT INTO plans (code, name, currency, base_price, included, overage)
           VALUES ('meter', 'Meter', 'AUD', 1.00, '{}', '{"gb_hours": {"unit_price": "0.01"}}')"#,
        "UPDATE subscriptions SET plan_code = 'meter'",
    ] {
        sqlx::query(sql).execute(&app.db.pool).await.unwrap();
    }
    let deployments: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT deployment_id FROM subscriptions ORDER BY tenant_id")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    app.spawn_worker().await;
    app.spawn_worker().await;

    // Usage flows before, during and after the rollup: 50 records a message, 50 messages a
    // second (a steady stream, not a flood the test would then wait to drain).
    let stop = tokio_util::sync::CancellationToken::new();
    let publisher = {
        let js = app.js.clone();
        let stop = stop.clone();
        let deployments = deployments.clone();
        tokio::spawn(async move {
            let mut published = 0i64;
            let mut n: u64 = 0;
            let mut pace = tokio::time::interval(Duration::from_millis(20));
            while !stop.is_cancelled() {
                pace.tick().await;
                let records: Vec<Value> = (0..50)
                    .map(|_| {
                        n += 1;
                        json!({
                            "event_id": uuid::Uuid::new_v4(),
                            "deployment_id": deployments[(n * 7919 % deployments.len() as u64) as usize],
                            "resource_kind": "gb_hours",
                            "quantity": (n % 9 + 1).to_string(),
                            "occurred_at": "2026-04-15T00:00:00Z",
                        })
                    })
                    .collect();
                js.publish(
                    "metering.usage.recorded",
                    json!({ "records": records }).to_string().into(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
                published += 50;
            }
            published
        })
    };
    wait_for("usage is flowing", Duration::from_secs(30), || async {
        (app.scalar("SELECT count(*) FROM usage_records WHERE resource_kind = 'gb_hours'")
            .await
            > 500)
            .then_some(())
    })
    .await;
    let id = app.request(json!({})).await;
    let done = app.completed(&id, Duration::from_secs(120)).await;
    // A little more after the last invoice, then stop.
    let after = app
        .scalar("SELECT count(*) FROM usage_records WHERE resource_kind = 'gb_hours'")
        .await;
    wait_for(
        "usage after the rollup",
        Duration::from_secs(30),
        || async {
            (app.scalar("SELECT count(*) FROM usage_records WHERE resource_kind = 'gb_hours'")
                .await
                > after + 500)
                .then_some(())
        },
    )
    .await;
    stop.cancel();
    let published = publisher.await.unwrap();
    wait_for(
        "every record is stored",
        Duration::from_secs(60),
        || async {
            (app.scalar("SELECT count(*) FROM usage_records WHERE resource_kind = 'gb_hours'")
                .await
                == published)
                .then_some(())
        },
    )
    .await;
    assert_eq!(done["invoices_issued"], TENANTS, "{done}");
    let billing = app.assert_billed_once(TENANTS).await;

    // Per deployment: what its invoice billed + what was reported late = what was stored.
    let stored: HashMap<uuid::Uuid, i64> = sqlx::query_as::<_, (uuid::Uuid, i64)>(
        "SELECT deployment_id, sum(quantity)::bigint FROM usage_records
         WHERE resource_kind = 'gb_hours' GROUP BY 1",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let billed: HashMap<uuid::Uuid, i64> = sqlx::query_as::<_, (uuid::Uuid, i64)>(
        "SELECT l.deployment_id, l.quantity::bigint FROM invoice_lines l
         JOIN invoices i ON i.id = l.invoice_id
         WHERE i.status = 'issued' AND l.kind = 'overage' AND l.resource_kind = 'gb_hours'",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let log = app.events().await;
    let mut late: HashMap<uuid::Uuid, i64> = HashMap::new();
    let mut late_records = 0;
    for e in log.on("billing.usage.late") {
        let dep: uuid::Uuid = e.payload["deployment_id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let q: i64 = e.payload["quantity"].as_str().unwrap().parse().unwrap();
        *late.entry(dep).or_default() += q;
        late_records += 1;
    }
    for dep in &deployments {
        let s = stored.get(dep).copied().unwrap_or(0);
        let b = billed.get(dep).copied().unwrap_or(0);
        let l = late.get(dep).copied().unwrap_or(0);
        assert_eq!(
            b + l,
            s,
            "deployment {dep}: billed {b} + late {l} != stored {s}"
        );
    }
    let total_billed: i64 = billed.values().sum();
    let total_late: i64 = late.values().sum();
    assert!(
        total_billed > 0 && total_late > 0,
        "{total_billed} {total_late}"
    );
    report(
        "usage during rollup",
        started,
        format!(
            "{TENANTS} tenants, 2 workers, {published} records published before, during and after \
             the rollup; {total_billed} gb-hours billed, {total_late} reported late in \
             {late_records} events, none neither; {} issued events",
            billing.issued_events
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Retries that run out.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_failing_transiently_is_rejected_after_its_retries() {
    let started = Instant::now();
    let mut app = TestApp::start().await;
    app.seed(10).await;
    let proxy = TcpProxy::postgres().await;
    app.set_env("ROLLUP_RETRY_WINDOW", "3s");
    app.spawn_worker_with(WorkerOpts {
        database_url: Some(proxy.pg_url(&app.db)),
        ..Default::default()
    })
    .await;

    proxy.cut();
    let down = Instant::now();
    let id = app.request(json!({})).await;
    let rejected = wait_for(
        "the request is rejected",
        Duration::from_secs(60),
        || async {
            read_stream(&app.js, "BILLING_EVENTS", Some("billing.rollup.rejected"))
                .await
                .into_iter()
                .find(|e| e.payload["request"]["request_id"] == id.as_str())
        },
    )
    .await;
    let after = down.elapsed().as_secs_f64();
    let reason = rejected.payload["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("database") || reason.contains("transient"),
        "the cause is given: {reason}"
    );
    // Settled for good: nothing pending or awaiting an ack on the request consumer.
    wait_for(
        "the request is terminated",
        Duration::from_secs(10),
        || async {
            let stream = app.js.get_stream("BILLING_ROLLUPS").await.unwrap();
            let info = stream.consumer_info("invoicer-rollups").await.unwrap();
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        },
    )
    .await;

    // The database returns; the stream keeps flowing.
    proxy.restore();
    let next = app.request(json!({"request_id": "after-the-outage"})).await;
    let done = app.completed(&next, Duration::from_secs(60)).await;
    assert_eq!(done["invoices_issued"], 10, "{done}");
    assert!(app.workers[0].is_running());
    report(
        "request retries run out",
        started,
        format!(
            "database cut; request rejected {after:.1}s later with \"{reason}\"; the next \
             request completed after the database returned"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_that_keeps_failing_completes_with_its_tenant_reported() {
    const TENANTS: i64 = 100;
    let started = Instant::now();
    let mut app = TestApp::start().await;
    app.set_env("ROLLUP_BATCH_SIZE", 20);
    app.set_env("ROLLUP_RETRY_WINDOW", "3s");
    app.seed(TENANTS).await;
    // One tenant's invoice always meets a transient error: its item can never commit whole.
    for sql in [
        "CREATE FUNCTION test_conflict() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'test: t00030 always conflicts' USING ERRCODE = '40001'; END $$",
        "CREATE TRIGGER test_conflict BEFORE INSERT ON invoices FOR EACH ROW
         WHEN (NEW.tenant_id = 't00030') EXECUTE FUNCTION test_conflict()",
    ] {
        sqlx::query(sql).execute(&app.db.pool).await.unwrap();
    }
    app.spawn_worker().await;
    let id = app.request(json!({})).await;
    let done = app.completed(&id, Duration::from_secs(60)).await;
    assert_eq!(done["invoices_issued"], TENANTS - 1, "{done}");
    let failed = done["tenants_failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{done}");
    assert_eq!(failed[0]["tenant_id"], "t00030");
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("t00030 always conflicts"),
        "{done}"
    );
    let billing = app.assert_billed_once(TENANTS - 1).await;
    report(
        "item retries run out",
        started,
        format!(
            "{TENANTS} tenants in 5 items, one tenant failing transiently forever: reported \
             after its retries, the other {} invoiced ({} issued events)",
            TENANTS - 1,
            billing.issued_events
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// 7. SIGTERM during a rollup.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_rollup_drains_and_exits_zero() {
    const TENANTS: i64 = 2000;
    let started = Instant::now();
    let mut app = TestApp::start().await;
    app.set_env("ROLLUP_BATCH_SIZE", 20);
    app.seed(TENANTS).await;
    app.spawn_worker().await;
    let id = app.request(json!({})).await;
    wait_for(
        "a quarter of the items",
        Duration::from_secs(60),
        || async { (app.scalar(ITEMS_DONE).await >= 25).then_some(()) },
    )
    .await;
    let (status, took) = app.workers[0].terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(10), "took {took:?} to stop");
    let at_stop = app.scalar(ITEMS_DONE).await;
    assert!(at_stop < 100, "SIGTERM must land mid-rollup");
    // Nothing held: its sessions end, and nothing it committed is left in the outbox.
    wait_for(
        "the worker's database sessions end",
        Duration::from_secs(5),
        || async { (app.sessions_of(0).await == 0).then_some(()) },
    )
    .await;
    assert_eq!(
        app.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .await,
        0,
        "the relay published what the worker committed before it exited"
    );
    // The rest is still queued: a new worker finishes it without waiting for any ack timeout.
    let restarted = Instant::now();
    app.spawn_worker().await;
    let done = app.completed(&id, Duration::from_secs(120)).await;
    let finish = restarted.elapsed().as_secs_f64();
    assert_eq!(done["invoices_issued"], TENANTS, "{done}");
    let billing = app.assert_billed_once(TENANTS).await;
    assert_eq!(app.events().await.completed(&id).len(), 1);
    assert!(
        finish < 10.0,
        "the restarted worker waited for released work: {finish:.1}s"
    );
    report(
        "SIGTERM",
        started,
        format!(
            "{TENANTS} tenants; SIGTERM at {at_stop}/100 items, exit 0 in {:.2}s; restarted, \
             done {finish:.1}s later; {} issued events, 1 completed",
            took.as_secs_f64(),
            billing.issued_events
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_an_item_that_does_not_finish_in_time() {
    const TENANTS: i64 = 200;
    let started = Instant::now();
    let mut app = TestApp::start().await;
    app.set_env("ROLLUP_BATCH_SIZE", 20);
    app.seed(TENANTS).await;
    // The first attempt at t00050's lines takes 20 s (a sequence is not rolled back, so only
    // the first attempt sleeps): an item wedged on a slow statement or a lock.
    for sql in [
        "CREATE SEQUENCE test_slow_once",
        "CREATE FUNCTION test_slow_lines() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF EXISTS (SELECT 1 FROM new_lines l JOIN subscriptions s
                      ON s.deployment_id = l.deployment_id WHERE s.tenant_id = 't00050')
              AND nextval('test_slow_once') = 1 THEN
             PERFORM pg_sleep(20);
           END IF;
           RETURN NULL;
         END $$",
        "CREATE TRIGGER test_slow_lines AFTER INSERT ON invoice_lines
         REFERENCING NEW TABLE AS new_lines FOR EACH STATEMENT EXECUTE FUNCTION test_slow_lines()",
    ] {
        sqlx::query(sql).execute(&app.db.pool).await.unwrap();
    }
    app.spawn_worker().await;
    let id = app.request(json!({})).await;
    wait_for("the worker is inside the slow item", Duration::from_secs(30), || async {
        sqlx::query_scalar::<_, String>(
            "SELECT application_name FROM pg_stat_activity WHERE datname = $1 AND wait_event = 'PgSleep'",
        )
        .bind(&app.db.name)
        .fetch_optional(&app.db.pool)
        .await
        .unwrap()
    })
    .await;
    let (status, took) = app.workers[0].terminate(Duration::from_secs(40));
    assert!(status.success(), "exit status {status}");
    assert!(
        took < Duration::from_secs(13),
        "took {took:?} to stop: the wedged item was waited for, not released"
    );
    let restarted = Instant::now();
    app.spawn_worker().await;
    let done = app.completed(&id, Duration::from_secs(60)).await;
    let redone = restarted.elapsed();
    assert_eq!(done["invoices_issued"], TENANTS, "{done}");
    // The stopped worker's session did not sit on the item's locks until its statement ended
    // (10 s more): the server noticed the client had gone.
    assert!(
        redone < Duration::from_secs(6),
        "the released item was redone {redone:?} after the restart"
    );
    let billing = app.assert_billed_once(TENANTS).await;
    report(
        "SIGTERM, wedged item",
        started,
        format!(
            "{TENANTS} tenants, one item stuck 20 s: exit 0 in {:.1}s, its item released and done \
             by the next worker {:.1}s after its start; {} issued events",
            took.as_secs_f64(),
            redone.as_secs_f64(),
            billing.issued_events
        ),
    );
}
