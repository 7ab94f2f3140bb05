//! The one way the tests start `nats-server`: a private server with JetStream on a free loopback
//! port and its own store, alone or as a node of a [`TestApp`](super::app::TestApp) cluster,
//! optionally from a configuration file. It can be stopped, SIGKILLed and restarted on the same
//! port and store (streams, consumers and their pending messages survive, as after a real
//! restart), and its log (errors, warnings, notices, every `Publish Violation` and
//! `Subscription Violation`) is kept for [`NatsServer::log`]. Killed on drop.

use super::{free_port, signal, wait_exit};
use invoicer::config::NatsArgs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    pub name: String,
    pub port: u16,
    pub url: String,
    /// This node's cluster port and every node's route, on a cluster.
    cluster: Option<(u16, Vec<String>)>,
    config: Option<PathBuf>,
    /// Whether JetStream and its store directory come from the command line (not when the
    /// configuration names its own store, as the operator-mode one does: nats-server refuses
    /// `-sd` on top of it).
    store_flags: bool,
    store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// A standalone server's own directory (a cluster's nodes live in their app's).
    _dir: Option<tempfile::TempDir>,
}

impl NatsServer {
    /// A standalone server with JetStream and no configuration.
    pub fn start() -> NatsServer {
        Self::start_with(None)
    }

    /// A standalone server with JetStream, from `config` if given.
    pub fn start_with(config: Option<&Path>) -> NatsServer {
        Self::standalone(config, true)
    }

    /// A standalone server whose configuration names its own JetStream store directory.
    pub fn start_with_own_store(config: &Path) -> NatsServer {
        Self::standalone(Some(config), false)
    }

    fn standalone(config: Option<&Path>, store_flags: bool) -> NatsServer {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Self::new(dir.path(), "nats", None, config);
        server.store_flags = store_flags;
        server._dir = Some(dir);
        server.spawn();
        server
    }

    /// A server whose store and log are in `dir`; not started yet ([`NatsServer::spawn`]).
    pub(crate) fn new(
        dir: &Path,
        name: &str,
        cluster: Option<(u16, Vec<String>)>,
        config: Option<&Path>,
    ) -> NatsServer {
        let port = free_port();
        let store = dir.join(format!("{name}-store"));
        std::fs::create_dir_all(&store).unwrap();
        NatsServer {
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
        }
    }

    /// Starts the process and waits until it listens.
    pub(crate) fn spawn(&mut self) {
        let mut cmd = Command::new("nats-server");
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
                "invoicer-test",
                "--cluster",
                &format!("nats://127.0.0.1:{cluster_port}"),
                "--routes",
                &routes.join(","),
            ]);
        }
        self.child = Some(
            cmd.spawn()
                .expect("nats-server must be installed (see README)"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server {} did not start on port {}",
                self.name,
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn args(&self) -> NatsArgs {
        NatsArgs::local(&self.url)
    }

    /// An anonymous client.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(&self.url).await.unwrap()
    }

    /// Stops the server as an operator would (SIGTERM: JetStream flushes its store), and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
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

    /// Starts the server again on the same port and store: streams, consumers and their
    /// pending messages are as they were.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
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
