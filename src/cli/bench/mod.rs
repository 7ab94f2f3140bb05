//! `invoicer bench`: CONTRACT.md section 10, measured in one run on a private database and a
//! private `nats-server`, printed as a table with the ratios the contract asks for.
//!
//! Phases, each from a clean slate of invoices, outbox and event stream:
//! 1. the rollup end to end through NATS with one worker process, then with two: from the
//!    request's publication to `billing.rollup.completed` with every `billing.invoice.issued`
//!    stored in the stream;
//! 2. the floor: `COPY` of exactly the invoice, line and outbox rows that rollup wrote, into the
//!    same tables with the same indexes;
//! 3. the naive design: one transaction per tenant, same queries, in this process;
//! 4. usage ingestion through NATS, one record per message and batched;
//! 5. the quote engine alone on one core.

mod env;
mod fixture;
mod ingest;
mod naive;

pub mod quotes;

use anyhow::{bail, Context};
use async_nats::jetstream;
use env::{BenchDb, NatsProcess, WorkerProcess};
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Tenants to generate (three deployments each).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(i64).range(1..=10_000_000))]
    pub tenants: i64,
    /// Any database URL on the PostgreSQL server to use; the benchmark creates (and drops) its
    /// own database beside it.
    #[arg(long, env = "DATABASE_URL", default_value = crate::config::DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// The nats-server binary; the benchmark starts its own server with a temporary store.
    #[arg(long, default_value = "nats-server")]
    pub nats_server: String,
    /// Tenants per rollup work item (ROLLUP_BATCH_SIZE of the workers).
    #[arg(long)]
    pub batch_size: Option<i64>,
    /// Work items each worker works at once in the 1-versus-2-workers comparison. One item
    /// each shows the work spreading across processes; a third run measures one worker at the
    /// default ROLLUP_CONCURRENCY.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Skip the naive one-transaction-per-tenant phase (the slowest).
    #[arg(long)]
    pub skip_naive: bool,
    /// Usage records for the batched ingestion phase.
    #[arg(long, default_value_t = 1_000_000)]
    pub ingest_records: i64,
    /// Messages for the single-record ingestion phase.
    #[arg(long, default_value_t = 100_000)]
    pub ingest_messages: i64,
    /// Keep the benchmark database afterwards (its name is printed).
    #[arg(long)]
    pub keep: bool,
    /// Only generate the data set into a kept database (for EXPLAIN work), then exit.
    #[arg(long)]
    pub generate_only: bool,
}

/// One rollup run's figures.
#[derive(Debug, Clone)]
pub struct RollupFigures {
    pub elapsed: Duration,
    pub peak_rss: Vec<u64>,
    pub cpu: Vec<Duration>,
    /// Invoices written by each worker process, where the schema records it.
    pub shares: Vec<(String, i64)>,
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let nats = NatsProcess::start(&args.nats_server)?;
    let db = BenchDb::create(&args.database_url).await?;
    let result = measure(args, &nats, &db).await;
    drop(nats);
    if args.keep || args.generate_only {
        eprintln!("bench: kept database {}", db.name);
    } else {
        // Dropped whether the run succeeded or not: a failed run leaves nothing behind.
        db.drop_now().await?;
    }
    result
}

async fn measure(args: &BenchArgs, nats: &NatsProcess, db: &BenchDb) -> anyhow::Result<()> {
    let n = args.tenants;
    eprintln!(
        "bench: database {}, nats {}; generating {n} tenants ({} subscriptions, {} usage records)",
        db.name,
        nats.url,
        n * fixture::DEPLOYMENTS_PER_TENANT,
        fixture::usage_rows(n)
    );
    let t = Instant::now();
    fixture::generate(&db.pool, n).await?;
    eprintln!("bench: data generated in {:.1}s", t.elapsed().as_secs_f64());
    if args.generate_only {
        println!("{}", db.url);
        return Ok(());
    }
    let client = async_nats::connect(&nats.url).await?;
    let js = jetstream::new(client.clone());
    let ctx = Ctx {
        db,
        nats,
        client: &client,
        js: &js,
        tenants: n,
        batch_size: args.batch_size,
    };

    let c = args.concurrency;
    let one = ctx.rollup(1, c).await.context("rollup with one worker")?;
    eprintln!("bench: rollup, 1 worker: {:.2}s", one.elapsed.as_secs_f64());
    let two = ctx.rollup(2, c).await.context("rollup with two workers")?;
    eprintln!(
        "bench: rollup, 2 workers: {:.2}s",
        two.elapsed.as_secs_f64()
    );
    let default_c = crate::config::DEFAULT_ROLLUP_CONCURRENCY;
    let one_default = ctx
        .rollup(1, default_c)
        .await
        .context("rollup with one worker at the default concurrency")?;
    eprintln!(
        "bench: rollup, 1 worker x {default_c} items: {:.2}s",
        one_default.elapsed.as_secs_f64()
    );
    let written = ctx.written_rows().await?;
    let floor = ctx.copy_floor().await.context("COPY floor")?;
    eprintln!("bench: COPY floor: {:.2}s", floor.as_secs_f64());
    let naive = if args.skip_naive {
        None
    } else {
        ctx.reset().await?;
        let (issued, t) = naive::run(&db.pool, fixture::period()).await?;
        if issued != n {
            bail!("the naive design issued {issued} invoices for {n} tenants");
        }
        eprintln!("bench: naive: {:.2}s", t.as_secs_f64());
        Some(t)
    };
    let ingest = ingest::run(&ctx, args.ingest_messages, args.ingest_records).await?;
    let quotes = quotes::run();

    let mut report = Report::default();
    report.header(n, &written);
    report.rollup(&format!("rollup, 1 worker x {c} item at once"), &one, n);
    report.rollup(&format!("rollup, 2 workers x {c} item at once"), &two, n);
    report.rollup(
        &format!("rollup, 1 worker x {default_c} items at once (default)"),
        &one_default,
        n,
    );
    report.row(
        "COPY floor (same rows)",
        format!("{:.2} s", floor.as_secs_f64()),
        rate(n, floor),
    );
    if let Some(t) = naive {
        report.row(
            "naive (1 tx per tenant)",
            format!("{:.2} s", t.as_secs_f64()),
            rate(n, t),
        );
    }
    report.row(
        "ingestion, batched",
        format!(
            "{} records in {:.2} s",
            ingest.batched.0,
            ingest.batched.1.as_secs_f64()
        ),
        format!(
            "{:.0} records/s",
            per_sec(ingest.batched.0, ingest.batched.1)
        ),
    );
    report.row(
        "ingestion, single",
        format!(
            "{} messages in {:.2} s",
            ingest.single.0,
            ingest.single.1.as_secs_f64()
        ),
        format!(
            "{:.0} messages/s",
            per_sec(ingest.single.0, ingest.single.1)
        ),
    );
    report.row(
        "quote engine, 1 core",
        format!("{} quotes in {:.2} s", quotes.0, quotes.1.as_secs_f64()),
        format!("{:.0} quotes/s", per_sec(quotes.0, quotes.1)),
    );
    let best = one.elapsed.min(two.elapsed).min(one_default.elapsed);
    report.ratio(
        "rollup (best) / COPY floor",
        ratio(best, floor),
        "≤ 2 (aim 1.5)",
    );
    if let Some(t) = naive {
        report.ratio("naive / rollup (best)", ratio(t, best), "≥ 8");
    }
    report.ratio(
        "1 worker / 2 workers",
        ratio(one.elapsed, two.elapsed),
        "> 1",
    );
    println!("{}", report.0);

    Ok(())
}

pub(crate) struct Ctx<'a> {
    db: &'a BenchDb,
    nats: &'a NatsProcess,
    client: &'a async_nats::Client,
    js: &'a jetstream::Context,
    tenants: i64,
    batch_size: Option<i64>,
}

/// Rows a rollup wrote, for the report's header.
struct Written {
    invoices: i64,
    lines: i64,
    outbox: i64,
}

impl Ctx<'_> {
    /// Empties what a rollup writes, so each phase starts alike.
    async fn reset(&self) -> anyhow::Result<()> {
        let mut conn = self.db.pool.acquire().await?;
        // rollup_items only exists from the fan-out schema on; the bench also measures older ones.
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'
               AND tablename IN ('invoice_lines', 'invoices', 'outbox', 'rollup_runs', 'rollup_items')",
        )
        .fetch_all(&mut *conn)
        .await?;
        sqlx::query(&format!("TRUNCATE {} CASCADE", tables.join(", ")))
            .execute(&mut *conn)
            .await?;
        sqlx::query("UPDATE invoice_numbers SET last_number = 0")
            .execute(&mut *conn)
            .await?;
        sqlx::query("VACUUM ANALYZE invoices, invoice_lines, outbox, invoice_numbers")
            .execute(&mut *conn)
            .await?;
        if let Ok(s) = self.js.get_stream(crate::bus::EVENTS_STREAM).await {
            s.purge().await?;
        }
        Ok(())
    }

    fn worker_env(&self, concurrency: usize) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("ROLLUP_CONCURRENCY", concurrency.to_string()),
            // Documents on, as in production: every invoice issued records its supplier too.
            ("SELLER_NAME", "Bench Cloud Pty Ltd".to_string()),
            ("SELLER_ABN", "51 824 753 556".to_string()),
            (
                "SELLER_ADDRESS",
                "1 Bench Street\nSydney NSW 2000".to_string(),
            ),
        ];
        if let Some(b) = self.batch_size {
            env.push(("ROLLUP_BATCH_SIZE", b.to_string()));
        }
        env
    }

    async fn rollup(&self, workers: usize, concurrency: usize) -> anyhow::Result<RollupFigures> {
        self.reset().await?;
        let procs = (0..workers)
            .map(|_| {
                WorkerProcess::start(&self.db.url, &self.nats.url, &self.worker_env(concurrency))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        wait_for_services(self.client, workers).await?;
        let request_id = format!("bench-{}", uuid::Uuid::new_v4());
        let mut completed = self
            .client
            .subscribe(crate::subjects::ROLLUP_COMPLETED)
            .await?;
        let period = fixture::period();
        let request = json!({"period_start": period.start, "period_end": period.end,
                             "request_id": request_id});
        let started = Instant::now();
        crate::bus::client::request_rollup(self.js, &request, &request_id).await?;
        let event = tokio::time::timeout(Duration::from_secs(3600), async {
            while let Some(msg) = completed.next().await {
                let v: Value = serde_json::from_slice(&msg.payload)?;
                if v["request_id"] == request_id.as_str() {
                    return Ok(v);
                }
            }
            bail!("subscription ended")
        })
        .await
        .context("no billing.rollup.completed within an hour")??;
        if event["invoices_issued"].as_i64() != Some(self.tenants) {
            bail!("the rollup did not issue one invoice per tenant: {event}");
        }
        let committed = started.elapsed();
        // Every issued event stored, plus the completed one.
        let want = self.tenants as u64 + 1;
        let mut stream = self.js.get_stream(crate::bus::EVENTS_STREAM).await?;
        while stream.info().await?.state.messages < want {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = started.elapsed();
        eprintln!(
            "bench:   {workers} worker(s): run completed (all invoices committed) after {:.2}s, \
             worker-side duration {} ms; all events in the stream after {:.2}s",
            committed.as_secs_f64(),
            event["duration_ms"],
            elapsed.as_secs_f64()
        );
        let peak_rss = procs
            .iter()
            .map(WorkerProcess::peak_rss)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cpu = procs
            .iter()
            .map(WorkerProcess::cpu_time)
            .collect::<anyhow::Result<Vec<_>>>()?;
        for p in procs {
            p.stop()?;
        }
        let shares = self.shares().await;
        Ok(RollupFigures {
            elapsed,
            peak_rss,
            cpu,
            shares,
        })
    }

    /// Invoices per worker process, where `rollup_items` records who did each item.
    async fn shares(&self) -> Vec<(String, i64)> {
        sqlx::query_as(
            "SELECT processed_by, sum(tenant_count)::bigint FROM rollup_items
             WHERE processed_by IS NOT NULL GROUP BY processed_by ORDER BY processed_by",
        )
        .fetch_all(&self.db.pool)
        .await
        .unwrap_or_default()
    }

    async fn written_rows(&self) -> anyhow::Result<Written> {
        let (invoices, lines, outbox): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM invoices), (SELECT count(*) FROM invoice_lines),
                    (SELECT count(*) FROM outbox)",
        )
        .fetch_one(&self.db.pool)
        .await?;
        Ok(Written {
            invoices,
            lines,
            outbox,
        })
    }

    /// Copies out exactly what the last rollup wrote, empties the tables, and times copying it
    /// back in: the cost of writing those rows with nothing else to do.
    async fn copy_floor(&self) -> anyhow::Result<Duration> {
        // Lines first, in one transaction, as a batch writes them (the foreign key is deferred).
        let tables = ["invoice_lines", "invoices", "outbox"];
        let mut conn = self.db.pool.acquire().await?;
        let mut dumps = Vec::new();
        for table in tables {
            let mut out = conn
                .copy_out_raw(&format!("COPY {table} TO STDOUT (FORMAT binary)"))
                .await?;
            let mut bytes = Vec::new();
            while let Some(chunk) = out.next().await {
                bytes.extend_from_slice(&chunk?);
            }
            dumps.push(bytes);
        }
        sqlx::query("TRUNCATE invoice_lines, outbox, invoices CASCADE")
            .execute(&mut *conn)
            .await?;
        sqlx::query("VACUUM ANALYZE invoices, invoice_lines, outbox")
            .execute(&mut *conn)
            .await?;
        let started = Instant::now();
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        for (table, bytes) in tables.iter().zip(&dumps) {
            let mut copy = tx
                .copy_in_raw(&format!("COPY {table} FROM STDIN (FORMAT binary)"))
                .await?;
            for chunk in bytes.chunks(1 << 20) {
                copy.send(chunk).await?;
            }
            copy.finish().await?;
        }
        tx.commit().await?;
        Ok(started.elapsed())
    }
}

/// Waits until `n` instances of the `invoicer` service answer `$SRV.PING`.
async fn wait_for_services(client: &async_nats::Client, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await?;
        client
            .publish_with_reply("$SRV.PING.invoicer", inbox, "".into())
            .await?;
        let mut seen = std::collections::BTreeSet::new();
        let window = tokio::time::sleep(Duration::from_millis(300));
        tokio::pin!(window);
        loop {
            tokio::select! {
                m = replies.next() => match m {
                    Some(m) => {
                        let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                        seen.insert(v["id"].as_str().unwrap_or_default().to_string());
                    }
                    None => break,
                },
                _ = &mut window => break,
            }
        }
        if seen.len() >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} workers answered $SRV.PING within 60s",
                seen.len()
            );
        }
    }
}

fn per_sec(count: i64, t: Duration) -> f64 {
    count as f64 / t.as_secs_f64().max(1e-9)
}

fn rate(tenants: i64, t: Duration) -> String {
    format!("{:.0} invoices/s", per_sec(tenants, t))
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The printed table (Markdown, so it pastes into the README as it is).
#[derive(Default)]
struct Report(String);

impl Report {
    fn header(&mut self, n: i64, w: &Written) {
        use std::fmt::Write;
        let _ = writeln!(
            self.0,
            "\ninvoicer bench: {n} tenants, {} subscriptions, {} usage records; rollup wrote {} invoices, {} lines ({} per invoice), {} outbox rows\n",
            n * fixture::DEPLOYMENTS_PER_TENANT,
            fixture::usage_rows(n),
            w.invoices,
            w.lines,
            fixture::lines_per_tenant(),
            w.outbox
        );
        let _ = writeln!(self.0, "| measure | result | rate |\n|---|---|---|");
    }

    fn row(&mut self, what: &str, result: String, rate: String) {
        use std::fmt::Write;
        let _ = writeln!(self.0, "| {what} | {result} | {rate} |");
    }

    fn rollup(&mut self, what: &str, f: &RollupFigures, n: i64) {
        let rss: Vec<String> = f.peak_rss.iter().map(|b| mib(*b)).collect();
        let cpu: Vec<String> = f
            .cpu
            .iter()
            .map(|c| format!("{:.1} s", c.as_secs_f64()))
            .collect();
        let shares: Vec<String> = f.shares.iter().map(|(_, n)| n.to_string()).collect();
        let mut result = format!(
            "{:.2} s; peak RSS {}; CPU {}",
            f.elapsed.as_secs_f64(),
            rss.join(" + "),
            cpu.join(" + ")
        );
        if !shares.is_empty() {
            result.push_str(&format!("; tenants per worker {}", shares.join(" + ")));
        }
        self.row(what, result, rate(n, f.elapsed));
    }

    fn ratio(&mut self, what: &str, value: f64, target: &str) {
        self.row(what, format!("{value:.2}"), format!("target {target}"));
    }
}
