//! Starting up and running the demo must never harm an installation (issue 15): replicas
//! started at once on a fresh database all come up, and the demo never writes into the
//! worker's database.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Drops the database `name` (if it exists) when dropped.
struct DropDb(String);

impl Drop for DropDb {
    fn drop(&mut self) {
        let name = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut c) = sqlx::PgConnection::connect(ADMIN_URL).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut c)
                            .await;
                }
            })
        })
        .join();
    }
}

#[test]
fn replicas_started_at_once_on_a_fresh_database_all_come_up() {
    let nats = NatsServer::start();
    // The race is between a handful of processes' CREATE DATABASE: a few rounds make it likely.
    for round in 0..3 {
        let name = format!("invoicer_fresh_{}", uuid::Uuid::new_v4().simple());
        let _cleanup = DropDb(name.clone());
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        let replicas: Vec<_> = (0..6)
            .map(|_| {
                Command::new(env!("CARGO_BIN_EXE_invoicer"))
                    .arg("migrate")
                    .env("DATABASE_URL", &url)
                    .env("NATS_URL", &nats.url)
                    .env("RUST_LOG", "warn")
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("the invoicer binary runs")
            })
            .collect();
        for child in replicas {
            let out = wait_output(child, Duration::from_secs(60));
            assert!(
                out.status.success(),
                "round {round}: a replica failed to start on a fresh database: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Waits for `child` to exit within `within`, killing it (and failing) if it does not.
fn wait_output(mut child: std::process::Child, within: Duration) -> std::process::Output {
    let deadline = std::time::Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the process did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Runs `invoicer demo` against the NATS server at `nats_url`, with the environment a newcomer
/// has (no DATABASE_URL), and returns its exit code and output.
async fn demo(nats_url: &str) -> (Option<i32>, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_invoicer"))
            .arg("demo")
            .env_remove("DATABASE_URL")
            .env("NATS_URL", nats_url)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("the demo finishes within 2 minutes")
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test]
async fn the_demo_never_bills_through_a_worker_of_another_database() {
    // A real installation: a worker on its own database, on this NATS server.
    let app = TestApp::with_worker().await;
    let (code, output) = demo(&app.nodes[0].url).await;
    assert_eq!(
        code,
        Some(1),
        "the demo must refuse to use a worker whose database is not the demo's:\n{output}"
    );
    assert!(
        output.contains(&app.db.name) && output.contains("invoicer_demo"),
        "the refusal names both databases:\n{output}"
    );
    for table in ["tenants", "subscriptions", "usage_records", "invoices"] {
        assert_eq!(
            count(&app.db, &format!("SELECT count(*) FROM {table}")).await,
            0,
            "the demo wrote into the worker's {table}"
        );
    }
}

#[tokio::test]
async fn the_demo_does_not_take_messages_waiting_for_a_stopped_worker() {
    // A real installation whose worker is down, with usage waiting for it.
    let app = TestApp::start().await;
    app.migrate().await;
    let dep = uuid::Uuid::new_v4();
    let record = serde_json::json!({"event_id": uuid::Uuid::new_v4(), "deployment_id": dep,
        "resource_kind": "droplet_hours", "quantity": "24", "occurred_at": "2026-04-01T00:00:00Z"});
    app.js
        .publish("metering.usage.recorded", record.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let (code, output) = demo(&app.nodes[0].url).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("METERING_USAGE"), "{output}");
    // The real worker, started again, stores it.
    let mut app = app;
    app.run_worker(invoicer::config::WorkerArgs::default())
        .await;
    wait_until("the waiting usage is stored by the real worker", || async {
        count(&app.db, "SELECT count(*) FROM usage_records").await == 1
    })
    .await;
}

#[tokio::test]
async fn the_demo_uses_its_own_database_by_default() {
    // A NATS server with no worker: the demo starts its own, on invoicer_demo.
    let nats = NatsServer::start();
    let (code, output) = demo(&nats.url).await;
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("Demo database: invoicer_demo."), "{output}");
    assert!(output.contains("Total AUD        70.64"), "{output}");
    let demo_db = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/invoicer_demo")
        .await
        .unwrap();
    let issued: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM invoices WHERE tenant_id = 'pilot' AND status = 'issued'",
    )
    .fetch_one(&demo_db)
    .await
    .unwrap();
    assert_eq!(issued, 1, "pilot's April invoice is in the demo's database");
}
