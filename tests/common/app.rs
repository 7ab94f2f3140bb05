//! `TestApp`: one test's whole installation, composed from real parts: a fresh database, its
//! own `nats-server` (one node, or a 3-node JetStream cluster), workers (`invoicer run`
//! processes, as in production, so they can be SIGKILLed, SIGTERMed and restarted; or in-process
//! workers where a test needs in-process speed or `WorkerArgs`), a client with request helpers,
//! and readers of the `BILLING_EVENTS` stream that count what downstream consumers would see.
//!
//! Faults are injected from outside, as they happen in production: signals to processes, a
//! NATS node stopped and restarted on its store, database backends terminated, and a TCP proxy
//! between a worker and a server that can cut every connection or hold the server's answers
//! ([`TcpProxy`]). Nothing in the product knows it is under test.
//!
//! Waiting is always on a state (a row, an event, a reply, a process exit) with a deadline.

use super::{free_port, InProcessWorker, NatsServer, TestDb, WorkerOpts, WorkerProcess};
use async_nats::jetstream;
use futures::StreamExt;
use invoicer::client::ServiceError;
use invoicer::config::WorkerArgs;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The period every scenario bills: April 2026.
pub const PERIOD_START: &str = "2026-04-01";
/// What one seeded tenant's April invoice comes to (the seed scenario of CONTRACT.md section 9:
/// $50.00 + $7.50 + 672 h × $0.01 = $64.22, GST $6.42).
pub const SEED_TOTAL_CENTS: i64 = 7064;

/// Polls `check` until it yields a value, failing after `within` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the JetStream of the server (or cluster) behind `client` answers: on a cluster,
/// until a meta leader is elected and every peer has joined, so replicated streams can be placed.
async fn wait_jetstream(client: &async_nats::Client, peers: usize) {
    wait_for(
        "JetStream is available (a meta leader with every peer)",
        Duration::from_secs(30),
        || async {
            let reply = tokio::time::timeout(
                Duration::from_secs(2),
                client.request("$JS.API.INFO", "".into()),
            )
            .await
            .ok()?
            .ok()?;
            let info: Value = serde_json::from_slice(&reply.payload).ok()?;
            if info.get("error").is_some() {
                return None;
            }
            if peers <= 1 {
                return Some(());
            }
            // A throwaway R-n stream succeeds only once every peer is known to the meta leader.
            let name = format!("PROBE_{}", uuid::Uuid::new_v4().simple());
            let js = jetstream::new(client.clone());
            let created = js
                .create_stream(jetstream::stream::Config {
                    name: name.clone(),
                    subjects: vec![format!("probe.{name}")],
                    num_replicas: peers,
                    storage: jetstream::stream::StorageType::Memory,
                    ..Default::default()
                })
                .await;
            if created.is_ok() {
                let _ = js.delete_stream(&name).await;
            }
            created.ok().map(|_| ())
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// A TCP proxy between a worker and a server: cut the line, or hold the server's answers.
// ---------------------------------------------------------------------------------------------

/// A TCP proxy to a local port. [`TcpProxy::cut`] drops every open connection and closes new
/// ones as soon as they are accepted, as when the server's host is unreachable;
/// [`TcpProxy::hold_replies`] lets the client's bytes through but holds back the server's, as
/// when a network stalls after a request was sent (for NATS: messages published and stored, the
/// acknowledgements not yet received).
pub struct TcpProxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
    hold: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// A proxy to the machine's PostgreSQL.
    pub async fn postgres() -> TcpProxy {
        Self::to(5432).await
    }

    pub async fn to(target: u16) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let (hold, holds) = tokio::sync::watch::channel(false);
        let accepting = up.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !accepting.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cuts = cuts.clone();
                // Only a cut after this connection opened ends it.
                cuts.borrow_and_update();
                let holds = holds.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let (client_rx, client_tx) = inbound.into_split();
                    let (server_rx, server_tx) = outbound.into_split();
                    tokio::select! {
                        _ = pipe(client_rx, server_tx, None) => {}
                        _ = pipe(server_rx, client_tx, Some(holds)) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        TcpProxy {
            port,
            up,
            cut,
            hold,
            task,
        }
    }

    /// A database URL through the proxy.
    pub fn pg_url(&self, db: &TestDb) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, db.name)
    }

    /// A NATS URL through the proxy.
    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Drops every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
        self.hold.send_replace(false);
    }

    /// Holds back everything the server sends until [`TcpProxy::release`].
    pub fn hold_replies(&self) {
        self.hold.send_replace(true);
    }

    pub fn release(&self) {
        self.hold.send_replace(false);
    }
}

/// Copies bytes one way; with `hold`, waits while it is set before passing a chunk on.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut hold: Option<tokio::sync::watch::Receiver<bool>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some(hold) = hold.as_mut() {
            if hold.wait_for(|held| !*held).await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut.send_modify(|n| *n += 1);
    }
}

// ---------------------------------------------------------------------------------------------
// The stream as downstream consumers see it.
// ---------------------------------------------------------------------------------------------

/// One message stored in a stream.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: u64,
    pub subject: String,
    pub msg_id: Option<String>,
    pub payload: Value,
}

/// Every message of `stream` (optionally on one subject) in stream order, read with an
/// ephemeral consumer: what a downstream reader would get.
pub async fn read_stream(
    js: &jetstream::Context,
    stream: &str,
    subject: Option<&str>,
) -> Vec<StoredEvent> {
    try_read_stream(js, stream, subject)
        .await
        .unwrap_or_else(|e| panic!("reading {stream}: {e:#}"))
}

/// As [`read_stream`], with JetStream's errors returned (a cluster electing a leader answers
/// with timeouts for a moment). Messages are fetched by sequence from the stream's leader (no
/// consumer to create, which on a cluster that just lost a node can take long): on one subject
/// by walking `next_by_subj`, else every sequence, many requests in flight.
pub async fn try_read_stream(
    js: &jetstream::Context,
    stream: &str,
    subject: Option<&str>,
) -> anyhow::Result<Vec<StoredEvent>> {
    use anyhow::Context;
    use async_nats::jetstream::stream::LastRawMessageErrorKind as Kind;
    let mut s = js.get_stream(stream).await.context("stream info")?;
    let last = s.info().await.context("stream info")?.state.last_sequence;
    let event = |m: async_nats::jetstream::message::StreamMessage| StoredEvent {
        seq: m.sequence,
        subject: m.subject.to_string(),
        msg_id: m.headers.get("Nats-Msg-Id").map(|v| v.to_string()),
        payload: serde_json::from_slice(&m.payload).unwrap_or_else(|e| {
            panic!(
                "{stream} #{} on {} is not JSON ({e}): {:?}",
                m.sequence,
                m.subject,
                String::from_utf8_lossy(&m.payload)
            )
        }),
    };
    let mut out = Vec::new();
    if let Some(subject) = subject {
        let mut next = 1;
        while next <= last {
            match s.get_first_raw_message_by_subject(subject, next).await {
                Ok(m) => {
                    next = m.sequence + 1;
                    out.push(event(m));
                }
                Err(e) if e.kind() == Kind::NoMessageFound => break,
                Err(e) => return Err(e).context("reading a message"),
            }
        }
        return Ok(out);
    }
    let fetched: Vec<_> = futures::stream::iter(1..=last)
        .map(|seq| {
            let s = &s;
            async move { s.get_raw_message(seq).await }
        })
        .buffered(64)
        .collect()
        .await;
    for m in fetched {
        match m {
            Ok(m) => out.push(event(m)),
            Err(e) if e.kind() == Kind::NoMessageFound => {}
            Err(e) => return Err(e).context("reading a message"),
        }
    }
    Ok(out)
}

/// The `billing.rollup.completed` event of a request, once it is in `BILLING_EVENTS` (read
/// again while JetStream answers with errors, as a cluster electing a leader does).
pub async fn completed_within(
    js: &jetstream::Context,
    request_id: &str,
    within: Duration,
) -> Value {
    wait_for(
        &format!("rollup {request_id} completes"),
        within,
        || async {
            try_read_stream(js, "BILLING_EVENTS", Some("billing.rollup.completed"))
                .await
                .ok()?
                .into_iter()
                .find(|e| e.payload["request_id"] == request_id)
                .map(|e| e.payload)
        },
    )
    .await
}

/// The events of `BILLING_EVENTS`, grouped the way the assertions need them.
pub struct EventLog {
    pub events: Vec<StoredEvent>,
}

impl EventLog {
    pub fn on(&self, subject: &str) -> impl Iterator<Item = &StoredEvent> {
        let subject = subject.to_string();
        self.events.iter().filter(move |e| e.subject == subject)
    }

    /// How many `billing.invoice.issued` events each invoice id has.
    pub fn issued_per_invoice(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for e in self.on("billing.invoice.issued") {
            *out.entry(e.payload["id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        out
    }

    pub fn completed(&self, request_id: &str) -> Vec<&StoredEvent> {
        self.on("billing.rollup.completed")
            .filter(|e| e.payload["request_id"] == request_id)
            .collect()
    }
}

/// What [`TestApp::assert_billed_once`] counted.
#[derive(Debug, Clone)]
pub struct Billing {
    pub live_invoices: i64,
    pub numbered_invoices: i64,
    pub issued_events: usize,
    pub events: usize,
}

// ---------------------------------------------------------------------------------------------
// The app.
// ---------------------------------------------------------------------------------------------

pub struct TestApp {
    /// First, so that in-process workers are told to stop before their database and server
    /// go away.
    pub in_process: Vec<InProcessWorker>,
    /// Shared, so a test can hold it while it starts and stops workers (`&mut TestApp`).
    pub db: Arc<TestDb>,
    pub nodes: Vec<NatsServer>,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub workers: Vec<WorkerProcess>,
    env: BTreeMap<String, String>,
    progress: Arc<Mutex<Vec<Value>>>,
    dir: tempfile::TempDir,
}

impl TestApp {
    /// A database and one `nats-server`; no worker yet.
    pub async fn start() -> TestApp {
        Self::build(1, None).await
    }

    /// A database and a 3-node JetStream cluster (routes on loopback, one store each); workers
    /// create the streams with 3 replicas (`NATS_STREAM_REPLICAS=3`).
    pub async fn clustered() -> TestApp {
        Self::build(3, None).await
    }

    /// A database and one `nats-server` started from `config` (which must let the test's
    /// anonymous client in); no worker yet.
    pub async fn with_nats_config(config: &Path) -> TestApp {
        Self::build(1, Some(config)).await
    }

    /// A database, one `nats-server` and an in-process worker with the default settings.
    pub async fn with_worker() -> TestApp {
        Self::with_worker_args(WorkerArgs::default()).await
    }

    /// A database, one `nats-server` and an in-process worker with `args`.
    pub async fn with_worker_args(args: WorkerArgs) -> TestApp {
        let mut app = Self::start().await;
        app.run_worker(args).await;
        app
    }

    /// A database, one `nats-server` and a worker process with the default settings.
    pub async fn with_worker_process() -> TestApp {
        let mut app = Self::start().await;
        app.spawn_worker().await;
        app
    }

    /// `db` and one `nats-server`; no worker yet.
    pub async fn start_on(db: TestDb) -> TestApp {
        Self::build_on(db, 1, None).await
    }

    async fn build(nodes: usize, config: Option<&Path>) -> TestApp {
        Self::build_on(TestDb::new().await, nodes, config).await
    }

    async fn build_on(db: TestDb, nodes: usize, config: Option<&Path>) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let mut nats: Vec<NatsServer> = if nodes == 1 {
            vec![NatsServer::new(dir.path(), "n1", None, config)]
        } else {
            let cluster_ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
            let routes: Vec<String> = cluster_ports
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            (0..nodes)
                .map(|i| {
                    NatsServer::new(
                        dir.path(),
                        &format!("n{}", i + 1),
                        Some((cluster_ports[i], routes.clone())),
                        config,
                    )
                })
                .collect()
        };
        for node in &mut nats {
            node.spawn();
        }
        // The test's own client sits on the last node; workers start on the first ones.
        let client = async_nats::ConnectOptions::new()
            .name("test-app")
            .connect(&nats[nodes - 1].url)
            .await
            .unwrap();
        wait_jetstream(&client, nodes).await;
        let js = jetstream::new(client.clone());
        let mut env = BTreeMap::new();
        env.insert("RUST_LOG".into(), "warn,invoicer=info".into());
        env.insert("NO_COLOR".into(), "1".into());
        if nodes > 1 {
            env.insert("NATS_STREAM_REPLICAS".into(), nodes.to_string());
        }
        let progress = Arc::new(Mutex::new(Vec::new()));
        let mut sub = client.subscribe("billing.rollup.progress").await.unwrap();
        let seen = progress.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Ok(v) = serde_json::from_slice(&m.payload) {
                    seen.lock().unwrap().push(v);
                }
            }
        });
        TestApp {
            in_process: Vec::new(),
            db: Arc::new(db),
            nodes: nats,
            client,
            js,
            workers: Vec::new(),
            env,
            progress,
            dir,
        }
    }

    /// Sets an environment variable for the worker processes started from now on.
    pub fn set_env(&mut self, key: &str, value: impl ToString) {
        self.env.insert(key.into(), value.to_string());
    }

    /// Creates the streams as `invoicer migrate` does (on a cluster, with its replicas), so a
    /// test can publish before any worker runs.
    pub async fn migrate(&self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_invoicer"));
        cmd.arg("migrate")
            .env("DATABASE_URL", &self.db.url)
            .env("NATS_URL", &self.nodes[0].url)
            .envs(&self.env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "invoicer migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts a worker on this runtime with `args` and waits until it serves requests;
    /// returns its index in [`TestApp::in_process`].
    pub async fn run_worker(&mut self, args: WorkerArgs) -> usize {
        let i = self.in_process.len();
        let node = &self.nodes[i % self.nodes.len()];
        self.in_process
            .push(InProcessWorker::spawn(self.db.args(), node.args(), args));
        let want = self.running_workers();
        self.wait_workers_answer(want).await;
        i
    }

    /// Stops in-process worker `i` and waits for it; it must stop cleanly.
    pub async fn stop_worker(&mut self, i: usize) {
        self.in_process.remove(i).stop().await;
    }

    /// Starts a worker process and waits until it serves requests; returns its index in
    /// [`TestApp::workers`].
    pub async fn spawn_worker(&mut self) -> usize {
        self.spawn_worker_with(WorkerOpts::default()).await
    }

    pub async fn spawn_worker_with(&mut self, opts: WorkerOpts) -> usize {
        let i = self.workers.len();
        let name = format!("w{}", i + 1);
        let node = opts.node.unwrap_or(i % self.nodes.len());
        let db_url = opts.database_url.unwrap_or_else(|| self.db.url.clone());
        let sep = if db_url.contains('?') { '&' } else { '?' };
        let log = self.dir.path().join(format!("{name}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_invoicer"));
        cmd.arg("run")
            .env(
                "DATABASE_URL",
                format!("{db_url}{sep}application_name={name}"),
            )
            .env(
                "NATS_URL",
                opts.nats_url.as_deref().unwrap_or(&self.nodes[node].url),
            )
            .envs(&self.env)
            .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().expect("the invoicer binary runs");
        self.workers.push(WorkerProcess { name, log, child });
        let want = self.running_workers();
        self.wait_workers_answer(want).await;
        i
    }

    /// Worker processes still running, and in-process workers not stopped.
    fn running_workers(&mut self) -> usize {
        let processes = self
            .workers
            .iter_mut()
            .map(|w| w.is_running())
            .filter(|r| *r)
            .count();
        processes + self.in_process.iter().filter(|w| w.is_running()).count()
    }

    /// Waits until `n` distinct worker services answer `$SRV.PING.invoicer`, failing at once
    /// (with its log or error) if a worker stops with an error meanwhile.
    pub async fn wait_workers_answer(&mut self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for w in &mut self.workers {
                if let Some(status) = w.child.try_wait().unwrap() {
                    if status.code() != Some(0) && status.code().is_some() {
                        panic!("worker {} exited ({status}):\n{}", w.name, w.log());
                    }
                }
            }
            for w in &mut self.in_process {
                w.fail_if_stopped().await;
            }
            if self.service_ids(n).await.len() >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{n} workers did not answer within 60s"
            );
        }
    }

    /// The ids of the `invoicer` service instances that answer a ping within a short window
    /// (shorter once `enough` have answered).
    async fn service_ids(&self, enough: usize) -> HashSet<String> {
        let inbox = self.client.new_inbox();
        let mut sub = self.client.subscribe(inbox.clone()).await.unwrap();
        self.client
            .publish_with_reply("$SRV.PING.invoicer", inbox, "".into())
            .await
            .unwrap();
        let mut ids = HashSet::new();
        let window = tokio::time::sleep(Duration::from_millis(300));
        tokio::pin!(window);
        loop {
            tokio::select! {
                m = sub.next() => match m {
                    Some(m) => {
                        if let Ok(v) = serde_json::from_slice::<Value>(&m.payload) {
                            if let Some(id) = v["id"].as_str() { ids.insert(id.to_string()); }
                        }
                        if ids.len() >= enough {
                            break;
                        }
                    }
                    None => break,
                },
                _ = &mut window => break,
            }
        }
        ids
    }

    /// Bulk-loads the seed catalog and `tenants` tenants (`t00001` ...), each with one
    /// deployment on Studio + storage_50gb and 2,160 droplet-hours in April 2026 (three
    /// records), straight into the database: set-up, not the subject under test. Every
    /// tenant's invoice is the seed scenario's ([`SEED_TOTAL_CENTS`]).
    pub async fn seed(&self, tenants: i64) {
        self.seed_range(1, tenants).await
    }

    /// As [`TestApp::seed`], for tenants `first..=last` (the catalog is loaded once).
    pub async fn seed_range(&self, first: i64, last: i64) {
        let statements = [
            r#"INSERT INTO plans (code, name, currency, base_price, included, overage)
               VALUES ('studio', 'Studio', 'AUD', 50.00, '{"droplet_hours": "1488"}',
                       '{"droplet_hours": {"unit_price": "0.01"}}') ON CONFLICT DO NOTHING"#,
            "INSERT INTO addons (code, name, currency, price)
             VALUES ('storage_50gb', 'storage_50gb', 'AUD', 7.50) ON CONFLICT DO NOTHING",
            "INSERT INTO tenants (tenant_id) SELECT 't' || lpad(i::text, 5, '0')
             FROM generate_series($1::bigint, $2::bigint) i",
            "INSERT INTO subscriptions (id, tenant_id, deployment_id, plan_code, started_at)
             SELECT md5('sub-' || i)::uuid, 't' || lpad(i::text, 5, '0'), md5('dep-' || i)::uuid,
                    'studio', '2026-01-01T00:00:00Z'
             FROM generate_series($1::bigint, $2::bigint) i",
            "INSERT INTO subscription_addons (subscription_id, addon_code, position)
             SELECT md5('sub-' || i)::uuid, 'storage_50gb', 0 FROM generate_series($1::bigint, $2::bigint) i",
            "INSERT INTO usage_records (event_id, deployment_id, resource_kind, quantity, occurred_at)
             SELECT md5('use-' || i || '-' || k)::uuid, md5('dep-' || i)::uuid, 'droplet_hours', 720,
                    timestamptz '2026-04-02T12:00:00Z' + make_interval(days => 10 * k)
             FROM generate_series($1::bigint, $2::bigint) i, generate_series(0, 2) k",
        ];
        for sql in statements {
            sqlx::query(sql)
                .bind(first)
                .bind(last)
                .execute(&self.db.pool)
                .await
                .unwrap();
        }
    }

    /// Loads `n` tenants (`<prefix>00001` ...) with one Studio subscription each (no add-on, no
    /// usage) straight into the database: set-up, not the subject under test. `grace_period`
    /// is each tenant's own window (none: the platform's).
    pub async fn bulk_tenants(&self, prefix: &str, n: i64, grace_period: Option<&str>) {
        sqlx::query(
            "INSERT INTO tenants (tenant_id, grace_period)
             SELECT $1 || lpad(g::text, 5, '0'), $3 FROM generate_series(1, $2) g",
        )
        .bind(prefix)
        .bind(n)
        .bind(grace_period)
        .execute(&self.db.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO subscriptions (id, tenant_id, deployment_id, plan_code, started_at)
             SELECT gen_random_uuid(), tenant_id, gen_random_uuid(), 'studio', '2026-01-01'
             FROM tenants WHERE tenant_id LIKE $1 || '%'",
        )
        .bind(prefix)
        .execute(&self.db.pool)
        .await
        .unwrap();
    }

    /// Publishes a rollup request (April 2026 unless the body says otherwise) and returns its
    /// `request_id` (a fresh one unless the body has one), also used as its `Nats-Msg-Id`.
    pub async fn request(&self, mut body: Value) -> String {
        if body.get("period_start").is_none() {
            body["period_start"] = json!(PERIOD_START);
        }
        let id = match body.get("request_id").and_then(Value::as_str) {
            Some(id) => id.to_string(),
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                body["request_id"] = json!(id);
                id
            }
        };
        invoicer::client::request_rollup(&self.js, &body, &id)
            .await
            .unwrap();
        id
    }

    /// The `billing.rollup.completed` event of a request, once it is in the stream.
    pub async fn completed(&self, request_id: &str, within: Duration) -> Value {
        completed_within(&self.js, request_id, within).await
    }

    /// Every event in `BILLING_EVENTS` (retried for a while: on a cluster that just lost a node,
    /// JetStream answers with timeouts until the stream's new leader has caught up).
    pub async fn events(&self) -> EventLog {
        let events = wait_for(
            "BILLING_EVENTS can be read",
            Duration::from_secs(60),
            || async { try_read_stream(&self.js, "BILLING_EVENTS", None).await.ok() },
        )
        .await;
        EventLog { events }
    }

    /// The progress events seen so far for a request.
    pub fn progress(&self, request_id: &str) -> Vec<Value> {
        self.progress
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p["request_id"] == request_id)
            .cloned()
            .collect()
    }

    /// Sends raw bytes to an endpoint and returns the reply: the value or the typed service
    /// error. Panics on a transport failure or a missing or non-JSON reply.
    pub async fn send(
        &self,
        subject: &str,
        payload: impl Into<Vec<u8>>,
    ) -> Result<Value, ServiceError> {
        invoicer::client::call_raw(&self.client, subject, payload.into())
            .await
            .unwrap_or_else(|e| panic!("{subject}: no well-formed reply: {e:#}"))
    }

    /// A JSON request (the body by value or by reference).
    pub async fn call(
        &self,
        subject: &str,
        body: impl std::borrow::Borrow<Value>,
    ) -> Result<Value, ServiceError> {
        self.send(subject, body.borrow().to_string()).await
    }

    /// A request that must succeed.
    pub async fn ok(&self, subject: &str, body: Value) -> Value {
        match self.call(subject, &body).await {
            Ok(v) => v,
            Err(e) => panic!("{subject} {body}: expected success, got {e:?}"),
        }
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.db.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Waits until the outbox is drained (every committed event published).
    pub async fn outbox_drained(&self, within: Duration) {
        wait_for("the outbox is drained", within, || async {
            (self
                .scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .await
                == 0)
                .then_some(())
        })
        .await
    }

    /// The promise of CONTRACT.md section 8, checked end to end once the outbox is drained:
    /// exactly one live invoice for each of `tenants` tenants in the period, invoice numbers
    /// 1..N without a gap or a repeat, and exactly one `billing.invoice.issued` in the stream
    /// for every numbered invoice (none for anything else), carrying its number and total.
    pub async fn assert_billed_once(&self, tenants: i64) -> Billing {
        self.outbox_drained(Duration::from_secs(90)).await;
        let (live, live_tenants): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT tenant_id) FROM invoices
             WHERE period_start = $1::date AND status <> 'void'",
        )
        .bind(PERIOD_START)
        .fetch_one(&self.db.pool)
        .await
        .unwrap();
        assert_eq!(live, live_tenants, "a tenant has two live invoices");
        assert_eq!(live, tenants, "live invoices for the period");
        let (numbered, distinct, max): (i64, i64, Option<i64>) = sqlx::query_as(
            "SELECT count(number), count(DISTINCT number), max(number) FROM invoices",
        )
        .fetch_one(&self.db.pool)
        .await
        .unwrap();
        assert_eq!(numbered, distinct, "an invoice number is used twice");
        assert_eq!(
            max.unwrap_or(0),
            numbered,
            "invoice numbers have a gap (count {numbered}, max {max:?})"
        );
        let counter = self.scalar("SELECT last_number FROM invoice_numbers").await;
        assert_eq!(counter, numbered, "the counter reserved numbers never used");

        let log = self.events().await;
        let per_invoice = log.issued_per_invoice();
        let repeated: Vec<_> = per_invoice.iter().filter(|(_, n)| **n > 1).collect();
        assert!(repeated.is_empty(), "issued more than once: {repeated:?}");
        let rows: Vec<(uuid::Uuid, i64, i64)> =
            sqlx::query_as("SELECT id, number, total_cents FROM invoices WHERE number IS NOT NULL")
                .fetch_all(&self.db.pool)
                .await
                .unwrap();
        let stored: HashMap<String, (i64, i64)> = rows
            .into_iter()
            .map(|(id, n, t)| (id.to_string(), (n, t)))
            .collect();
        let announced: HashSet<&String> = per_invoice.keys().collect();
        let numbered_ids: HashSet<&String> = stored.keys().collect();
        assert_eq!(
            announced.len(),
            numbered_ids.len(),
            "issued events vs numbered invoices"
        );
        assert_eq!(
            announced, numbered_ids,
            "issued events vs numbered invoices"
        );
        for e in log.on("billing.invoice.issued") {
            let (number, total) = stored[e.payload["id"].as_str().unwrap()];
            assert_eq!(
                e.payload["number"],
                json!(format!("INV-{number:06}")),
                "{}",
                e.payload
            );
            assert_eq!(e.payload["total_cents"], json!(total));
        }
        Billing {
            live_invoices: live,
            numbered_invoices: numbered,
            issued_events: per_invoice.len(),
            events: log.events.len(),
        }
    }

    /// The sessions of a worker in `pg_stat_activity` (by its `application_name`).
    pub async fn sessions_of(&self, worker: usize) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
        )
        .bind(&self.db.name)
        .bind(&self.workers[worker].name)
        .fetch_one(&self.db.pool)
        .await
        .unwrap()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        for w in &mut self.workers {
            if let Ok(None) = w.child.try_wait() {
                let _ = w.child.kill();
                let _ = w.child.wait();
            }
        }
        if std::env::var_os("TESTAPP_KEEP_LOGS").is_some() {
            // For a post-mortem: the worker and nats-server logs stay on disk.
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("TestApp logs kept in {}", dir.keep().display());
        }
        if std::thread::panicking() {
            for w in &self.workers {
                let log = w.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- worker {} (last lines) ----", w.name);
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Inside the item transactions.
// ---------------------------------------------------------------------------------------------

/// When each item transaction started, took its invoice numbers, and wrote its completion,
/// from triggers in the test's own database (transaction time and clock time).
pub struct ItemClock;

#[derive(Debug, Clone)]
pub struct ItemTimes {
    pub request_id: String,
    pub item: i32,
    pub worker: String,
    pub started: f64,
    pub numbers_taken: Option<f64>,
    pub done: f64,
}

impl ItemClock {
    pub async fn install(app: &TestApp) {
        for sql in [
            "CREATE TABLE test_item_log (txid bigint, request_id text, item_no int, worker text,
               started timestamptz, done timestamptz)",
            "CREATE TABLE test_counter_log (txid bigint, taken timestamptz)",
            "CREATE FUNCTION test_log_item() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.done_at IS NOT NULL AND OLD.done_at IS NULL THEN
                 INSERT INTO test_item_log VALUES (txid_current(), NEW.request_id, NEW.item_no,
                   NEW.processed_by, now(), clock_timestamp());
               END IF;
               RETURN NEW;
             END $$",
            "CREATE TRIGGER test_log_item AFTER UPDATE ON rollup_items
             FOR EACH ROW EXECUTE FUNCTION test_log_item()",
            "CREATE FUNCTION test_log_counter() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               INSERT INTO test_counter_log VALUES (txid_current(), clock_timestamp());
               RETURN NEW;
             END $$",
            "CREATE TRIGGER test_log_counter AFTER UPDATE ON invoice_numbers
             FOR EACH ROW EXECUTE FUNCTION test_log_counter()",
        ] {
            sqlx::query(sql).execute(&app.db.pool).await.unwrap();
        }
    }

    /// Makes writing one tenant's invoice lines take `seconds`: work an item does before it
    /// takes invoice numbers.
    pub async fn slow_tenant(app: &TestApp, tenant: &str, seconds: f64) {
        sqlx::query(&format!(
            "CREATE FUNCTION test_slow_lines() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF EXISTS (SELECT 1 FROM new_lines l JOIN subscriptions s
                          ON s.deployment_id = l.deployment_id WHERE s.tenant_id = '{tenant}') THEN
                 PERFORM pg_sleep({seconds});
               END IF;
               RETURN NULL;
             END $$"
        ))
        .execute(&app.db.pool)
        .await
        .unwrap();
        sqlx::query(
            "CREATE TRIGGER test_slow_lines AFTER INSERT ON invoice_lines
             REFERENCING NEW TABLE AS new_lines FOR EACH STATEMENT EXECUTE FUNCTION test_slow_lines()",
        )
        .execute(&app.db.pool)
        .await
        .unwrap();
    }

    /// Item times in seconds since the epoch.
    pub async fn read(app: &TestApp, request_id: &str) -> Vec<ItemTimes> {
        let rows: Vec<(i32, String, f64, Option<f64>, f64)> = sqlx::query_as(
            "SELECT i.item_no, i.worker, extract(epoch FROM i.started)::float8,
                    extract(epoch FROM c.taken)::float8, extract(epoch FROM i.done)::float8
             FROM test_item_log i LEFT JOIN test_counter_log c USING (txid)
             WHERE i.request_id = $1 AND i.item_no >= 0 ORDER BY i.done",
        )
        .bind(request_id)
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
        rows.into_iter()
            .map(|(item, worker, started, numbers_taken, done)| ItemTimes {
                request_id: request_id.to_string(),
                item,
                worker,
                started,
                numbers_taken,
                done,
            })
            .collect()
    }
}
