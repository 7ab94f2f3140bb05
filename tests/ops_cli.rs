//! The operator's seat, as a person or an orchestrator uses it: the `invoicer` binary against a
//! worker that is itself the binary (`invoicer run`), on a private nats-server and database.
//! `rollup --wait` (summary, exit codes), `health` (0 ready, 1 not), `invoices list` paging,
//! `quote` and `demo` output without log lines, and the Prometheus counters.

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Starts a worker process that serves Prometheus metrics; returns its index and the address.
async fn spawn_metered_worker(app: &mut TestApp) -> (usize, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let opts = WorkerOpts::default().with_env("METRICS_ADDR", &metrics);
    (app.spawn_worker_with(opts).await, metrics)
}

/// The Prometheus text a worker serves on its METRICS_ADDR.
fn scrape(metrics: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(metrics).expect("metrics listener");
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    body
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the CLI as a person would (no RUST_LOG), without a terminal, with a deadline.
async fn cli(nats_url: &str, db: Option<&TestDb>, args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_invoicer"));
    cmd.args(args)
        .env("NATS_URL", nats_url)
        .env_remove("RUST_LOG")
        .env_remove("LOG_FORMAT")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(db) = db {
        cmd.env("DATABASE_URL", &db.url);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("invoicer {args:?} did not finish within 120s"))
        .unwrap();
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// The value of a summary row, e.g. `  Invoices issued        1`.
fn row(stdout: &str, label: &str) -> String {
    stdout
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} row in:\n{stdout}"))
        .trim_start()[label.len()..]
        .trim()
        .to_string()
}

/// No log line from the CLI or an in-process worker reached the person's terminal.
fn assert_quiet(run: &Run) {
    for level in [" INFO ", " DEBUG ", " TRACE ", "INFO invoicer"] {
        assert!(
            !run.stdout.contains(level) && !run.stderr.contains(level),
            "log lines in the output:\n{}\n{}",
            run.stdout,
            run.stderr
        );
    }
}

async fn subscribe(client: &async_nats::Client, tenant: &str) {
    admin(
        client,
        "billing.admin.tenants.put",
        json!({"tenant_id": tenant}),
    )
    .await;
    admin(
        client,
        "billing.admin.subscriptions.put",
        json!({"id": Uuid::new_v4(), "tenant_id": tenant, "deployment_id": Uuid::new_v4(),
               "plan": "studio", "addons": ["storage_50gb"], "started_at": "2026-03-15T00:00:00Z"}),
    )
    .await;
}

#[tokio::test]
async fn rollup_wait_prints_a_summary_and_exits_3_when_a_tenant_failed() {
    let mut app = TestApp::start().await;
    let (_, metrics) = spawn_metered_worker(&mut app).await;
    let (nats, client) = (app.nodes[0].url.clone(), app.client.clone());
    load_seed_catalog(&client).await;
    subscribe(&client, "acme").await;

    let ok = cli(&nats, None, &["rollup", "--period", "2026-04", "--wait"]).await;
    println!(
        "$ invoicer rollup --period 2026-04 --wait\n{}{}",
        ok.stderr, ok.stdout
    );
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    assert!(
        ok.stdout.contains("(2026-04-01 to 2026-05-01) completed"),
        "{}",
        ok.stdout
    );
    assert_eq!(row(&ok.stdout, "Invoices issued"), "1");
    assert_eq!(row(&ok.stdout, "Tenants skipped"), "0");
    assert_eq!(row(&ok.stdout, "Tenants failed"), "0");
    assert_eq!(row(&ok.stdout, "Unbilled deployments"), "0");
    assert!(row(&ok.stdout, "Duration").ends_with(" s"), "{}", ok.stdout);
    assert!(
        !ok.stdout.contains('{'),
        "a summary, not JSON:\n{}",
        ok.stdout
    );
    assert_quiet(&ok);

    let failed = cli(
        &nats,
        None,
        &[
            "rollup", "--period", "2026-04", "--wait", "--tenant", "acme", "--tenant", "ghost",
        ],
    )
    .await;
    println!(
        "$ invoicer rollup --period 2026-04 --wait --tenant acme --tenant ghost\n{}{}",
        failed.stderr, failed.stdout
    );
    assert_eq!(failed.code, 3, "{}{}", failed.stdout, failed.stderr);
    assert_eq!(row(&failed.stdout, "Invoices issued"), "0");
    assert_eq!(row(&failed.stdout, "Tenants skipped"), "1");
    assert_eq!(row(&failed.stdout, "Tenants failed"), "1");
    assert!(
        failed.stdout.contains("ghost") && failed.stdout.contains("unknown tenant"),
        "the failed tenant and its reason:\n{}",
        failed.stdout
    );
    assert!(
        failed.stderr.contains("1 tenant(s) failed"),
        "{}",
        failed.stderr
    );

    // A request the worker refuses (a tenant id that cannot be a subject token) exits 4.
    let rejected = cli(
        &nats,
        None,
        &["rollup", "--period", "2026-04", "--wait", "--tenant", "a.b"],
    )
    .await;
    assert_eq!(rejected.code, 4, "{}{}", rejected.stdout, rejected.stderr);
    assert!(
        rejected
            .stderr
            .contains("the rollup request was rejected: ")
            && rejected.stderr.contains("a.b"),
        "{}",
        rejected.stderr
    );
    assert!(rejected.stdout.is_empty(), "{}", rejected.stdout);

    // The worker counted the rollups and the one invoice it issued.
    wait_until("the worker's counters show the rollups", || async {
        let text = scrape(&metrics);
        text.contains("invoicer_rollups_total{outcome=\"completed\"} 2")
            && text.contains("invoicer_rollups_total{outcome=\"rejected\"} 1")
            && text.contains("invoicer_invoices_issued_total 1")
            && text.contains("invoicer_ready 1")
    })
    .await;
    let text = scrape(&metrics);
    assert!(text.contains("invoicer_outbox_backlog 0"), "{text}");
}

#[tokio::test]
async fn health_exits_0_for_a_ready_worker_and_1_when_it_is_stopped() {
    let mut app = TestApp::start().await;
    let nats = app.nodes[0].url.clone();

    let none = cli(&nats, None, &["health"]).await;
    assert_eq!(none.code, 1, "{}{}", none.stdout, none.stderr);
    assert!(
        none.stderr.contains("no invoicer worker"),
        "{}",
        none.stderr
    );

    let (worker, _) = spawn_metered_worker(&mut app).await;
    // Ready once each consumer has fetched and the relay has run a round.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        let run = cli(&nats, None, &["health"]).await;
        if run.code == 0 || Instant::now() > deadline {
            break run;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("$ invoicer health\n{}{}", ready.stdout, ready.stderr);
    assert_eq!(ready.code, 0, "{}{}", ready.stdout, ready.stderr);
    assert!(
        ready.stdout.starts_with("ready (invoicer "),
        "{}",
        ready.stdout
    );
    for part in [
        "database",
        "outbox_backlog",
        "rollup_consumer",
        "usage_consumer",
        "outbox_relay",
    ] {
        assert!(ready.stdout.contains(part), "{part} in:\n{}", ready.stdout);
    }
    let json = cli(&nats, None, &["health", "--json"]).await;
    assert_eq!(json.code, 0);
    let v: Value = serde_json::from_str(json.stdout.trim()).unwrap();
    assert_eq!(v["ready"], true, "{v}");
    assert_eq!(v["outbox_backlog"], 0, "{v}");

    app.workers[worker].terminate(Duration::from_secs(30));
    let stopped = cli(&nats, None, &["health", "--timeout", "2"]).await;
    assert_eq!(stopped.code, 1, "{}{}", stopped.stdout, stopped.stderr);
    assert!(
        stopped.stderr.contains("no invoicer worker"),
        "{}",
        stopped.stderr
    );
}

#[tokio::test]
async fn invoices_list_pages_through_everything_and_quote_shows_only_what_it_has() {
    let mut app = TestApp::start().await;
    spawn_metered_worker(&mut app).await;
    let (nats, client) = (app.nodes[0].url.clone(), app.client.clone());
    load_seed_catalog(&client).await;
    // 620 tenants straight into the database: setup, not the subject under test.
    app.bulk_tenants("t", 620, None).await;
    let rollup = cli(&nats, None, &["rollup", "--period", "2026-04", "--wait"]).await;
    assert_eq!(rollup.code, 0, "{}{}", rollup.stdout, rollup.stderr);
    assert_eq!(row(&rollup.stdout, "Invoices issued"), "620");
    // Without a terminal, progress is plain lines on standard error, never JSON.
    for line in rollup.stderr.lines() {
        assert!(
            line.starts_with("rollup 2026-04: ") || line.starts_with("note: "),
            "{line}"
        );
    }

    let data_rows = |out: &str| out.lines().filter(|l| l.contains(" issued ")).count();
    let all = cli(&nats, None, &["invoices", "list", "--all"]).await;
    assert_eq!(all.code, 0, "{}", all.stderr);
    assert_eq!(data_rows(&all.stdout), 620, "every invoice, across pages");
    assert_eq!(
        all.stdout.lines().filter(|l| l.starts_with("ID ")).count(),
        1,
        "one header"
    );
    assert!(all.stderr.is_empty(), "{}", all.stderr);

    let capped = cli(&nats, None, &["invoices", "list", "--limit", "520"]).await;
    assert_eq!(
        data_rows(&capped.stdout),
        520,
        "two pages, cut at the limit"
    );
    assert!(
        capped.stderr.contains("520 shown; there are more"),
        "{}",
        capped.stderr
    );
    let default = cli(&nats, None, &["invoices", "list", "--status", "issued"]).await;
    assert_eq!(data_rows(&default.stdout), 50);
    assert_quiet(&default);

    let quote = cli(
        &nats,
        None,
        &[
            "quote",
            "--plan",
            "studio",
            "--addon",
            "storage_50gb",
            "--usage",
            "droplet_hours=2160",
            "--period",
            "2026-04",
        ],
    )
    .await;
    println!("$ invoicer quote ...\n{}", quote.stdout);
    assert_eq!(quote.code, 0, "{}", quote.stderr);
    assert!(
        quote
            .stdout
            .starts_with("Quote for plan studio with storage_50gb, 2026-04 (30 days)"),
        "{}",
        quote.stdout
    );
    for absent in ["Period:", "Deployment", "(exclusive)", "Tenant:"] {
        assert!(
            !quote.stdout.contains(absent),
            "{absent} in:\n{}",
            quote.stdout
        );
    }
    assert!(
        quote.stdout.trim_end().ends_with("70.64"),
        "{}",
        quote.stdout
    );
    assert_quiet(&quote);
}

#[tokio::test]
async fn demo_prints_the_invoice_and_the_rerun_without_log_lines() {
    let app = TestApp::start().await;
    let (db, nats) = (&*app.db, app.nodes[0].url.clone());
    let demo = cli(&nats, Some(db), &["demo"]).await;
    println!("$ invoicer demo\n{}{}", demo.stdout, demo.stderr);
    assert_eq!(demo.code, 0, "{}{}", demo.stdout, demo.stderr);
    assert!(
        demo.stderr.is_empty(),
        "nothing on standard error:\n{}",
        demo.stderr
    );
    assert_quiet(&demo);
    let invoice_at = demo.stdout.find("Tax invoice INV-").expect("the invoice");
    let rerun_at = demo
        .stdout
        .find("Re-run without force: 0 issued, 1 skipped")
        .expect("the re-run");
    assert!(invoice_at < rerun_at);
    assert!(
        demo.stdout[invoice_at..rerun_at].contains("70.64"),
        "{}",
        demo.stdout
    );
}
