//! The request-reply surface: the `invoicer` micro service ([`micro`](super::micro): a queue
//! group, so replicas share load, and `$SRV.PING/INFO/STATS`). Every request gets a reply, a
//! typed error if need be, and the caller's scope comes from the subject alone.
//!
//! Every message is checked here, in one place, before anything else happens: the reply must go
//! to an inbox of the scope that asked ([`may_answer`]). Anything else (a stream's subject, the
//! JetStream API, a key-value bucket, another scope's inbox, or no reply subject at all) is not
//! answered and not acted on; it is logged and counted (CONTRACT.md section 7, v3).

use super::micro::{Incoming, Micro};
use crate::api::{self, Endpoint};
use crate::auth::roles::may_answer;
use crate::domain::document::Seller;
use crate::error::Error;
use async_nats::service;
use futures::StreamExt;
use sqlx::PgPool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub const SERVICE_NAME: &str = "invoicer";

#[derive(Clone)]
pub struct Service {
    pub pool: PgPool,
    pub client: async_nats::Client,
    pub relay: Arc<Notify>,
    pub concurrency: usize,
    pub shutdown: CancellationToken,
    /// The supplier on tax invoice documents (`None`: documents are not enabled).
    pub seller: Option<Arc<Seller>>,
}

impl Service {
    pub async fn run(self) -> anyhow::Result<()> {
        let endpoints: Vec<(String, String)> = Endpoint::ALL
            .iter()
            .map(|ep| (ep.name(), ep.subject().to_string()))
            .collect();
        let micro = Micro::new(
            self.client.clone(),
            SERVICE_NAME,
            env!("CARGO_PKG_VERSION"),
            "invoicer: tenant invoices, catalog admin and quotes",
            &endpoints,
        );
        let mut incoming = micro.subscribe().await?;
        // Bounded below the pool size, so a burst queues here rather than starving the
        // consumers of connections.
        let permits = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let refused = Arc::new(AtomicU64::new(0));
        tracing::info!(
            endpoints = endpoints.len(),
            id = micro.id(),
            "service started"
        );
        loop {
            let next = tokio::select! {
                n = incoming.next() => n,
                _ = self.shutdown.cancelled() => None,
            };
            let Some(next) = next else { break };
            let Some(reply) = checked_reply(next.message()) else {
                refused.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let request = match next {
                Incoming::Verb(verb, _) => {
                    let body = micro.verb_reply(verb);
                    if let Err(e) = micro.publish(reply, Default::default(), body).await {
                        tracing::warn!(error = %e, "discovery reply failed");
                    }
                    continue;
                }
                Incoming::Request(index, message) => (index, message),
            };
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore open");
            let (this, micro) = (self.clone(), micro.clone());
            let requests_refused = refused.load(Ordering::Relaxed);
            tokio::spawn(async move {
                let (index, message) = request;
                let started = Instant::now();
                let (body, headers, error) = this
                    .answer(Endpoint::ALL[index], &message, requests_refused)
                    .await;
                if let Err(e) = micro.publish(reply, headers, body).await {
                    tracing::warn!(error = %e, "reply failed");
                }
                micro.record(index, started.elapsed(), error);
                drop(permit);
            });
        }
        // Unsubscribe first, so other replicas take the requests that follow, then let the
        // requests in hand finish.
        drop(incoming);
        let _ = permits.acquire_many(self.concurrency.max(1) as u32).await;
        tracing::info!("service stopped");
        Ok(())
    }

    /// Handles one request whose reply subject passed the check: the reply's body and headers,
    /// and its error code and message for the service's statistics.
    async fn answer(
        &self,
        ep: Endpoint,
        message: &async_nats::Message,
        requests_refused: u64,
    ) -> (bytes::Bytes, async_nats::HeaderMap, Option<(usize, String)>) {
        let subject = message.subject.to_string();
        let span = tracing::info_span!("request", endpoint = ep.subject(), %subject);
        async {
            let ctx = api::Ctx {
                pool: &self.pool,
                relay: &self.relay,
                seller: self.seller.as_deref(),
                requests_refused,
            };
            let result = match ep.scope(&subject) {
                Ok(scope) => api::handle(&ctx, ep, &scope, &message.payload).await,
                Err(e) => Err(e),
            };
            let error = result
                .as_ref()
                .err()
                .map(|e| (usize::from(e.status()), e.code().to_string()));
            let (body, headers) = reply(result);
            (body, headers, error)
        }
        .instrument(span)
        .await
    }
}

/// The subject to answer `message` on, if it is an inbox of the scope that asked; otherwise
/// `None`, logged and counted.
fn checked_reply(message: &async_nats::Message) -> Option<async_nats::Subject> {
    let subject = message.subject.as_str();
    match &message.reply {
        Some(reply) if may_answer(subject, reply) => Some(reply.clone()),
        reply => {
            let reason = if reply.is_some() {
                "reply_subject"
            } else {
                "no_reply"
            };
            tracing::warn!(%subject, reply = reply.as_ref().map_or("", |r| r.as_str()),
                "request refused: its reply subject is not an inbox of the scope that asked; \
                 not answered and not acted on");
            crate::metrics::request_refused(reason);
            None
        }
    }
}

/// A reply body and headers: the value, or the contract's error body with the services API
/// error headers.
pub fn reply(result: Result<serde_json::Value, Error>) -> (bytes::Bytes, async_nats::HeaderMap) {
    let mut headers = async_nats::HeaderMap::new();
    let body = match result {
        Ok(v) => v,
        Err(e) => {
            match &e {
                Error::Internal(_) | Error::Transient(_) => {
                    tracing::error!(error = %e, "request failed")
                }
                _ => tracing::debug!(error = %e, "request refused"),
            }
            let message = match &e {
                // Don't leak internals to callers; the log has them.
                Error::Internal(_) | Error::Transient(_) => {
                    "internal error; see the worker's log".to_string()
                }
                other => other.to_string(),
            };
            headers.insert(service::NATS_SERVICE_ERROR, message.as_str());
            headers.insert(
                service::NATS_SERVICE_ERROR_CODE,
                e.status().to_string().as_str(),
            );
            serde_json::json!({"error": {"code": e.code(), "message": message}})
        }
    };
    (body.to_string().into(), headers)
}
