//! The NATS micro-service protocol (ADR-32) as `invoicer` speaks it: endpoints in the queue
//! group `q`, so replicas share the load, and discovery on `$SRV.PING|INFO|STATS`, optionally
//! narrowed to `.invoicer` and `.invoicer.<id>`. The wire shapes are async-nats's own types.
//!
//! Why not `async_nats::service`: it answers every request and every discovery verb on whatever
//! reply subject the caller set, before the application can look at it. The worker's NATS user
//! may publish once to the reply subject of any message it receives (`allow_responses`: a
//! tenant's `_INBOX_tenant_<id>` prefix cannot be written as a permission), so a caller could
//! aim an answer at the JetStream API (`$JS.API.STREAM.PURGE.BILLING_EVENTS`: any JSON body is a
//! valid purge), a stream's subject or a key-value bucket. Here nothing is answered before the
//! service has checked the reply subject (see `bus::service`).

use async_nats::service::{endpoint, error, Info, PingResponse, Stats};
use async_nats::{Client, Message, Subject};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Replicas of one service share each endpoint's requests through this queue group.
pub const QUEUE_GROUP: &str = "q";
const API_PREFIX: &str = "$SRV";

/// A discovery verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Ping,
    Info,
    Stats,
}

impl Verb {
    const ALL: [Verb; 3] = [Verb::Ping, Verb::Info, Verb::Stats];

    fn as_str(self) -> &'static str {
        match self {
            Verb::Ping => "PING",
            Verb::Info => "INFO",
            Verb::Stats => "STATS",
        }
    }
}

/// A message for the service: a discovery verb, or a request to the endpoint at `index`.
#[derive(Debug)]
pub enum Incoming {
    Verb(Verb, Message),
    Request(usize, Message),
}

impl Incoming {
    pub fn message(&self) -> &Message {
        match self {
            Incoming::Verb(_, m) | Incoming::Request(_, m) => m,
        }
    }
}

/// One instance of a service: its identity, its endpoints and their statistics.
pub struct Micro {
    client: Client,
    info: Info,
    started: async_nats::datetime::DateTime,
    stats: Mutex<Vec<endpoint::Stats>>,
}

impl Micro {
    /// `endpoints` are `(name, subject)` pairs; an endpoint's index is its place in this list.
    pub fn new(
        client: Client,
        name: &str,
        version: &str,
        description: &str,
        endpoints: &[(String, String)],
    ) -> Arc<Micro> {
        let info = Info {
            kind: "io.nats.micro.v1.info_response".into(),
            name: name.into(),
            id: uuid::Uuid::new_v4().simple().to_string(),
            description: description.into(),
            version: version.into(),
            metadata: HashMap::new(),
            endpoints: endpoints
                .iter()
                .map(|(name, subject)| endpoint::Info {
                    name: name.clone(),
                    subject: subject.clone(),
                    queue_group: QUEUE_GROUP.into(),
                    metadata: HashMap::new(),
                })
                .collect(),
        };
        let stats = info
            .endpoints
            .iter()
            .map(|e| endpoint::Stats {
                name: e.name.clone(),
                subject: e.subject.clone(),
                requests: 0,
                errors: 0,
                processing_time: Duration::ZERO,
                average_processing_time: Duration::ZERO,
                last_error: None,
                data: None,
                queue_group: QUEUE_GROUP.into(),
            })
            .collect();
        Arc::new(Micro {
            client,
            info,
            started: async_nats::datetime::now(),
            stats: Mutex::new(stats),
        })
    }

    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// Subscribes to the discovery verbs and to every endpoint (in the queue group). Dropping
    /// the stream unsubscribes, so replicas take the requests that follow.
    pub async fn subscribe(&self) -> anyhow::Result<BoxStream<'static, Incoming>> {
        let mut streams: Vec<BoxStream<'static, Incoming>> = Vec::new();
        for verb in Verb::ALL {
            let verb_subject = format!("{API_PREFIX}.{}", verb.as_str());
            for subject in [
                verb_subject.clone(),
                format!("{verb_subject}.{}", self.info.name),
                format!("{verb_subject}.{}.{}", self.info.name, self.info.id),
            ] {
                let sub = self.client.subscribe(subject.clone()).await.map_err(|e| {
                    anyhow::anyhow!("subscribing to service discovery {subject}: {e}")
                })?;
                streams.push(sub.map(move |m| Incoming::Verb(verb, m)).boxed());
            }
        }
        for (index, endpoint) in self.info.endpoints.iter().enumerate() {
            let sub = self
                .client
                .queue_subscribe(endpoint.subject.clone(), QUEUE_GROUP.into())
                .await
                .map_err(|e| anyhow::anyhow!("adding endpoint {}: {e}", endpoint.subject))?;
            streams.push(sub.map(move |m| Incoming::Request(index, m)).boxed());
        }
        Ok(futures::stream::select_all(streams).boxed())
    }

    /// The answer to a discovery verb.
    pub fn verb_reply(&self, verb: Verb) -> Bytes {
        let json = match verb {
            Verb::Ping => serde_json::to_vec(&PingResponse {
                kind: "io.nats.micro.v1.ping_response".into(),
                name: self.info.name.clone(),
                id: self.info.id.clone(),
                version: self.info.version.clone(),
                metadata: self.info.metadata.clone(),
            }),
            Verb::Info => serde_json::to_vec(&self.info),
            Verb::Stats => serde_json::to_vec(&Stats {
                kind: "io.nats.micro.v1.stats_response".into(),
                name: self.info.name.clone(),
                id: self.info.id.clone(),
                version: self.info.version.clone(),
                started: self.started,
                endpoints: self.lock_stats().clone(),
            }),
        };
        json.expect("the service's own types serialise").into()
    }

    /// Counts one answered request of endpoint `index`, and its error code and message if it
    /// was answered with an error.
    pub fn record(&self, index: usize, took: Duration, error: Option<(usize, String)>) {
        let mut stats = self.lock_stats();
        let Some(s) = stats.get_mut(index) else {
            return;
        };
        s.requests += 1;
        s.processing_time += took;
        s.average_processing_time = s.processing_time / s.requests.max(1) as u32;
        if let Some((code, status)) = error {
            s.errors += 1;
            s.last_error = Some(error::Error { code, status });
        }
    }

    /// Publishes an answer. `reply` must have passed the service's check.
    pub async fn publish(
        &self,
        reply: Subject,
        headers: async_nats::HeaderMap,
        body: Bytes,
    ) -> Result<(), async_nats::PublishError> {
        self.client.publish_with_headers(reply, headers, body).await
    }

    fn lock_stats(&self) -> std::sync::MutexGuard<'_, Vec<endpoint::Stats>> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }
}
