//! A `nats-server` process: JetStream on a free loopback port with its own store, standalone or
//! as a node of a cluster, optionally from a configuration file. It can be stopped (SIGTERM),
//! SIGKILLed and restarted on the same port and store (streams, consumers and their pending
//! messages survive, as after a real restart). Its log (errors, warnings, notices and every
//! permissions violation) is kept for [`NatsServer::log`]. Killed on drop.

use crate::process::{free_port, signal, wait_exit, wait_listening};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The binary: `nats-server` from `PATH` unless `NATS_SERVER_BIN` names another.
pub fn binary() -> String {
    std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into())
}

pub struct NatsServer {
    pub name: String,
    pub port: u16,
    pub url: String,
    /// This node's cluster port and every node's route, on a cluster.
    cluster: Option<(u16, Vec<String>)>,
    config: Option<PathBuf>,
    /// Whether JetStream and its store directory come from the command line (not when the
    /// configuration names its own store, as an operator-mode one does: nats-server refuses
    /// `-sd` on top of it).
    store_flags: bool,
    store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// A standalone server's own directory (a cluster's nodes live in their owner's).
    _dir: Option<tempfile::TempDir>,
}

impl NatsServer {
    /// A standalone server with JetStream, from `config` if given; started and listening.
    pub fn start(config: Option<&Path>) -> anyhow::Result<NatsServer> {
        Self::standalone(config, true)
    }

    /// A standalone server whose configuration names its own JetStream store directory.
    pub fn start_with_own_store(config: &Path) -> anyhow::Result<NatsServer> {
        Self::standalone(Some(config), false)
    }

    fn standalone(config: Option<&Path>, store_flags: bool) -> anyhow::Result<NatsServer> {
        let dir = tempfile::tempdir().context("creating the nats-server directory")?;
        let mut server = Self::node(dir.path(), "nats", None, config)?;
        server.store_flags = store_flags;
        server._dir = Some(dir);
        server.spawn()?;
        Ok(server)
    }

    /// A server whose store and log are in `dir`, a node of a cluster when `cluster` gives its
    /// cluster port and the routes; not started yet ([`NatsServer::spawn`]).
    pub fn node(
        dir: &Path,
        name: &str,
        cluster: Option<(u16, Vec<String>)>,
        config: Option<&Path>,
    ) -> anyhow::Result<NatsServer> {
        let port = free_port();
        let store = dir.join(format!("{name}-store"));
        std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
        Ok(NatsServer {
            name: name.into(),
            port,
            url: format!("nats://127.0.0.1:{port}"),
            cluster,
            config: config.map(Path::to_path_buf),
            store_flags: true,
            store,
            log: dir.join(format!("{name}.log")),
            child: None,
            _dir: None,
        })
    }

    /// Starts the process and waits until it listens.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let binary = binary();
        let mut cmd = Command::new(&binary);
        if let Some(config) = &self.config {
            cmd.arg("-c").arg(config);
        }
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if self.store_flags {
            cmd.arg("-js").arg("-sd").arg(&self.store);
        }
        cmd.args(["-n", &self.name])
            .arg("-l")
            .arg(&self.log)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((cluster_port, routes)) = &self.cluster {
            cmd.args([
                "--cluster_name",
                "invoicer-harness",
                "--cluster",
                &format!("nats://127.0.0.1:{cluster_port}"),
                "--routes",
                &routes.join(","),
            ]);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {binary} (is nats-server installed?)"))?;
        self.child = Some(child);
        wait_listening(self.port, Duration::from_secs(10))
            .with_context(|| format!("nats-server {} did not start: {}", self.name, self.log()))
    }

    /// Stops the server as an operator would (SIGTERM: JetStream flushes its store), and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            wait_exit(&mut child, Duration::from_secs(20), "nats-server");
        }
    }

    /// SIGKILLs the server, as when its machine dies; its store stays for
    /// [`NatsServer::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The nodes of a JetStream cluster with routes on loopback ports, their stores and logs in
/// `dir`; not started yet.
pub fn cluster(dir: &Path, nodes: usize, config: Option<&Path>) -> anyhow::Result<Vec<NatsServer>> {
    let cluster_ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
    let routes: Vec<String> = cluster_ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect();
    (0..nodes)
        .map(|i| {
            NatsServer::node(
                dir,
                &format!("n{}", i + 1),
                Some((cluster_ports[i], routes.clone())),
                config,
            )
        })
        .collect()
}
