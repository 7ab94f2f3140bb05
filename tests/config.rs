//! Configuration is validated at start: the binary, run with a bad setting, exits at once with
//! clap's usage code (2) and a message naming the setting, before it connects to anything.
//!
//! The database and NATS URLs point at a closed port, so that even a binary that failed to
//! validate would only fail to connect (exit 1), never touch the machine's shared services.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const NOWHERE_DB: &str = "postgres://postgres@127.0.0.1:1/invoicer_config_test";
const NOWHERE_NATS: &str = "nats://127.0.0.1:1";

/// Runs `invoicer <args>` with `env` over a clean environment pointing nowhere; fails if it
/// does not exit within 20 seconds.
fn invoicer(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_invoicer"));
    cmd.args(args)
        .env_clear()
        .env("DATABASE_URL", NOWHERE_DB)
        .env("NATS_URL", NOWHERE_NATS)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the invoicer binary runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("invoicer {args:?} with {env:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `invoicer run` with one bad setting: exit code 2 and a message with every `expected` part.
fn refused(env: &[(&str, &str)], expected: &[&str]) {
    let out = invoicer(&["run"], env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{env:?} must be refused at start; stderr:\n{stderr}"
    );
    for part in expected {
        assert!(
            stderr.contains(part),
            "{env:?}: the message should mention {part:?}:\n{stderr}"
        );
    }
}

#[test]
fn a_batch_size_of_zero_or_below_is_refused() {
    refused(
        &[("ROLLUP_BATCH_SIZE", "0")],
        &["ROLLUP_BATCH_SIZE", "'0'", "1..=100000"],
    );
    refused(
        &[("ROLLUP_BATCH_SIZE", "-5")],
        &["ROLLUP_BATCH_SIZE", "'-5'"],
    );
    refused(
        &[("ROLLUP_BATCH_SIZE", "lots")],
        &["ROLLUP_BATCH_SIZE", "'lots'"],
    );
}

#[test]
fn concurrency_and_pool_sizes_are_checked() {
    refused(
        &[("SERVICE_CONCURRENCY", "0")],
        &["SERVICE_CONCURRENCY", "'0'"],
    );
    refused(
        &[("DATABASE_MAX_CONNECTIONS", "0")],
        &["DATABASE_MAX_CONNECTIONS", "'0'"],
    );
    refused(
        &[("DATABASE_MAX_CONNECTIONS", "-1")],
        &["DATABASE_MAX_CONNECTIONS"],
    );
    // Handlers must leave the consumers and the relay a connection.
    refused(
        &[
            ("SERVICE_CONCURRENCY", "10"),
            ("DATABASE_MAX_CONNECTIONS", "10"),
        ],
        &["SERVICE_CONCURRENCY (10) must be below DATABASE_MAX_CONNECTIONS (10)"],
    );
}

#[test]
fn an_unknown_log_format_or_log_filter_is_refused() {
    refused(
        &[("LOG_FORMAT", "yaml")],
        &["LOG_FORMAT", "'yaml'", "text", "json"],
    );
    refused(&[("RUST_LOG", "info,sqlx=loudest")], &["RUST_LOG"]);
    // The flag is checked for every command, not only `run`.
    let out = invoicer(&["--log-format", "xml", "migrate"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn urls_prefixes_and_durations_are_checked() {
    refused(
        &[("DATABASE_URL", "mysql://db/invoicer")],
        &["DATABASE_URL"],
    );
    refused(&[("NATS_URL", "nats://127.0.0.1:port")], &["NATS_URL"]);
    refused(
        &[("NATS_INBOX_PREFIX", "_INBOX acme")],
        &["NATS_INBOX_PREFIX"],
    );
    refused(&[("NATS_INBOX_PREFIX", "_INBOX.*")], &["NATS_INBOX_PREFIX"]);
    refused(&[("OUTBOX_RETENTION", "soon")], &["OUTBOX_RETENTION", "7d"]);
    refused(
        &[("OUTBOX_RETENTION", "10m")],
        &["OUTBOX_RETENTION", "at least 1h"],
    );
    refused(&[("NATS_USER", "worker")], &["--nats-password"]);
}

/// Good settings pass validation: the process gets as far as connecting (and fails there,
/// exit 1, since nothing listens), whatever the case of the log format.
#[test]
fn good_settings_get_as_far_as_connecting() {
    let out = invoicer(
        &["run"],
        &[
            ("LOG_FORMAT", "JSON"),
            ("ROLLUP_BATCH_SIZE", "1"),
            ("SERVICE_CONCURRENCY", "4"),
            ("DATABASE_MAX_CONNECTIONS", "5"),
            ("OUTBOX_RETENTION", "36h"),
            ("RUST_LOG", "warn,invoicer=info"),
            ("NATS_INBOX_PREFIX", "_INBOX_worker"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("PostgreSQL"), "{stderr}");
    let help = invoicer(&["run", "--help"], &[]);
    assert_eq!(help.status.code(), Some(0));
    let help = String::from_utf8_lossy(&help.stdout);
    for setting in [
        "ROLLUP_BATCH_SIZE",
        "SERVICE_CONCURRENCY",
        "DATABASE_MAX_CONNECTIONS",
        "OUTBOX_RETENTION",
        "LOG_FORMAT",
    ] {
        assert!(help.contains(setting), "--help lists {setting}");
    }
}
