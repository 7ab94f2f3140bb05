//! Who may do what on a real `nats-server` (CONTRACT.md section 7), in both of the project's
//! authentication modes: `nats.conf`'s static users, and operator mode with credentials issued
//! by `invoicer auth` (`src/auth`). Each test of the role matrix runs once per mode
//! (`<test>::with_nats_conf`, `<test>::with_issued_credentials`): each user may do what its role
//! needs and nothing else, and the worker runs end to end under its own restricted user.
//!
//! A refusal is proved by the server's own word: the `-ERR 'Permissions Violation ...'` it sends
//! the offending connection, which async-nats reports through the event callback.

mod common;

use async_nats::{ConnectOptions, Request, RequestErrorKind};
use common::operator::{role, Operator};
use common::users::{Login, User};
use common::*;
use futures::{FutureExt, StreamExt};
use invoicer::auth::Role;
use invoicer::catalog::TenantId;
use invoicer::client::{call, call_raw, request_rollup};
use invoicer::config::{NatsArgs, WorkerArgs};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use uuid::Uuid;

const CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/nats.conf");
const APRIL: &str = "2026-04-01";

/// How the users log in.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// `nats.conf`'s users and demo passwords.
    Static,
    /// Credentials issued by `invoicer auth creds` against `nats-operator.conf`.
    Operator,
}

/// Runs a role-matrix test once per mode.
macro_rules! in_both_modes {
    ($test:ident) => {
        mod $test {
            #[tokio::test]
            async fn with_nats_conf() {
                super::$test(super::Mode::Static).await
            }
            #[tokio::test]
            async fn with_issued_credentials() {
                super::$test(super::Mode::Operator).await
            }
        }
    };
}

/// How a user of `role` logs in: its `nats.conf` user (named after the role, or the tenant's
/// id) and password, or new credentials issued for it.
fn login(operator: Option<&Operator>, role: &Role) -> Login {
    match operator {
        None => Login::password(&role.tenant().map_or(role.label(), |t| t.to_string())),
        Some(op) => Login::Creds(op.creds(role)),
    }
}

/// A private nats-server in `mode`, a fresh database, the worker running as the worker user
/// (with the inbox prefix it derives itself), and the admin connected.
struct Env {
    server: NatsServer,
    db: TestDb,
    worker: InProcessWorker,
    admin: User,
    operator: Option<Operator>,
    /// How the server's log names the worker's connections: `User "worker"` or
    /// `JWT User "U..."`.
    worker_in_log: String,
}

impl Env {
    async fn start(mode: Mode) -> Env {
        let (server, operator) = match mode {
            Mode::Static => (NatsServer::start_with(Some(Path::new(CONF))), None),
            Mode::Operator => {
                let operator = Operator::init();
                (operator.start_server(), Some(operator))
            }
        };
        let db = TestDb::new().await;
        let mut nats = NatsArgs::local(&server.url);
        let worker_in_log = match &operator {
            None => {
                nats.nats_user = Some("worker".into());
                nats.nats_password = Some("worker-secret".into());
                "User \"worker\"".to_string()
            }
            Some(op) => {
                let issued = op.auth.issue(&Role::Worker, None).unwrap();
                let path = op.auth.root().join("worker.creds");
                std::fs::write(&path, &issued.creds).unwrap();
                nats.nats_creds = Some(path);
                format!("JWT User \"{}\"", issued.public_key)
            }
        };
        let admin = User::connect(
            &server,
            &login(operator.as_ref(), &Role::Admin),
            &Role::Admin.inbox_prefix(),
        )
        .await;
        let worker =
            InProcessWorker::start(db.args(), nats, WorkerArgs::default(), &admin.client).await;
        Env {
            server,
            db,
            worker,
            admin,
            operator,
            worker_in_log,
        }
    }

    fn login(&self, role: &Role) -> Login {
        login(self.operator.as_ref(), role)
    }

    /// A connection as a user of `role`, on its own inbox prefix.
    async fn user(&self, role: &Role) -> User {
        User::connect(&self.server, &self.login(role), &role.inbox_prefix()).await
    }

    /// Stops the worker (it must shut down cleanly) and checks, in the server's log, that the
    /// worker's connections were never refused anything.
    async fn finish(self) {
        self.worker.stop().await;
        let log = self.server.log();
        assert!(
            log.contains("Server is ready"),
            "the server log is not being written: {log}"
        );
        let violations: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
        // Every violation names its user as the filter below expects, so it cannot miss one.
        for line in &violations {
            assert!(line.contains(" User \""), "unexpected log format: {line}");
        }
        let refused: Vec<&&str> = violations
            .iter()
            .filter(|l| l.contains(&self.worker_in_log))
            .collect();
        assert!(refused.is_empty(), "the worker was refused: {refused:#?}");
    }
}

#[tokio::test]
async fn anonymous_and_wrong_passwords_are_refused() {
    let server = NatsServer::start_with(Some(Path::new(CONF)));
    let anonymous = async_nats::connect(&server.url).await;
    assert!(anonymous.is_err(), "an anonymous client was let in");
    let wrong = ConnectOptions::new()
        .user_and_password("acme".into(), "globex-secret".into())
        .connect(&server.url)
        .await;
    assert!(wrong.is_err(), "acme logged in with globex's password");
    let acme = ConnectOptions::new()
        .user_and_password("acme".into(), "acme-secret".into())
        .connect(&server.url)
        .await;
    assert!(acme.is_ok(), "acme could not log in: {:?}", acme.err());
}

in_both_modes!(a_tenant_can_neither_ask_for_nor_overhear_another_tenants_data);
async fn a_tenant_can_neither_ask_for_nor_overhear_another_tenants_data(mode: Mode) {
    let env = Env::start(mode).await;
    let mut acme = env.user(&role("acme")).await;
    let mut globex = env.user(&role("globex")).await;

    // Its own subjects work, so the refusals below are the permissions, not a missing service.
    load_seed_catalog(&env.admin.client).await;
    let own = call(
        &acme.client,
        "billing.tenant.acme.invoices.list",
        &json!({}),
    )
    .await;
    assert_eq!(own.unwrap(), json!({"invoices": [], "next_cursor": null}));
    let quote = json!({"plan": "studio", "addons": [], "usage": {}});
    let quoted = call(&acme.client, "billing.quote", &quote).await.unwrap();
    assert_eq!(quoted["subtotal_cents"], 5000, "{quoted}");

    // Asking for globex's data, or the admin's, never leaves the server.
    acme.requests_refused(&[
        "billing.tenant.globex.invoices.list",
        "billing.tenant.globex.invoices.get",
        "billing.admin.invoices.list",
        "billing.admin.invoices.mark_paid",
        "billing.admin.tenants.put",
        "$SRV.PING.invoicer",
        "$JS.API.STREAM.INFO.BILLING_EVENTS",
    ])
    .await;
    // Nor may it touch the streams: no forged rollups, usage or events.
    acme.publishes_refused(&[
        "billing.rollup.requested",
        "metering.usage.recorded",
        "billing.invoice.issued",
    ])
    .await;

    // Overhearing: globex's replies, everyone's default inbox, globex's requests, the events.
    let mut their_inbox = acme.subscribe_refused("_INBOX_tenant_globex.>").await;
    let mut all_inboxes = acme.subscribe_refused("_INBOX.>").await;
    let mut their_requests = acme.subscribe_refused("billing.tenant.globex.>").await;
    let mut events = acme.subscribe_refused("billing.>").await;
    // globex asks for its invoices; acme's refused subscriptions would all have matched.
    let theirs = call(
        &globex.client,
        "billing.tenant.globex.invoices.list",
        &json!({}),
    )
    .await;
    assert_eq!(theirs.unwrap()["invoices"], json!([]));
    // A round trip to the server: anything it had routed to acme has been received by now.
    acme.client.flush().await.unwrap();
    for (name, sub) in [
        ("_INBOX_tenant_globex.>", &mut their_inbox),
        ("_INBOX.>", &mut all_inboxes),
        ("billing.tenant.globex.>", &mut their_requests),
        ("billing.>", &mut events),
    ] {
        let leaked = sub.next().now_or_never();
        assert!(leaked.is_none(), "acme overheard on {name}: {leaked:?}");
    }

    // Without its own inbox prefix a tenant gets no replies at all: `_INBOX.>` is nobody's.
    let mut default_inbox = User::connect(&env.server, &env.login(&role("acme")), "_INBOX").await;
    let request = Request::new()
        .payload("{}".into())
        .timeout(Some(Duration::from_secs(2)));
    let (reply, ()) = tokio::join!(
        default_inbox
            .client
            .send_request("billing.tenant.acme.invoices.list".to_string(), request),
        async {
            let error =
                tokio::time::timeout(Duration::from_secs(10), default_inbox.violations.0.recv())
                    .await
                    .expect("the server reported the inbox subscription")
                    .unwrap();
            assert!(
                error.starts_with("Permissions Violation for Subscription to \"_INBOX."),
                "{error}"
            );
        },
    );
    assert_eq!(reply.unwrap_err().kind(), RequestErrorKind::TimedOut);

    assert_eq!(acme.violations.unexpected(), Vec::<String>::new());
    assert_eq!(globex.violations.unexpected(), Vec::<String>::new());
    env.finish().await;
}

in_both_modes!(the_admin_calls_admin_subjects_and_reads_but_cannot_change_the_streams);
async fn the_admin_calls_admin_subjects_and_reads_but_cannot_change_the_streams(mode: Mode) {
    let env = Env::start(mode).await;
    let mut admin = env.user(&role("admin")).await;

    load_seed_catalog(&admin.client).await;
    let tenant = call(
        &admin.client,
        "billing.admin.tenants.put",
        &json!({"tenant_id": "acme"}),
    )
    .await;
    assert_eq!(tenant.unwrap()["tenant_id"], "acme");
    let list = call(&admin.client, "billing.admin.invoices.list", &json!({})).await;
    assert_eq!(list.unwrap()["invoices"], json!([]));
    let missing = call_raw(
        &admin.client,
        "billing.admin.invoices.get",
        json!({"id": Uuid::new_v4()}).to_string().into_bytes(),
    )
    .await
    .unwrap()
    .expect_err("an unknown invoice is an error reply");
    assert_eq!(
        (missing.code.as_str(), missing.status.as_deref()),
        ("not_found", Some("404"))
    );
    // A tenant's preview on the admin's own subject (the worker answers a tenant's subjects
    // only on that tenant's inbox, so the admin may not publish them), and the quote.
    let preview = call(
        &admin.client,
        "billing.admin.invoices.preview",
        &json!({"tenant_id": "acme", "period_start": APRIL}),
    )
    .await;
    assert_eq!(preview.unwrap()["total_cents"], 0);
    admin
        .requests_refused(&["billing.tenant.acme.invoices.list"])
        .await;
    let quote = json!({"plan": "studio", "addons": ["storage_50gb"], "usage": {}});
    let quoted = call(&admin.client, "billing.quote", &quote).await.unwrap();
    assert_eq!(quoted["subtotal_cents"], 5750, "{quoted}");
    // Services API discovery.
    let ping = admin
        .client
        .request("$SRV.PING.invoicer", "".into())
        .await
        .unwrap();
    let ping: Value = serde_json::from_slice(&ping.payload).unwrap();
    assert_eq!(ping["name"], "invoicer");

    // JetStream: read...
    let js = admin.js();
    let mut events = js.get_stream("BILLING_EVENTS").await.unwrap();
    assert_eq!(events.info().await.unwrap().config.subjects.len(), 5);
    let consumer = js
        .get_stream("METERING_USAGE")
        .await
        .unwrap()
        .consumer_info("invoicer-usage")
        .await
        .unwrap();
    assert_eq!(consumer.name, "invoicer-usage");
    // ...but not change.
    let refusal = ["Publish to \"$JS.API.STREAM.DELETE.BILLING_EVENTS\"".to_string()];
    let (deleted, ()) = tokio::join!(
        js.delete_stream("BILLING_EVENTS"),
        admin.violations.expect(&refusal)
    );
    assert!(deleted.is_err(), "the admin deleted a stream");
    admin
        .requests_refused(&[
            "$JS.API.STREAM.PURGE.BILLING_EVENTS",
            "$JS.API.STREAM.CREATE.BILLING_FORGED",
            "$JS.API.CONSUMER.DELETE.METERING_USAGE.invoicer-usage",
            "$JS.API.CONSUMER.MSG.NEXT.BILLING_ROLLUPS.invoicer-rollups",
        ])
        .await;
    // It watches events, but cannot stand in for the service: no request subjects, no `_INBOX.>`.
    let _events = admin.client.subscribe("billing.invoice.>").await.unwrap();
    admin.client.flush().await.unwrap();
    admin.subscribe_refused("billing.admin.>").await;
    admin.subscribe_refused("billing.tenant.>").await;
    admin.subscribe_refused("_INBOX.>").await;
    let queue = admin
        .client
        .queue_subscribe("billing.quote".to_string(), "q".to_string())
        .await
        .unwrap();
    admin
        .violations
        .expect(&["Subscription to \"billing.quote\" using queue \"q\"".to_string()])
        .await;
    drop(queue);

    assert_eq!(admin.violations.unexpected(), Vec::<String>::new());
    env.finish().await;
}

in_both_modes!(the_producers_publish_only_their_own_subject);
async fn the_producers_publish_only_their_own_subject(mode: Mode) {
    let env = Env::start(mode).await;
    let mut scheduler = env.user(&role("scheduler")).await;
    let mut metering = env.user(&role("metering")).await;

    // Each may publish its one subject to JetStream and gets the stream's ack.
    request_rollup(
        &scheduler.js(),
        &json!({"period_start": APRIL, "request_id": "producers"}),
        "rollup:2026-04",
    )
    .await
    .expect("the scheduler requests a rollup");
    let usage = json!({"records": []});
    metering
        .js()
        .publish("metering.usage.recorded", usage.to_string().into())
        .await
        .unwrap()
        .await
        .expect("metering records usage");

    // And nothing else.
    scheduler
        .publishes_refused(&[
            "metering.usage.recorded",
            "billing.invoice.issued",
            "billing.rollup.completed",
        ])
        .await;
    scheduler
        .requests_refused(&[
            "billing.admin.invoices.list",
            "$JS.API.STREAM.INFO.BILLING_ROLLUPS",
        ])
        .await;
    scheduler.subscribe_refused("billing.>").await;
    metering
        .publishes_refused(&["billing.rollup.requested", "billing.usage.late"])
        .await;
    metering
        .requests_refused(&[
            "billing.tenant.acme.invoices.list",
            "$JS.API.CONSUMER.INFO.METERING_USAGE.invoicer-usage",
        ])
        .await;
    metering.subscribe_refused("metering.>").await;
    metering.subscribe_refused("_INBOX_scheduler.>").await;

    // The worker handled the scheduler's request.
    let done = completed(&env.admin.js(), "producers").await;
    assert_eq!(done["period_start"], APRIL);

    assert_eq!(scheduler.violations.unexpected(), Vec::<String>::new());
    assert_eq!(metering.violations.unexpected(), Vec::<String>::new());
    env.finish().await;
}

in_both_modes!(the_worker_bills_end_to_end_under_its_own_user);
async fn the_worker_bills_end_to_end_under_its_own_user(mode: Mode) {
    let env = Env::start(mode).await;
    let admin = &env.admin;
    let admin_js = admin.js();
    let deployment = Uuid::new_v4();

    // The catalog, tenant acme and its subscription, as the admin.
    load_seed_catalog(&admin.client).await;
    for tenant in ["acme", "globex"] {
        let put = call(
            &admin.client,
            "billing.admin.tenants.put",
            &json!({"tenant_id": tenant}),
        )
        .await;
        assert_eq!(put.unwrap()["tenant_id"], tenant);
    }
    call(
        &admin.client,
        "billing.admin.subscriptions.put",
        &json!({"id": Uuid::new_v4(), "tenant_id": "acme", "deployment_id": deployment,
                "plan": "studio", "addons": ["storage_50gb"],
                "started_at": "2026-03-15T00:00:00Z"}),
    )
    .await
    .unwrap();

    // April's usage, as metering: 2 droplets x 30 days x 24h = 1440 droplet-hours, all included.
    let metering = env.user(&role("metering")).await;
    let records: Vec<Value> = (0..60)
        .map(|i| {
            json!({"event_id": Uuid::new_v4(), "deployment_id": deployment,
                   "resource_kind": "droplet_hours", "quantity": "24",
                   "occurred_at": format!("2026-04-{:02}T00:00:00Z", i % 30 + 1)})
        })
        .collect();
    publish_usage(&metering.js(), &env.db, records, 60).await;

    // The rollup, as the scheduler, while the admin watches the worker's core NATS progress.
    let mut progress = admin
        .client
        .subscribe("billing.rollup.progress")
        .await
        .unwrap();
    admin.client.flush().await.unwrap();
    let scheduler = env.user(&role("scheduler")).await;
    let request_id = Uuid::new_v4().to_string();
    request_rollup(
        &scheduler.js(),
        &json!({"period_start": APRIL, "request_id": request_id}),
        "rollup:2026-04",
    )
    .await
    .unwrap();
    let done = completed(&admin_js, &request_id).await;
    assert_eq!(done["invoices_issued"], 1, "{done}");
    assert_eq!(done["tenants_failed"], json!([]), "{done}");
    let tick = tokio::time::timeout(Duration::from_secs(10), progress.next())
        .await
        .expect("the worker publishes billing.rollup.progress")
        .unwrap();
    let tick: Value = serde_json::from_slice(&tick.payload).unwrap();
    assert_eq!(tick["request_id"], request_id.as_str());

    // The admin sees the issued invoice, and the relay published its event.
    let list = call(
        &admin.client,
        "billing.admin.invoices.list",
        &json!({"tenant_id": "acme", "period_start": APRIL}),
    )
    .await
    .unwrap();
    let invoices = list["invoices"].as_array().unwrap();
    assert_eq!(invoices.len(), 1, "{list}");
    let (id, total) = (&invoices[0]["id"], &invoices[0]["total_cents"]);
    assert_eq!(invoices[0]["status"], "issued");
    let issued = stream_messages(&admin_js, "BILLING_EVENTS", "billing.invoice.issued").await;
    assert!(
        issued.iter().any(|e| &e["id"] == id),
        "no billing.invoice.issued for {id}"
    );

    // acme reads its own invoice...
    let acme = env.user(&role("acme")).await;
    let mine = call(
        &acme.client,
        "billing.tenant.acme.invoices.list",
        &json!({}),
    )
    .await
    .unwrap();
    assert_eq!(
        mine["invoices"].as_array().map(|i| i.len()),
        Some(1),
        "{mine}"
    );
    assert_eq!(&mine["invoices"][0]["id"], id);
    let full = call(
        &acme.client,
        "billing.tenant.acme.invoices.get",
        &json!({"id": id}),
    )
    .await
    .unwrap();
    assert_eq!(full["tenant_id"], "acme");
    assert_eq!(&full["total_cents"], total);
    assert!(!full["lines"].as_array().unwrap().is_empty(), "{full}");

    // ...which globex, asking on its own subject, cannot see.
    let globex = env.user(&role("globex")).await;
    let theirs = call_raw(
        &globex.client,
        "billing.tenant.globex.invoices.get",
        json!({"id": id}).to_string().into_bytes(),
    )
    .await
    .unwrap()
    .expect_err("globex got acme's invoice");
    assert_eq!(
        (theirs.code.as_str(), theirs.status.as_deref()),
        ("not_found", Some("404"))
    );
    let none = call(
        &globex.client,
        "billing.tenant.globex.invoices.list",
        &json!({}),
    )
    .await;
    assert_eq!(none.unwrap()["invoices"], json!([]));

    // Every delivery was acked (the worker's $JS.ACK permission) and nothing is left.
    for (stream, consumer) in [
        ("BILLING_ROLLUPS", "invoicer-rollups"),
        ("METERING_USAGE", "invoicer-usage"),
    ] {
        let stream = admin_js.get_stream(stream).await.unwrap();
        wait_until(&format!("{consumer} has nothing pending"), || async {
            let info = stream.consumer_info(consumer).await.unwrap();
            info.num_ack_pending == 0 && info.num_pending == 0
        })
        .await;
    }
    env.finish().await;
}

#[tokio::test]
async fn anonymous_and_foreign_credentials_are_refused_in_operator_mode() {
    let operator = Operator::init();
    let server = operator.start_server();
    let anonymous = async_nats::connect(&server.url).await;
    assert!(anonymous.is_err(), "an anonymous client was let in");
    // A user of another operator's billing account: its signer is not one this server trusts.
    let stranger = Operator::init();
    let foreign = Login::Creds(stranger.creds(&Role::Admin))
        .options()
        .connect(&server.url)
        .await;
    assert!(foreign.is_err(), "a foreign user was let in");
    // The same role issued by this server's operator is let in.
    let own = Login::Creds(operator.creds(&Role::Admin))
        .options()
        .connect(&server.url)
        .await;
    assert!(own.is_ok(), "the admin could not log in: {:?}", own.err());
}

#[tokio::test]
async fn a_tenant_called_admin_cannot_read_the_admins_replies() {
    let env = Env::start(Mode::Operator).await;
    let tenant_admin = Role::Tenant(TenantId::parse("admin").unwrap());
    assert_eq!(tenant_admin.inbox_prefix(), "_INBOX_tenant_admin");
    let mut tenant = env.user(&tenant_admin).await;
    load_seed_catalog(&env.admin.client).await;
    let own = call(
        &tenant.client,
        "billing.tenant.admin.invoices.list",
        &json!({}),
    )
    .await;
    assert_eq!(own.unwrap()["invoices"], json!([]));

    // The admin role's inbox is not the tenant's: subscribing to it is refused...
    let mut sniffer = tenant.subscribe_refused("_INBOX_admin.>").await;
    let listed = call(&env.admin.client, "billing.admin.invoices.list", &json!({})).await;
    assert_eq!(listed.unwrap()["invoices"], json!([]));
    tenant.client.flush().await.unwrap();
    let leaked = sniffer.next().now_or_never();
    assert!(
        leaked.is_none(),
        "tenant admin overheard the admin: {leaked:?}"
    );
    // ...and so are the admin's subjects.
    tenant
        .requests_refused(&["billing.admin.invoices.list", "$SRV.PING.invoicer"])
        .await;
    assert_eq!(tenant.violations.unexpected(), Vec::<String>::new());

    // With v1's prefix (`_INBOX_<tenant>` = `_INBOX_admin`) it gets no reply at all.
    let mut old_scheme =
        User::connect(&env.server, &env.login(&tenant_admin), "_INBOX_admin").await;
    let request = Request::new()
        .payload("{}".into())
        .timeout(Some(Duration::from_secs(2)));
    let (reply, ()) = tokio::join!(
        old_scheme
            .client
            .send_request("billing.tenant.admin.invoices.list".to_string(), request),
        async {
            let error =
                tokio::time::timeout(Duration::from_secs(10), old_scheme.violations.0.recv())
                    .await
                    .expect("the server reported the inbox subscription")
                    .unwrap();
            assert!(
                error.starts_with("Permissions Violation for Subscription to \"_INBOX_admin."),
                "{error}"
            );
        },
    );
    assert_eq!(reply.unwrap_err().kind(), RequestErrorKind::TimedOut);
    env.finish().await;
}

/// A deployment whose BILLING_EVENTS stream predates `billing.usage.rejected`: the worker adds
/// the subject at start (its one STREAM.UPDATE grant) and publishes rejections under its own
/// user; the metering user's bad record is answered, its good one stored.
#[tokio::test]
async fn the_worker_adds_usage_rejected_to_an_older_events_stream_and_publishes_it() {
    let server = NatsServer::start_with(Some(Path::new(CONF)));
    let db = TestDb::new().await;
    let admin = User::connect(
        &server,
        &login(None, &Role::Admin),
        &Role::Admin.inbox_prefix(),
    )
    .await;
    let older = User::connect(
        &server,
        &login(None, &Role::Worker),
        &Role::Worker.inbox_prefix(),
    )
    .await;
    older
        .js()
        .create_stream(async_nats::jetstream::stream::Config {
            name: "BILLING_EVENTS".into(),
            subjects: vec![
                "billing.invoice.>".into(),
                "billing.rollup.completed".into(),
                "billing.rollup.rejected".into(),
                "billing.usage.late".into(),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut nats = NatsArgs::local(&server.url);
    nats.nats_user = Some("worker".into());
    nats.nats_password = Some("worker-secret".into());
    let worker =
        InProcessWorker::start(db.args(), nats, WorkerArgs::default(), &admin.client).await;
    let env = Env {
        server,
        db,
        worker,
        admin,
        operator: None,
        worker_in_log: "User \"worker\"".to_string(),
    };
    let admin_js = env.admin.js();
    let mut events = admin_js.get_stream("BILLING_EVENTS").await.unwrap();
    let subjects = events.info().await.unwrap().config.subjects.clone();
    assert!(
        subjects.contains(&"billing.usage.rejected".to_string()),
        "{subjects:?}"
    );

    let metering = env.user(&Role::Metering).await;
    let good = json!({"event_id": Uuid::new_v4(), "deployment_id": Uuid::new_v4(),
                      "resource_kind": "droplet_hours", "quantity": "24",
                      "occurred_at": "2026-04-01T00:00:00Z"});
    let mut bad = good.clone();
    bad["event_id"] = json!(Uuid::new_v4());
    bad["quantity"] = json!(24);
    publish_usage(&metering.js(), &env.db, vec![good, bad.clone()], 1).await;
    wait_until("the rejection is published", || async {
        !stream_messages(&admin_js, "BILLING_EVENTS", "billing.usage.rejected")
            .await
            .is_empty()
    })
    .await;
    let rejected = stream_messages(&admin_js, "BILLING_EVENTS", "billing.usage.rejected").await;
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["record"], bad);
    assert!(
        rejected[0]["reason"].as_str().unwrap().contains("quantity"),
        "{}",
        rejected[0]
    );
    env.finish().await;
}

/// Where a hostile caller might aim the worker's answer (CONTRACT.md section 7, v3): the
/// JetStream API of every stream (an answer is a valid purge or delete request), the
/// scheduler's key-value bucket, the streams' own subjects (a preview answer is a valid rollup
/// request) and the worker's internal work queue. No request may make the worker publish there.
const AIMED_AT_THE_SYSTEM: &[&str] = &[
    "$JS.API.STREAM.PURGE.BILLING_EVENTS",
    "$JS.API.STREAM.PURGE.BILLING_ROLLUPS",
    "$JS.API.STREAM.PURGE.METERING_USAGE",
    "$JS.API.STREAM.PURGE.BILLING_WORK",
    "$JS.API.STREAM.PURGE.KV_invoicer-scheduler",
    "$JS.API.STREAM.DELETE.METERING_USAGE",
    "$JS.API.CONSUMER.DELETE.BILLING_WORK.invoicer-work",
    "$KV.invoicer-scheduler.state",
    "billing.rollup.requested",
    "billing.invoice.paid",
    "billing.invoice.issued",
    "billing.rollup.completed",
    "metering.usage.recorded",
    "billing.internal.rollup.work",
    "forged.subject",
];

/// What the hostile requests could have damaged: every stream's messages and consumers, the
/// scheduler's state, and the database's catalogue, invoices, runs and outbox.
async fn system_state(env: &Env) -> Vec<String> {
    let worker = env.user(&Role::Worker).await;
    let scheduler = env.user(&role("scheduler")).await;
    let mut state = Vec::new();
    for (js, stream) in [
        (worker.js(), "BILLING_EVENTS"),
        (worker.js(), "BILLING_ROLLUPS"),
        (worker.js(), "METERING_USAGE"),
        (worker.js(), "BILLING_WORK"),
        (scheduler.js(), "KV_invoicer-scheduler"),
    ] {
        let line = match js.get_stream(stream).await {
            Ok(mut s) => {
                let info = s.info().await.unwrap();
                format!(
                    "{stream}: {} messages, first {}, {} consumers",
                    info.state.messages, info.state.first_sequence, info.state.consumer_count
                )
            }
            Err(e) => format!("{stream}: {e}"),
        };
        state.push(line);
    }
    let kv = invoicer::bus::scheduler::StateStore::open(&scheduler.js())
        .await
        .unwrap()
        .load()
        .await;
    state.push(format!("scheduler state: {kv:?}"));
    for sql in [
        "SELECT count(*) FROM tenants",
        "SELECT count(*) FROM subscriptions",
        "SELECT count(*) FROM rollup_runs",
        "SELECT count(*) FROM outbox",
        "SELECT count(*) FROM invoices WHERE status = 'issued'",
        "SELECT count(*) FROM invoices",
    ] {
        state.push(format!("{sql}: {}", count(&env.db, sql).await));
    }
    state
}

/// How many requests the worker refused to answer, as it reports on `billing.admin.health`.
async fn requests_refused(admin: &async_nats::Client) -> u64 {
    let health = call(admin, "billing.admin.health", &json!({}))
        .await
        .unwrap();
    health["requests_refused"].as_u64().unwrap_or(0)
}

in_both_modes!(a_reply_aimed_anywhere_but_the_askers_inbox_gets_no_reply_and_changes_nothing);
async fn a_reply_aimed_anywhere_but_the_askers_inbox_gets_no_reply_and_changes_nothing(mode: Mode) {
    let env = Env::start(mode).await;
    let admin = &env.admin;
    let deployment = Uuid::new_v4();

    // An issued invoice, events in every stream and the scheduler's state, all worth attacking.
    load_seed_catalog(&admin.client).await;
    for tenant in ["acme", "globex"] {
        call(
            &admin.client,
            "billing.admin.tenants.put",
            &json!({"tenant_id": tenant}),
        )
        .await
        .unwrap();
    }
    call(
        &admin.client,
        "billing.admin.subscriptions.put",
        &json!({"id": Uuid::new_v4(), "tenant_id": "acme", "deployment_id": deployment,
                "plan": "studio", "addons": [], "started_at": "2026-03-15T00:00:00Z"}),
    )
    .await
    .unwrap();
    let metering = env.user(&role("metering")).await;
    let records: Vec<Value> = (1..=30)
        .map(|day| {
            json!({"event_id": Uuid::new_v4(), "deployment_id": deployment,
                   "resource_kind": "droplet_hours", "quantity": "72",
                   "occurred_at": format!("2026-04-{day:02}T00:00:00Z")})
        })
        .collect();
    publish_usage(&metering.js(), &env.db, records, 30).await;
    let scheduler = env.user(&role("scheduler")).await;
    request_rollup(
        &scheduler.js(),
        &json!({"period_start": APRIL, "request_id": "april"}),
        "rollup:2026-04",
    )
    .await
    .unwrap();
    assert_eq!(completed(&admin.js(), "april").await["invoices_issued"], 1);
    invoicer::bus::scheduler::StateStore::open(&scheduler.js())
        .await
        .unwrap()
        .create(&invoicer::schedule::State::initial(
            None,
            chrono::Utc::now(),
        ))
        .await
        .unwrap();
    wait_until("the outbox is drained", || async {
        count(
            &env.db,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        )
        .await
            == 0
    })
    .await;
    let invoice = live_invoice(&admin.client, "acme").await;
    let id = invoice["id"].as_str().unwrap().to_string();
    let before = system_state(&env).await;

    // Every request subject a caller may publish, with a payload that would do its work.
    let own = |what: &str| format!("billing.tenant.acme.{what}");
    let tenant_asks: Vec<(String, Value)> = vec![
        (own("invoices.list"), json!({})),
        (own("invoices.get"), json!({"id": id})),
        (own("invoices.preview"), json!({"period_start": APRIL})),
        (own("invoices.render"), json!({"id": id})),
    ];
    let admin_asks: Vec<(String, Value)> = vec![
        (
            "billing.admin.plans.put".into(),
            json!({"code": "forged", "name": "Forged", "currency": "AUD", "base_price": "1.00"}),
        ),
        (
            "billing.admin.addons.put".into(),
            json!({"code": "forged", "name": "Forged", "currency": "AUD", "price": "1.00"}),
        ),
        (
            "billing.admin.tenants.put".into(),
            json!({"tenant_id": "forged"}),
        ),
        (
            "billing.admin.subscriptions.put".into(),
            json!({"id": Uuid::new_v4(), "tenant_id": "globex", "deployment_id": Uuid::new_v4(), "plan": "studio", "addons": [], "started_at": "2026-03-15T00:00:00Z"}),
        ),
        ("billing.admin.invoices.list".into(), json!({})),
        ("billing.admin.invoices.get".into(), json!({"id": id})),
        (
            "billing.admin.invoices.preview".into(),
            json!({"tenant_id": "acme", "period_start": APRIL}),
        ),
        ("billing.admin.invoices.issue".into(), json!({"id": id})),
        ("billing.admin.invoices.mark_paid".into(), json!({"id": id})),
        (
            "billing.admin.invoices.void".into(),
            json!({"id": id, "reason": "forged"}),
        ),
        ("billing.admin.invoices.render".into(), json!({"id": id})),
        (
            "billing.admin.revenue.summary".into(),
            json!({"period_start": APRIL}),
        ),
        ("billing.admin.health".into(), json!({})),
    ];
    // Any user may ask for a quote or discover the service: any inbox will do, nothing else.
    let anyones_asks: Vec<(String, Value)> = vec![
        (
            "billing.quote".into(),
            json!({"plan": "studio", "addons": [], "usage": {}}),
        ),
        ("$SRV.PING".into(), json!({})),
        ("$SRV.INFO.invoicer".into(), json!({})),
        ("$SRV.STATS".into(), json!({})),
    ];
    let mut acme = env.user(&role("acme")).await;
    let mut hostile = 0u64;
    let mut aim =
        |client: async_nats::Client, asks: Vec<(String, Value)>, inboxes: Vec<&'static str>| {
            hostile += (asks.len() * (AIMED_AT_THE_SYSTEM.len() + inboxes.len() + 1)) as u64;
            async move {
                for (subject, body) in asks {
                    let body: bytes::Bytes = body.to_string().into();
                    for reply in AIMED_AT_THE_SYSTEM.iter().chain(&inboxes) {
                        client
                            .publish_with_reply(subject.clone(), reply.to_string(), body.clone())
                            .await
                            .unwrap();
                    }
                    // A request with no reply subject is not a request: it changes nothing either.
                    client.publish(subject.clone(), body.clone()).await.unwrap();
                }
                client.flush().await.unwrap();
            }
        };
    // A tenant's own subjects, aimed at the system and at other scopes' inboxes.
    aim(
        acme.client.clone(),
        tenant_asks,
        vec![
            "_INBOX_admin.stolen",
            "_INBOX_tenant_globex.stolen",
            "_INBOX_worker.stolen",
        ],
    )
    .await;
    // The quote (and discovery) may answer any inbox, but nothing else.
    aim(acme.client.clone(), vec![anyones_asks[0].clone()], vec![]).await;
    // The admin's subjects.
    aim(
        admin.client.clone(),
        admin_asks,
        vec!["_INBOX_tenant_acme.stolen"],
    )
    .await;
    aim(admin.client.clone(), anyones_asks, vec![]).await;

    // Every one is counted as refused, or the damage shows.
    wait_for(
        "the worker counts every hostile request as refused, or something changes",
        Duration::from_secs(30),
        || async {
            let refused = requests_refused(&admin.client).await;
            (refused >= hostile || system_state(&env).await != before).then_some(())
        },
    )
    .await;
    assert_eq!(
        system_state(&env).await,
        before,
        "a hostile reply subject changed the system"
    );
    assert_eq!(
        requests_refused(&admin.client).await,
        hostile,
        "every hostile request is counted as refused, once"
    );
    assert_eq!(live_invoice(&admin.client, "acme").await, invoice);

    // Asked properly, on the asker's own inbox, everything still answers.
    let mine = call(&acme.client, &own("invoices.list"), &json!({}))
        .await
        .unwrap();
    assert_eq!(mine["invoices"][0]["id"], id.as_str());
    assert_eq!(acme.violations.unexpected(), Vec::<String>::new());
    env.finish().await;
}
