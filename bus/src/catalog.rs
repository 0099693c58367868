//! The playbook catalog in the `noetl_playbooks` key-value bucket, one namespace per tenant:
//! every version of every playbook under `t.{tenant}.pb.{name}.{version}`, the newest version
//! under `t.{tenant}.latest.{name}`, and what the tenant's catalog holds (versions and bytes,
//! for its quota) under `t.{tenant}.usage` (tenants and names hex-encoded, so any of them is a
//! valid key). A tenant never reads, lists or writes a key outside its own `t.{tenant}.`.
//!
//! Versions are numbered from 1 by whoever publishes: a version key is created only if absent,
//! so two publishers racing for a number get two numbers, and the `latest` pointer only moves
//! forward (compare-and-set). The usage record is raised (compare-and-set) before the version
//! is stored, so racing publishers cannot pass the quota together; a publish that fails after
//! that still counts.
//!
//! A version can be deleted ([`delete_version`]), and a publish drops the oldest versions past
//! the quota's `keep_versions`; either gives back its quota. The `latest` pointer then names
//! the newest version left (0 when none is) and keeps the highest number ever published, so a
//! number is never handed out twice.
//!
//! Keys of the single namespace before tenants (`pb.{name}.{version}`, `latest.{name}`) are
//! left in the bucket and never read: see wiki/limits.md for how to move them.

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use noetl_contract::message::{CatalogEntry, CatalogSummary};
use noetl_contract::playbook::Playbook;
use noetl_contract::subject::CATALOG_BUCKET;
use serde::{Deserialize, Serialize};

use crate::{unix_now_ms, Client, Error};

mod retention;

pub use retention::delete_version;

/// The most a tenant's catalog may hold; publishing past either is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Versions of all its playbooks together.
    pub max_versions: u64,
    /// Bytes of all its stored versions together.
    pub max_bytes: u64,
    /// Versions of one playbook kept: a publish deletes the oldest past it (0: all are kept).
    pub keep_versions: u32,
}

/// A publish that would take the tenant's catalog over its [`Quota`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what}: the tenant's catalog holds {used} of {limit}, and this playbook needs {needed} more"
)]
pub struct OverQuota {
    /// `versions` or `bytes`.
    pub what: &'static str,
    pub used: u64,
    pub needed: u64,
    pub limit: u64,
}

/// Room for the headers of a key-value write (`Nats-Expected-Last-Subject-Sequence`).
const KV_HEADERS: usize = 128;

/// What a tenant's catalog holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Usage {
    versions: u64,
    bytes: u64,
}

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

/// The prefix of every key of `tenant`'s namespace.
fn tenant_prefix(tenant: &str) -> String {
    format!("t.{}.", hex(tenant))
}

fn version_key(tenant: &str, name: &str, version: u32) -> String {
    format!("{}pb.{}.{version}", tenant_prefix(tenant), hex(name))
}

fn latest_prefix(tenant: &str) -> String {
    format!("{}latest.", tenant_prefix(tenant))
}

fn latest_key(tenant: &str, name: &str) -> String {
    format!("{}{}", latest_prefix(tenant), hex(name))
}

fn usage_key(tenant: &str) -> String {
    format!("{}usage", tenant_prefix(tenant))
}

#[derive(Debug, Serialize, Deserialize)]
struct Latest {
    /// The newest version stored; 0 once every version was deleted.
    version: u32,
    updated_at_ms: i64,
    /// The highest version ever published (absent before deletion existed: `version`).
    #[serde(default)]
    highest: u32,
}

impl Latest {
    /// The number the next publish takes.
    fn next(&self) -> u32 {
        self.version.max(self.highest).saturating_add(1)
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, Error> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| Error::Transport(e.to_string()))
}

/// A key's value and revision, `None` when it is absent.
async fn entry<T: serde::de::DeserializeOwned>(
    store: &kv::Store,
    key: &str,
) -> Result<Option<(T, u64)>, Error> {
    let entry = store
        .entry(key)
        .await
        .map_err(|e| Error::Transport(format!("reading the catalog: {e}")))?;
    match entry.filter(|e| e.operation == kv::Operation::Put) {
        Some(entry) => Ok(Some((crate::decode(key, &entry.value)?, entry.revision))),
        None => Ok(None),
    }
}

async fn latest(
    store: &kv::Store,
    tenant: &str,
    name: &str,
) -> Result<Option<(Latest, u64)>, Error> {
    entry(store, &latest_key(tenant, name)).await
}

/// Sets `key` to `value` if it is still at `revision` (`None`: absent); `Ok(false)` when
/// someone changed it first.
async fn compare_and_set(
    store: &kv::Store,
    key: &str,
    value: Bytes,
    revision: Option<u64>,
) -> Result<bool, Error> {
    let outcome = match revision {
        Some(revision) => store
            .update(key, value, revision)
            .await
            .map(|_| ())
            .map_err(|e| {
                (
                    e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                    e.to_string(),
                )
            }),
        None => store.create(key, value).await.map(|_| ()).map_err(|e| {
            (
                e.kind() == kv::CreateErrorKind::AlreadyExists,
                e.to_string(),
            )
        }),
    };
    match outcome {
        Ok(()) => Ok(true),
        Err((true, _)) => Ok(false),
        Err((false, e)) => Err(Error::Transport(format!("updating the catalog: {e}"))),
    }
}

/// Counts one more version of `bytes` against `tenant`'s quota, unless it would pass it.
async fn reserve(
    store: &kv::Store,
    tenant: &str,
    bytes: u64,
    quota: Quota,
) -> Result<Result<(), OverQuota>, Error> {
    let key = usage_key(tenant);
    loop {
        let (usage, revision) = match entry::<Usage>(store, &key).await? {
            Some((usage, revision)) => (usage, Some(revision)),
            None => (Usage::default(), None),
        };
        if usage.versions.saturating_add(1) > quota.max_versions {
            return Ok(Err(OverQuota {
                what: "versions",
                used: usage.versions,
                needed: 1,
                limit: quota.max_versions,
            }));
        }
        if usage.bytes.saturating_add(bytes) > quota.max_bytes {
            return Ok(Err(OverQuota {
                what: "bytes",
                used: usage.bytes,
                needed: bytes,
                limit: quota.max_bytes,
            }));
        }
        let raised = encode(&Usage {
            versions: usage.versions + 1,
            bytes: usage.bytes + bytes,
        })?;
        if compare_and_set(store, &key, raised, revision).await? {
            return Ok(Ok(()));
        }
        // Another publish of this tenant counted first: look again.
    }
}

/// Stores `playbook` (already validated) as the next version of its name in `tenant`'s
/// catalog, unless that would pass the tenant's `quota` (`Ok(Err(…))`) or NATS `max_payload`
/// ([`Error::TooLarge`]); either way nothing is stored.
pub async fn publish(
    client: &Client,
    tenant: &str,
    playbook: &Playbook,
    quota: Quota,
) -> Result<Result<CatalogEntry, OverQuota>, Error> {
    let store = bucket(client).await?;
    let name = &playbook.name;
    let mut version = latest(&store, tenant, name)
        .await?
        .map_or(1, |(l, _)| l.next());
    let mut entry = CatalogEntry {
        name: name.clone(),
        version,
        created_at_ms: unix_now_ms(),
        playbook: playbook.clone(),
    };
    let mut value = encode(&entry)?;
    let key = version_key(tenant, name, version);
    // A key-value create carries a header of its own; the version number may grow below, by
    // a digit or two at most, which KV_HEADERS leaves room for.
    crate::check_size(client, &key, value.len() + KV_HEADERS)?;
    let bytes = u64::try_from(value.len()).unwrap_or(u64::MAX);
    if let Err(over) = reserve(&store, tenant, bytes, quota).await? {
        return Ok(Err(over));
    }
    loop {
        match store
            .create(version_key(tenant, name, version), value.clone())
            .await
        {
            Ok(_) => break,
            // Another publisher took this number.
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                version = version.saturating_add(1);
                entry.version = version;
                value = encode(&entry)?;
            }
            Err(e) => return Err(Error::Transport(format!("storing the playbook: {e}"))),
        }
    }
    let pointer = encode(&Latest {
        version,
        updated_at_ms: entry.created_at_ms,
        highest: version,
    })?;
    let key = latest_key(tenant, name);
    loop {
        let revision = match latest(&store, tenant, name).await? {
            Some((current, _)) if current.version >= version => break,
            Some((_, revision)) => Some(revision),
            None => None,
        };
        if compare_and_set(&store, &key, pointer.clone(), revision).await? {
            break;
        }
        // Someone moved the pointer meanwhile: look again.
    }
    if quota.keep_versions > 0 {
        let named = retention::Named {
            client,
            store: &store,
            tenant,
            name,
        };
        named.keep_last(quota.keep_versions).await?;
    }
    Ok(Ok(entry))
}

/// A version of `tenant`'s playbook, or its newest when `version` is `None`.
pub async fn get(
    client: &Client,
    tenant: &str,
    name: &str,
    version: Option<u32>,
) -> Result<Option<CatalogEntry>, Error> {
    let store = bucket(client).await?;
    let version = match version {
        Some(version) => version,
        None => match latest(&store, tenant, name).await? {
            Some((latest, _)) if latest.version > 0 => latest.version,
            _ => return Ok(None),
        },
    };
    get_in(&store, tenant, name, version).await
}

/// Version `version` of `tenant`'s playbook `name` in `store`.
async fn get_in(
    store: &kv::Store,
    tenant: &str,
    name: &str,
    version: u32,
) -> Result<Option<CatalogEntry>, Error> {
    let key = version_key(tenant, name, version);
    match store
        .get(&key)
        .await
        .map_err(|e| Error::Transport(format!("reading the catalog: {e}")))?
    {
        Some(value) => Ok(Some(crate::decode(&key, &value)?)),
        None => Ok(None),
    }
}

/// The last value of every key under `prefix` that has one (not deleted), as (the rest of the
/// key after `prefix`, value): an ordered consumer filtered to those keys, so nothing outside
/// them is read.
async fn last_values(
    client: &Client,
    store: &kv::Store,
    prefix: &str,
) -> Result<Vec<(String, Bytes)>, Error> {
    use async_nats::jetstream::consumer::{push::OrderedConfig, DeliverPolicy};
    let failed = |e: &dyn std::fmt::Display| Error::Transport(format!("listing the catalog: {e}"));
    let prefix = format!("{}{prefix}", store.prefix);
    let consumer = store
        .stream
        .create_consumer(OrderedConfig {
            deliver_subject: client.new_inbox(),
            description: Some("catalog listing".to_owned()),
            filter_subject: format!("{prefix}>"),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| failed(&e))?;
    let mut pending = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await.map_err(|e| failed(&e))?;
    let mut values = Vec::new();
    while pending > 0 {
        let Some(message) = messages.next().await else {
            break;
        };
        let message = message.map_err(|e| failed(&e))?;
        pending = message.info().map_err(|e| failed(&e))?.pending;
        let Some(rest) = message.subject.strip_prefix(prefix.as_str()) else {
            continue;
        };
        if message.payload.is_empty() {
            continue; // a delete marker
        }
        values.push((rest.to_owned(), message.payload.clone()));
    }
    Ok(values)
}

/// Every playbook name of `tenant` with its newest version, by name. Reads only the tenant's
/// `latest` pointers (a consumer filtered to them), never another tenant's keys.
pub async fn list(client: &Client, tenant: &str) -> Result<Vec<CatalogSummary>, Error> {
    let store = bucket(client).await?;
    let mut summaries = Vec::new();
    for (name, payload) in last_values(client, &store, &latest_prefix(tenant)).await? {
        let Some(name) = unhex(&name) else {
            continue;
        };
        let latest: Latest = crate::decode(&name, &payload)?;
        if latest.version == 0 {
            continue; // every version was deleted
        }
        summaries.push(CatalogSummary {
            name,
            latest_version: latest.version,
            updated_at_ms: latest.updated_at_ms,
        });
    }
    summaries.sort_by(|a, b| a.name.cmp(&b.name));
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

    #[test]
    fn tenants_have_disjoint_keys() {
        // Hex keeps a tenant's prefix from being a prefix of another tenant's keys.
        let a = version_key("a", "x", 1);
        let ab = version_key("a.b", "x", 1);
        assert!(!ab.starts_with(&tenant_prefix("a")), "{ab}");
        assert!(a.starts_with(&tenant_prefix("a")), "{a}");
        assert!(latest_key("a", "x").starts_with(&latest_prefix("a")));
        assert_ne!(usage_key("a"), usage_key("b"));
    }
}
