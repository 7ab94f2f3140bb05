//! Test harness: each test gets its own PostgreSQL database and, where it needs JetStream, its
//! own `nats-server` process on a free port with a temporary store, killed on drop. The
//! machine's shared servers are never stopped or reconfigured. A missing service fails loudly.
#![allow(dead_code)]

pub mod app;
pub mod operator;
pub mod users;

use anyhow::Context;
use invoicer::config::{DbArgs, NatsArgs, WorkerArgs};
use serde_json::Value;
use std::future::Future;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: sqlx::PgPool,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let name = format!("invoicer_test_{}", uuid::Uuid::new_v4().simple());
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

/// A private `nats-server` with JetStream, optionally with a config file.
pub struct NatsServer {
    pub port: u16,
    pub url: String,
    child: Child,
    _store: tempfile::TempDir,
    config: Option<std::path::PathBuf>,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        Self::start_with(None)
    }

    pub fn start_with(config: Option<&Path>) -> NatsServer {
        Self::launch(config, true)
    }

    /// A server whose configuration names its own JetStream store directory (the operator-mode
    /// configuration does: nats-server refuses `-sd` on top of it).
    pub fn start_with_own_store(config: &Path) -> NatsServer {
        Self::launch(Some(config), false)
    }

    fn launch(config: Option<&Path>, store_flags: bool) -> NatsServer {
        let store = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = spawn_nats(port, store.path(), config, store_flags);
        NatsServer {
            port,
            url: format!("nats://127.0.0.1:{port}"),
            child,
            _store: store,
            config: config.map(Path::to_path_buf),
        }
    }

    pub fn args(&self) -> NatsArgs {
        NatsArgs::local(&self.url)
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(&self.url).await.unwrap()
    }
}

/// Starts `nats-server` with JetStream on `port` and `store`, and waits until it listens.
/// `store_flags`: JetStream on with `store` as its directory (off when the configuration names
/// its own store, as the operator-mode one does: nats-server refuses `-sd` on top of it).
fn spawn_nats(port: u16, store: &Path, config: Option<&Path>, store_flags: bool) -> Child {
    let mut cmd = Command::new("nats-server");
    if let Some(c) = config {
        cmd.arg("-c").arg(c);
    }
    cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
    if store_flags {
        cmd.arg("-js").arg("-sd").arg(store);
    }
    cmd.arg("-l")
        .arg(store.join("nats-server.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd
        .spawn()
        .expect("nats-server must be installed (see README)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nats-server did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An in-process worker, stopped (gracefully) on drop or by [`Worker::stop`].
pub struct Worker {
    stop: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Worker {
    pub async fn start(db: &TestDb, nats: &NatsServer) -> Worker {
        Self::start_with(db.args(), nats.args(), WorkerArgs::default()).await
    }

    pub async fn start_with(db: DbArgs, nats: NatsArgs, args: WorkerArgs) -> Worker {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let client = invoicer::bus::connect(&nats, "test-probe").await.unwrap();
        let handle =
            tokio::spawn(async move { invoicer::worker::run(&db, &nats, &args, token).await });
        wait_until("the worker's service answers", || async {
            invoicer::client::worker_running(&client).await
        })
        .await;
        Worker {
            stop,
            handle: Some(handle),
        }
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Polls `check` until it holds, failing after 30s: waiting on a state, never sleeping blind.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every message stored on `subject` in `stream`, as JSON, in stream order.
pub async fn stream_messages(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subject: &str,
) -> Vec<Value> {
    let mut s = js.get_stream(stream).await.unwrap();
    let last = s.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = s.get_raw_message(seq).await {
            if m.subject.as_str() == subject {
                out.push(serde_json::from_slice(&m.payload).unwrap());
            }
        }
    }
    out
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

/// The `billing.rollup.completed` event of a request, once published.
pub async fn completed(js: &async_nats::jetstream::Context, request_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = stream_messages(js, "BILLING_EVENTS", "billing.rollup.completed")
            .await
            .into_iter()
            .find(|e| e["request_id"] == request_id);
        if let Some(event) = found {
            return event;
        }
        assert!(
            Instant::now() < deadline,
            "rollup {request_id} did not complete"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl NatsServer {
    /// As [`NatsServer::start_with`], keeping the server's log (errors, warnings and notices,
    /// including every `Publish Violation` / `Subscription Violation`) for
    /// [`NatsServer::log`].
    pub fn start_logged(config: &Path) -> NatsServer {
        Self::start_with(Some(config))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._store.path().join("nats-server.log")).unwrap_or_default()
    }
}

impl Worker {
    /// As [`Worker::start_with`], but readiness (`$SRV.PING.invoicer`) is probed through `probe`
    /// rather than a connection with the worker's own credentials: under `nats.conf` the worker
    /// user may not publish to `$SRV.>` (it only answers discovery, it never asks).
    pub async fn start_probed(
        db: DbArgs,
        nats: NatsArgs,
        args: WorkerArgs,
        probe: &async_nats::Client,
    ) -> Worker {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let handle =
            tokio::spawn(async move { invoicer::worker::run(&db, &nats, &args, token).await });
        wait_until("the worker's service answers", || async {
            handle.is_finished() || invoicer::client::worker_running(probe).await
        })
        .await;
        if handle.is_finished() {
            // Failing fast with the worker's own error (e.g. a refused JetStream API call).
            panic!("the worker stopped while starting: {:?}", handle.await);
        }
        Worker {
            stop,
            handle: Some(handle),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Real faults: a nats-server that can be killed and restarted on the same port and store, and
// the worker as a separate process (the binary), killed on drop.
// ---------------------------------------------------------------------------------------------

impl NatsServer {
    /// SIGKILLs the server; its store directory stays for [`NatsServer::restart`].
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL nats-server");
        self.child.wait().unwrap();
    }

    /// Starts the server again on the same port and store directory (streams, consumers and
    /// their state survive, as after a real restart).
    pub fn restart(&mut self) {
        self.child = spawn_nats(self.port, self._store.path(), self.config.as_deref(), true);
    }
}

/// `invoicer run` as a child process, its log kept in a file; SIGKILLed on drop.
pub struct WorkerProcess {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl WorkerProcess {
    /// Starts the binary against `db` and `nats` with extra environment, and waits until its
    /// service answers `$SRV.PING` (failing with the worker's log if it exits first).
    pub async fn start(db: &TestDb, nats: &NatsServer, env: &[(&str, &str)]) -> WorkerProcess {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_invoicer"));
        cmd.arg("run")
            .env("DATABASE_URL", &db.url)
            .env("NATS_URL", &nats.url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut worker = WorkerProcess {
            child: cmd.spawn().expect("the invoicer binary runs"),
            log,
        };
        let probe = nats.client().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !invoicer::client::worker_running(&probe).await {
            if let Some(status) = worker.child.try_wait().unwrap() {
                panic!(
                    "the worker exited ({status}) while starting:\n{}",
                    worker.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not start:\n{}",
                worker.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        worker
    }

    /// What the worker logged so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, once the process has exited on its own within `within`.
    pub async fn exited_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
