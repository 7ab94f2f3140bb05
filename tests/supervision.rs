//! A worker never runs without one of its parts (CONTRACT.md section 8): when a part stops for
//! good, the process exits non-zero so that its supervisor (systemd, Kubernetes) restarts it,
//! rather than staying up, answering requests, and never billing.
//!
//! The one failure no retry can mend is a consumer deleted from under the worker (by an
//! operator, or a stream recreated without it): each of the worker's three consumers is deleted
//! in turn from a running worker process.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test]
async fn a_worker_whose_consumer_is_deleted_exits_non_zero() {
    let cases = [
        (
            "BILLING_ROLLUPS",
            "invoicer-rollups",
            "rollup-request consumer",
        ),
        ("BILLING_WORK", "invoicer-work", "work-queue consumer"),
        ("METERING_USAGE", "invoicer-usage", "usage consumer"),
    ];
    let runs = cases.map(|(stream, consumer, part)| async move {
        let mut app = TestApp::with_worker_process().await;
        let js = app.js.clone();
        let worker = &mut app.workers[0];
        js.get_stream(stream)
            .await
            .unwrap()
            .delete_consumer(consumer)
            .await
            .unwrap();
        let status = worker.exited_within(Duration::from_secs(30)).await;
        let log = worker.log();
        assert!(
            status.is_some_and(|s| !s.success()),
            "the worker went on without its {part} ({status:?}):\n{log}"
        );
        assert!(log.contains(part), "the log names the {part}:\n{log}");
    });
    futures::future::join_all(runs).await;
}
