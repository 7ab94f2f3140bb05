//! The scheduler's state in the JetStream key-value bucket `invoicer-scheduler` (stream
//! `KV_invoicer-scheduler`), key `state`: a [`State`] as JSON, read with its revision and only
//! ever written by compare-and-set, so replicas that race on a firing agree on one history.
//!
//! The bucket keeps the last 64 values: `nats kv history invoicer-scheduler state` is the list
//! of periods requested and when.

use crate::domain::calendar::State;
use anyhow::Context;
use async_nats::jetstream::{
    self,
    kv::{self, CreateErrorKind, Operation, UpdateErrorKind},
    stream,
};

pub const BUCKET: &str = "invoicer-scheduler";
pub const KEY: &str = "state";
const HISTORY: i64 = 64;

/// A value of the state with the revision it was read at (the compare-and-set token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub state: State,
    pub revision: u64,
}

/// The outcome of a compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cas {
    /// Written; the new revision.
    Written(u64),
    /// Someone else wrote first: read again.
    Conflict,
}

pub struct StateStore {
    kv: kv::Store,
}

impl StateStore {
    /// Opens the bucket, creating it if missing (replicas creating it at once get the same
    /// stream: the server accepts an identical create).
    pub async fn open(js: &jetstream::Context) -> anyhow::Result<StateStore> {
        // The stream a key-value bucket is made of, as async-nats would make it. Created here
        // rather than with `create_key_value`, which first asks for the account's limits in a
        // shape that nats-server 2.9 does not answer in.
        let config = stream::Config {
            name: format!("KV_{BUCKET}"),
            description: Some("invoicer scheduler: the last period requested".into()),
            subjects: vec![format!("$KV.{BUCKET}.>")],
            max_messages_per_subject: HISTORY,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        };
        // Replicas starting together race to create it; whoever lost can still open it.
        let created = js.get_or_create_stream(config).await;
        match js.get_key_value(BUCKET).await {
            Ok(kv) => Ok(StateStore { kv }),
            Err(open) => Err(match created {
                Err(create) => anyhow::Error::new(create)
                    .context(format!("creating the key-value bucket {BUCKET}")),
                Ok(_) => anyhow::Error::new(open)
                    .context(format!("opening the key-value bucket {BUCKET}")),
            }),
        }
    }

    /// The current state, `None` if there is none yet (or it was deleted by an operator).
    pub async fn load(&self) -> anyhow::Result<Option<Versioned>> {
        let entry = self
            .kv
            .entry(KEY)
            .await
            .with_context(|| format!("reading {BUCKET}/{KEY}"))?;
        let Some(entry) = entry else { return Ok(None) };
        if entry.operation != Operation::Put {
            return Ok(None);
        }
        let state = serde_json::from_slice(&entry.value).with_context(|| {
            format!(
                "{BUCKET}/{KEY} revision {} is not a scheduler state: {}",
                entry.revision,
                String::from_utf8_lossy(&entry.value)
            )
        })?;
        Ok(Some(Versioned {
            state,
            revision: entry.revision,
        }))
    }

    /// Writes the first state, unless another replica wrote one first.
    pub async fn create(&self, state: &State) -> anyhow::Result<Cas> {
        match self.kv.create(KEY, to_bytes(state)).await {
            Ok(revision) => Ok(Cas::Written(revision)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(Cas::Conflict),
            Err(e) => Err(anyhow::Error::new(e).context(format!("creating {BUCKET}/{KEY}"))),
        }
    }

    /// Replaces the state read at `revision`, unless it changed since.
    pub async fn update(&self, state: &State, revision: u64) -> anyhow::Result<Cas> {
        match self.kv.update(KEY, to_bytes(state), revision).await {
            Ok(revision) => Ok(Cas::Written(revision)),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(Cas::Conflict),
            Err(e) => Err(anyhow::Error::new(e).context(format!("updating {BUCKET}/{KEY}"))),
        }
    }

    /// The current state, writing `initial` first if there is none. Of replicas starting
    /// together, one writes and the others read what it wrote.
    pub async fn load_or_create(&self, initial: &State) -> anyhow::Result<Versioned> {
        loop {
            if let Some(v) = self.load().await? {
                return Ok(v);
            }
            if let Cas::Written(revision) = self.create(initial).await? {
                return Ok(Versioned {
                    state: initial.clone(),
                    revision,
                });
            }
        }
    }
}

fn to_bytes(state: &State) -> bytes::Bytes {
    serde_json::to_vec(state)
        .expect("the state serialises")
        .into()
}
