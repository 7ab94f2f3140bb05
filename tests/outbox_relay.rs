//! The outbox relay never stalls and never loses an event: a row that can never be published is
//! parked (logged, counted) without holding up the rest, a failing row backs off on its own,
//! NATS going away loses nothing, and published rows are pruned after the retention period.

mod common;

use common::*;
use invoicer::bus::relay::{Relay, RelayPolicy};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// A `nats-server` configuration with a small `max_payload`, so that an event too big to
/// publish is cheap to make.
fn small_payload_config(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("small.conf");
    std::fs::write(&path, "max_payload: 8192\n").unwrap();
    path
}

/// Events committed by the application, written straight into the outbox (setup: the relay
/// is the subject under test).
async fn insert_events(db: &TestDb, subject: &str, prefix: &str, n: i64, payload_bytes: i64) {
    sqlx::query(
        "INSERT INTO outbox (subject, msg_id, payload)
         SELECT $1, $2 || g, jsonb_build_object('n', g, 'padding', repeat('x', $4::int))
         FROM generate_series(1, $3) g",
    )
    .bind(subject)
    .bind(prefix)
    .bind(n)
    .bind(payload_bytes)
    .execute(&db.pool)
    .await
    .unwrap();
}

/// The `n` of every event stored on `subject`.
async fn published(js: &async_nats::jetstream::Context, subject: &str) -> Vec<i64> {
    let mut ns: Vec<i64> = stream_messages(js, "BILLING_EVENTS", subject)
        .await
        .iter()
        .map(|e: &Value| e["n"].as_i64().unwrap())
        .collect();
    ns.sort();
    ns
}

/// More events too big to publish than the relay claims in a round sit in front of good ones
/// (a completed rollup whose `tenants_failed` grew past `max_payload`, say): they are parked at
/// once and the good events behind them go out.
#[tokio::test]
async fn events_too_big_to_publish_are_parked_and_the_events_behind_them_go_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = TestApp::with_nats_config(&small_payload_config(&dir)).await;
    let (db, js) = (app.db.clone(), app.js.clone());
    insert_events(&db, "billing.rollup.completed", "huge:", 600, 10_000).await;
    insert_events(&db, "billing.invoice.issued", "small:", 10, 10).await;
    app.spawn_worker().await;

    wait_until(
        "the events behind the oversize ones are published",
        || async { published(&js, "billing.invoice.issued").await.len() == 10 },
    )
    .await;
    assert_eq!(
        published(&js, "billing.invoice.issued").await,
        (1..=10).collect::<Vec<_>>()
    );
    assert!(published(&js, "billing.rollup.completed").await.is_empty());
    wait_until("the oversize events are parked", || async {
        count(
            &db,
            "SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL",
        )
        .await
            == 600
    })
    .await;
    // Parked at once: one attempt each, and the reason kept for the operator.
    let (attempts, reasons): (i64, i64) = sqlx::query_as(
        "SELECT max(attempts)::bigint, count(*) FILTER (WHERE last_error ILIKE '%payload%')
         FROM outbox WHERE parked_at IS NOT NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((attempts, reasons), (1, 600));
    let stats = invoicer::store::outbox::stats(&db.pool).await.unwrap();
    assert_eq!((stats.pending, stats.parked), (0, 600), "{stats:?}");

    // The operator sees them, with the reason, and can put them back in line (here they are
    // parked again at once: still too big).
    let (code, status) = outbox_cli(&db, &["status"]).await;
    assert_eq!(code, Some(1), "{status}");
    assert!(status.contains("parked:   600"), "{status}");
    let (code, list) = outbox_cli(&db, &["parked", "--limit", "2"]).await;
    assert_eq!(code, Some(0), "{list}");
    assert_eq!(
        list.matches("billing.rollup.completed").count(),
        2,
        "{list}"
    );
    assert!(
        list.contains("huge:1") && list.contains("max payload"),
        "{list}"
    );
    let before_retry: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let (code, retried) = outbox_cli(&db, &["retry", "--all"]).await;
    assert_eq!(code, Some(0), "{retried}");
    assert!(
        retried.contains("600 parked event(s) back in line"),
        "{retried}"
    );
    wait_until(
        "the retried events are tried again and parked again",
        || async {
            let again: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox WHERE parked_at > $1 AND attempts = 1",
            )
            .bind(before_retry)
            .fetch_one(&db.pool)
            .await
            .unwrap();
            again == 600
        },
    )
    .await;
}

/// NATS is down while invoices commit: the outbox holds their events, and once NATS is back
/// (restarted on the same store) the relay publishes every one of them, once.
#[tokio::test]
async fn nats_down_while_invoices_commit_the_outbox_holds_them_until_it_is_back() {
    const TENANTS: i64 = 600;
    let mut app = TestApp::start().await;
    // Two items of 300 tenants, worked at once: both are in hand when NATS goes away.
    app.set_env("ROLLUP_BATCH_SIZE", 300);
    app.set_env("ROLLUP_CONCURRENCY", 2);
    app.spawn_worker().await;
    let (db, client, js) = (app.db.clone(), app.client.clone(), app.js.clone());
    load_seed_catalog(&client).await;
    app.bulk_tenants("t", TENANTS, None).await;

    // The first item will wait on its first tenant's lock, held here, until NATS is down.
    let mut blocker = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM tenants WHERE tenant_id = 't00001' FOR UPDATE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    invoicer::client::request_rollup(
        &js,
        &json!({"period_start": "2026-04-01", "request_id": "outage"}),
        "outage",
    )
    .await
    .unwrap();
    // An item being worked holds its row lock until its transaction commits.
    let in_hand = "SELECT (SELECT count(*) FROM rollup_items WHERE done_at IS NULL)
                        - (SELECT count(*) FROM (SELECT 1 FROM rollup_items WHERE done_at IS NULL
                                                 FOR UPDATE SKIP LOCKED) free)";
    let first_in_hand = "SELECT count(*) FROM rollup_items WHERE item_no = 0 AND done_at IS NULL
                           AND NOT EXISTS (SELECT 1 FROM rollup_items f WHERE f.item_no = 0
                                             AND f.done_at IS NULL FOR UPDATE SKIP LOCKED)";
    wait_until("the first work item is in hand", || async {
        count(&db, first_in_hand).await == 1
    })
    .await;
    let killed_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    app.nodes[0].kill();
    blocker.commit().await.unwrap();
    // What was in hand commits with the database alone; its events wait in the outbox.
    wait_until("the items in hand commit while NATS is down", || async {
        count(&db, in_hand).await == 0
    })
    .await;
    let committed_in_outage: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(tenant_count), 0)::bigint FROM rollup_items WHERE done_at > $1",
    )
    .bind(killed_at)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        committed_in_outage >= 300,
        "an item committed during the outage"
    );
    let waiting = count(
        &db,
        "SELECT count(*) FROM outbox WHERE published_at IS NULL AND subject = 'billing.invoice.issued'",
    )
    .await;
    assert!(
        waiting >= committed_in_outage,
        "the events committed during the outage wait in the outbox ({waiting} < {committed_in_outage})"
    );

    app.nodes[0].restart();
    wait_until("the rollup completes once NATS is back", || async {
        count(
            &db,
            "SELECT count(*) FROM rollup_runs WHERE completed_at IS NOT NULL",
        )
        .await
            == 1
    })
    .await;
    wait_until("the outbox drains once NATS is back", || async {
        count(
            &db,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        )
        .await
            == 0
    })
    .await;
    let client = app.nodes[0].client().await;
    let js = async_nats::jetstream::new(client.clone());
    let issued = stream_messages(&js, "BILLING_EVENTS", "billing.invoice.issued").await;
    let ids: std::collections::HashSet<&str> =
        issued.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(issued.len() as i64, TENANTS, "every issued event, once");
    assert_eq!(ids.len() as i64, TENANTS);
    let completed = stream_messages(&js, "BILLING_EVENTS", "billing.rollup.completed").await;
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0]["invoices_issued"], TENANTS);
    // An outage is nobody's fault: no event was parked for it.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL"
        )
        .await,
        0,
        "{}",
        app.workers[0].log()
    );
}

/// `invoicer outbox ...` against the test database.
async fn outbox_cli(db: &TestDb, args: &[&str]) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_invoicer"))
        .arg("outbox")
        .args(args)
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// A relay in this process with a fast retry policy, stopped on drop.
struct FastRelay {
    stop: tokio_util::sync::CancellationToken,
}

impl FastRelay {
    async fn start(db: &TestDb, nats: &NatsServer, policy: RelayPolicy) -> FastRelay {
        let js = async_nats::jetstream::new(nats.client().await);
        invoicer::bus::ensure_streams(&js, 1).await.unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(
            Relay {
                pool: db.pool.clone(),
                js,
                notify: Default::default(),
                shutdown: stop.clone(),
                policy,
            }
            .run(),
        );
        FastRelay { stop }
    }
}

impl Drop for FastRelay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

const FAST: RelayPolicy = RelayPolicy {
    max_attempts: 4,
    first_retry: Duration::from_millis(100),
    max_retry: Duration::from_millis(400),
    retention: invoicer::bus::relay::DEFAULT_RETENTION,
};

/// A row that keeps failing while JetStream answers (its subject is in no stream) is retried on
/// its own schedule and parked after its last attempt; the events around it go out meanwhile.
#[tokio::test]
async fn a_row_that_keeps_failing_backs_off_alone_and_is_parked_after_its_attempts() {
    let app = TestApp::start().await;
    let (db, js) = (app.db.clone(), app.js.clone());
    insert_events(&db, "billing.nowhere", "lost:", 3, 10).await;
    insert_events(&db, "billing.invoice.issued", "first:", 5, 10).await;
    let _relay = FastRelay::start(&db, &app.nodes[0], FAST).await;

    wait_until("the good events go out", || async {
        published(&js, "billing.invoice.issued").await.len() == 5
    })
    .await;
    // While the bad rows wait for their next attempt, new events are not held up.
    insert_events(&db, "billing.invoice.paid", "later:", 5, 10).await;
    wait_until("later events go out too", || async {
        published(&js, "billing.invoice.paid").await.len() == 5
    })
    .await;
    wait_until("the failing rows are parked", || async {
        count(
            &db,
            "SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL",
        )
        .await
            == 3
    })
    .await;
    let rows: Vec<(i32, String)> = sqlx::query_as(
        "SELECT attempts, last_error FROM outbox WHERE parked_at IS NOT NULL ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for (attempts, error) in &rows {
        assert_eq!(
            *attempts, FAST.max_attempts,
            "parked after exactly its attempts"
        );
        assert!(error.contains("no stream"), "{error}");
    }
    let stats = invoicer::store::outbox::stats(&db.pool).await.unwrap();
    assert_eq!((stats.pending, stats.parked), (0, 3), "{stats:?}");
    assert_eq!(invoicer::store::outbox::backlog(&db.pool).await.unwrap(), 0);
}

/// Published rows older than the retention period are pruned; waiting and parked rows and
/// recent ones are kept.
#[tokio::test]
async fn published_rows_are_pruned_after_the_retention_period() {
    let app = TestApp::start().await;
    let db = app.db.clone();
    insert_events(&db, "billing.invoice.issued", "old:", 30, 10).await;
    insert_events(&db, "billing.rollup.completed", "old-completed:", 2, 10).await;
    insert_events(&db, "billing.invoice.issued", "recent:", 5, 10).await;
    insert_events(&db, "billing.nowhere", "old-parked:", 2, 10).await;
    sqlx::raw_sql(
        "UPDATE outbox SET published_at = now() - interval '8 days', created_at = now() - interval '8 days'
             WHERE msg_id LIKE 'old%' AND subject <> 'billing.nowhere';
         UPDATE outbox SET published_at = now() - interval '1 hour' WHERE msg_id LIKE 'recent:%';
         UPDATE outbox SET parked_at = now() - interval '8 days', attempts = 10,
                           created_at = now() - interval '9 days'
             WHERE msg_id LIKE 'old-parked:%';",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let _relay = FastRelay::start(&db, &app.nodes[0], FAST).await;
    wait_until("old published rows are pruned", || async {
        count(&db, "SELECT count(*) FROM outbox WHERE msg_id LIKE 'old:%'").await == 0
    })
    .await;
    let kept: Vec<(String, i64)> = sqlx::query_as(
        "SELECT split_part(msg_id, ':', 1), count(*) FROM outbox GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        kept,
        [("old-parked".to_string(), 2), ("recent".to_string(), 5)]
    );
}
