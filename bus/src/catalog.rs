//! The playbook catalog in the `noetl_playbooks` key-value bucket: every version of every
//! playbook under `pb.{name}.{version}`, and the newest version under `latest.{name}` (names
//! hex-encoded, so any valid playbook name is a valid key).
//!
//! Versions are numbered from 1 by whoever publishes: a version key is created only if absent,
//! so two publishers racing for a number get two numbers, and the `latest` pointer only moves
//! forward (compare-and-set).

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use noetl_contract::message::{CatalogEntry, CatalogSummary};
use noetl_contract::playbook::Playbook;
use noetl_contract::subject::CATALOG_BUCKET;
use serde::{Deserialize, Serialize};

use crate::{unix_now_ms, Client, Error};

const LATEST: &str = "latest.";

async fn bucket(client: &Client) -> Result<kv::Store, Error> {
    crate::kv_bucket(
        client,
        CATALOG_BUCKET,
        "noetl-dispatch playbook catalog",
        1,
        None,
    )
    .await
}

fn hex(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(key: &str) -> Option<String> {
    let bytes = (0..key.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(key.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

fn version_key(name: &str, version: u32) -> String {
    format!("pb.{}.{version}", hex(name))
}

fn latest_key(name: &str) -> String {
    format!("{LATEST}{}", hex(name))
}

#[derive(Debug, Serialize, Deserialize)]
struct Latest {
    version: u32,
    updated_at_ms: i64,
}

/// Room for the headers of a key-value write (`Nats-Expected-Last-Subject-Sequence`).
const KV_HEADERS: usize = 128;

fn encode<T: Serialize>(value: &T) -> Result<Bytes, Error> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| Error::Transport(e.to_string()))
}

async fn latest(store: &kv::Store, name: &str) -> Result<Option<(Latest, u64)>, Error> {
    let key = latest_key(name);
    let entry = store
        .entry(&key)
        .await
        .map_err(|e| Error::Transport(format!("reading the catalog: {e}")))?;
    match entry.filter(|e| e.operation == kv::Operation::Put) {
        Some(entry) => Ok(Some((crate::decode(&key, &entry.value)?, entry.revision))),
        None => Ok(None),
    }
}

/// Stores `playbook` (already validated) as the next version of its name.
pub async fn publish(client: &Client, playbook: &Playbook) -> Result<CatalogEntry, Error> {
    let store = bucket(client).await?;
    let name = &playbook.name;
    let mut version = latest(&store, name)
        .await?
        .map_or(1, |(l, _)| l.version + 1);
    let entry = loop {
        let entry = CatalogEntry {
            name: name.clone(),
            version,
            created_at_ms: unix_now_ms(),
            playbook: playbook.clone(),
        };
        let value = encode(&entry)?;
        // A key-value create carries a header of its own besides the trace's.
        crate::check_size(client, name, value.len() + KV_HEADERS)?;
        match store.create(version_key(name, version), value).await {
            Ok(_) => break entry,
            // Another publisher took this number.
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => version += 1,
            Err(e) => return Err(Error::Transport(format!("storing the playbook: {e}"))),
        }
    };
    let pointer = encode(&Latest {
        version,
        updated_at_ms: entry.created_at_ms,
    })?;
    loop {
        let outcome = match latest(&store, name).await? {
            Some((current, _)) if current.version >= version => return Ok(entry),
            Some((_, revision)) => store
                .update(latest_key(name), pointer.clone(), revision)
                .await
                .map(|_| ())
                .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision),
            None => store
                .create(latest_key(name), pointer.clone())
                .await
                .map(|_| ())
                .map_err(|e| e.kind() == kv::CreateErrorKind::AlreadyExists),
        };
        match outcome {
            Ok(()) => return Ok(entry),
            // Someone moved the pointer meanwhile: look again.
            Err(true) => continue,
            Err(false) => {
                return Err(Error::Transport(
                    "updating the catalog's latest version failed".to_owned(),
                ))
            }
        }
    }
}

/// A version of a playbook, or its newest when `version` is `None`.
pub async fn get(
    client: &Client,
    name: &str,
    version: Option<u32>,
) -> Result<Option<CatalogEntry>, Error> {
    let store = bucket(client).await?;
    let version = match version {
        Some(version) => version,
        None => match latest(&store, name).await? {
            Some((latest, _)) => latest.version,
            None => return Ok(None),
        },
    };
    let key = version_key(name, version);
    match store
        .get(&key)
        .await
        .map_err(|e| Error::Transport(format!("reading the catalog: {e}")))?
    {
        Some(value) => Ok(Some(crate::decode(&key, &value)?)),
        None => Ok(None),
    }
}

/// Every playbook name with its newest version, by name.
pub async fn list(client: &Client) -> Result<Vec<CatalogSummary>, Error> {
    let store = bucket(client).await?;
    let mut keys = store
        .keys()
        .await
        .map_err(|e| Error::Transport(format!("listing the catalog: {e}")))?;
    let mut names = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| Error::Transport(format!("listing the catalog: {e}")))?;
        if let Some(name) = key.strip_prefix(LATEST).and_then(unhex) {
            names.push(name);
        }
    }
    names.sort();
    let mut summaries = Vec::with_capacity(names.len());
    for name in names {
        if let Some((latest, _)) = latest(&store, &name).await? {
            summaries.push(CatalogSummary {
                name,
                latest_version: latest.version,
                updated_at_ms: latest.updated_at_ms,
            });
        }
    }
    Ok(summaries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_their_keys() {
        for name in ["hello", "a.b", ".", "x-y_z.9"] {
            assert_eq!(unhex(&hex(name)).as_deref(), Some(name));
        }
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("abc"), None);
    }
}
