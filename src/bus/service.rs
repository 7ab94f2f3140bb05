//! The request-reply surface: a NATS micro service named `invoicer` (queue group, so replicas
//! share load and `$SRV.PING/INFO/STATS` work). Every request gets a reply, a typed error if
//! need be, and the caller's scope comes from the subject alone.

use crate::api::{self, Endpoint};
use crate::document::Seller;
use crate::error::Error;
use async_nats::service::{self, ServiceExt};
use futures::StreamExt;
use sqlx::PgPool;
use std::sync::Arc;
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
        let service = self
            .client
            .service_builder()
            .description("invoicer: tenant invoices, catalog admin and quotes")
            .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|e| anyhow::anyhow!("starting the NATS service: {e}"))?;
        let mut streams = Vec::new();
        for ep in Endpoint::ALL {
            let requests = service
                .endpoint_builder()
                .name(ep.name())
                .add(ep.subject())
                .await
                .map_err(|e| anyhow::anyhow!("adding endpoint {}: {e}", ep.subject()))?;
            streams.push(requests.map(move |r| (ep, r)).boxed());
        }
        let mut all = futures::stream::select_all(streams);
        // Bounded below the pool size, so a burst queues here rather than starving the
        // consumers of connections.
        let permits = Arc::new(Semaphore::new(self.concurrency.max(1)));
        tracing::info!(endpoints = Endpoint::ALL.len(), "service started");
        loop {
            let next = tokio::select! {
                n = all.next() => n,
                _ = self.shutdown.cancelled() => None,
            };
            let Some((ep, request)) = next else { break };
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore open");
            let this = self.clone();
            tokio::spawn(async move {
                this.answer(ep, request).await;
                drop(permit);
            });
        }
        // Let in-flight requests finish before stopping the service.
        let _ = permits.acquire_many(self.concurrency.max(1) as u32).await;
        let _ = service.stop().await;
        tracing::info!("service stopped");
        Ok(())
    }

    async fn answer(&self, ep: Endpoint, request: service::Request) {
        let subject = request.message.subject.to_string();
        let span = tracing::info_span!("request", endpoint = ep.subject(), %subject);
        async {
            let ctx = api::Ctx {
                pool: &self.pool,
                relay: &self.relay,
                seller: self.seller.as_deref(),
            };
            let result = match ep.scope(&subject) {
                Ok(scope) => api::handle(&ctx, ep, &scope, &request.message.payload).await,
                Err(e) => Err(e),
            };
            let (body, headers) = reply(result);
            if let Err(e) = request.respond_with_headers(Ok(body), headers).await {
                tracing::warn!(error = %e, "reply failed");
            }
        }
        .instrument(span)
        .await
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
