//! Operator mode (CONTRACT.md section 7) against a real nats-server 2.9 started from the
//! configuration `invoicer auth init` writes: the CLI itself, expiry, revocation without a
//! restart, and a thousand tenants each confined to its own invoice.
//!
//! The role matrix with issued credentials is in `tests/nats_auth.rs` (`with_issued_credentials`).

mod common;

use async_nats::{Event, ServerError};
use common::operator::Operator;
use common::users::{Login, User};
use common::*;
use futures::StreamExt;
use invoicer::auth::Role;
use invoicer::catalog::TenantId;
use invoicer::client::{call, call_raw, request_rollup};
use invoicer::config::WorkerArgs;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_invoicer");

fn invoicer(args: &[&str], nats_url: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("NATS_URL");
    if let Some(url) = nats_url {
        cmd.env("NATS_URL", url);
    }
    cmd.output().expect("the invoicer binary runs")
}

fn stdout_ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "invoicer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr_failed(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "invoicer succeeded where it must fail"
    );
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn seeds(dir: &Path) -> Vec<String> {
    let mut seeds: Vec<String> = std::fs::read_dir(dir.join("keys"))
        .unwrap()
        .map(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    seeds.sort();
    seeds
}

fn tenant(id: &str) -> Role {
    Role::Tenant(TenantId::parse(id).unwrap())
}

/// A connection whose server errors (`User Authentication Revoked`, `... Expired`) are kept.
async fn connect_watching(
    server: &NatsServer,
    creds: &str,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = Login::Creds(creds.to_string())
        .options()
        .max_reconnects(Some(1))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let Event::ServerError(ServerError::Other(e)) = event {
                    let _ = tx.send(e);
                }
            }
        })
        .connect(&server.url)
        .await
        .expect("the credentials are accepted");
    (client, rx)
}

/// Waits, with a deadline, for the server to tell the connection `error`.
async fn server_says(errors: &mut mpsc::UnboundedReceiver<String>, error: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, errors.recv()).await {
            Ok(Some(e)) if e.eq_ignore_ascii_case(error) => return,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the connection ended before the server said {error:?}"),
            Err(_) => panic!("the server did not say {error:?}"),
        }
    }
}

async fn refused(server: &NatsServer, creds: &str) -> bool {
    Login::Creds(creds.to_string())
        .options()
        .connect(&server.url)
        .await
        .is_err()
}

#[tokio::test]
async fn init_keeps_its_keys_prints_no_seed_and_the_server_starts_from_its_conf() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("auth");
    let d = dir.to_str().unwrap();
    let first = stdout_ok(&invoicer(&["auth", "init", "--dir", d], None));
    let keys = seeds(&dir);
    assert_eq!(keys.len(), 5, "{first}");
    let second = stdout_ok(&invoicer(&["auth", "init", "--dir", d], None));
    assert_eq!(seeds(&dir), keys, "a second init changed the keys");
    assert!(second.contains("kept the existing keys"), "{second}");
    for seed in &keys {
        assert!(
            !first.contains(seed) && !second.contains(seed),
            "init printed a seed"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir.join("keys")).unwrap() {
        let mode = entry.unwrap().metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // `nats-server -c DIR/nats-operator.conf` (on a free port) with JetStream for the account.
    let server = NatsServer::start_with_own_store(&dir.join("nats-operator.conf"));
    assert!(
        async_nats::connect(&server.url).await.is_err(),
        "anonymous let in"
    );
    let admin = stdout_ok(&invoicer(
        &["auth", "creds", "--dir", d, "--role", "admin"],
        None,
    ));
    assert!(
        !keys.iter().any(|seed| admin.contains(seed)),
        "creds leaked a key seed"
    );
    let client = Login::Creds(admin)
        .options()
        .custom_inbox_prefix("_INBOX_admin")
        .connect(&server.url)
        .await
        .expect("the admin's credentials are accepted");
    let info = client.request("$JS.API.INFO", "".into()).await.unwrap();
    let info: Value = serde_json::from_slice(&info.payload).unwrap();
    assert!(
        info.get("error").is_none(),
        "JetStream is not enabled: {info}"
    );
    // The system account's user, kept in DIR for `auth revoke`, logs in too.
    let system = std::fs::read_to_string(dir.join("system-user.creds")).unwrap();
    Login::Creds(system)
        .options()
        .connect(&server.url)
        .await
        .expect("the system user is accepted");
}

#[tokio::test]
async fn creds_refuses_bad_arguments_with_a_clear_error() {
    let op = Operator::init();
    let d = op.auth.root().to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--role", "tenant"], "--role tenant needs --tenant"),
        (&["--role", "tenant", "--tenant", "a.b"], "tenant_id"),
        (&["--role", "tenant", "--tenant", ""], "tenant_id"),
        (
            &["--role", "admin", "--tenant", "acme"],
            "--tenant applies to --role tenant only",
        ),
        (&["--role", "worker", "--expires", "0s"], "at least 1s"),
    ];
    for (args, message) in cases {
        let mut all = vec!["auth", "creds", "--dir", d];
        all.extend_from_slice(args);
        let err = stderr_failed(&invoicer(&all, None));
        assert!(err.contains(message), "{args:?}: {err}");
    }
    let err = stderr_failed(&invoicer(
        &[
            "auth",
            "creds",
            "--dir",
            "/nonexistent/auth",
            "--role",
            "admin",
        ],
        None,
    ));
    assert!(err.contains("auth init"), "{err}");
    let tenant = stdout_ok(&invoicer(
        &[
            "auth",
            "creds",
            "--dir",
            d,
            "--role",
            "tenant",
            "--tenant",
            "Acme_01-x",
            "--expires",
            "90d",
        ],
        None,
    ));
    assert!(
        tenant.starts_with("-----BEGIN NATS USER JWT-----"),
        "{tenant}"
    );
}

#[tokio::test]
async fn an_expired_credential_is_refused() {
    let op = Operator::init();
    let server = op.start_server();
    let now = chrono::Utc::now().timestamp();
    let acme = tenant("acme");

    let expired = op.auth.issue(&acme, Some(now - 60)).unwrap().creds;
    assert!(
        refused(&server, &expired).await,
        "an expired credential was accepted"
    );

    // One that expires while connected: accepted, then disconnected and refused.
    let short = op.auth.issue(&acme, Some(now + 3)).unwrap().creds;
    let (client, mut errors) = connect_watching(&server, &short).await;
    client.flush().await.unwrap();
    server_says(&mut errors, "User Authentication Expired").await;
    // The server closes the connection at the expiry instant but checks a new one against
    // whole seconds (`now > exp`), so within that second a reconnect may still be let in.
    wait_until("the expired credential is refused", || {
        refused(&server, &short)
    })
    .await;
    let fresh = op.auth.issue(&acme, Some(now + 3600)).unwrap().creds;
    assert!(
        !refused(&server, &fresh).await,
        "a valid credential was refused"
    );
}

#[tokio::test]
async fn a_revoked_tenant_is_refused_without_a_restart() {
    let op = Operator::init();
    let server = op.start_server();
    let d = op.auth.root().to_str().unwrap().to_string();
    let (first, second) = (op.creds(&tenant("acme")), op.creds(&tenant("acme")));
    let globex = op.creds(&tenant("globex"));
    let (live, mut errors) = connect_watching(&server, &first).await;
    live.flush().await.unwrap();

    let out = stdout_ok(&invoicer(
        &["auth", "revoke", "--dir", &d, "--tenant", "acme"],
        Some(&server.url),
    ));
    assert!(
        out.contains("revoked 2 of tenant acme's 2 user(s)"),
        "{out}"
    );

    // The same server: the live connection is closed and both credentials are refused...
    server_says(&mut errors, "User Authentication Revoked").await;
    assert!(
        refused(&server, &first).await,
        "a revoked credential was accepted"
    );
    assert!(
        refused(&server, &second).await,
        "a revoked credential was accepted"
    );
    // ...while other tenants, and credentials issued to acme afterwards, are not.
    assert!(!refused(&server, &globex).await, "globex was refused");
    let reissued = op.creds(&tenant("acme"));
    assert!(
        !refused(&server, &reissued).await,
        "new credentials were refused"
    );

    // A restart from the rewritten configuration keeps the revocation.
    drop(server);
    let restarted = op.start_server();
    assert!(
        refused(&restarted, &first).await,
        "the revocation did not survive a restart"
    );
    assert!(!refused(&restarted, &reissued).await);

    // Revoking again revokes what was issued since; an unknown tenant, or no server, is a
    // clear error.
    let again = stdout_ok(&invoicer(
        &["auth", "revoke", "--dir", &d, "--tenant", "acme"],
        Some(&restarted.url),
    ));
    assert!(
        again.contains("revoked 1 of tenant acme's 3 user(s)"),
        "{again}"
    );
    assert!(
        refused(&restarted, &reissued).await,
        "the reissued credential was accepted"
    );
    let unknown = stderr_failed(&invoicer(
        &["auth", "revoke", "--dir", &d, "--tenant", "initech"],
        Some(&restarted.url),
    ));
    assert!(
        unknown.contains("no credentials issued to tenant initech"),
        "{unknown}"
    );
    let down = format!("nats://127.0.0.1:{}", free_port());
    let unreachable = stderr_failed(&invoicer(
        &["auth", "revoke", "--dir", &d, "--tenant", "globex"],
        Some(&down),
    ));
    assert!(
        unreachable.contains("run the same command again"),
        "{unreachable}"
    );
}

#[tokio::test]
async fn a_thousand_tenants_each_read_only_their_own_invoice() {
    const TENANTS: usize = 1_000;
    let op = Operator::init();
    let server = op.start_server();
    let db = TestDb::new().await;
    let admin = User::connect(
        &server,
        &Login::Creds(op.creds(&Role::Admin)),
        "_INBOX_admin",
    )
    .await;
    let mut nats = server.args();
    nats.nats_creds = Some(op.creds_file(&Role::Worker));
    let worker =
        InProcessWorker::start(db.args(), nats, WorkerArgs::default(), &admin.client).await;

    let ids: Vec<String> = (0..TENANTS).map(|i| format!("t{i:04}")).collect();
    let started = Instant::now();
    let creds: Vec<String> = ids
        .iter()
        .map(|id| op.auth.issue(&tenant(id), None).unwrap().creds)
        .collect();
    let issuing = started.elapsed();
    eprintln!("issued {TENANTS} tenant credentials in {issuing:?}");

    // Each tenant and one subscription, then April's rollup.
    load_seed_catalog(&admin.client).await;
    futures::stream::iter(&ids)
        .for_each_concurrent(16, |id| {
            let client = admin.client.clone();
            async move {
                call(
                    &client,
                    "billing.admin.tenants.put",
                    &json!({ "tenant_id": id }),
                )
                .await
                .unwrap();
                call(
                    &client,
                    "billing.admin.subscriptions.put",
                    &json!({"id": Uuid::new_v4(), "tenant_id": id, "deployment_id": Uuid::new_v4(),
                            "plan": "studio", "addons": [], "started_at": "2026-03-01T00:00:00Z"}),
                )
                .await
                .unwrap();
            }
        })
        .await;
    let request_id = Uuid::new_v4().to_string();
    request_rollup(
        &admin.js(),
        &json!({"period_start": "2026-04-01", "request_id": request_id}),
        &request_id,
    )
    .await
    .unwrap();
    let done = completed(&admin.js(), &request_id).await;
    assert_eq!(done["invoices_issued"], TENANTS, "{done}");

    // Every tenant's invoice id, as the admin sees them.
    let mut invoice_of: HashMap<String, String> = HashMap::new();
    let mut cursor = Value::Null;
    loop {
        let page = call(
            &admin.client,
            "billing.admin.invoices.list",
            &json!({"limit": 500, "cursor": cursor}),
        )
        .await
        .unwrap();
        for invoice in page["invoices"].as_array().unwrap() {
            let tenant = invoice["tenant_id"].as_str().unwrap().to_string();
            invoice_of.insert(tenant, invoice["id"].as_str().unwrap().to_string());
        }
        cursor = page["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    assert_eq!(invoice_of.len(), TENANTS);

    // Each tenant, with its own credentials: its invoice, not its neighbour's.
    let checking = Instant::now();
    futures::stream::iter(0..TENANTS)
        .for_each_concurrent(32, |i| {
            let (server, ids, creds, invoice_of) = (&server, &ids, &creds, &invoice_of);
            async move {
                let (me, neighbour) = (&ids[i], &ids[(i + 1) % TENANTS]);
                let role = tenant(me);
                let mut user = User::connect(
                    server,
                    &Login::Creds(creds[i].clone()),
                    &role.inbox_prefix(),
                )
                .await;
                let own = format!("billing.tenant.{me}.invoices");
                let list = call(&user.client, &format!("{own}.list"), &json!({}))
                    .await
                    .unwrap();
                let listed = list["invoices"].as_array().unwrap();
                assert_eq!(listed.len(), 1, "{me}: {list}");
                assert_eq!(listed[0]["id"].as_str(), Some(invoice_of[me].as_str()));
                let mine = call(
                    &user.client,
                    &format!("{own}.get"),
                    &json!({"id": invoice_of[me]}),
                )
                .await
                .unwrap();
                assert_eq!(mine["tenant_id"], me.as_str());
                // Its neighbour's invoice, asked on its own subject, does not exist for it...
                let theirs = call_raw(
                    &user.client,
                    &format!("{own}.get"),
                    json!({"id": invoice_of[neighbour]})
                        .to_string()
                        .into_bytes(),
                )
                .await
                .unwrap()
                .expect_err("a tenant read its neighbour's invoice");
                assert_eq!(theirs.code, "not_found", "{me}");
                // ...and its neighbour's subjects are refused by the server.
                user.publishes_refused(&[&format!("billing.tenant.{neighbour}.invoices.get")])
                    .await;
                assert_eq!(user.violations.unexpected(), Vec::<String>::new());
            }
        })
        .await;
    eprintln!(
        "{TENANTS} tenants connected and checked in {:?}",
        checking.elapsed()
    );
    worker.stop().await;
}
