//! A small client for the service and the streams, used by the CLI, the demo and the tests.

use crate::subjects::ROLLUP_REQUESTED;
use anyhow::{anyhow, Context};
use async_nats::jetstream::{self, message::PublishMessage};
use serde_json::Value;
use std::time::Duration;

/// A typed error reply from the service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServiceError {
    pub code: String,
    pub message: String,
    /// The `Nats-Service-Error-Code` header.
    pub status: Option<String>,
}

/// Sends a request and parses the reply: the value, or the contract's error body.
pub async fn call(
    client: &async_nats::Client,
    subject: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    call_raw(client, subject, body.to_string().into_bytes())
        .await?
        .map_err(anyhow::Error::from)
}

/// As [`call`], for arbitrary payload bytes, keeping the service error apart from transport errors.
pub async fn call_raw(
    client: &async_nats::Client,
    subject: &str,
    payload: Vec<u8>,
) -> anyhow::Result<Result<Value, ServiceError>> {
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(subject.to_string(), payload.into()),
    )
    .await
    .map_err(|_| anyhow!("{subject}: no reply within 10s"))?
    .with_context(|| format!("request to {subject}"))?;
    let value: Value = serde_json::from_slice(&reply.payload)
        .with_context(|| format!("{subject}: reply is not JSON"))?;
    let status = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::service::NATS_SERVICE_ERROR_CODE))
        .map(|v| v.to_string());
    if let Some(err) = value.get("error") {
        return Ok(Err(ServiceError {
            code: err["code"].as_str().unwrap_or("").to_string(),
            message: err["message"].as_str().unwrap_or("").to_string(),
            status,
        }));
    }
    Ok(Ok(value))
}

/// Publishes a rollup request with `msg_id` as its `Nats-Msg-Id`.
pub async fn request_rollup(
    js: &jetstream::Context,
    request: &Value,
    msg_id: &str,
) -> anyhow::Result<()> {
    let msg = PublishMessage::build()
        .payload(request.to_string().into())
        .message_id(msg_id);
    js.send_publish(ROLLUP_REQUESTED, msg)
        .await
        .context("publishing the rollup request")?
        .await
        .context("the rollup stream did not acknowledge the request")?;
    Ok(())
}

/// Whether an `invoicer` service answers `$SRV.PING`.
pub async fn worker_running(client: &async_nats::Client) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            client.request("$SRV.PING.invoicer", "".into())
        )
        .await,
        Ok(Ok(_))
    )
}
