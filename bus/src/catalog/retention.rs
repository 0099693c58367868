//! Deleting catalog versions: one on request, or the oldest past `keep_versions` after a
//! publish. A deleted version gives its quota back, and the `latest` pointer moves to the
//! newest version left.

use async_nats::jetstream::kv;

use super::{
    compare_and_set, encode, entry, last_values, latest, latest_key, tenant_prefix, usage_key,
    version_key, Latest, Usage,
};
use crate::{Client, Error};

/// One playbook name of one tenant's catalog.
pub(super) struct Named<'a> {
    pub client: &'a Client,
    pub store: &'a kv::Store,
    pub tenant: &'a str,
    pub name: &'a str,
}

/// Deletes `version` of `tenant`'s playbook `name`; `false` when there was no such version
/// (another tenant's is never looked at).
pub async fn delete_version(
    client: &Client,
    tenant: &str,
    name: &str,
    version: u32,
) -> Result<bool, Error> {
    let store = super::bucket(client).await?;
    let named = Named {
        client,
        store: &store,
        tenant,
        name,
    };
    named.delete(version).await
}

impl Named<'_> {
    /// The versions stored (not deleted), ascending.
    async fn versions(&self) -> Result<Vec<u32>, Error> {
        let prefix = format!(
            "{}pb.{}.",
            tenant_prefix(self.tenant),
            super::hex(self.name)
        );
        let mut versions: Vec<u32> = last_values(self.client, self.store, &prefix)
            .await?
            .into_iter()
            .filter_map(|(version, _)| version.parse().ok())
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    async fn delete(&self, version: u32) -> Result<bool, Error> {
        let key = version_key(self.tenant, self.name, version);
        let found = self
            .store
            .entry(&key)
            .await
            .map_err(|e| Error::Transport(format!("reading the catalog: {e}")))?;
        let Some(found) = found.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(false);
        };
        if let Err(e) = self
            .store
            .delete_expect_revision(&key, Some(found.revision))
            .await
        {
            // A version is written once, so a changed key was deleted by someone else.
            if self.store.get(&key).await.ok().flatten().is_none() {
                return Ok(false);
            }
            return Err(Error::Transport(format!("deleting a version: {e}")));
        }
        let bytes = u64::try_from(found.value.len()).unwrap_or(u64::MAX);
        release(self.store, self.tenant, bytes).await?;
        self.repoint(version).await?;
        Ok(true)
    }

    /// After `deleted` went: if the `latest` pointer named it, points it at the newest version
    /// left (0 when none is), keeping the highest number ever published.
    async fn repoint(&self, deleted: u32) -> Result<(), Error> {
        let key = latest_key(self.tenant, self.name);
        loop {
            let Some((current, revision)) = latest(self.store, self.tenant, self.name).await?
            else {
                return Ok(());
            };
            if current.version != deleted {
                return Ok(());
            }
            let newest = self.versions().await?.pop();
            let updated_at_ms = match newest {
                Some(version) => super::get_in(self.store, self.tenant, self.name, version)
                    .await?
                    .map_or(current.updated_at_ms, |e| e.created_at_ms),
                None => current.updated_at_ms,
            };
            let pointer = encode(&Latest {
                version: newest.unwrap_or(0),
                updated_at_ms,
                highest: current.highest.max(current.version),
            })?;
            if compare_and_set(self.store, &key, pointer, Some(revision)).await? {
                return Ok(());
            }
            // A publish moved the pointer meanwhile: look again.
        }
    }

    /// Deletes the oldest versions past the newest `keep`.
    pub(super) async fn keep_last(&self, keep: u32) -> Result<(), Error> {
        let versions = self.versions().await?;
        let keep = usize::try_from(keep).unwrap_or(usize::MAX);
        let excess = versions.len().saturating_sub(keep);
        for &version in &versions[..excess] {
            self.delete(version).await?;
        }
        Ok(())
    }
}

/// Gives back the quota of one deleted version of `bytes`.
async fn release(store: &kv::Store, tenant: &str, bytes: u64) -> Result<(), Error> {
    let key = usage_key(tenant);
    loop {
        let Some((usage, revision)) = entry::<Usage>(store, &key).await? else {
            return Ok(());
        };
        let lowered = encode(&Usage {
            versions: usage.versions.saturating_sub(1),
            bytes: usage.bytes.saturating_sub(bytes),
        })?;
        if compare_and_set(store, &key, lowered, Some(revision)).await? {
            return Ok(());
        }
    }
}
