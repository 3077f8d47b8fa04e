//! The registry: releases, channels with history, and the per-recipe lock — the contract
//! Terraform reads (docs/terraform.md). The embedded implementation (SQLite, one file) has the
//! same semantics as the SSM parameters: a release is written once and never changes; a
//! channel move appends to its history; the lock is create-if-absent with an expiry.

mod sqlite;
#[cfg(feature = "aws")]
mod ssm;

pub use sqlite::SqliteRegistry;
#[cfg(feature = "aws")]
pub use ssm::{entry_description, SsmRegistry};

use crate::input::names::SsmPath;
use crate::release::{ChannelEntry, ChannelMove, Manifest, ReleaseId, ReleaseImages, Revocation};
use crate::{Arch, Result};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// `<prefix>/<recipe>/releases/<release>/<arch>`: the AMI of one arch of a release, written
/// once. What Terraform's `data "aws_ssm_parameter"` reads for a release pin.
pub fn release_parameter(
    prefix: &SsmPath,
    recipe: &str,
    release: &ReleaseId,
    arch: Arch,
) -> String {
    format!("{}/{arch}", release_dir(prefix, recipe, release))
}

/// `<prefix>/<recipe>/releases/<release>`: the arch parameters and the manifest.
pub fn release_dir(prefix: &SsmPath, recipe: &str, release: &ReleaseId) -> String {
    under(prefix, recipe, &format!("releases/{release}"))
}

/// `<prefix>/<recipe>/releases/<release>/revoked`: the release's revocation, written once.
pub fn revocation_parameter(prefix: &SsmPath, recipe: &str, release: &ReleaseId) -> String {
    format!("{}/revoked", release_dir(prefix, recipe, release))
}

/// `<prefix>/<recipe>/channels/<cluster>/<arch>`: the AMI a cluster's channel points at, one
/// parameter version per move. Terraform pins it as `<name>:<version>`.
pub fn channel_parameter(prefix: &SsmPath, recipe: &str, cluster: &str, arch: Arch) -> String {
    under(prefix, recipe, &format!("channels/{cluster}/{arch}"))
}

/// `<prefix>/<recipe>/<rest>`.
pub fn under(prefix: &SsmPath, recipe: &str, rest: &str) -> String {
    format!("{}/{recipe}/{rest}", prefix.as_str().trim_end_matches('/'))
}

/// The conflict of revoking a release twice: it names the first revocation.
pub(crate) fn already_revoked(
    recipe: &str,
    id: &ReleaseId,
    first: Option<Revocation>,
) -> crate::Error {
    crate::Error::Conflict(match first {
        Some(r) => format!(
            "release {id} of `{recipe}` is already revoked ({r}); a revocation is written once"
        ),
        None => format!("release {id} of `{recipe}` is already revoked"),
    })
}

/// One version of a channel's arch parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelImage {
    pub version: u64,
    pub image_id: String,
}

/// Who holds a recipe's lock, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockInfo {
    pub recipe: String,
    pub owner: String,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The last `n` of a channel's moves (oldest first), all of them if it moved fewer times.
pub(crate) fn last_moves(mut history: Vec<ChannelEntry>, n: usize) -> Vec<ChannelEntry> {
    let older = history.len().saturating_sub(n);
    history.split_off(older)
}

#[async_trait]
pub trait Registry: Send + Sync {
    /// Where it lives, for messages ("sqlite .bake/registry.db", "ssm /bake in us-east-1").
    fn describe(&self) -> String;

    /// Complete releases of a recipe, oldest first.
    async fn releases(&self, recipe: &str) -> Result<Vec<Manifest>>;

    /// Complete releases of a recipe with their images only, oldest first: what prune decides
    /// from, read as cheaply as the registry can (SSM: from its index entries' descriptions,
    /// fifty releases a call, without their manifests).
    async fn release_images(&self, recipe: &str) -> Result<Vec<ReleaseImages>> {
        Ok(self
            .releases(recipe)
            .await?
            .iter()
            .map(ReleaseImages::from)
            .collect())
    }

    /// The newest complete release, read as cheaply as the registry can: what a scheduled run
    /// with nothing to do reads. It may lag the list by a release a run died publishing (until
    /// the next publish), so it only ever settles "up to date"; deciding to bake reads them all.
    async fn newest_release(&self, recipe: &str) -> Result<Option<Manifest>> {
        Ok(self.releases(recipe).await?.pop())
    }

    async fn release(&self, recipe: &str, id: &ReleaseId) -> Result<Option<Manifest>> {
        Ok(self
            .releases(recipe)
            .await?
            .into_iter()
            .find(|m| &m.release == id))
    }

    /// The package manifest kept beside a release for `arch`, where the registry keeps them
    /// (SSM); None where it does not (the local provider keeps them with the image).
    async fn package_manifest(
        &self,
        _recipe: &str,
        _id: &ReleaseId,
        _arch: Arch,
    ) -> Result<Option<String>> {
        Ok(None)
    }

    /// A release that must exist: a usage error pointing at `bake releases` otherwise.
    async fn existing_release(&self, recipe: &str, id: &ReleaseId) -> Result<Manifest> {
        self.release(recipe, id).await?.ok_or_else(|| {
            crate::Error::Usage(format!(
                "recipe `{recipe}` has no release {id} (see `bake releases {recipe}`)"
            ))
        })
    }

    /// A release that may be promoted or pinned: it exists and is not revoked (a conflict
    /// naming the revocation otherwise).
    async fn usable_release(&self, recipe: &str, id: &ReleaseId) -> Result<Manifest> {
        let manifest = self.existing_release(recipe, id).await?;
        if let Some(r) = self.revocation(recipe, id).await? {
            return Err(crate::Error::Conflict(format!(
                "release {id} of `{recipe}` was revoked {r}"
            )));
        }
        Ok(manifest)
    }

    /// Marks a release revoked, once (`<release>/revoked`); the release itself is unchanged. A
    /// second revocation is a conflict naming the first.
    async fn revoke(&self, recipe: &str, id: &ReleaseId, revocation: &Revocation) -> Result<()>;

    /// Whether (and why) a release was revoked.
    async fn revocation(&self, recipe: &str, id: &ReleaseId) -> Result<Option<Revocation>>;

    /// Publishes a release under the next free ID of `manifest.created_at`'s date (the ID in
    /// `manifest.release` is replaced). All arches become visible together or not at all. A
    /// half-written release whose written arch parameters are images of this manifest (the
    /// run that wrote them died) is finished under its own ID, leaving what it wrote as is.
    async fn publish(&self, manifest: Manifest) -> Result<Manifest>;

    /// Releases some of whose parameters were written but not the manifest (a run died while
    /// publishing). Readers never see them; `resume` or the next run finishes them, and
    /// `sweep --apply` removes them once no live run holds the lock.
    async fn incomplete_releases(&self, recipe: &str) -> Result<Vec<ReleaseId>>;

    /// Removes a release (prune only; its images must already be gone or kept elsewhere).
    async fn delete_release(&self, recipe: &str, id: &ReleaseId) -> Result<()>;

    /// A channel's history, oldest first.
    async fn channel_history(&self, recipe: &str, cluster: &str) -> Result<Vec<ChannelEntry>>;

    /// Where each channel of a recipe points now.
    async fn channels(&self, recipe: &str) -> Result<BTreeMap<String, ChannelEntry>>;

    /// The channels of a recipe that ever moved, without reading where they point.
    async fn channel_names(&self, recipe: &str) -> Result<Vec<String>> {
        Ok(self.channels(recipe).await?.into_keys().collect())
    }

    /// Where one channel points now (None: it never moved), read as cheaply as the registry
    /// can: however long its history, however many other channels.
    async fn channel(&self, recipe: &str, cluster: &str) -> Result<Option<ChannelEntry>> {
        Ok(self.channel_history(recipe, cluster).await?.pop())
    }

    /// The last `n` moves of a channel, oldest first (all of them if it moved fewer times):
    /// what prune protects, read without the rest of the history where the registry can.
    async fn recent_moves(
        &self,
        recipe: &str,
        cluster: &str,
        n: usize,
    ) -> Result<Vec<ChannelEntry>> {
        Ok(last_moves(self.channel_history(recipe, cluster).await?, n))
    }

    /// Moves a channel, appending to its history.
    async fn move_channel(
        &self,
        recipe: &str,
        cluster: &str,
        change: ChannelMove,
    ) -> Result<ChannelEntry>;

    /// Takes the recipe's lock for `ttl`, or fails with `Error::LockHeld`. An expired lock is
    /// taken over; `break_lock` takes a live one (and says so in the log).
    async fn lock(
        &self,
        recipe: &str,
        owner: &str,
        ttl: Duration,
        break_lock: bool,
    ) -> Result<LockInfo>;

    /// The channel's arch parameter as a Terraform channel pin reads it: its current version
    /// and image, or None if the channel never held this arch. Each move that carried the arch
    /// wrote one version.
    async fn channel_image(
        &self,
        recipe: &str,
        cluster: &str,
        arch: Arch,
    ) -> Result<Option<ChannelImage>> {
        let history = self.channel_history(recipe, cluster).await?;
        let with_arch: Vec<&ChannelEntry> = history
            .iter()
            .filter(|e| e.images.contains_key(&arch))
            .collect();
        Ok(with_arch.last().map(|e| ChannelImage {
            version: with_arch.len() as u64,
            image_id: e.images[&arch].clone(),
        }))
    }

    /// Who holds the recipe's lock now (expired or not), if anyone.
    async fn lock_holder(&self, recipe: &str) -> Result<Option<LockInfo>>;

    /// Extends a lock this owner holds.
    async fn refresh_lock(&self, recipe: &str, owner: &str, ttl: Duration) -> Result<LockInfo>;

    /// Releases a lock this owner holds (no-op if someone broke it since).
    async fn unlock(&self, recipe: &str, owner: &str) -> Result<()>;
}
