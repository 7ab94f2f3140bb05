//! `invoicer scheduler` on a real nats-server, driven by a manual clock: years of month-ends
//! in milliseconds. Each test checks what reached the wire (a core subscription sees every
//! publish, duplicates included), what the stream kept (one message per msg id), and the
//! key-value state.
//!
//! The clock tells the test when a scheduler has decided that nothing more is due: it is then
//! asleep until its next firing. That is the only synchronisation, never a blind sleep.

mod common;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use common::*;
use futures::future::BoxFuture;
use futures::StreamExt;
use invoicer::config::NatsArgs;
use invoicer::period::Period;
use invoicer::schedule::{Schedule, State, DEFAULT_CRON};
use invoicer::scheduler::{Clock, Scheduler};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/nats.conf");

fn ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

fn month(s: &str) -> Period {
    Period::parse_month(s).unwrap()
}

/// A clock the test sets by hand, which records who sleeps until when.
struct ManualClock {
    now: watch::Sender<DateTime<Utc>>,
    sleepers: watch::Sender<Vec<DateTime<Utc>>>,
}

/// Removes its sleeper when the sleep ends or is abandoned (shutdown).
struct Asleep<'a>(&'a watch::Sender<Vec<DateTime<Utc>>>, DateTime<Utc>);

impl Drop for Asleep<'_> {
    fn drop(&mut self) {
        let at = self.1;
        self.0.send_modify(|s| {
            if let Some(i) = s.iter().position(|t| *t == at) {
                s.remove(i);
            }
        });
    }
}

impl ManualClock {
    fn at(now: &str) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now: watch::Sender::new(ts(now)),
            sleepers: watch::Sender::new(Vec::new()),
        })
    }

    fn set(&self, now: DateTime<Utc>) {
        self.now.send_replace(now);
    }

    /// Waits until exactly `n` schedulers sleep, all until `until`: each has done all it had
    /// to do before then.
    async fn wait_asleep(&self, n: usize, until: DateTime<Utc>) {
        let mut rx = self.sleepers.subscribe();
        let waited = tokio::time::timeout(
            Duration::from_secs(30),
            rx.wait_for(|s| s.len() == n && s.iter().all(|t| *t == until)),
        )
        .await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "{n} scheduler(s) never slept until {until}; sleeping: {:?}",
            self.sleepers.borrow()
        );
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.sleepers.send_modify(|s| s.push(at));
            let _asleep = Asleep(&self.sleepers, at);
            let mut now = self.now.subscribe();
            let _ = now.wait_for(|now| *now >= at).await;
        })
    }
}

/// A scheduler replica running in this process, stopped on drop.
struct Replica {
    stop: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Replica {
    async fn start(nats: NatsArgs, clock: Arc<ManualClock>, since: Option<&str>) -> Replica {
        Self::start_cron(nats, clock, since, DEFAULT_CRON).await
    }

    async fn start_cron(
        nats: NatsArgs,
        clock: Arc<ManualClock>,
        since: Option<&str>,
        cron: &str,
    ) -> Replica {
        let client = invoicer::bus::connect(&nats, "test-scheduler")
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let scheduler = Scheduler {
            schedule: Schedule::parse(cron).unwrap(),
            since: since.map(month),
            client,
            clock,
            shutdown: stop.clone(),
        };
        Replica {
            stop,
            handle: Some(tokio::spawn(async move {
                let result = scheduler.run().await;
                if let Err(e) = &result {
                    eprintln!("scheduler replica failed: {e:#}");
                }
                result
            })),
        }
    }

    async fn stop(mut self) {
        self.stop.cancel();
        self.handle.take().unwrap().await.unwrap().unwrap();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Every `billing.rollup.requested` published, as its `Nats-Msg-Id`, in arrival order.
struct Wire {
    client: async_nats::Client,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Wire {
    async fn watch(client: async_nats::Client) -> Wire {
        let mut sub = client.subscribe("billing.rollup.requested").await.unwrap();
        client.flush().await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let id = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                sink.lock().unwrap().push(id);
            }
        });
        Wire { client, seen }
    }

    /// What was published so far. A publish was acknowledged (the scheduler waits for its ack)
    /// before the scheduler slept; a round trip on our own connection then brings us every
    /// message the server routed to us before it.
    async fn published(&self) -> Vec<String> {
        self.client.flush().await.unwrap();
        self.seen.lock().unwrap().clone()
    }
}

/// The request ids stored in BILLING_ROLLUPS, in stream order; each must equal its msg id.
async fn stored(js: &jetstream::Context) -> Vec<String> {
    let mut stream = js.get_stream("BILLING_ROLLUPS").await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let msg_id = m
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.to_string())
            .unwrap_or_default();
        let request_id = body["request_id"].as_str().unwrap_or_default().to_string();
        assert_eq!(request_id, msg_id, "request_id is the msg id: {body}");
        // The payload is a complete, monthly request.
        let period = Period::parse_month(request_id.trim_start_matches("rollup:")).unwrap();
        assert_eq!(body["period_start"], period.start.to_string(), "{body}");
        assert_eq!(body["period_end"], period.end.to_string(), "{body}");
        assert_eq!(body["force"], false, "{body}");
        out.push(request_id);
    }
    out
}

async fn kv_state(js: &jetstream::Context) -> State {
    let kv = js.get_key_value("invoicer-scheduler").await.unwrap();
    let entry = kv.get("state").await.unwrap().expect("the state exists");
    serde_json::from_slice(&entry).unwrap()
}

fn ids(months: &[impl AsRef<str>]) -> Vec<String> {
    months
        .iter()
        .map(|m| format!("rollup:{}", m.as_ref()))
        .collect()
}

/// A private server with the contract's streams (the worker would create them).
async fn server() -> (NatsServer, jetstream::Context) {
    let nats = NatsServer::start();
    let js = jetstream::new(nats.client().await);
    invoicer::bus::ensure_streams(&js, 1).await.unwrap();
    (nats, js)
}

/// The months from `first` on, `n` of them, as `YYYY-MM`.
fn months_from(first: &str, n: usize) -> Vec<String> {
    let mut p = month(first);
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(p.to_string());
        p = Period::monthly(p.end).unwrap();
    }
    out
}

#[tokio::test]
async fn two_replicas_request_each_period_once_across_a_year_and_a_restart_does_not_fire_again() {
    let (nats, js) = server().await;
    let wire = Wire::watch(nats.client().await).await;
    let clock = ManualClock::at("2026-04-20T10:00:00Z");
    let a = Replica::start(nats.args(), clock.clone(), None).await;
    let b = Replica::start(nats.args(), clock.clone(), None).await;

    // A first start with no --since: nothing until the first firing, May 1 (for April).
    clock.wait_asleep(2, ts("2026-05-01T03:00:00Z")).await;
    assert!(wire.published().await.is_empty());
    assert!(stored(&js).await.is_empty());

    // Fourteen month-ends, both replicas awake at each; January bills December.
    let firings: Vec<DateTime<Utc>> = (0..15)
        .map(|i| {
            Schedule::parse(DEFAULT_CRON)
                .unwrap()
                .next_firing(ts("2026-05-01T00:00:00Z") + chrono::Months::new(i))
                .unwrap()
        })
        .collect();
    for pair in firings.windows(2) {
        clock.set(pair[0]);
        clock.wait_asleep(2, pair[1]).await;
    }
    let expected = ids(&months_from("2026-04", 14));
    assert!(expected.contains(&"rollup:2026-12".to_string()));
    assert_eq!(stored(&js).await, expected, "each period once, in order");
    let published = wire.published().await;
    for id in &expected {
        let n = published.iter().filter(|p| *p == id).count();
        // Both replicas may publish a firing they read at the same revision; the stream kept one.
        assert!(
            (1..=2).contains(&n),
            "{id} published {n} times: {published:?}"
        );
    }
    let state = kv_state(&js).await;
    assert_eq!(state.last_period, Some(month("2027-05")));
    assert_eq!(
        state.not_before,
        ts("2026-04-20T10:00:00Z"),
        "the first start"
    );

    // Restart right after the last firing: nothing is published again.
    a.stop().await;
    b.stop().await;
    let before = wire.published().await;
    clock.set(ts("2027-06-01T03:00:05Z"));
    let c = Replica::start(nats.args(), clock.clone(), Some("2020-01")).await;
    clock.wait_asleep(1, ts("2027-07-01T03:00:00Z")).await;
    assert_eq!(
        wire.published().await,
        before,
        "the restart published nothing"
    );
    assert_eq!(stored(&js).await, expected);
    assert_eq!(
        kv_state(&js).await.last_period,
        Some(month("2027-05")),
        "--since is ignored once there is state"
    );
    c.stop().await;
}

#[tokio::test]
async fn after_downtime_across_two_firings_both_periods_are_requested_once_oldest_first() {
    let (nats, js) = server().await;
    let wire = Wire::watch(nats.client().await).await;
    let clock = ManualClock::at("2026-03-20T00:00:00Z");
    let replica = Replica::start(nats.args(), clock.clone(), None).await;
    clock.wait_asleep(1, ts("2026-04-01T03:00:00Z")).await;
    clock.set(ts("2026-04-01T03:00:00Z"));
    clock.wait_asleep(1, ts("2026-05-01T03:00:00Z")).await;
    assert_eq!(wire.published().await, ids(&["2026-03"]));
    replica.stop().await;

    // Down through the May 1 and June 1 firings.
    clock.set(ts("2026-06-10T12:00:00Z"));
    let replica = Replica::start(nats.args(), clock.clone(), None).await;
    clock.wait_asleep(1, ts("2026-07-01T03:00:00Z")).await;
    assert_eq!(
        wire.published().await,
        ids(&["2026-03", "2026-04", "2026-05"]),
        "April then May, each once"
    );
    assert_eq!(stored(&js).await, ids(&["2026-03", "2026-04", "2026-05"]));
    assert_eq!(kv_state(&js).await.last_period, Some(month("2026-05")));
    replica.stop().await;
}

#[tokio::test]
async fn a_first_start_with_since_requests_exactly_the_periods_whose_firing_has_passed() {
    let (nats, js) = server().await;
    let wire = Wire::watch(nats.client().await).await;
    let clock = ManualClock::at("2026-05-10T08:00:00Z");
    let replica = Replica::start(nats.args(), clock.clone(), Some("2026-01")).await;
    clock.wait_asleep(1, ts("2026-06-01T03:00:00Z")).await;
    let want = ids(&["2026-01", "2026-02", "2026-03", "2026-04"]);
    assert_eq!(
        wire.published().await,
        want,
        "nothing before --since, oldest first"
    );
    assert_eq!(stored(&js).await, want);
    replica.stop().await;
}

#[tokio::test]
async fn a_custom_cron_fires_on_its_own_days() {
    let (nats, js) = server().await;
    let clock = ManualClock::at("2026-04-10T00:00:00Z");
    // 06:30 on the 2nd: the first firing after the start is May 2, for April.
    let replica = Replica::start_cron(nats.args(), clock.clone(), None, "30 6 2 * *").await;
    clock.wait_asleep(1, ts("2026-05-02T06:30:00Z")).await;
    clock.set(ts("2026-05-02T06:30:00Z"));
    clock.wait_asleep(1, ts("2026-06-02T06:30:00Z")).await;
    assert_eq!(stored(&js).await, ids(&["2026-04"]));
    replica.stop().await;
}

/// A connection as a `nats.conf` user with its own inbox prefix.
fn user(nats: &NatsServer, name: &str) -> NatsArgs {
    NatsArgs {
        nats_url: nats.url.clone(),
        nats_user: Some(name.into()),
        nats_password: Some(format!("{name}-secret")),
        nats_creds: None,
        nats_inbox_prefix: Some(format!("_INBOX_{name}")),
    }
}

#[tokio::test]
async fn under_nats_conf_the_scheduler_user_has_its_bucket_and_its_subject_and_nothing_else() {
    let nats = NatsServer::start_with(Some(std::path::Path::new(CONF)));
    // The worker creates the streams.
    let worker = invoicer::bus::connect(&user(&nats, "worker"), "test-worker")
        .await
        .unwrap();
    invoicer::bus::ensure_streams(&jetstream::new(worker), 1)
        .await
        .unwrap();

    let clock = ManualClock::at("2026-05-10T08:00:00Z");
    let replica = Replica::start(user(&nats, "scheduler"), clock.clone(), Some("2026-03")).await;
    clock.wait_asleep(1, ts("2026-06-01T03:00:00Z")).await;
    let admin = invoicer::bus::connect(&user(&nats, "admin"), "test-admin")
        .await
        .unwrap();
    let admin_js = jetstream::new(admin);
    assert_eq!(stored(&admin_js).await, ids(&["2026-03", "2026-04"]));
    // A restart reads its state back under the same permissions and publishes nothing.
    replica.stop().await;
    let replica = Replica::start(user(&nats, "scheduler"), clock.clone(), None).await;
    clock.wait_asleep(1, ts("2026-06-01T03:00:00Z")).await;
    assert_eq!(stored(&admin_js).await, ids(&["2026-03", "2026-04"]));
    replica.stop().await;
    let log = nats.log();
    assert!(
        !log.contains("Violation"),
        "the scheduler needed something nats.conf does not grant:\n{log}"
    );

    // And it may do nothing else: another bucket, another subject, the invoices.
    let scheduler = invoicer::bus::connect(&user(&nats, "scheduler"), "test-scheduler")
        .await
        .unwrap();
    let mut js = jetstream::new(scheduler.clone());
    // A refused request gets no answer: do not wait the default 5s for it.
    js.set_timeout(Duration::from_millis(300));
    let other = js
        .create_stream(jetstream::stream::Config {
            name: "KV_other".into(),
            subjects: vec!["$KV.other.>".into()],
            ..Default::default()
        })
        .await;
    assert!(other.is_err(), "the scheduler created another bucket");
    scheduler
        .publish("billing.admin.plans.put", "{}".into())
        .await
        .unwrap();
    scheduler.subscribe("billing.invoice.>").await.unwrap();
    scheduler.flush().await.unwrap();
    wait_until(
        "the server refuses the scheduler's other publish and subscribe",
        || async {
            let log = nats.log();
            log.contains("Publish Violation")
                && log.contains("\"billing.admin.plans.put\"")
                && log.contains("\"$JS.API.STREAM.CREATE.KV_other\"")
                && log.contains("Subscription Violation")
                && log.contains("\"billing.invoice.>\"")
        },
    )
    .await;
}
