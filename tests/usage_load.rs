//! Ingestion under load: a million usage records, duplicates among them, published as fast as
//! one client can; none is lost and each duplicate counts once. It prints the rate (a figure,
//! never an assertion: speed is measured, not tested).
//!
//! The worker runs as a process (the binary) on its own nats-server and database.

mod common;

use common::*;
use futures::stream::{FuturesUnordered, StreamExt};
use rust_decimal::Decimal;
use std::future::IntoFuture;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Records published in all, duplicates included.
const PUBLISHED: usize = 1_000_000;
const PER_MESSAGE: usize = 1000;
/// In each message: records repeated from the same message and from earlier messages.
const REPEATS_WITHIN: usize = 25;
const REPEATS_ACROSS: usize = 25;
const DEPLOYMENTS: u128 = 1000;
/// Publish acks awaited at once.
const WINDOW: usize = 256;

fn deployment(i: u128) -> Uuid {
    Uuid::from_u128(0xd0d0_0000_0000_4000_8000_0000_0000_0000 + i % DEPLOYMENTS)
}

/// The n-th distinct record: its JSON and its quantity.
fn record(n: u128) -> (String, Decimal) {
    let quantity = Decimal::new((n % 1000) as i64 + 1, 2);
    let json = format!(
        r#"{{"event_id":"{}","deployment_id":"{}","resource_kind":"droplet_hours","quantity":"{}","occurred_at":"2026-04-{:02}T{:02}:00:00Z"}}"#,
        Uuid::from_u128(0xe0e0_0000_0000_4000_8000_0000_0000_0000 + n),
        deployment(n),
        quantity,
        n % 30 + 1,
        n % 24
    );
    (json, quantity)
}

#[tokio::test]
async fn a_million_records_with_duplicates_none_lost_each_counted_once() {
    let app = TestApp::with_worker_process().await;
    let (db, js) = (app.db.clone(), app.js.clone());
    let worker = &app.workers[0];
    // Realistic lookups on the insert path: the deployments belong to subscribed tenants.
    sqlx::raw_sql(&format!(
        "INSERT INTO plans (code, name, currency, base_price) VALUES ('studio', 'Studio', 'AUD', 50);
         INSERT INTO tenants (tenant_id) SELECT 't' || g FROM generate_series(0, 99) g;
         INSERT INTO subscriptions (id, tenant_id, deployment_id, plan_code, started_at)
         SELECT gen_random_uuid(), 't' || (g % 100),
                ('d0d00000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid,
                'studio', '2026-01-01' FROM generate_series(0, {}) g;",
        DEPLOYMENTS - 1
    ))
    .execute(&db.pool)
    .await
    .unwrap();

    let distinct_per_message = PER_MESSAGE - REPEATS_WITHIN - REPEATS_ACROSS;
    let messages = PUBLISHED / PER_MESSAGE;
    let mut expected_sum = Decimal::ZERO;
    let mut next: u128 = 0;
    let started = Instant::now();
    let mut acks = FuturesUnordered::new();
    for m in 0..messages {
        let mut body = String::with_capacity(PER_MESSAGE * 200);
        body.push_str(r#"{"records":["#);
        let first = next;
        for i in 0..PER_MESSAGE {
            let n = if i < distinct_per_message {
                next += 1;
                let (_, q) = record(next - 1);
                expected_sum += q;
                next - 1
            } else if i < distinct_per_message + REPEATS_WITHIN {
                first + (i as u128 * 7) % distinct_per_message as u128
            } else {
                // From earlier messages (or this one, for the first).
                (i as u128 * 7919 + m as u128 * 104_729) % next
            };
            if i > 0 {
                body.push(',');
            }
            body.push_str(&record(n).0);
        }
        body.push_str("]}");
        acks.push(
            js.publish("metering.usage.recorded", body.into())
                .await
                .expect("publish")
                .into_future(),
        );
        while acks.len() >= WINDOW {
            acks.next().await.unwrap().expect("publish ack");
        }
    }
    while let Some(ack) = acks.next().await {
        ack.expect("publish ack");
    }
    let published_in = started.elapsed();
    let distinct = next as i64;
    assert_eq!(distinct as usize, messages * distinct_per_message);

    // Stored: waited on the row count with a deadline (never asserted as a speed).
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let n = count(&db, "SELECT count(*) FROM usage_records").await;
        if n >= distinct {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of {distinct} stored after 300s\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored_in = started.elapsed();

    let (n, sum): (i64, Decimal) =
        sqlx::query_as("SELECT count(*), sum(quantity) FROM usage_records")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(n, distinct, "every distinct record once");
    assert_eq!(sum, expected_sum, "each duplicate counted once");
    let stream = js.get_stream("METERING_USAGE").await.unwrap();
    wait_until("the usage consumer is drained", || async {
        let info = stream.consumer_info("invoicer-usage").await.unwrap();
        info.num_pending == 0 && info.num_ack_pending == 0
    })
    .await;
    assert!(
        stream_messages(&js, "BILLING_EVENTS", "billing.usage.rejected")
            .await
            .is_empty()
    );

    let secs = stored_in.as_secs_f64();
    println!(
        "usage ingestion: {PUBLISHED} records in {messages} messages ({} duplicates, {distinct} distinct); \
         published in {:.1}s ({:.0} records/s); all stored in {secs:.1}s: {:.0} records/s end to end \
         ({:.0} distinct rows/s)",
        PUBLISHED as i64 - distinct,
        published_in.as_secs_f64(),
        PUBLISHED as f64 / published_in.as_secs_f64(),
        PUBLISHED as f64 / secs,
        distinct as f64 / secs,
    );
}
