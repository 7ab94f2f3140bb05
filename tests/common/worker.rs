//! The two ways a test runs the worker: [`WorkerProcess`], `invoicer run` as a child process (the
//! binary, as in production, so it can be SIGKILLed, SIGTERMed and its log read), and
//! [`InProcessWorker`], `invoicer::worker::run` on the test's own runtime, for tests that need
//! in-process speed or settings only `WorkerArgs` can carry. [`TestApp`](super::app::TestApp)
//! starts either; tests with their own NATS users (`nats_auth`, `nats_operator`) start the
//! in-process one themselves.

use super::{signal, wait_exit, wait_until};
use invoicer::config::{DbArgs, NatsArgs, WorkerArgs};
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// One `invoicer run` process. Its database sessions carry its name as `application_name`, so
/// a test can find (and terminate) them in `pg_stat_activity`. SIGKILLed on drop.
pub struct WorkerProcess {
    pub name: String,
    pub log: PathBuf,
    pub(crate) child: Child,
}

impl WorkerProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// What the worker logged so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no cleanup of any kind, as when a machine dies.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the worker");
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status and how long the worker took to exit (failing after
    /// `within`).
    pub fn terminate(&mut self, within: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        signal(&self.child, "TERM");
        let status = wait_exit(&mut self.child, within, &self.name);
        (status, start.elapsed())
    }

    /// The exit status, once the process has exited on its own within `within`.
    pub async fn exited_within(&mut self, within: Duration) -> Option<ExitStatus> {
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
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How to start one worker process, beyond the app's defaults.
#[derive(Default, Clone)]
pub struct WorkerOpts {
    /// Which NATS node to connect to (default: round robin over the nodes).
    pub node: Option<usize>,
    /// A database URL other than the test database's own (e.g. through a
    /// [`TcpProxy`](super::app::TcpProxy)).
    pub database_url: Option<String>,
    /// A NATS URL other than the node's own (e.g. through a [`TcpProxy`](super::app::TcpProxy)).
    pub nats_url: Option<String>,
    pub env: Vec<(String, String)>,
}

impl WorkerOpts {
    /// These options with one more environment variable.
    pub fn with_env(mut self, key: &str, value: impl ToString) -> WorkerOpts {
        self.env.push((key.into(), value.to_string()));
        self
    }
}

/// A worker running on the test's runtime, told to stop (gracefully) on drop or by
/// [`InProcessWorker::stop`].
pub struct InProcessWorker {
    stop: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl InProcessWorker {
    /// Starts a worker and waits until its service answers `$SRV.PING.invoicer`, asked through
    /// `probe` (under `nats.conf` the worker user may not publish to `$SRV.>`: it only answers
    /// discovery, it never asks). Fails fast with the worker's own error if it stops first.
    pub async fn start(
        db: DbArgs,
        nats: NatsArgs,
        args: WorkerArgs,
        probe: &async_nats::Client,
    ) -> InProcessWorker {
        let mut worker = Self::spawn(db, nats, args);
        wait_until("the worker's service answers", || async {
            !worker.is_running() || invoicer::client::worker_running(probe).await
        })
        .await;
        worker.fail_if_stopped().await;
        worker
    }

    /// Starts a worker without waiting for it.
    pub(crate) fn spawn(db: DbArgs, nats: NatsArgs, args: WorkerArgs) -> InProcessWorker {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let handle =
            tokio::spawn(async move { invoicer::worker::run(&db, &nats, &args, token).await });
        InProcessWorker {
            stop,
            handle: Some(handle),
        }
    }

    pub fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Panics with the worker's own result (e.g. a refused JetStream API call) if it stopped.
    pub(crate) async fn fail_if_stopped(&mut self) {
        if !self.is_running() {
            if let Some(h) = self.handle.take() {
                panic!("the worker stopped while starting: {:?}", h.await);
            }
        }
    }

    /// Stops the worker and waits for it; it must stop cleanly.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }
}

impl Drop for InProcessWorker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
