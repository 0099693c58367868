//! Idempotency keys (wiki/spec.md §4.3) in the `noetl_idempotency` key-value bucket, whose values
//! expire a TTL (at least 24 h) after they were written.
//!
//! The first submit with a key records the id it minted and a digest of its request, with
//! create-if-absent; every later one with the same key finds that record. The key is stored
//! as a digest too, so no client-chosen string becomes a subject token.

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use noetl_contract::subject::IDEMPOTENCY_BUCKET;
use noetl_contract::ExecutionId;
use serde::{Deserialize, Serialize};

use crate::{Client, Error};

/// What the first submit with a key recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub execution_id: ExecutionId,
    /// Digest of the request body, so a different body under the same key is recognised.
    pub request_digest: String,
}

/// The outcome of claiming a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This request is the first with the key: its record is stored.
    First,
    /// An earlier request holds the key.
    Earlier(Record),
}

/// Claims `key_digest` (hex) for `record`, or returns the record of whoever claimed it first.
pub async fn claim(
    client: &Client,
    ttl: Duration,
    key_digest: &str,
    record: &Record,
) -> Result<Claim, Error> {
    let store = crate::kv_bucket(
        client,
        IDEMPOTENCY_BUCKET,
        "noetl-dispatch idempotency keys",
        1,
        Some(ttl),
    )
    .await?;
    let key = format!("k.{key_digest}");
    let value = serde_json::to_vec(record).map_err(|e| Error::Transport(e.to_string()))?;
    match store.create(&key, Bytes::from(value)).await {
        Ok(_) => Ok(Claim::First),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let value = store
                .get(&key)
                .await
                .map_err(|e| Error::Transport(format!("reading an idempotency key: {e}")))?
                .ok_or_else(|| {
                    Error::Transport("an idempotency key vanished while read".to_owned())
                })?;
            Ok(Claim::Earlier(crate::decode(&key, &value)?))
        }
        Err(e) => Err(Error::Transport(format!("storing an idempotency key: {e}"))),
    }
}
