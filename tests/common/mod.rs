//! Test harness. Most tests run on a [`TestApp`]: a fresh PostgreSQL database, its own
//! `nats-server` (or a 3-node cluster) on free ports with temporary stores, workers in-process
//! or as processes, a client and the event readers, all torn down on drop. The machine's shared
//! servers are never stopped or reconfigured. A missing service fails loudly.
//!
//! The parts stand alone too, for tests that assemble them differently (NATS users and
//! permissions, a scheduler without a worker): [`TestDb`], [`NatsServer`], [`InProcessWorker`].
#![allow(dead_code)]

pub mod app;
pub mod nats;
pub mod operator;
pub mod users;
pub mod worker;

pub use app::*;
pub use nats::NatsServer;
pub use worker::{InProcessWorker, WorkerOpts, WorkerProcess};

use anyhow::Context;
use invoicer::config::{DbArgs, WorkerArgs};
use serde_json::Value;
use std::future::Future;
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: sqlx::PgPool,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let name = format!("invoicer_test_{}", uuid::Uuid::new_v4().simple());
        Self::open(name).await
    }

    /// A database whose default collation is ICU's `locale` (`en-US`: `a1 < B2 < c3`, where
    /// byte order has `B2 < a1`), as a server initialised with a linguistic locale (the
    /// `postgres` image's `en_US.utf8`) gives every database. ICU is built into PostgreSQL, so
    /// this needs no operating-system locale.
    pub async fn with_icu_collation(locale: &str) -> TestDb {
        use sqlx::Connection;
        let name = format!("invoicer_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(ADMIN_URL)
            .await
            .expect("PostgreSQL must be running on 127.0.0.1:5432 (see README)");
        sqlx::query(&format!(
            "CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu \
             ICU_LOCALE '{locale}' LOCALE 'C.utf8'"
        ))
        .execute(&mut admin)
        .await
        .expect("an ICU database can be created");
        Self::open(name).await
    }

    async fn open(name: String) -> TestDb {
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        let pool = invoicer::store::connect(&url, 5)
            .await
            .expect("PostgreSQL must be running on 127.0.0.1:5432 (see README)");
        invoicer::store::migrate(&pool)
            .await
            .expect("migrations apply");
        TestDb { name, url, pool }
    }

    pub fn args(&self) -> DbArgs {
        DbArgs {
            database_url: self.url.clone(),
            database_max_connections: 10,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime we can block on; use a thread with its own.
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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` until it holds, failing after 30s: waiting on a state, never sleeping blind.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, Duration::from_secs(30), || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await
}

/// Every message stored on `subject` in `stream`, as JSON, in stream order.
pub async fn stream_messages(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subject: &str,
) -> Vec<Value> {
    read_stream(js, stream, Some(subject))
        .await
        .into_iter()
        .map(|e| e.payload)
        .collect()
}

pub async fn admin(client: &async_nats::Client, subject: &str, body: Value) -> Value {
    invoicer::client::call(client, subject, &body)
        .await
        .with_context(|| format!("{subject} {body}"))
        .unwrap()
}

/// Loads the seed catalog (plan studio, addon storage_50gb).
pub async fn load_seed_catalog(client: &async_nats::Client) {
    let (plan, addon) = invoicer::demo::seed_catalog();
    admin(client, "billing.admin.plans.put", plan).await;
    admin(client, "billing.admin.addons.put", addon).await;
}

/// Subscribes `deployment` of `tenant` to Studio with storage_50gb from 2026-01-01, creating
/// the tenant first if it is new (`tenants.put` with no other field keeps an existing one as it
/// is): a subscription never creates its tenant.
pub async fn subscribe(client: &async_nats::Client, tenant: &str, deployment: uuid::Uuid) {
    admin(
        client,
        "billing.admin.tenants.put",
        serde_json::json!({ "tenant_id": tenant }),
    )
    .await;
    admin(
        client,
        "billing.admin.subscriptions.put",
        serde_json::json!({"id": uuid::Uuid::new_v4(), "tenant_id": tenant,
            "deployment_id": deployment, "plan": "studio", "addons": ["storage_50gb"],
            "started_at": "2026-01-01T00:00:00Z"}),
    )
    .await;
}

/// Every invoice of a tenant, newest first (the admin list: no lines).
pub async fn invoices_of(client: &async_nats::Client, tenant: &str) -> Vec<Value> {
    let list = admin(
        client,
        "billing.admin.invoices.list",
        serde_json::json!({ "tenant_id": tenant }),
    )
    .await;
    list["invoices"].as_array().unwrap().clone()
}

/// The tenant's live (not void) invoice, with its lines.
pub async fn live_invoice(client: &async_nats::Client, tenant: &str) -> Value {
    let live = invoices_of(client, tenant)
        .await
        .into_iter()
        .find(|i| i["status"] != "void")
        .unwrap_or_else(|| panic!("{tenant} has no live invoice"));
    admin(
        client,
        "billing.admin.invoices.get",
        serde_json::json!({ "id": live["id"] }),
    )
    .await
}

/// Publishes usage records in one message and waits until all are stored.
pub async fn publish_usage(
    js: &async_nats::jetstream::Context,
    db: &TestDb,
    records: Vec<Value>,
    expect_stored: i64,
) {
    let body = serde_json::json!({ "records": records });
    js.publish("metering.usage.recorded", body.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    wait_until("usage is stored", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_records")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        n >= expect_stored
    })
    .await;
}

/// Publishes a rollup request and waits for its completed event.
pub async fn rollup(js: &async_nats::jetstream::Context, mut request: Value) -> Value {
    let id = uuid::Uuid::new_v4().to_string();
    request["request_id"] = Value::String(id.clone());
    invoicer::client::request_rollup(js, &request, &id)
        .await
        .unwrap();
    completed(js, &id).await
}

/// The `billing.rollup.completed` event of a request, once published (within 60 s).
pub async fn completed(js: &async_nats::jetstream::Context, request_id: &str) -> Value {
    completed_within(js, request_id, Duration::from_secs(60)).await
}

/// A count from the test database.
pub async fn count(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

/// The supplier on tax invoice documents in tests (the ATO's own example ABN).
pub fn seller_args() -> invoicer::config::SellerArgs {
    invoicer::config::SellerArgs {
        seller_name: Some("Droplet Cloud Pty Ltd".into()),
        seller_abn: Some("51 824 753 556".into()),
        seller_address: Some("1 Example Street\nSydney NSW 2000".into()),
    }
}

/// Worker settings with the test seller, so the render endpoints answer with documents.
pub fn seller_worker() -> WorkerArgs {
    WorkerArgs {
        seller: seller_args(),
        ..WorkerArgs::default()
    }
}

/// Sends `sig` (e.g. `TERM`) to a child process.
pub(crate) fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill -{sig} {} failed", child.id());
}

/// Waits for a child to exit; SIGKILLs it and fails if it outlives `within`.
pub(crate) fn wait_exit(child: &mut Child, within: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} (pid {}) did not exit within {within:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
