//! The project's `nats.conf` against a real `nats-server`: each user may do what its role needs
//! and nothing else (CONTRACT.md section 7), and the worker runs end to end under its own
//! restricted user.
//!
//! A refusal is proved by the server's own word: the `-ERR 'Permissions Violation ...'` it sends
//! the offending connection, which async-nats reports through the event callback.

mod common;

use async_nats::{jetstream, ConnectOptions, Event, Request, RequestErrorKind, ServerError};
use common::*;
use futures::{FutureExt, StreamExt};
use invoicer::client::{call, call_raw, request_rollup};
use invoicer::config::{NatsArgs, WorkerArgs};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;
use uuid::Uuid;

const CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/nats.conf");
const APRIL: &str = "2026-04-01";

/// The demo password of a `nats.conf` user.
fn password(user: &str) -> String {
    format!("{user}-secret")
}

/// The permissions violations the server reported to one connection, in order.
struct Violations(mpsc::UnboundedReceiver<String>);

impl Violations {
    /// Waits, with a deadline, until the server has reported each of `violations` (e.g.
    /// `Publish to "billing.quote"`), in any order. Any other violation fails the test.
    async fn expect(&mut self, violations: &[String]) {
        let mut wanted: Vec<String> = violations
            .iter()
            .map(|v| format!("Permissions Violation for {v}"))
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !wanted.is_empty() {
            match tokio::time::timeout_at(deadline, self.0.recv()).await {
                Ok(Some(error)) => match wanted.iter().position(|w| *w == error) {
                    Some(i) => drop(wanted.swap_remove(i)),
                    None => panic!("unexpected server error: {error} (waiting for {wanted:?})"),
                },
                Ok(None) => panic!("the connection closed before the server reported {wanted:?}"),
                Err(_) => panic!("the server did not report {wanted:?}"),
            }
        }
    }

    /// Everything reported so far and not awaited.
    fn unexpected(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.0.try_recv().ok()).collect()
    }
}

/// A connection as one `nats.conf` user, with its own inbox prefix `_INBOX_<user>`.
struct User {
    client: async_nats::Client,
    violations: Violations,
}

impl User {
    async fn connect(server: &NatsServer, user: &str) -> User {
        Self::connect_with_inbox(server, user, &format!("_INBOX_{user}")).await
    }

    async fn connect_with_inbox(server: &NatsServer, user: &str, inbox: &str) -> User {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = ConnectOptions::new()
            .user_and_password(user.into(), password(user))
            .custom_inbox_prefix(inbox)
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let Event::ServerError(ServerError::Other(error)) = event {
                        let _ = tx.send(error);
                    }
                }
            })
            .connect(&server.url)
            .await
            .unwrap_or_else(|e| panic!("{user} could not log in: {e}"));
        User {
            client,
            violations: Violations(rx),
        }
    }

    fn js(&self) -> jetstream::Context {
        jetstream::new(self.client.clone())
    }

    /// Requests the server must refuse to forward: it reports a violation for each, and none
    /// gets any reply (not even "no responders", which would mean it was routed). The requests
    /// go out together, so they share one reply deadline.
    async fn requests_refused(&mut self, subjects: &[&str]) {
        let requests = subjects.iter().map(|subject| {
            let request = Request::new()
                .payload("{}".into())
                .timeout(Some(Duration::from_secs(2)));
            self.client.send_request(subject.to_string(), request)
        });
        let expected: Vec<String> = subjects
            .iter()
            .map(|s| format!("Publish to \"{s}\""))
            .collect();
        let (replies, ()) = tokio::join!(
            futures::future::join_all(requests),
            self.violations.expect(&expected),
        );
        for (subject, reply) in subjects.iter().zip(replies) {
            let error = reply.expect_err("a refused request got a reply");
            assert_eq!(
                error.kind(),
                RequestErrorKind::TimedOut,
                "{subject}: {error}"
            );
        }
    }

    /// A subscription the server must refuse.
    async fn subscribe_refused(&mut self, subject: &str) -> async_nats::Subscriber {
        let subscriber = self.client.subscribe(subject.to_string()).await.unwrap();
        self.violations
            .expect(&[format!("Subscription to \"{subject}\"")])
            .await;
        subscriber
    }

    /// Plain publishes the server must refuse.
    async fn publishes_refused(&mut self, subjects: &[&str]) {
        for subject in subjects {
            self.client
                .publish(subject.to_string(), "{}".into())
                .await
                .unwrap();
        }
        let expected: Vec<String> = subjects
            .iter()
            .map(|s| format!("Publish to \"{s}\""))
            .collect();
        self.violations.expect(&expected).await;
    }
}

/// A private nats-server with `nats.conf`, a fresh database, the worker running as the `worker`
/// user, and the admin connected.
struct Env {
    server: NatsServer,
    db: TestDb,
    worker: Worker,
    admin: User,
}

impl Env {
    async fn start() -> Env {
        let server = NatsServer::start_logged(Path::new(CONF));
        let db = TestDb::new().await;
        let admin = User::connect(&server, "admin").await;
        let nats = NatsArgs {
            nats_url: server.url.clone(),
            nats_user: Some("worker".into()),
            nats_password: Some(password("worker")),
            nats_creds: None,
            nats_inbox_prefix: Some("_INBOX_worker".into()),
        };
        let worker =
            Worker::start_probed(db.args(), nats, WorkerArgs::default(), &admin.client).await;
        Env {
            server,
            db,
            worker,
            admin,
        }
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
        let refused: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("Violation") && l.contains("User \"worker\""))
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
        .user_and_password("acme".into(), password("globex"))
        .connect(&server.url)
        .await;
    assert!(wrong.is_err(), "acme logged in with globex's password");
    let acme = ConnectOptions::new()
        .user_and_password("acme".into(), password("acme"))
        .connect(&server.url)
        .await;
    assert!(acme.is_ok(), "acme could not log in: {:?}", acme.err());
}

#[tokio::test]
async fn a_tenant_can_neither_ask_for_nor_overhear_another_tenants_data() {
    let env = Env::start().await;
    let mut acme = User::connect(&env.server, "acme").await;
    let mut globex = User::connect(&env.server, "globex").await;

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
    let mut their_inbox = acme.subscribe_refused("_INBOX_globex.>").await;
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
        ("_INBOX_globex.>", &mut their_inbox),
        ("_INBOX.>", &mut all_inboxes),
        ("billing.tenant.globex.>", &mut their_requests),
        ("billing.>", &mut events),
    ] {
        let leaked = sub.next().now_or_never();
        assert!(leaked.is_none(), "acme overheard on {name}: {leaked:?}");
    }

    // Without its own inbox prefix a tenant gets no replies at all: `_INBOX.>` is nobody's.
    let mut default_inbox = User::connect_with_inbox(&env.server, "acme", "_INBOX").await;
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

#[tokio::test]
async fn the_admin_calls_admin_subjects_and_reads_but_cannot_change_the_streams() {
    let env = Env::start().await;
    let mut admin = User::connect(&env.server, "admin").await;

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
    // On a tenant's behalf, and the quote.
    let on_behalf = call(
        &admin.client,
        "billing.tenant.acme.invoices.list",
        &json!({}),
    )
    .await;
    assert_eq!(on_behalf.unwrap()["invoices"], json!([]));
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

#[tokio::test]
async fn the_producers_publish_only_their_own_subject() {
    let env = Env::start().await;
    let mut scheduler = User::connect(&env.server, "scheduler").await;
    let mut metering = User::connect(&env.server, "metering").await;

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

#[tokio::test]
async fn the_worker_bills_end_to_end_under_its_own_user() {
    let env = Env::start().await;
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
    let metering = User::connect(&env.server, "metering").await;
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
    let scheduler = User::connect(&env.server, "scheduler").await;
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
    let acme = User::connect(&env.server, "acme").await;
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
    let globex = User::connect(&env.server, "globex").await;
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

/// A deployment whose BILLING_EVENTS stream predates `billing.usage.rejected`: the worker adds
/// the subject at start (its one STREAM.UPDATE grant) and publishes rejections under its own
/// user; the metering user's bad record is answered, its good one stored.
#[tokio::test]
async fn the_worker_adds_usage_rejected_to_an_older_events_stream_and_publishes_it() {
    let server = NatsServer::start_logged(Path::new(CONF));
    let db = TestDb::new().await;
    let admin = User::connect(&server, "admin").await;
    let older = User::connect(&server, "worker").await;
    older
        .js()
        .create_stream(jetstream::stream::Config {
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
    let nats = NatsArgs {
        nats_url: server.url.clone(),
        nats_user: Some("worker".into()),
        nats_password: Some(password("worker")),
        nats_creds: None,
        nats_inbox_prefix: Some("_INBOX_worker".into()),
    };
    let worker = Worker::start_probed(db.args(), nats, WorkerArgs::default(), &admin.client).await;
    let env = Env {
        server,
        db,
        worker,
        admin,
    };
    let admin_js = env.admin.js();
    let mut events = admin_js.get_stream("BILLING_EVENTS").await.unwrap();
    let subjects = events.info().await.unwrap().config.subjects.clone();
    assert!(
        subjects.contains(&"billing.usage.rejected".to_string()),
        "{subjects:?}"
    );

    let metering = User::connect(&env.server, "metering").await;
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
