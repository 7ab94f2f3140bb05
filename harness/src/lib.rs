//! invoicer's process harness: the real services one test or one benchmark run needs, private
//! to it and torn down when it is dropped. The machine's shared PostgreSQL and NATS servers are
//! never stopped or reconfigured: each run gets its own database on the shared PostgreSQL and
//! its own `nats-server` processes on free loopback ports with temporary stores.
//!
//! Shaped after nats.rs's `nats-server` test crate (a small crate of its own that every test of
//! the client shares): processes from the real binaries, dynamic ports, cleanup on drop. It
//! knows nothing of invoicer's types: the tests (`tests/it/helpers`) and `invoicer bench` build
//! their worlds from these parts.
//!
//! | module | part |
//! |---|---|
//! | [`db`] | a fresh PostgreSQL database with a random name, dropped on drop |
//! | [`nats`] | a `nats-server` process (standalone or a cluster node): stop, kill, restart, its log |
//! | [`process`] | a child process with its log in a file: signals, deadlines, CPU and peak RSS |

pub mod db;
pub mod nats;
pub mod process;

pub use db::Database;
pub use nats::NatsServer;
pub use process::{free_port, output_within, Process};
