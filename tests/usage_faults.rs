//! Metered usage is never dropped (CONTRACT.md section 8), proven with the worker as a real
//! process on its own nats-server and database: poison records mixed with good ones, the same
//! event delivered many times, database errors and terminated connections during ingestion.
//! The load test (a million records) is in `tests/usage_load.rs`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

const DEPLOYMENT: Uuid = Uuid::from_u128(0xd0d0_0000_0000_4000_8000_0000_0000_0001);

fn record(event_id: Uuid, quantity: &str) -> Value {
    json!({"event_id": event_id, "deployment_id": DEPLOYMENT, "resource_kind": "droplet_hours",
           "quantity": quantity, "occurred_at": "2026-04-10T12:00:00Z"})
}

/// A good record with a fresh event id.
fn good(quantity: &str) -> Value {
    record(Uuid::new_v4(), quantity)
}

/// `good` with one field replaced.
fn with(field: &str, value: Value) -> Value {
    let mut r = good("1");
    r[field] = value;
    r
}

/// Notes a good record as sent.
fn keep(r: Value, goods: &mut Vec<Value>) -> Value {
    goods.push(r.clone());
    r
}

async fn publish(js: &async_nats::jetstream::Context, payload: Vec<u8>) {
    js.publish("metering.usage.recorded", payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn publish_json(js: &async_nats::jetstream::Context, body: &Value) {
    publish(js, body.to_string().into_bytes()).await;
}

async fn stored_ids(db: &TestDb) -> HashSet<Uuid> {
    sqlx::query_scalar::<_, Uuid>("SELECT event_id FROM usage_records")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

fn ids(records: &[Value]) -> HashSet<Uuid> {
    records
        .iter()
        .map(|r| r["event_id"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Waits until the usage consumer has nothing pending and nothing unacknowledged.
async fn consumer_drained(js: &async_nats::jetstream::Context) {
    let stream = js.get_stream("METERING_USAGE").await.unwrap();
    wait_until("the usage consumer is drained", || {
        let stream = stream.clone();
        async move {
            let mut c: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer("invoicer-usage").await.unwrap();
            let info = c.info().await.unwrap();
            info.num_pending == 0 && info.num_ack_pending == 0
        }
    })
    .await;
}

#[tokio::test]
async fn poison_usage_is_rejected_record_by_record_and_the_good_records_count() {
    let app = TestApp::with_worker_process().await;
    let (db, js) = (app.db.clone(), app.js.clone());

    let mut goods = Vec::new();
    // (what was sent, as the rejection should echo it)
    let mut rejected: Vec<Value> = Vec::new();

    // A batch mixing good records with bad ones: float and negative quantities, a missing
    // field, a bad uuid, wrong types, a NUL byte, a year PostgreSQL and RFC 3339 cannot both
    // hold, a quantity no exact decimal holds, an exponent, non-objects.
    let bad_in_batch = vec![
        with("quantity", json!(24.5)),
        with("quantity", json!("-1")),
        with("quantity", json!("1e3")),
        with("quantity", json!("100000000000000000000000000000000")),
        json!({"event_id": Uuid::new_v4(), "deployment_id": DEPLOYMENT, "quantity": "1",
               "occurred_at": "2026-04-10T12:00:00Z"}),
        with("event_id", json!("not-a-uuid")),
        with("event_id", json!(42)),
        with("deployment_id", Value::Null),
        with("resource_kind", json!("droplet\u{0}hours")),
        with("resource_kind", json!("x".repeat(65))),
        with("occurred_at", json!("9999-12-31T23:00:00-05:00")),
        with("occurred_at", json!("yesterday")),
        Value::Null,
        json!("a string"),
        json!([1, 2]),
    ];
    let mut batch = vec![keep(good("24"), &mut goods)];
    for (i, bad) in bad_in_batch.iter().enumerate() {
        batch.push(bad.clone());
        if i % 4 == 0 {
            batch.push(keep(good("2.5"), &mut goods));
        }
    }
    batch.push(keep(good("0.0035"), &mut goods));
    // PostgreSQL's jsonb cannot hold NUL: that record is echoed as its JSON text.
    rejected.extend(bad_in_batch.into_iter().map(|r| {
        if r["resource_kind"] == "droplet\u{0}hours" {
            json!(r.to_string())
        } else {
            r
        }
    }));
    publish_json(&js, &json!({ "records": batch })).await;

    // Whole messages that break the contract: not JSON, not UTF-8, not an object, `records`
    // not a list, a single record with a bad field, an empty object.
    publish(&js, b"droplet_hours=24".to_vec()).await;
    rejected.push(json!("droplet_hours=24"));
    publish(&js, vec![0xff, 0xfe, b'{']).await;
    rejected.push(json!("\u{fffd}\u{fffd}{"));
    let array = json!([good("1")]);
    publish_json(&js, &array).await;
    rejected.push(array);
    let not_a_list = json!({"records": "nope"});
    publish_json(&js, &not_a_list).await;
    rejected.push(not_a_list);
    let single_bad = with("quantity", json!("-3"));
    publish_json(&js, &single_bad).await;
    rejected.push(single_bad);
    publish_json(&js, &json!({})).await;
    rejected.push(json!({}));

    // Oversize: one record of ~900 kB beside a good one; its echo is truncated.
    let huge = with("resource_kind", json!("k".repeat(900_000)));
    let small = keep(good("7"), &mut goods);
    publish_json(&js, &json!({"records": [small, huge]})).await;

    // An empty batch is nothing to store and nothing to reject; a single good record.
    publish_json(&js, &json!({"records": []})).await;
    publish_json(&js, &keep(good("1"), &mut goods)).await;

    // The stream keeps flowing after all of that.
    let last = vec![keep(good("3"), &mut goods), keep(good("4"), &mut goods)];
    publish_json(&js, &json!({ "records": last })).await;

    let want = ids(&goods);
    wait_until("every good record is stored", || async {
        stored_ids(&db).await.len() >= want.len()
    })
    .await;
    assert_eq!(stored_ids(&db).await, want, "exactly the good records");

    let expected_rejections = rejected.len() + 1; // + the huge record
    wait_until("every bad record is rejected", || async {
        stream_messages(&js, "BILLING_EVENTS", "billing.usage.rejected")
            .await
            .len()
            >= expected_rejections
    })
    .await;
    consumer_drained(&js).await;
    let events = stream_messages(&js, "BILLING_EVENTS", "billing.usage.rejected").await;
    assert_eq!(
        events.len(),
        expected_rejections,
        "one rejection per bad record"
    );
    for event in &events {
        let reason = event["reason"].as_str().unwrap_or_default();
        assert!(!reason.is_empty(), "a rejection says why: {event}");
    }
    let echoed: Vec<&Value> = events.iter().map(|e| &e["record"]).collect();
    for sent in &rejected {
        assert!(
            echoed.contains(&sent),
            "{sent} is rejected with the record as received; got {echoed:?}"
        );
    }
    let truncated = echoed
        .iter()
        .filter_map(|r| r.as_str())
        .find(|s| s.contains("kkkk"))
        .expect("the huge record is echoed as truncated text");
    assert!(truncated.len() <= 4096, "echo truncated to 4 KiB");
    assert!(truncated.starts_with('{'), "{}", &truncated[..40]);

    // Reasons name the problem.
    let reason_of = |record: &Value| -> String {
        events
            .iter()
            .find(|e| &e["record"] == record)
            .map(|e| e["reason"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert!(reason_of(&json!("droplet_hours=24")).contains("JSON"));
    assert!(
        reason_of(&rejected[1]).contains("negative"),
        "{}",
        reason_of(&rejected[1])
    );
    assert!(reason_of(&rejected[8]).contains("resource_kind"));
}

#[tokio::test]
async fn the_same_usage_event_delivered_many_times_counts_once() {
    let app = TestApp::with_worker_process().await;
    let (db, js) = (app.db.clone(), app.js.clone());

    let events: Vec<Value> = (0..100).map(|_| good("1.5")).collect();
    // Every event 20 times: alone, repeated inside one batch, in overlapping batches, and the
    // same message published again (no Nats-Msg-Id, so the stream keeps every copy).
    for e in &events {
        publish_json(&js, e).await;
    }
    for _ in 0..5 {
        publish_json(&js, &json!({"records": events})).await;
    }
    let doubled: Vec<Value> = events.iter().flat_map(|e| [e.clone(), e.clone()]).collect();
    publish_json(&js, &json!({ "records": doubled })).await;
    for chunk in events.chunks(7) {
        for _ in 0..6 {
            publish_json(&js, &json!({ "records": chunk })).await;
        }
    }
    for e in &events {
        publish_json(&js, e).await;
    }
    consumer_drained(&js).await;
    // Late repeats, after the originals are stored, change nothing either.
    let mut late = events[0].clone();
    late["quantity"] = json!("1000");
    publish_json(&js, &late).await;
    consumer_drained(&js).await;

    let (n, total): (i64, rust_decimal::Decimal) =
        sqlx::query_as("SELECT count(*), sum(quantity) FROM usage_records")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(n, 100);
    assert_eq!(total, rust_decimal::Decimal::new(1500, 1));
    assert!(
        stream_messages(&js, "BILLING_EVENTS", "billing.usage.rejected")
            .await
            .is_empty()
    );
}

/// A database error during ingestion is never the record's fault: it is retried (here a
/// server-side data exception, SQLSTATE 22003, as a sum overflow in a trigger would raise)
/// until it succeeds, and nothing is rejected or lost.
#[tokio::test]
async fn a_database_error_is_retried_until_it_succeeds() {
    let app = TestApp::with_worker_process().await;
    let (db, js) = (app.db.clone(), app.js.clone());

    // The fault counts its hits on a sequence: nextval survives the rollback of the failing
    // statement, so the test can see the retries.
    sqlx::raw_sql(
        "CREATE SEQUENCE fault_hits;
         CREATE FUNCTION fail_usage() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM nextval('fault_hits');
             RAISE EXCEPTION 'simulated: value out of range' USING ERRCODE = '22003';
         END $$;
         CREATE TRIGGER fail_usage BEFORE INSERT ON usage_records
             FOR EACH STATEMENT EXECUTE FUNCTION fail_usage();",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let mut sent = Vec::new();
    for _ in 0..3 {
        let batch: Vec<Value> = (0..5).map(|_| good("2")).collect();
        sent.extend(batch.iter().cloned());
        publish_json(&js, &json!({ "records": batch })).await;
    }
    let single = good("2");
    sent.push(single.clone());
    publish_json(&js, &single).await;

    // Redelivered, not dropped: the fault is hit again and again.
    let stream = js.get_stream("METERING_USAGE").await.unwrap();
    wait_until("the failing messages are redelivered", || {
        let stream = stream.clone();
        let pool = db.pool.clone();
        async move {
            let hits: i64 = sqlx::query_scalar(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM fault_hits",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            let mut c: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer("invoicer-usage").await.unwrap();
            hits >= 4 && c.info().await.unwrap().num_redelivered >= 1
        }
    })
    .await;
    assert_eq!(count(&db, "SELECT count(*) FROM usage_records").await, 0);

    // The database recovers: everything is stored, nothing was rejected.
    sqlx::query("DROP TRIGGER fail_usage ON usage_records")
        .execute(&db.pool)
        .await
        .unwrap();
    let want = ids(&sent);
    wait_until("every record is stored after the fault clears", || async {
        stored_ids(&db).await.len() >= want.len()
    })
    .await;
    assert_eq!(stored_ids(&db).await, want);
    consumer_drained(&js).await;
    assert!(
        stream_messages(&js, "BILLING_EVENTS", "billing.usage.rejected")
            .await
            .is_empty()
    );
}

/// The worker's database connections are terminated (`pg_terminate_backend`) again and again
/// while usage arrives: every record is stored once.
#[tokio::test]
async fn terminated_database_connections_during_ingestion_lose_nothing() {
    let app = TestApp::with_worker_process().await;
    let (db, js) = (app.db.clone(), app.js.clone());

    let stop = tokio_util::sync::CancellationToken::new();
    let terminated = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let killer = {
        let stop = stop.clone();
        let terminated = terminated.clone();
        let name = db.name.clone();
        tokio::spawn(async move {
            use sqlx::Connection;
            let mut admin = sqlx::PgConnection::connect(ADMIN_URL).await.unwrap();
            let mut every = tokio::time::interval(Duration::from_millis(100));
            while !stop.is_cancelled() {
                every.tick().await;
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
                     FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                )
                .bind(&name)
                .fetch_one(&mut admin)
                .await
                .unwrap();
                terminated.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };

    // Usage arrives at a steady pace (a message every 20 ms for 4 s) so that ingestion and the
    // terminations overlap throughout.
    let mut sent = Vec::new();
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for _ in 0..200 {
        pace.tick().await;
        let batch: Vec<Value> = (0..50).map(|_| good("1")).collect();
        sent.extend(batch.iter().cloned());
        publish_json(&js, &json!({ "records": batch })).await;
    }
    wait_until(
        "the terminations have hit the worker's connections",
        || async { terminated.load(std::sync::atomic::Ordering::Relaxed) >= 10 },
    )
    .await;
    stop.cancel();
    killer.await.unwrap();

    let want = ids(&sent);
    wait_until("every record is stored", || async {
        stored_ids(&db).await.len() >= want.len()
    })
    .await;
    assert_eq!(stored_ids(&db).await, want);
    consumer_drained(&js).await;
    assert_eq!(
        count(&db, "SELECT sum(quantity)::bigint FROM usage_records").await,
        10_000
    );
    assert!(
        stream_messages(&js, "BILLING_EVENTS", "billing.usage.rejected")
            .await
            .is_empty()
    );
}
