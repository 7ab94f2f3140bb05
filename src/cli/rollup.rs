//! `invoicer rollup`: publish one rollup request; with `--wait`, follow it to completion.
//!
//! Progress comes from `billing.rollup.progress` (core NATS), the outcome from
//! `billing.rollup.completed` or `billing.rollup.rejected`; the subscription is made before the
//! request is published, so neither can be missed. Progress goes to standard error (a live bar
//! on a terminal, plain lines otherwise) and the summary to standard output.

use super::Exit;
use crate::bus::client::{request_rollup, worker_running};
use crate::config::NatsArgs;
use crate::domain::period::Period;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use serde_json::{json, Value};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub async fn run(
    nats: &NatsArgs,
    period: Period,
    force: bool,
    tenants: Vec<String>,
    draft: bool,
    wait: bool,
) -> anyhow::Result<()> {
    let client = crate::bus::connect(nats, "invoicer-cli").await?;
    let js = async_nats::jetstream::new(client.clone());
    let request_id = uuid::Uuid::new_v4().to_string();
    let request = json!({
        "period_start": period.start, "period_end": period.end, "force": force, "draft": draft,
        "tenant_ids": (!tenants.is_empty()).then_some(tenants), "request_id": request_id,
    });
    if !wait {
        request_rollup(&js, &request, &request_id).await?;
        println!("requested rollup {request_id} for {period}");
        return Ok(());
    }
    let mut events = client.subscribe("billing.rollup.>").await?;
    request_rollup(&js, &request, &request_id).await?;
    let mut progress = Progress::new(std::io::stderr().is_terminal(), period);
    if !worker_running(&client).await {
        progress.note(
            "no invoicer worker answers $SRV.PING yet: the request waits in the stream until one starts",
        );
    }
    while let Some(msg) = events.next().await {
        let Ok(event) = serde_json::from_slice::<Value>(&msg.payload) else {
            continue;
        };
        let ours = event["request_id"] == request_id.as_str()
            || event["request"]["request_id"] == request_id.as_str();
        if !ours {
            continue;
        }
        match msg.subject.as_str() {
            "billing.rollup.progress" => progress.update(
                event["tenants_done"].as_u64().unwrap_or(0),
                event["tenants_total"].as_u64().unwrap_or(0),
            ),
            "billing.rollup.completed" => {
                progress.finish();
                print!("{}", crate::cli::print::rollup_summary(&event));
                let failed = event["tenants_failed"].as_array().map_or(0, Vec::len);
                if failed > 0 {
                    return Err(Exit::TenantsFailed(failed).into());
                }
                return Ok(());
            }
            "billing.rollup.rejected" => {
                progress.finish();
                let reason = event["reason"].as_str().unwrap_or("no reason given");
                return Err(Exit::Rejected(reason.to_string()).into());
            }
            _ => {}
        }
    }
    anyhow::bail!("the NATS connection closed before the rollup completed")
}

/// `⠒ rollup 2026-04 [=====>    ] 5000/20000 tenants  2018 tenants/s  elapsed 2s  eta 7s`
fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} rollup {prefix} [{bar:30}] {pos}/{len} tenants  {rate}  elapsed {elapsed}  eta {eta}",
    )
    .expect("a valid template")
    .with_key("rate", |state: &ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = write!(w, "{:.0} tenants/s", state.per_sec());
    })
    .progress_chars("=> ")
}

/// Shows progress: a live bar on a terminal, otherwise at most one plain line a second.
struct Progress {
    bar: Option<ProgressBar>,
    period: Period,
    started: Instant,
    last_line: Option<Instant>,
    last: (u64, u64),
}

impl Progress {
    fn new(terminal: bool, period: Period) -> Progress {
        let bar = terminal.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            // Until the first progress event there is no total to draw a bar against.
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} rollup {prefix}: waiting for the first batch  {elapsed}",
                )
                .expect("a valid template"),
            );
            bar.set_prefix(period.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            bar,
            period,
            started: Instant::now(),
            last_line: None,
            last: (0, 0),
        }
    }

    fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("note: {text}")),
            None => eprintln!("note: {text}"),
        }
    }

    fn update(&mut self, done: u64, total: u64) {
        // Replicas report batches out of order; never move backwards.
        if done < self.last.0 {
            return;
        }
        self.last = (done, total);
        if let Some(bar) = &self.bar {
            if bar.length().is_none() {
                bar.set_style(bar_style());
            }
            bar.set_length(total);
            bar.set_position(done);
            return;
        }
        let now = Instant::now();
        let due = self
            .last_line
            .is_none_or(|t| now - t >= Duration::from_secs(1));
        if due || done == total {
            self.last_line = Some(now);
            eprintln!("{}", self.line(done, total, now - self.started));
        }
    }

    /// `rollup 2026-04: 500/1000 tenants (50%), 250 tenants/s, elapsed 2s, eta 2s`
    fn line(&self, done: u64, total: u64, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        let eta = if rate > 0.0 {
            format!("{:.0}s", (total.saturating_sub(done)) as f64 / rate)
        } else {
            "?".into()
        };
        format!(
            "rollup {}: {done}/{total} tenants ({pct}%), {rate:.0} tenants/s, elapsed {:.0}s, eta {eta}",
            self.period,
            elapsed.as_secs_f64()
        )
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
