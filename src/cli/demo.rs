//! `invoicer demo`: the seed scenario (CONTRACT.md section 9) end to end on the real services.
//!
//! Loads the catalog and the pilot tenant through the admin service, publishes April 2026's
//! usage on JetStream, requests the rollup, waits for its completed event, prints the invoice,
//! and shows that a re-run without `force` skips it. Usage event ids are fixed, so a second
//! demo run adds nothing: the stored usage and the invoice stay the same.

use crate::bus::client::{call, request_rollup, worker_running};
use crate::config::{DbArgs, NatsArgs, WorkerArgs};
use crate::subjects::{ROLLUP_COMPLETED, USAGE_RECORDED};
use anyhow::{bail, Context};
use async_nats::jetstream::{self, message::PublishMessage};
use chrono::{Duration as Days, NaiveDate};
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const TENANT: &str = "pilot";
pub const DEPLOYMENT: Uuid = Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0001);
pub const SUBSCRIPTION: Uuid = Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0002);
const DROPLETS: u128 = 3;

/// The catalog of the seed: plan Studio and addon storage_50gb.
pub fn seed_catalog() -> (Value, Value) {
    (
        json!({"code": "studio", "name": "Studio", "currency": "AUD", "base_price": "50.00",
               "included": {"droplet_hours": "1488"},
               "overage": {"droplet_hours": {"unit_price": "0.01"}}}),
        json!({"code": "storage_50gb", "name": "storage_50gb", "currency": "AUD", "price": "7.50"}),
    )
}

/// April 2026's metering: one record per droplet per day, 24 droplet-hours each.
pub fn seed_usage() -> Vec<Value> {
    let start = NaiveDate::from_ymd_opt(2026, 4, 1).expect("date");
    let mut records = Vec::new();
    for droplet in 0..DROPLETS {
        for day in 0..30u128 {
            let at = start + Days::days(day as i64);
            records.push(json!({
                "event_id": Uuid::from_u128(0x5eed_0000_0000_4000_9000_0000_0000_0000 + droplet * 1000 + day),
                "deployment_id": DEPLOYMENT,
                "resource_kind": "droplet_hours",
                "quantity": "24",
                "occurred_at": format!("{at}T00:00:00Z"),
            }));
        }
    }
    records
}

pub async fn run(db: &DbArgs, nats: &NatsArgs) -> anyhow::Result<()> {
    let database = database_name(&db.database_url)?;
    println!("Demo database: {database}.");
    let client = crate::bus::connect(nats, "invoicer-demo").await?;
    let js = jetstream::new(client.clone());
    let worker = if worker_running(&client).await {
        check_running_worker(&client, &database).await?;
        println!("Using the running invoicer worker (its database is {database}).");
        None
    } else if nats.nats_user.is_some() || nats.nats_creds.is_some() {
        // Under nats.conf only the worker user may consume the streams and serve requests.
        bail!(
            "no invoicer worker answered $SRV.PING: start `invoicer run` as the worker user first"
        );
    } else {
        check_nothing_pending(&js).await?;
        println!("No invoicer worker answered $SRV.PING; starting one in this process.");
        let stop = CancellationToken::new();
        let (db, nats, token) = (db.clone(), nats.clone(), stop.clone());
        let handle = tokio::spawn(async move {
            crate::app::worker::run(&db, &nats, &WorkerArgs::default(), token).await
        });
        wait_for_worker(&client).await?;
        Some((stop, handle))
    };
    let result = scenario(db, &client, &js).await;
    if let Some((stop, handle)) = worker {
        stop.cancel();
        handle.await.context("worker task")??;
    }
    result
}

fn database_name(url: &str) -> anyhow::Result<String> {
    let options: sqlx::postgres::PgConnectOptions =
        url.parse().context("the demo's DATABASE_URL")?;
    Ok(options.get_database().unwrap_or("postgres").to_string())
}

/// A worker already running on this NATS bills into its own database: the demo uses it only if
/// that is the demo's database, so a demo never adds tenant `pilot` to a real installation.
async fn check_running_worker(client: &async_nats::Client, database: &str) -> anyhow::Result<()> {
    let health = call(client, "billing.admin.health", &json!({}))
        .await
        .context("asking the running worker which database it uses")?;
    match health["database"].as_str() {
        Some(theirs) if theirs == database => Ok(()),
        theirs => bail!(
            "an invoicer worker is already running on this NATS server with database {}; the \
             demo would bill its scenario into it. Run the demo against a NATS server with no \
             worker (it starts its own on database {database}), or run that worker on \
             {database}",
            theirs.unwrap_or("(not reported)")
        ),
    }
}

/// The demo's in-process worker joins the worker's durable consumers: messages they hold for a
/// real worker that is down (usage, rollup requests) would be taken into the demo's database.
async fn check_nothing_pending(js: &jetstream::Context) -> anyhow::Result<()> {
    use crate::bus::{
        ROLLUPS_CONSUMER, ROLLUPS_STREAM, USAGE_CONSUMER, USAGE_STREAM, WORK_CONSUMER, WORK_STREAM,
    };
    for (stream, consumer) in [
        (USAGE_STREAM, USAGE_CONSUMER),
        (ROLLUPS_STREAM, ROLLUPS_CONSUMER),
        (WORK_STREAM, WORK_CONSUMER),
    ] {
        let Ok(mut stream) = js.get_stream(stream).await else {
            continue;
        };
        // Without the consumer yet, the one the demo's worker creates delivers every message.
        let waiting = match stream.consumer_info(consumer).await {
            Ok(info) => info.num_pending + info.num_ack_pending as u64,
            Err(_) => stream.info().await?.state.messages,
        };
        if waiting > 0 {
            bail!(
                "the NATS server holds {waiting} message(s) on {} that no worker has handled \
                 yet; the demo's own worker would take them into the demo's database. Start \
                 the real worker to handle them, or run the demo against another NATS server",
                stream.cached_info().config.name
            );
        }
    }
    Ok(())
}

async fn wait_for_worker(client: &async_nats::Client) -> anyhow::Result<()> {
    for _ in 0..60 {
        if worker_running(client).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("the in-process worker did not start within 15s (see the log above)")
}

async fn scenario(
    db: &DbArgs,
    client: &async_nats::Client,
    js: &jetstream::Context,
) -> anyhow::Result<()> {
    let (plan, addon) = seed_catalog();
    call(client, "billing.admin.plans.put", &plan).await?;
    call(client, "billing.admin.addons.put", &addon).await?;
    call(
        client,
        "billing.admin.tenants.put",
        &json!({"tenant_id": TENANT}),
    )
    .await?;
    call(
        client,
        "billing.admin.subscriptions.put",
        &json!({"id": SUBSCRIPTION, "tenant_id": TENANT, "deployment_id": DEPLOYMENT,
                "plan": "studio", "addons": ["storage_50gb"], "started_at": "2026-03-15T00:00:00Z"}),
    )
    .await?;
    println!(
        "Loaded plan Studio, addon storage_50gb, tenant {TENANT} and its deployment {DEPLOYMENT}."
    );

    let records = seed_usage();
    let ids: Vec<Uuid> = records
        .iter()
        .map(|r| r["event_id"].as_str().unwrap_or_default().parse())
        .collect::<Result<_, _>>()?;
    for chunk in records.chunks(30) {
        let body = json!({"records": chunk});
        let msg = PublishMessage::build()
            .payload(body.to_string().into())
            .message_id(format!(
                "demo-usage:{}",
                chunk[0]["event_id"].as_str().unwrap_or("")
            ));
        js.send_publish(USAGE_RECORDED, msg).await?.await?;
    }
    println!(
        "Published {} usage records (3 droplets x 30 days x 24 droplet_hours = 2160).",
        records.len()
    );
    wait_for_usage(db, &ids).await?;

    let first = rollup(client, js, false).await?;
    println!(
        "Rollup for April 2026: {} issued, {} skipped.",
        first["invoices_issued"], first["invoices_skipped"]
    );
    let list = call(
        client,
        "billing.admin.invoices.list",
        &json!({"tenant_id": TENANT, "period_start": "2026-04-01", "status": "issued"}),
    )
    .await?;
    let Some(id) = list["invoices"][0]["id"].as_str() else {
        bail!("no issued invoice for {TENANT} in April 2026: {list}");
    };
    let invoice = call(client, "billing.admin.invoices.get", &json!({"id": id})).await?;
    println!("\n{}", crate::cli::print::invoice(&invoice));

    let again = rollup(client, js, false).await?;
    println!(
        "Re-run without force: {} issued, {} skipped (the invoice above stands).",
        again["invoices_issued"], again["invoices_skipped"]
    );
    if again["invoices_issued"] != 0 {
        bail!("a re-run without force issued an invoice: {again}");
    }
    Ok(())
}

/// Metering is asynchronous: wait until the worker has stored every record we published.
async fn wait_for_usage(db: &DbArgs, ids: &[Uuid]) -> anyhow::Result<()> {
    let pool = crate::store::connect(&db.database_url, 1).await?;
    for _ in 0..120 {
        let stored: i64 =
            sqlx::query_scalar("SELECT count(*) FROM usage_records WHERE event_id = ANY($1)")
                .bind(ids)
                .fetch_one(&pool)
                .await?;
        if stored == ids.len() as i64 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("the worker did not store the demo's usage within 30s")
}

async fn rollup(
    client: &async_nats::Client,
    js: &jetstream::Context,
    force: bool,
) -> anyhow::Result<Value> {
    let request_id = format!("demo-{}", Uuid::new_v4());
    let mut completed = client.subscribe(ROLLUP_COMPLETED).await?;
    let request = json!({"period_start": "2026-04-01", "force": force, "request_id": request_id});
    request_rollup(js, &request, &request_id).await?;
    let wait = async {
        while let Some(msg) = completed.next().await {
            let event: Value = serde_json::from_slice(&msg.payload)?;
            if event["request_id"] == request_id.as_str() {
                return Ok(event);
            }
        }
        bail!("subscription closed")
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .context("no billing.rollup.completed within 60s")?
}
