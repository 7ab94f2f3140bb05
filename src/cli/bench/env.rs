//! The benchmark's private world: its own database, its own `nats-server` with a temporary
//! JetStream store, and worker processes, so a run never disturbs anything else on the machine.

use anyhow::{bail, Context};
use sqlx::{Connection, PgPool};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `nats-server` process with JetStream on a free loopback port, killed on drop.
pub struct NatsProcess {
    pub url: String,
    child: Child,
    _store: tempfile::TempDir,
}

impl NatsProcess {
    pub fn start(binary: &str) -> anyhow::Result<NatsProcess> {
        let store = tempfile::tempdir().context("creating the JetStream store directory")?;
        let port = free_port()?;
        let child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .arg("-l")
            .arg(store.path().join("nats-server.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {binary} (is nats-server installed?)"))?;
        wait_for_port(port, Duration::from_secs(10))?;
        Ok(NatsProcess {
            url: format!("nats://127.0.0.1:{port}"),
            child,
            _store: store,
        })
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_for_port(port: u16, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on port {port} after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A fresh database with a random name on the given server, dropped on [`BenchDb::drop_now`].
pub struct BenchDb {
    pub url: String,
    pub name: String,
    admin_url: String,
    pub pool: PgPool,
}

impl BenchDb {
    /// `server_url` is any database URL on the server; the benchmark's own database sits beside it.
    pub async fn create(server_url: &str) -> anyhow::Result<BenchDb> {
        let name = format!("invoicer_bench_{}", uuid::Uuid::new_v4().simple());
        let mut url = url_with_database(server_url, &name)?;
        let admin_url = url_with_database(server_url, "postgres")?;
        let pool = crate::store::connect(&url, 4).await?;
        crate::store::migrate(&pool).await?;
        url.push_str(if url.contains('?') { "&" } else { "?" });
        url.push_str("application_name=invoicer-bench-worker");
        Ok(BenchDb {
            url,
            name,
            admin_url,
            pool,
        })
    }

    pub async fn drop_now(self) -> anyhow::Result<()> {
        self.pool.close().await;
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await?;
        Ok(())
    }
}

fn url_with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").context("DATABASE_URL has no scheme")? + 3;
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| i + scheme_end);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// An `invoicer run` child process of this very binary.
pub struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    pub fn start(
        db_url: &str,
        nats_url: &str,
        extra_env: &[(&str, String)],
    ) -> anyhow::Result<WorkerProcess> {
        let exe: PathBuf = std::env::current_exe().context("locating the invoicer binary")?;
        let mut cmd = Command::new(exe);
        cmd.arg("run")
            .env("DATABASE_URL", db_url)
            .env("NATS_URL", nats_url)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_WORKER_LOG").unwrap_or_else(|_| "warn,sqlx=error".into()),
            )
            .env_remove("NATS_USER")
            .env_remove("NATS_PASSWORD")
            .env_remove("NATS_CREDS")
            .env_remove("NATS_INBOX_PREFIX")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("starting a worker process")?;
        Ok(WorkerProcess { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .context("no VmHWM in /proc status")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kb * 1024)
    }

    /// User + system CPU time so far, from `/proc/<pid>/stat`.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let rest = stat.rsplit_once(')').context("malformed /proc stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        // The kernel's USER_HZ is 100 on every Linux we run on.
        Ok(Duration::from_millis(ticks * 10))
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("worker exited with {status}");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("worker did not stop within 30s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::url_with_database;

    #[test]
    fn database_urls_keep_host_and_options() {
        assert_eq!(
            url_with_database("postgres://postgres@127.0.0.1:5432/invoicer", "b").unwrap(),
            "postgres://postgres@127.0.0.1:5432/b"
        );
        assert_eq!(
            url_with_database("postgres://u:p@h/db?sslmode=disable", "b").unwrap(),
            "postgres://u:p@h/b?sslmode=disable"
        );
        assert_eq!(
            url_with_database("postgres://h:5432", "b").unwrap(),
            "postgres://h:5432/b"
        );
    }
}
