//! Scale-out (issue 6): one rollup shared by several `invoicer run` processes through the
//! `BILLING_WORK` queue, on one server and on a 3-node JetStream cluster; a replica SIGKILLed
//! mid-rollup and its part taken over; a tenant failing in the middle of a batch.
//!
//! Each test builds its own [`TestApp`] (database, nats-server(s), worker processes). Where a
//! test needs to see inside the item transactions it installs triggers in its own database that
//! log each item's start, the moment it takes invoice numbers, and its end (`ItemClock`).

mod common;

use common::*;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

fn now_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Seconds during which at least two different workers each had an item transaction open.
fn overlap_seconds(items: &[ItemTimes]) -> f64 {
    let mut edges: Vec<(f64, i32, &str)> = Vec::new();
    for t in items {
        edges.push((t.started, 1, &t.worker));
        edges.push((t.done, -1, &t.worker));
    }
    edges.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mut open: HashMap<&str, i32> = HashMap::new();
    let mut total = 0.0;
    let mut last = 0.0;
    for (at, delta, worker) in edges {
        if open.values().filter(|n| **n > 0).count() >= 2 {
            total += at - last;
        }
        *open.entry(worker).or_default() += delta;
        last = at;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_one_rollup_and_overlap() {
    const TENANTS: i64 = 3000;
    let started = Instant::now();
    let mut app = TestApp::start().await;
    app.set_env("ROLLUP_BATCH_SIZE", 50);
    app.seed(TENANTS).await;
    ItemClock::install(&app).await;
    // Item 1 (t00051..t00100) spends 3 s writing lines before it takes its numbers.
    ItemClock::slow_tenant(&app, "t00060", 3.0).await;
    app.spawn_worker().await;
    app.spawn_worker().await;

    let id = app.request(json!({})).await;
    let done = app.completed(&id, Duration::from_secs(120)).await;
    assert_eq!(done["invoices_issued"], TENANTS, "{done}");
    assert_eq!(done["invoices_skipped"], 0, "{done}");
    assert_eq!(done["tenants_failed"], json!([]), "{done}");
    let billing = app.assert_billed_once(TENANTS).await;
    let log = app.events().await;
    assert_eq!(log.completed(&id).len(), 1, "one completed event");
    // Progress went out as items finished, up to all of them.
    wait_for(
        "progress reaches the total",
        Duration::from_secs(10),
        || async {
            app.progress(&id)
                .iter()
                .any(|p| p["tenants_done"] == TENANTS && p["tenants_total"] == TENANTS)
                .then_some(())
        },
    )
    .await;
    assert!(app.progress(&id).len() > 10, "progress after each item");
    let revenue = app
        .scalar("SELECT sum(total_cents)::bigint FROM invoices WHERE status = 'issued'")
        .await;
    assert_eq!(revenue, TENANTS * SEED_TOTAL_CENTS);

    // Both processes took items.
    let pids: HashSet<String> = app.workers.iter().map(|w| w.pid().to_string()).collect();
    let by: Vec<(String, i64)> = sqlx::query_as(
        "SELECT processed_by, count(*) FROM rollup_items WHERE request_id = $1 AND item_no >= 0
         GROUP BY 1 ORDER BY 1",
    )
    .bind(&id)
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(by.len(), 2, "items per worker: {by:?}");
    for (worker, n) in &by {
        let pid = worker.rsplit(':').next().unwrap();
        assert!(pids.contains(pid), "{worker} is one of the two workers");
        assert!(*n >= 5, "each worker takes a real share: {by:?}");
    }

    // The counter does not serialise them: while the slow item was working (started, not yet
    // holding the counter), the other worker committed whole items, numbers and all.
    let items = ItemClock::read(&app, &id).await;
    assert_eq!(items.len(), 60, "every item logged once");
    let slow = items.iter().find(|t| t.item == 1).unwrap();
    let slow_numbers = slow.numbers_taken.expect("the slow item issued invoices");
    assert!(slow_numbers - slow.started >= 3.0, "{slow:?}");
    let meanwhile: Vec<&ItemTimes> = items
        .iter()
        .filter(|t| t.worker != slow.worker && t.done > slow.started && t.done < slow_numbers)
        .collect();
    assert!(
        !meanwhile.is_empty(),
        "no other worker committed an item while item 1 was mid-item: {items:?}"
    );
    // And so numbers follow commit order, not item order: item 1's invoices come after theirs.
    let (slow_min, other_max): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT min(number) FROM invoices WHERE tenant_id BETWEEN 't00051' AND 't00100'),
                (SELECT max(number) FROM invoices i JOIN rollup_items r
                   ON r.request_id = $1 AND r.item_no = ANY($2) AND i.tenant_id = ANY(r.tenant_ids))",
    )
    .bind(&id)
    .bind(meanwhile.iter().map(|t| t.item).collect::<Vec<_>>())
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert!(slow_min > other_max, "{slow_min} > {other_max}");
    let overlap = overlap_seconds(&items);
    let span =
        items.last().unwrap().done - items.iter().map(|t| t.started).fold(f64::MAX, f64::min);
    assert!(overlap > 0.0);
    println!(
        "[scale] two workers: {TENANTS} tenants, 60 items ({by:?}); {} items of the other worker \
         committed while item 1 was mid-item; both workers inside an item {overlap:.2}s of {span:.2}s; \
         {} issued events, 1 completed; {:.1}s",
        meanwhile.len(),
        billing.issued_events,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_rollup_is_taken_over_within_15_seconds() {
    const TENANTS: i64 = 3000;
    let started = Instant::now();
    let mut app = TestApp::start().await;
    app.set_env("ROLLUP_BATCH_SIZE", 50);
    app.seed(TENANTS).await;
    ItemClock::install(&app).await;
    // Item 30 (t01501..t01550) holds whoever takes it for 3 s: that worker is killed inside it.
    ItemClock::slow_tenant(&app, "t01520", 3.0).await;
    app.spawn_worker().await;
    app.spawn_worker().await;

    let id = app.request(json!({})).await;
    let victim = wait_for(
        "a worker is inside the slow item",
        Duration::from_secs(120),
        || async {
            sqlx::query_scalar::<_, String>(
                "SELECT application_name FROM pg_stat_activity
                 WHERE datname = $1 AND wait_event = 'PgSleep' LIMIT 1",
            )
            .bind(&app.db.name)
            .fetch_optional(&app.db.pool)
            .await
            .unwrap()
        },
    )
    .await;
    let v = app.workers.iter().position(|w| w.name == victim).unwrap();
    let done_before = app
        .scalar(&format!(
            "SELECT count(*) FROM rollup_items WHERE request_id = '{id}' AND done_at IS NOT NULL"
        ))
        .await;
    app.workers[v].kill();
    let killed_at = now_epoch();
    let kill_instant = Instant::now();
    assert!(
        done_before < 59,
        "the kill must land mid-rollup ({done_before} of 60 items done)"
    );

    let done = app.completed(&id, Duration::from_secs(120)).await;
    let finished = kill_instant.elapsed().as_secs_f64();
    assert_eq!(done["invoices_issued"], TENANTS, "{done}");
    assert_eq!(done["tenants_failed"], json!([]), "{done}");
    let billing = app.assert_billed_once(TENANTS).await;
    assert_eq!(app.events().await.completed(&id).len(), 1);

    // The killed worker's item (30) was redone by the survivor, starting within 15 s of the kill.
    let items = ItemClock::read(&app, &id).await;
    assert_eq!(items.len(), 60, "every item done once");
    let survivor_pid = app.workers[1 - v].pid().to_string();
    let slow = items.iter().find(|t| t.item == 30).unwrap();
    assert!(
        slow.worker.ends_with(&format!(":{survivor_pid}")),
        "{slow:?}"
    );
    let takeover = slow.started - killed_at;
    assert!(
        takeover <= 15.0,
        "the dead worker's item was taken over {takeover:.1}s after the kill"
    );
    // All of it: the wait for the takeover plus what the survivor still had to do (its busy
    // time after the kill, at its concurrency of 2).
    let busy: f64 = items
        .iter()
        .filter(|t| t.done > killed_at)
        .map(|t| t.done - t.started.max(killed_at))
        .sum();
    assert!(
        finished <= 15.0 + busy / 2.0 + 3.0,
        "finished {finished:.1}s after the kill (survivor busy {busy:.1}s)"
    );
    println!(
        "[scale] kill 1 of 2: {TENANTS} tenants, {done_before}/60 items done at the kill; dead \
         worker's item restarted {takeover:.1}s after the kill; rollup completed {finished:.1}s \
         after the kill (survivor busy {busy:.1}s); {} issued events, 1 completed; {:.1}s",
        billing.issued_events,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_with_replicated_streams() {
    const TENANTS: i64 = 1000;
    let started = Instant::now();
    let mut app = TestApp::clustered().await;
    app.set_env("ROLLUP_BATCH_SIZE", 25);
    app.seed(TENANTS).await;
    app.migrate().await;
    for stream in [
        "BILLING_ROLLUPS",
        "BILLING_EVENTS",
        "METERING_USAGE",
        "BILLING_WORK",
    ] {
        let mut s = app.js.get_stream(stream).await.unwrap();
        let info = s.info().await.unwrap();
        assert_eq!(info.config.num_replicas, 3, "{stream}");
        let cluster = info.cluster.as_ref().expect("clustered stream");
        assert_eq!(cluster.replicas.len(), 2, "{stream}: {cluster:?}");
    }
    // Two workers on nodes 1 and 2; the test's client is on node 3.
    app.spawn_worker_with(WorkerOpts {
        node: Some(0),
        ..Default::default()
    })
    .await;
    app.spawn_worker_with(WorkerOpts {
        node: Some(1),
        ..Default::default()
    })
    .await;

    let id = app.request(json!({})).await;
    // Node 1, the first worker's server, dies (SIGKILL) mid-rollup: the worker moves to another
    // node, the streams' leaders move to the surviving replicas, and nothing is lost.
    wait_for("a fifth of the items", Duration::from_secs(60), || async {
        (app.scalar("SELECT count(*) FROM rollup_items WHERE done_at IS NOT NULL")
            .await
            >= 8)
            .then_some(())
    })
    .await;
    app.nodes[0].kill();
    let at_stop = app
        .scalar("SELECT count(*) FROM rollup_items WHERE done_at IS NOT NULL")
        .await;
    let killed = Instant::now();
    let done = app.completed(&id, Duration::from_secs(120)).await;
    let completed_after = killed.elapsed().as_secs_f64();
    assert!(at_stop < 40, "the node must die mid-rollup");
    assert_eq!(done["invoices_issued"], TENANTS, "{done}");
    let billing = app.assert_billed_once(TENANTS).await;
    let checked_after = killed.elapsed().as_secs_f64();
    assert_eq!(app.events().await.completed(&id).len(), 1);
    for w in &mut app.workers {
        assert!(w.is_running(), "{} exited:\n{}", w.name, w.log());
    }
    let workers = app
        .scalar(&format!(
            "SELECT count(DISTINCT processed_by) FROM rollup_items WHERE request_id = '{id}'"
        ))
        .await;
    assert_eq!(workers, 2, "both workers took items");
    println!(
        "[scale] 3-node cluster, R3 streams: {TENANTS} tenants, 40 items over 2 workers on 2 \
         nodes, node 1 SIGKILLed at {at_stop}/40 items, completed {completed_after:.1}s later, \
         events all in the stream {checked_after:.1}s after the kill; {} issued events, 1 \
         completed; {:.1}s",
        billing.issued_events,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_failing_mid_batch_is_reported_once_and_the_rest_are_invoiced() {
    const TENANTS: i64 = 120;
    let started = Instant::now();
    let mut app = TestApp::start().await;
    app.set_env("ROLLUP_BATCH_SIZE", 25);
    app.seed(TENANTS).await;
    // The database refuses one tenant's invoice: item 3 (t00051..t00075) fails as a batch.
    for sql in [
        "CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'test: t00060 cannot be invoiced'; END $$",
        "CREATE TRIGGER test_refuse BEFORE INSERT ON invoices FOR EACH ROW
         WHEN (NEW.tenant_id = 't00060') EXECUTE FUNCTION test_refuse()",
    ] {
        sqlx::query(sql).execute(&app.db.pool).await.unwrap();
    }
    app.spawn_worker().await;
    app.spawn_worker().await;

    let id = app.request(json!({})).await;
    let done = app.completed(&id, Duration::from_secs(60)).await;
    assert_eq!(done["invoices_issued"], TENANTS - 1, "{done}");
    assert_eq!(done["invoices_skipped"], 0, "{done}");
    let failed = done["tenants_failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{done}");
    assert_eq!(failed[0]["tenant_id"], "t00060");
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("t00060 cannot be invoiced"),
        "{done}"
    );
    let billing = app.assert_billed_once(TENANTS - 1).await;
    assert_eq!(app.events().await.completed(&id).len(), 1);
    assert_eq!(
        app.scalar("SELECT count(*) FROM invoices WHERE tenant_id = 't00060'")
            .await,
        0
    );
    println!(
        "[scale] failing tenant: {TENANTS} tenants in 5 items, 1 refused by the database; {} \
         issued events, failure reported once; {:.1}s",
        billing.issued_events,
        started.elapsed().as_secs_f64()
    );
}
