//! `invoicer scheduler`: the month-end trigger, on the system clock, until SIGINT/SIGTERM.

use crate::app::scheduler::{Scheduler, SystemClock};
use crate::config::NatsArgs;
use crate::domain::calendar::Schedule;
use crate::domain::period::Period;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub async fn run(
    nats: &NatsArgs,
    schedule: Schedule,
    since: Option<Period>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = crate::bus::connect(nats, "invoicer-scheduler").await?;
    Scheduler {
        schedule,
        since,
        client,
        clock: Arc::new(SystemClock),
        shutdown,
    }
    .run()
    .await
}
